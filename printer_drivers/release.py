"""The print release engine: a person badged at a printer; their held jobs print there.

    release_for(person, print users, printer)
      Get-Printer-Attributes (refuse: stopped, not accepting, a "-error" reason)  | in parallel
      Get-Jobs, only jobs newer than the last seen (first-job-id)                 |
      -> the person's jobs in the find-me queue and in the printer's own queue
      -> per job, in job order: CUPS-Move-Job (from find-me) then Release-Job
      -> journal each release (owner, releaser, printer, size; title only if configured)

Why an index: cupsd checks JobPrivateAccess for every job it lists, and with private values on
(the default) that costs it about 0.15 ms a job: a plain Get-Jobs over 1,000 held jobs took
~160 ms on the 2-core test box, far beyond the 50 ms a badge may take. So the engine keeps the
held jobs it has seen (id -> owner, queue, size, age) and asks cupsd at each badge only for jobs
newer than the newest it knows. Jobs that vanished meanwhile (cancelled by their owner, purged
by an administrator) cost one refused CUPS-Move-Job and are dropped. `sync(full=True)` relists
everything; `purge` does so before cancelling what has been held too long, so the index is made
exact at every purge interval.

Every cupsd error leaves as a PrinterError (printer_drivers.ipp); bad arguments as InputError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from pyipp.enums import IppOperation as Op

from gateway.errors import InputError, PrinterError
from printer_drivers.config import PrintConfig, PrinterConfig
from printer_drivers.ipp import CupsClient, IppStatusError, os_account
from printer_drivers.model import (
    JOB_END_NAMES,
    JOB_HELD,
    JOB_PENDING,
    FailedJob,
    HeldJob,
    JobEnd,
    ReleasedJob,
    ReleaseOutcome,
    queue_of,
    refusal,
    state_reasons,
)
from printer_drivers.users import normalise_print_user

__all__ = ["JournalLike", "NoJournal", "PrintRelease"]

log = logging.getLogger(__name__)

JOB_ATTRS = ["job-id", "job-state", "job-printer-uri", "job-originating-user-name",
             "job-k-octets", "time-at-creation"]
PRINTER_ATTRS = ["printer-state", "printer-state-reasons", "printer-is-accepting-jobs"]
# IPP statuses that mean "this job is no longer there to release or cancel".
_GONE = {0x0404, 0x0406, 0x0407}  # not-possible (finished), not-found, gone
PARALLEL = 4  # connections to cupsd used at once by a release (cupsd itself is one thread)
_FOLLOW_MEMO = 10_000  # released jobs remembered for follow() (releaser, printer, owner)


class JournalLike(Protocol):
    """What the engine needs of gateway.journal.Journal."""

    def append(self, kind: str, *, door: str | None = None, person: str | None = None,
               reason: str | None = None, at: float | None = None, **data: Any) -> object: ...


class NoJournal:
    """A JournalLike that keeps nothing: for read-only uses of the engine (listing held jobs,
    asking printers' state) by tools that must not write the gateway's journal."""

    def append(self, kind: str, **data: Any) -> None:
        return None


class PrintRelease:
    """Releases held jobs through one cupsd, from one event loop (its connections belong to
    the loop that first uses them); `await close()` when done (or `async with`).

    `config`: the parsed [print]/[[printers]] configuration. `journal`: where every release,
    refusal, purge and job end is appended. `client`: a CupsClient (default: built from the
    configuration, authenticating as `config.user` or this process's OS account)."""

    def __init__(self, config: PrintConfig, journal: JournalLike, *,
                 client: CupsClient | None = None) -> None:
        self.config = config
        self.journal = journal
        self.client = client or CupsClient(
            socket=config.socket, host=config.host, port=config.port,
            account=config.user or os_account(),
            peer_credentials=config.auth == "peer-credentials", timeout=config.timeout_seconds)
        self.findme = config.findme_queue.casefold()
        self._queues = {p.queue.casefold() for p in config.printers} | {self.findme}
        self._jobs: dict[int, HeldJob] = {}
        self._newest = 0  # the highest job id seen: the next sync asks from newest + 1
        self._synced = False
        self._taken: set[int] = set()  # ids claimed by a release or purge since the last relist
        self._inflight: set[int] = set()  # ids being moved, released or cancelled right now
        self._sync_lock = asyncio.Lock()
        self._parallel = asyncio.Semaphore(PARALLEL)  # requests in flight for one release
        self._released: dict[int, tuple[str | None, str, ReleasedJob]] = {}  # for follow()
        self.owners_hidden = False  # cupsd hid job owners from our account (JobPrivateAccess)

    # --- the index -----------------------------------------------------------------------------

    async def sync(self, full: bool = False) -> int:
        """Bring the index of held jobs up to date: only jobs newer than the newest seen, or
        every job with `full` (or before the first sync). Returns how many jobs were added.
        Raises PrinterError when cupsd cannot be asked."""
        async with self._sync_lock:
            full = full or not self._synced
            attrs: dict[str, Any] = {"printer-uri": self.client.printer_uri(),
                                     "which-jobs": "not-completed",
                                     "requested-attributes": self._job_attrs()}
            if not full:
                attrs["first-job-id"] = self._newest + 1
            else:
                self._taken = set(self._inflight)
            answer = await self.client.request(Op.GET_JOBS, "/", attrs)
            found = [j for j in (self._held(a) for a in answer["jobs"] if a) if j is not None]
            for a in answer["jobs"]:
                if isinstance(a.get("job-id"), int):
                    self._newest = max(self._newest, a["job-id"])
            if full:
                self._jobs = {j.job_id: j for j in found if j.job_id not in self._taken}
                self._synced = True
                return len(self._jobs)
            added = 0
            for j in found:
                if j.job_id not in self._jobs and j.job_id not in self._taken:
                    self._jobs[j.job_id] = j
                    added += 1
            return added

    def _job_attrs(self) -> list[str]:
        return [*JOB_ATTRS, "job-name"] if self.config.journal_job_names else JOB_ATTRS

    def _held(self, a: dict[str, Any]) -> HeldJob | None:
        """The index entry for one Get-Jobs answer, or None if it is not waiting for release."""
        jid, state = a.get("job-id"), a.get("job-state")
        queue = queue_of(str(a.get("job-printer-uri", ""))).casefold()
        if not isinstance(jid, int) or state is None or queue not in self._queues:
            return None
        if not (int(state) == JOB_HELD or (int(state) == JOB_PENDING and queue == self.findme)):
            return None
        owner = a.get("job-originating-user-name")
        if not isinstance(owner, str):
            if not self.owners_hidden:
                log.warning("cupsd hides job owners from account %r: add it to JobPrivateAccess "
                            "(config/cups/cupsd.conf)", self.client.account)
            self.owners_hidden = True
            return None
        name = a.get("job-name") if self.config.journal_job_names else None
        return HeldJob(jid, owner, normalise_print_user(owner), queue, int(state),
                       int(a.get("job-k-octets") or 0), float(a.get("time-at-creation") or 0),
                       str(name) if name is not None else None)

    def _take(self, jobs: Iterable[HeldJob]) -> None:
        """Claim jobs: out of the index, and kept out of any relist until `_done`."""
        for j in jobs:
            self._jobs.pop(j.job_id, None)
            self._taken.add(j.job_id)
            self._inflight.add(j.job_id)

    def _done(self, jobs: Iterable[HeldJob]) -> None:
        self._inflight.difference_update(j.job_id for j in jobs)

    # --- releasing -------------------------------------------------------------------------------

    def printer_config(self, name: str) -> PrinterConfig:
        """The configuration of printer `name`; raises InputError naming the known ones."""
        p = self.config.printer(name) if isinstance(name, str) else None
        if p is None:
            known = ", ".join(x.name for x in self.config.printers) or "(none configured)"
            raise InputError(f"unknown printer {name!r}; expected one of {known}")
        return p

    async def printer_state(self, printer: str) -> dict[str, Any]:
        """Get-Printer-Attributes of `printer`'s queue (state, reasons, accepting)."""
        p = self.printer_config(printer)
        answer = await self.client.request(Op.GET_PRINTER_ATTRIBUTES, f"/printers/{p.queue}", {
            "printer-uri": self.client.printer_uri(p.queue), "requested-attributes": PRINTER_ATTRS})
        return next(iter(answer["printers"] or []), {})

    async def release_for(self, person_id: str | None, print_users: frozenset[str], printer: str,
                          *, user: str | None = None) -> ReleaseOutcome:
        """Release at `printer` (its name in the policy) every held job whose owner is one of
        `print_users` (normalised; see printer_drivers.users): jobs in the find-me queue are
        moved to the printer's queue first, jobs held in that queue are released where they
        are; jobs held at other printers stay. Jobs are released in job order.

        `person_id` is the releaser journaled with each job; `user` the OS user of a technician
        releasing on someone's behalf (`portvakt print release`). An empty `print_users` (a
        person without a print account) is nothing to print. Everything is journaled here:
        print.released (one per job), print.refused, print.nothing-to-print, print.failed.

        Raises InputError for an unknown printer or an empty user name, PrinterError when cupsd
        cannot be asked (journaled as print.failed first); a job that fails later is reported in
        the outcome and stays held."""
        t0 = time.perf_counter()
        p = self.printer_config(printer)
        if any(not isinstance(u, str) or not normalise_print_user(u) for u in print_users):
            raise InputError(f"print user names must be non-empty; got {sorted(print_users)!r}")
        wanted = {normalise_print_user(u) for u in print_users}
        who: dict[str, Any] = {"person": person_id, "printer": p.name,
                               **({"user": user} if user else {})}
        state_task = asyncio.ensure_future(self._state_or_missing(p))
        sync_task = asyncio.ensure_future(self.sync())
        done = await asyncio.gather(state_task, sync_task, return_exceptions=True)
        for r in done:
            if isinstance(r, BaseException):
                why = r.status_name if isinstance(r, IppStatusError) else "spooler-unavailable"
                self.journal.append("print.failed", reason=why, detail=str(r), **who)
                raise r
        state = done[0]
        assert isinstance(state, dict)
        refused = ("queue-not-found", "") if state.get("missing") else refusal(state)
        if refused is not None:
            self.journal.append("print.refused", reason=refused[0], detail=refused[1], **who)
            return ReleaseOutcome(p.name, "refused", refused[0], refused[1],
                                  seconds=time.perf_counter() - t0)
        mine = sorted((j for j in self._jobs.values()
                       if j.user in wanted and j.queue in (self.findme, p.queue.casefold())),
                      key=lambda j: j.job_id)
        if not mine:
            self.journal.append("print.nothing-to-print", reason="nothing-to-print",
                                owners=sorted(wanted), **who)
            return ReleaseOutcome(p.name, "nothing-to-print", "nothing-to-print",
                                  seconds=time.perf_counter() - t0)
        self._take(mine)
        try:
            released, failed, broken = await self._release_all(mine, p, person_id)
        finally:
            self._done(mine)
        seconds = time.perf_counter() - t0
        for rj in released:
            named: dict[str, Any] = {"name": rj.name} if rj.name is not None else {}
            self.journal.append("print.released", owner=rj.owner, job=rj.job_id,
                                size_kb=rj.size_kb, from_queue=rj.from_queue, **named, **who)
        for f in failed:
            said: dict[str, Any] = {"detail": f.detail} if f.detail else {}
            self.journal.append("print.failed", reason=f.reason, owner=f.owner, job=f.job_id,
                                queue=f.queue, **said, **who)
        if not released and not failed:
            self.journal.append("print.nothing-to-print", reason="nothing-to-print",
                                owners=sorted(wanted), **who)
            return ReleaseOutcome(p.name, "nothing-to-print", "nothing-to-print", seconds=seconds)
        first = failed[0] if failed else None
        why = str(broken) if broken else f"{first.reason}: {first.detail}" if first else ""
        return ReleaseOutcome(p.name, "released" if released else "failed",
                              None if released else "release-failed", why,
                              tuple(released), tuple(failed), seconds)

    async def _release_all(self, mine: list[HeldJob], p: PrinterConfig, person_id: str | None
                           ) -> tuple[list[ReleasedJob], list[FailedJob], PrinterError | None]:
        """Move the find-me jobs to the printer's queue, then release the held ones.

        Moves go out together (a moved job stays held: order does not matter yet). Releases go
        one after another in job order: a printer that finishes a job while two releases are in
        flight would start whichever cupsd happened to take first. A job refused as gone is
        dropped; any other failure keeps it held where it is; once cupsd stops answering
        nothing more is tried."""
        where = {j.job_id: j.queue for j in mine}
        failed: dict[int, FailedJob] = {}
        gone: set[int] = set()
        broken: list[PrinterError] = []
        target = p.queue.casefold()

        async def step(j: HeldJob, action: Coroutine[Any, Any, None], after: str) -> None:
            if broken:
                action.close()  # never started: no 'never awaited' warning
                failed[j.job_id] = self._keep(j, where[j.job_id], "spooler-unavailable",
                                              str(broken[0]))
                return
            try:
                async with self._parallel:
                    await action
            except IppStatusError as e:
                if e.status in _GONE and where[j.job_id] == j.queue:
                    log.info("job %d vanished before release (%s)", j.job_id, e)
                    gone.add(j.job_id)
                else:
                    failed[j.job_id] = self._keep(j, where[j.job_id], e.status_name,
                                                  e.message or str(e))
                return
            except PrinterError as e:
                broken.append(e)
                failed[j.job_id] = self._keep(j, where[j.job_id], "spooler-unavailable", str(e))
                return
            where[j.job_id] = after

        await asyncio.gather(*(step(j, self._move(j.job_id, p.queue), target)
                               for j in mine if j.queue == self.findme))
        held = [j for j in mine if j.state == JOB_HELD and j.job_id not in failed
                and j.job_id not in gone]
        for j in held:
            await step(j, self._release(j.job_id, p.queue), target)
        released: list[ReleasedJob] = []
        for j in mine:
            if j.job_id in failed or j.job_id in gone:
                continue
            rj = ReleasedJob(j.job_id, j.user, j.size_kb, j.queue, j.name)
            released.append(rj)
            self._released[j.job_id] = (person_id, p.name, rj)
            if len(self._released) > _FOLLOW_MEMO:
                self._released.pop(next(iter(self._released)))
        return released, [failed[k] for k in sorted(failed)], broken[0] if broken else None

    def _keep(self, j: HeldJob, queue: str, reason: str, detail: str) -> FailedJob:
        """A job that could not be released stays in the index, where it now is."""
        self._taken.discard(j.job_id)
        self._jobs[j.job_id] = HeldJob(j.job_id, j.owner, j.user, queue, JOB_HELD if
                                       queue != self.findme else j.state, j.size_kb, j.created,
                                       j.name)
        return FailedJob(j.job_id, j.user, queue, reason, detail)

    async def _state_or_missing(self, p: PrinterConfig) -> dict[str, Any]:
        try:
            return await self.printer_state(p.name)
        except IppStatusError as e:
            if e.status == 0x0406:
                return {"missing": True}
            raise

    async def _move(self, job_id: int, queue: str) -> None:
        await self.client.request(
            Op.CUPS_MOVE_JOB, f"/printers/{self.config.findme_queue}",
            {"printer-uri": self.client.printer_uri(self.config.findme_queue), "job-id": job_id},
            {"job-printer-uri": self.client.printer_uri(queue)})

    async def _release(self, job_id: int, queue: str) -> None:
        await self.client.request(Op.RELEASE_JOB, f"/printers/{queue}", {
            "printer-uri": self.client.printer_uri(queue), "job-id": job_id})

    # --- listing, retention, following ------------------------------------------------------------

    def held_counts(self) -> dict[str, int]:
        """Held jobs per queue (casefolded name) as the index knows them now (exact after each
        full relist: at start and at every purge); no request to cupsd."""
        counts: dict[str, int] = {}
        for j in self._jobs.values():
            counts[j.queue] = counts.get(j.queue, 0) + 1
        return counts

    async def held_jobs(self, user: str | None = None) -> list[HeldJob]:
        """Every job waiting for release (after a full relist), oldest first; only those of
        print user `user` (normalised) when given. Raises InputError for an empty `user`,
        PrinterError when cupsd cannot be asked."""
        if user is not None and not normalise_print_user(user):
            raise InputError(f"expected a print user name, got {user!r}")
        await self.sync(full=True)
        want = normalise_print_user(user) if user is not None else None
        return sorted((j for j in self._jobs.values() if want is None or j.user == want),
                      key=lambda j: (j.created, j.job_id))

    async def purge(self, now: float | None = None, *, user: str | None = None) -> list[HeldJob]:
        """Cancel (and purge from cupsd's history) every job held longer than the retention
        time (`retention_hours`), as of `now` (POSIX seconds, default the current time); each
        one is journaled as print.purged with its owner, queue, size and age. `user`: the OS
        user of a technician who asked for it. Returns the jobs cancelled. Raises PrinterError
        when cupsd cannot be asked; a job that vanished meanwhile is skipped."""
        now = time.time() if now is None else now
        await self.sync(full=True)
        cutoff = now - self.config.retention_seconds
        old = sorted((j for j in self._jobs.values() if j.created < cutoff),
                     key=lambda j: j.job_id)
        self._take(old)
        try:
            return await self._cancel_all(old, now, user)
        finally:
            self._done(old)

    async def _cancel_all(self, old: list[HeldJob], now: float, user: str | None) -> list[HeldJob]:
        purged: list[HeldJob] = []
        for j in old:
            try:
                await self.client.request(Op.CANCEL_JOB, "/jobs", {
                    "printer-uri": self.client.printer_uri(j.queue), "job-id": j.job_id,
                    "purge-job": True})
            except IppStatusError as e:
                if e.status not in _GONE:
                    log.warning("retention: job %d could not be cancelled: %s", j.job_id, e)
                    self._keep(j, j.queue, e.status_name, e.message)
                continue
            purged.append(j)
            extra: dict[str, Any] = {"name": j.name} if j.name is not None else {}
            if user:
                extra["user"] = user
            self.journal.append("print.purged", reason="retention", owner=j.user, job=j.job_id,
                                queue=j.queue, size_kb=j.size_kb,
                                age_seconds=round(now - j.created), **extra)
        return purged

    async def follow(self, job_ids: Iterable[int], within: float | None = None,
                     poll: float = 0.05) -> dict[int, JobEnd]:
        """Poll the jobs until each has ended or `within` seconds (default `follow_seconds`)
        have passed; journal print.completed, print.aborted or print.canceled for each (with
        the releaser, printer and owner when this engine released it). Polls start `poll`
        seconds apart and back off to 2 s. Raises PrinterError when cupsd cannot be asked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.follow_seconds if within is None else within)
        waiting = sorted(set(job_ids))
        ends: dict[int, JobEnd] = {}
        delay = poll
        while waiting:
            for jid in list(waiting):
                end = await self._job_end(jid)
                if end is not None:
                    ends[jid] = end
                    waiting.remove(jid)
            if not waiting:
                break
            if loop.time() >= deadline:
                for jid in waiting:
                    ends[jid] = self._ended(jid, "timeout", "")
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 2.0)
        return ends

    async def _job_end(self, jid: int) -> JobEnd | None:
        try:
            answer = await self.client.request(Op.GET_JOB_ATTRIBUTES, "/jobs", {
                "printer-uri": self.client.printer_uri(), "job-id": jid,
                "requested-attributes": ["job-state", "job-state-reasons",
                                         "job-printer-state-message"]})
        except IppStatusError as e:
            if e.status in _GONE:
                return self._ended(jid, "gone", e.status_name)
            raise
        a: dict[str, Any] = next(iter(answer["jobs"] or []), {})
        state = a.get("job-state")
        if state is None or int(state) not in JOB_END_NAMES:
            return None
        detail = ",".join(state_reasons(a, "job-state-reasons"))
        message = a.get("job-printer-state-message")
        if message:
            detail = f"{detail}: {message}" if detail else str(message)
        return self._ended(jid, JOB_END_NAMES[int(state)], detail)

    def _ended(self, jid: int, state: str, detail: str) -> JobEnd:
        person, printer, rj = self._released.pop(jid, (None, None, None))
        owner = rj.owner if rj is not None else None
        kind = "print.follow-timeout" if state == "timeout" else f"print.{state}"
        self.journal.append(kind, person=person, reason=None if state == "completed" else state,
                            job=jid, printer=printer, owner=owner, detail=detail)
        return JobEnd(jid, state, detail, printer, owner)

    # --- lifetime --------------------------------------------------------------------------------

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> PrintRelease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
