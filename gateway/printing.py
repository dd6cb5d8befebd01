"""Print release in the daemon: the readers at printers, the decision, the release, the feedback
at the reader, following released jobs, the retention purge and the printers' state.

A presentation at a printer's reader is verified and decided like one at a door (the printer's
name is the resource in the policy; a grant carries `release`). A granted person's jobs (their
own print user name and those of everyone who delegated release to them) are released by
printer_drivers.release.PrintRelease, which journals each job. The reader's green output means
"released", red means denied, nothing to print, refused (printer stopped or in error) or cupsd
unavailable. Doors never wait for any of this: each printer's reader is its own task, and cupsd
failures end as a journaled print.failed and a red light, with cupsd's own status-message.

A request cupsd refuses as malformed (client-error-bad-request) is no passing fault: the gateway
and the installed cupsd disagree (a security update changed what cupsd accepts, say), and every
release at that printer will fail the same way. It raises the alarm `spooler-bad-request`
(journaled with cupsd's message, in the status and on the dashboard) until a request there is
accepted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from door_drivers.modbus import ModbusRelayBoard
from door_drivers.relay_door import FeedbackOutput
from gateway.access import check_presentation, decide, decision_fields
from gateway.config import Config, Stance
from gateway.domain import CardFailure, CardRead, ReaderStatus
from gateway.errors import DoorDriverError, InputError, PrinterError
from gateway.journal import Journal
from gateway.policy import DecisionState, Policy
from gateway.trust.validator import Rejection, TrustStore, Validated
from printer_drivers.config import PrintConfig, PrinterConfig
from printer_drivers.ipp import IppStatusError
from printer_drivers.model import PRINTER_STOPPED, ReleaseOutcome, state_reasons
from printer_drivers.release import PrintRelease

log = logging.getLogger(__name__)

WATCH_SECONDS = 10.0  # how often each printer's state is asked for the status/dashboard
RETRY_SECONDS = 30.0  # retention purge retried this soon after cupsd failed to answer
_STATES = {3: "idle", 4: "processing", PRINTER_STOPPED: "stopped"}
BAD_REQUEST = "client-error-bad-request"
BAD_REQUEST_ALARM = "spooler-bad-request"


def bad_request(error: BaseException | ReleaseOutcome | None) -> str | None:
    """cupsd's words when `error` (or a release's failed jobs) is a refusal as malformed."""
    if isinstance(error, IppStatusError) and error.status_name == BAD_REQUEST:
        return str(error)
    if isinstance(error, ReleaseOutcome):
        for f in error.failed:
            if f.reason == BAD_REQUEST:
                return f"cupsd refused job {f.job_id}: {f.reason} ({f.detail})"
    return None


@dataclass
class PrinterRuntime:
    config: PrinterConfig
    green: FeedbackOutput | None = None
    red: FeedbackOutput | None = None
    reader_online: bool | None = None
    last_presentation: float | None = None
    last_result: str | None = None  # released / nothing-to-print / refused / failed / denied
    state: str | None = None  # idle / processing / stopped / unreachable
    reasons: str = ""
    error: str | None = None
    busy: bool = False
    alarm: str | None = None  # BAD_REQUEST_ALARM while cupsd refuses requests here as malformed


@dataclass
class Printing:
    """The print side of one gateway. `run_*` coroutines are supervised parts of the daemon."""

    config: PrintConfig
    engine: PrintRelease
    journal: Journal
    trust: TrustStore
    stance: Stance
    printers: dict[str, PrinterRuntime]
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    error: str | None = None  # the last cupsd failure of the purge or watch, None when fine
    alarm: str | None = None  # BAD_REQUEST_ALARM from the purge (the hold queue)
    # told of every presentation's verdict after the decision (the daemon reads CRL points)
    on_verdict: Callable[[CardRead, Validated | Rejection], None] | None = None

    @classmethod
    def build(cls, config: Config, journal: Journal, trust: TrustStore,
              boards: dict[str, ModbusRelayBoard]) -> Printing | None:
        pc = config.print
        if pc is None:
            return None
        timed = {b.name: b.timed_pulse for b in config.boards}
        printers: dict[str, PrinterRuntime] = {}
        for p in pc.printers:
            rt = PrinterRuntime(p)
            fb = p.feedback
            if fb is not None:
                board = boards[fb.board]
                if fb.green is not None:
                    rt.green = FeedbackOutput(board, fb.green, timed_pulse=timed[fb.board],
                                              name=f"printer {p.name} green")
                if fb.red is not None:
                    rt.red = FeedbackOutput(board, fb.red, timed_pulse=timed[fb.board],
                                            name=f"printer {p.name} red")
            printers[p.name] = rt
        t = config.trust
        return cls(pc, PrintRelease(pc, journal), journal, trust,
                   Stance(t.revocation_unknown, t.crl_stale, t.clock_behind), printers)

    # --- presentations -----------------------------------------------------------------------
    async def on_presentation(self, printer: PrinterRuntime,
                              item: CardRead | CardFailure | ReaderStatus,
                              policy: Policy | None, state: DecisionState) -> None:
        name = printer.config.name
        if isinstance(item, ReaderStatus):
            printer.reader_online = item.online
            self.journal.append("reader.online" if item.online else "reader.offline",
                                printer=name, device=item.device, detail=item.detail)
            return
        if printer.busy:  # a tap while this printer's release runs (the same person, twice)
            log.info("printer %s: a release is running; presentation ignored", name)
            return
        printer.last_presentation = time.time()
        if isinstance(item, CardFailure):
            self.journal.append("access.denied", printer=name, reason=item.reason,
                                detail=item.detail, transport=item.transport)
            printer.last_result = "denied"
            self._signal(printer, False)
            return
        verdict = check_presentation(self.trust, item, time.time())
        now = datetime.now(UTC)
        decision = decide(policy, verdict, name, now, state, self.stance)
        self.journal.append("access.granted" if decision.granted else "access.denied",
                            printer=name, person=decision.person, reason=decision.reason,
                            **decision_fields(item, verdict, decision))
        if not (decision.granted and "release" in decision.actions
                and isinstance(verdict, Validated) and policy is not None
                and decision.person is not None):
            printer.last_result = "denied"
            self._signal(printer, False)
        else:
            owners = policy.releasable_owners(decision.person, now)
            printer.busy = True  # until the release ends; the reader goes on meanwhile
            self._spawn(self._release(printer, decision.person, owners), f"release at {name}")
        if self.on_verdict is not None:
            self.on_verdict(item, verdict)  # the daemon's learn_crl_points: never raises

    async def _release(self, printer: PrinterRuntime, person: str,
                       owners: frozenset[str]) -> None:
        name = printer.config.name
        try:
            outcome = await self.engine.release_for(person, owners, name)
        except (PrinterError, InputError) as e:  # journaled by the engine as print.failed
            log.error("printer %s: release failed: %s", name, e)
            printer.last_result = "failed"
            printer.error = str(e)
            self._answered(printer, bad_request(e))
            self._signal(printer, False)
            return
        finally:
            printer.busy = False
        self._answered(printer, bad_request(outcome))
        if outcome.result == "failed":
            printer.error = outcome.detail or None
        self._released(printer, outcome)

    def _answered(self, printer: PrinterRuntime | None, refused: str | None) -> None:
        """Raise the spooler-bad-request alarm at `printer` (None: the hold queue, from the
        purge) with cupsd's words `refused`, or clear it when cupsd answered without that."""
        where = printer if printer is not None else self
        name = printer.config.name if printer is not None else self.config.findme_queue
        if refused is not None and where.alarm is None:
            log.error("printer %s: cupsd refuses the gateway's requests: %s", name, refused)
            where.alarm = BAD_REQUEST_ALARM
            self.journal.append(f"alarm.{BAD_REQUEST_ALARM}", reason=BAD_REQUEST_ALARM,
                                printer=name, detail=refused)
        elif refused is None and where.alarm is not None:
            where.alarm = None
            self.journal.append("alarm.cleared", reason="spooler-answers",
                                alarm=BAD_REQUEST_ALARM, printer=name)

    def _released(self, printer: PrinterRuntime, outcome: ReleaseOutcome) -> None:
        printer.last_result = outcome.result
        ok = outcome.result == "released"
        self._signal(printer, ok)
        if outcome.result == "refused":  # the watch would see it within WATCH_SECONDS
            printer.reasons = outcome.detail
            if outcome.reason == "printer-stopped":
                printer.state = "stopped"
        log.info("printer %s: %s%s in %.1f ms", printer.config.name, outcome.result,
                 f" ({len(outcome.released)} jobs)" if ok else
                 f" ({outcome.reason})" if outcome.reason else "", outcome.seconds * 1000)
        if outcome.released:
            self._spawn(self._follow([j.job_id for j in outcome.released]),
                        f"follow {printer.config.name}")

    async def _follow(self, job_ids: list[int]) -> None:
        try:
            await self.engine.follow(job_ids)  # journals completed / aborted / canceled
        except PrinterError as e:
            log.warning("following released jobs %s: %s", job_ids, e)

    def _signal(self, printer: PrinterRuntime, good: bool) -> None:
        out = printer.green if good else printer.red
        if out is None:
            return
        seconds = printer.config.feedback.seconds if printer.config.feedback else 1.0
        self._spawn(self._pulse(out, seconds), f"feedback {out.name}")

    @staticmethod
    async def _pulse(out: FeedbackOutput, seconds: float) -> None:
        try:
            await out.pulse(seconds)
        except DoorDriverError as e:
            log.warning("%s: %s", out.name, e)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- parts ---------------------------------------------------------------------------------
    async def run_retention(self) -> None:
        """Index every held job at start, then cancel what is held past the retention time every
        purge interval (journaled as print.purged by the engine)."""
        first = True
        while True:
            try:
                if first:
                    await self.engine.sync(full=True)
                    first = False
                else:
                    await self.engine.purge()
                self.error = None
                delay = self.config.purge_interval_seconds
                self._answered(None, None)
            except PrinterError as e:
                if self.error is None:
                    log.error("print spooler: %s (doors are not affected)", e)
                    self.journal.append("print.spooler-unavailable",
                                        reason="spooler-unavailable", detail=str(e))
                self.error = str(e)
                self._answered(None, bad_request(e))
                delay = min(RETRY_SECONDS, self.config.purge_interval_seconds)
            await asyncio.sleep(delay)

    async def run_watch(self, changed: Callable[[], None] | None = None) -> None:
        """Each printer's state every WATCH_SECONDS, for the status and the dashboard."""
        while True:
            with contextlib.suppress(PrinterError):  # new held jobs, for the held counts
                await self.engine.sync()
            for rt in self.printers.values():
                error: str | None
                try:
                    a = await self.engine.printer_state(rt.config.name)
                except (PrinterError, InputError) as e:
                    state, reasons, error = "unreachable", "", str(e)
                    self._answered(rt, bad_request(e))
                else:
                    self._answered(rt, None)
                    raw = a.get("printer-state")
                    state = _STATES.get(int(raw), str(raw)) if raw is not None else "unknown"
                    if a.get("printer-is-accepting-jobs") is False:
                        state = "not-accepting"
                    reasons = ",".join(r for r in state_reasons(a) if r != "none")
                    error = None
                if (state, reasons, error) != (rt.state, rt.reasons, rt.error):
                    rt.state, rt.reasons, rt.error = state, reasons, error
                    if changed is not None:
                        changed()
            await asyncio.sleep(WATCH_SECONDS)

    # --- status and lifetime -------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        counts = self.engine.held_counts()
        out = [{"name": rt.config.name, "queue": rt.config.queue,
                "reader": rt.config.reader or rt.config.nfc, "reader_online": rt.reader_online,
                "state": rt.state, "reasons": rt.reasons, "error": rt.error,
                "held_jobs": counts.get(rt.config.queue.casefold(), 0),
                "last_presentation": rt.last_presentation, "last_result": rt.last_result,
                "alarm": rt.alarm}
               for rt in self.printers.values()]
        out.append({"name": f"{self.config.findme_queue} (hold)", "hold": True,
                    "queue": self.config.findme_queue, "state": "holding",
                    "held_jobs": counts.get(self.config.findme_queue.casefold(), 0),
                    "error": self.error, "alarm": self.alarm})
        return out

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        for t in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.engine.close()
