"""The composition root: `portvakt run`. Wires readers -> trust -> policy -> doors -> journal.

Each reader and each relay board runs as its own task; a card presentation costs one thread hop
(reader worker -> event loop). A grant starts the door's pulse as a task of its own, so neither
the reader nor the journal ever waits for the relay, and the relay never waits for the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from door_drivers.modbus import BoardParams, ModbusRelayBoard, open_boards
from door_drivers.relay_door import RelayDoor
from door_drivers.supervision import DoorMode
from gateway.access import check_presentation, decide, decision_fields
from gateway.bundle import load_keys
from gateway.clock import clock_status
from gateway.config import BoardConfig, Config, DoorConfig, load_config
from gateway.control import CommandError, ControlServer
from gateway.domain import CardFailure, CardRead, Decision, ProofScheme, ReaderStatus
from gateway.doors import BoardLink, DoorController
from gateway.errors import ConfigError, PortvaktError, ReaderError
from gateway.hub import EventHub
from gateway.journal import Journal
from gateway.modes import ModeBook
from gateway.policy import DecisionState, Mode, Pending
from gateway.policy_source import PolicySource
from gateway.printing import PrinterRuntime, Printing
from gateway.supervisor import supervise
from gateway.sync.config import CrlFetchConfig
from gateway.sync.crl import CrlFetcher, crl_ingester
from gateway.sync.service import SyncService
from gateway.sync.signed import VerifiedCommand
from gateway.sync.state import SyncState
from gateway.trust.distribution import distribution_points
from gateway.trust.revocation import crl_status
from gateway.trust.store import load_trust_store
from gateway.trust.validator import Rejection, TrustStore, Validated
from printer_drivers.commands import print_commands
from readers.nfc import NfcReader
from readers.pcsc import PcscReader, list_readers, resolve_reader, split_name
from readers.profile import PivCakProfile

log = logging.getLogger(__name__)
Handler = Callable[[CardRead | CardFailure | ReaderStatus], Awaitable[None]]
CRL_WATCH_SECONDS = 60.0


@dataclass
class DoorRuntime:
    config: DoorConfig
    controller: DoorController
    reader_online: bool | None = None
    last_presentation: float | None = None  # wall-clock time
    acknowledged: str | None = None  # the alarm state a technician acknowledged
    # control-API `card.check` callers waiting for this door's next presentation
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


def board_params(b: BoardConfig) -> BoardParams:
    if b.device:
        return BoardParams.rtu(b.device, baud=b.baud, unit=b.unit, timeout=b.timeout)
    return BoardParams.tcp(b.host, b.port, unit=b.unit, timeout=b.timeout)


@dataclass
class Gateway:
    config: Config
    journal: Journal
    trust: TrustStore
    policy: PolicySource
    modes: ModeBook
    boards: dict[str, ModbusRelayBoard]
    links: dict[str, BoardLink]
    doors: dict[str, DoorRuntime]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    door_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    control: ControlServer | None = None
    hub: EventHub | None = None
    pending: tuple[Pending, ...] = ()
    request_reload: Callable[[], None] | None = None  # set by run_daemon: SIGHUP's effect
    printing: Printing | None = None  # print release ([[printers]]), None when off
    sync: SyncService | None = None  # head-office sync ([mqtt]), None when off
    loop: asyncio.AbstractEventLoop | None = None
    stale_crls: set[str] = field(default_factory=set)  # issuers whose CRL is past nextUpdate+grace
    crl_wake: asyncio.Event = field(default_factory=asyncio.Event)  # a CRL was installed
    crl_fetcher: CrlFetcher | None = None  # sync's or the "CRL fetch" part's, None when neither
    dp_seen: set[bytes] = field(default_factory=set)  # certificates whose CRL points were read

    @classmethod
    def build(cls, config: Config) -> Gateway:
        if config.pcsc_socket is not None:
            os.environ["PCSCLITE_CSOCK_NAME"] = str(config.pcsc_socket)
        trust = load_trust_store(config.trust, config.state_dir / "crl")
        journal = Journal(config.database, config.gateway_id)
        try:
            board_list = open_boards(board_params(b) for b in config.boards)
        except ValueError as e:
            raise ConfigError(str(config.file), "boards", str(e)) from None
        boards = {b.name: board for b, board in zip(config.boards, board_list, strict=True)}
        by_name = {b.name: b for b in config.boards}
        doors: dict[str, DoorRuntime] = {}
        for d in config.doors:
            driver = RelayDoor(boards[d.board], d.relay, energise_to_unlock=d.energise_to_unlock,
                               name=f"door {d.name}", timed_pulse=by_name[d.board].timed_pulse)
            doors[d.name] = DoorRuntime(d, DoorController(d, driver, journal))
        links = {b.name: BoardLink(b, boards[b.name],
                                   [doors[d.name].controller for d in config.doors
                                    if d.board == b.name], journal)
                 for b in config.boards}
        policy = PolicySource(config, journal)
        modes = ModeBook(config.state_dir / "modes.json", tuple(doors))
        gw = cls(config, journal, trust, policy, modes, boards, links, doors)
        try:
            gw.printing = Printing.build(config, journal, trust, boards)
            if gw.printing is not None:
                gw.printing.on_verdict = gw.learn_crl_points
            if config.mqtt is not None:
                ingest = crl_ingester(trust)

                def on_crl(data: bytes) -> Any:  # a worker thread of SyncService's
                    installed = ingest(data)
                    gw._crl_installed_threadsafe()
                    return installed

                gw.sync = SyncService(config.mqtt, config.site, config.gateway_id, journal,
                                      gw._on_policy, on_crl, gw._on_command, gw._sync_status)
        except BaseException:
            policy.store.close()
            journal.close()
            raise
        return gw

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.journal.on_fault(self._journal_fault_threadsafe)
        self.journal.append("gateway.started", pid=os.getpid())
        behind = self.trust.trusted_time - time.time()
        if behind > self.trust.clock_skew:
            log.error("the system clock is %.0f s behind the newest trusted time (a CRL's "
                      "thisUpdate); doors apply their clock_behind stance", behind)
            self.journal.append("alarm.clock-behind", reason="clock-behind",
                                behind_s=round(behind))
        self.policy.start()
        for door in self.doors.values():
            door.controller.on_change = self._door_changed
            self.door_tasks.append(self._part(f"door {door.config.name}", door.controller.run))
        self._apply_modes()
        for link in self.links.values():
            self.tasks.append(self._part(f"relay board {link.name}", link.run))
        self.tasks.append(self._part("mode clock", self._mode_loop))
        self.tasks.append(self._part("CRL freshness", self._crl_watch))
        self.hub = EventHub(self.journal)
        commands: dict[str, Any] = {
            "status": self._cmd_status, "card.check": self._cmd_card_check,
            "door.list": self._cmd_door_list, "door.unlock": self._cmd_door_unlock,
            "door.lock": self._cmd_door_lock, "door.mode": self._cmd_door_mode,
            "alarm.ack": self._cmd_alarm_ack, "policy.reload": self._cmd_policy_reload,
            "config.reload": self._cmd_config_reload, "crl.import": self._cmd_crl_import}
        if self.printing is not None:
            commands.update(print_commands(self.printing.engine, self.journal))
        self.control = ControlServer(self.config.state_dir / "control.sock", commands,
                                     {"events.follow": self._stream_events})
        await self.control.start()
        if self.sync is not None:
            self.crl_fetcher = self.sync.fetcher
            self.tasks.append(self._part("mqtt sync", self.sync.run))
        elif self.config.crl_fetch is not None and self.config.crl_fetch.fetches:
            self.crl_fetcher = self._own_crl_fetcher(self.config.crl_fetch)
            self.tasks.append(self._part("CRL fetch", self.crl_fetcher.run))
        if self.crl_fetcher is not None:
            for ca in (*self.trust.intermediates, *self.trust.anchors):
                self.crl_fetcher.learn(distribution_points(ca), ca.subject.rfc4514_string())
        profile = PivCakProfile(self.config.aids)
        for door in self.doors.values():
            dc = door.config
            self._reader_part("door", dc.name, dc.reader, dc.nfc, dc.slot, profile,
                              functools.partial(self.on_presentation, door))
        if self.printing is not None:
            self.tasks.append(self._part("print retention", self.printing.run_retention))
            self.tasks.append(self._part("printer watch", functools.partial(
                self.printing.run_watch, self._status_changed)))
            for printer in self.printing.printers.values():
                pc = printer.config
                self._reader_part("printer", pc.name, pc.reader, pc.nfc, pc.slot, profile,
                                  functools.partial(self._at_printer, printer))
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    def _part(self, name: str, part: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.create_task(supervise(name, part, self.journal), name=name)

    # --- modes --------------------------------------------------------------------------------
    def _apply_modes(self) -> None:
        """Give every door the mode that applies now: site and manual modes, free-access
        schedules (with first-person-in), the stricter winning."""
        at = datetime.now(UTC)
        for name, door in self.doors.items():
            mode = self.modes.effective(name, self.policy.current, at)
            if door.controller.machine.mode is not mode:
                door.controller.set_mode(mode)

    async def _mode_loop(self) -> None:
        """Re-evaluate schedules on every second boundary; watch the policy's validity."""
        while True:
            await asyncio.sleep(1.0 - time.time() % 1.0)
            self._apply_modes()
            self.policy.watch(time.time())

    async def _crl_watch(self) -> None:
        """Raise alarm.crl-stale once per CRL that passes nextUpdate + grace (doors then apply
        their crl_stale stance), and alarm.cleared when a newer CRL arrives. Wakes at the next
        such instant, when a CRL is installed, and at least every CRL_WATCH_SECONDS."""
        while True:
            now = time.time()
            grace = self.config.trust.crl_grace
            stale: set[str] = set()
            due = now + CRL_WATCH_SECONDS
            for idx in self.trust.revocation.all():
                st = crl_status(idx, now, grace)
                if st["state"] == "stale":
                    stale.add(st["issuer"])
                elif idx.next_update is not None:
                    due = min(due, idx.next_update + grace + 0.01)
            for issuer in sorted(stale - self.stale_crls):
                log.error("the CRL of %s is past its nextUpdate (+%g s grace): doors apply their "
                          "crl_stale stance", issuer, grace)
                self.journal.append("alarm.crl-stale", reason="crl-stale", issuer=issuer)
            for issuer in sorted(self.stale_crls - stale):
                self.journal.append("alarm.cleared", reason="crl-fresh", alarm="crl-stale",
                                    issuer=issuer)
            if stale != self.stale_crls:
                self.stale_crls = stale
                self._status_changed()
            self.crl_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, due - time.time())):
                    await self.crl_wake.wait()

    def _on_loop(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the daemon's loop, from any thread; dropped once it stopped."""
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(callback)

    def _crl_installed_threadsafe(self) -> None:
        self._on_loop(self.crl_wake.set)

    def _own_crl_fetcher(self, config: CrlFetchConfig) -> CrlFetcher:
        """CRLs from their distribution points without head-office sync (a [crl] table)."""
        ingest = crl_ingester(self.trust, "fetch")

        async def install(data: bytes) -> Any:
            return await asyncio.to_thread(ingest, data)

        def result(url: str, outcome: str, detail: str) -> None:
            if outcome == "installed":
                log.info("CRL from %s installed", url)
                self.journal.append("crl.installed", source=url)
                self.crl_wake.set()
                self._status_changed()

        return CrlFetcher(config, install, SyncState(self.journal), self.journal,
                          on_result=result)

    def learn_crl_points(self, read: CardRead, verdict: Validated | Rejection) -> None:
        """The CRL distribution points a validated card certificate names are fetched from then
        on (with `from_certificates`). After the decision: never in a door's way."""
        fetcher = self.crl_fetcher
        if (fetcher is None or not fetcher.config.from_certificates
                or not isinstance(verdict, Validated)):
            return
        try:
            digest = hashlib.sha256(read.certificates[0]).digest()
            if digest in self.dp_seen:
                return
            if len(self.dp_seen) >= 4096:
                self.dp_seen.clear()
            self.dp_seen.add(digest)
            leaf = self.trust.leaf(read.certificates)
            if leaf is not None:
                fetcher.learn(distribution_points(leaf), leaf.subject.rfc4514_string())
        except Exception:  # never the reader's problem
            log.exception("reading a card certificate's CRL distribution points failed")

    def _journal_fault_threadsafe(self, error: str | None) -> None:
        """The journal's disk failed or recovered (writer thread): head office's status shows
        it at once; doors carry on deciding either way."""
        self._on_loop(self._status_changed)

    def _door_changed(self, controller: DoorController) -> None:
        self._status_changed()

    def _status_changed(self) -> None:
        """Something head office should see at once (a door's state or mode, an alarm)."""
        if self.sync is not None:
            self.sync.request_status()

    def _decision_state(self) -> DecisionState:
        book = self.modes
        return DecisionState(
            site_mode=Mode(book.site.value),
            door_modes={n: Mode(d.controller.machine.mode.value) for n, d in self.doors.items()
                        if d.controller.machine.mode is not DoorMode.NORMAL},
            lockdown_override=self.policy.current.lockdown_override
            if self.policy.current is not None else None,
            faulted=frozenset(n for n, d in self.doors.items() if d.controller.faulted),
            pending=self.pending)

    # --- readers ------------------------------------------------------------------------------
    def _reader_part(self, kind: str, name: str, pcsc: str, nfc: str, slot: int,
                     profile: PivCakProfile, handle: Handler) -> None:
        """The reader at door or printer `name` (PC/SC, or nfcpy when `nfc` is set) as a
        supervised part feeding `handle`."""
        label = name if kind == "door" else f"{kind} {name}"
        reader = (NfcReader(label, nfc, profile) if nfc
                  else PcscReader(label, pcsc, slot, profile))
        self.tasks.append(self._part(f"reader {label}", functools.partial(
            self._reader_loop, kind, name, reader, handle)))

    async def _reader_loop(self, kind: str, name: str, reader: PcscReader | NfcReader,
                           handle: Handler) -> None:
        backoff = 0.5
        label = f"{kind} {name}"
        where: dict[str, Any] = {kind: name}  # the journal's door, or data's printer
        while True:
            try:
                async with reader:
                    backoff = 0.5
                    async for item in reader.presentations():
                        await handle(item)
            except ReaderError as e:
                log.error("reader for %s: %s (retrying in %.1fs)", label, e, backoff)
                self.journal.append("reader.fault", detail=str(e), **where)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)

    async def _at_printer(self, printer: PrinterRuntime,
                          item: CardRead | CardFailure | ReaderStatus) -> None:
        assert self.printing is not None
        await self.printing.on_presentation(printer, item, self.policy.current,
                                            self._decision_state())

    async def on_presentation(self, door: DoorRuntime,
                              item: CardRead | CardFailure | ReaderStatus) -> None:
        name = door.config.name
        if isinstance(item, ReaderStatus):
            door.reader_online = item.online
            self.journal.append("reader.online" if item.online else "reader.offline", door=name,
                                device=item.device, detail=item.detail)
            # The technician's sign that the door reads (and, at start, that the control socket
            # is up: readers open after it).
            log.info("door %s: reader %s (%s)", name, "online" if item.online else "offline",
                     item.device or item.detail)
            return
        door.last_presentation = time.time()
        if isinstance(item, CardFailure):
            self.journal.append("access.denied", door=name, reason=item.reason,
                                detail=item.detail, transport=item.transport)
            door.controller.signal(False)
            self._tell_waiters(door, {"failure": {"reason": item.reason, "detail": item.detail,
                                                  "transport": item.transport}})
            return
        verdict = check_presentation(self.trust, item, time.time())
        now = datetime.now(UTC)
        state = self._decision_state()
        policy = self.policy.current
        decision = decide(policy, verdict, name, now, state, door.config.stance)
        self.pending = state.after(decision, name, now).pending
        unlock = decision.granted and "unlock" in decision.actions
        if unlock and door.controller.faulted:
            decision, unlock = Decision(False, "door-faulted", decision.person), False
        fields = decision_fields(item, verdict, decision)
        elapsed_ms = fields["decision_ms"]
        self.journal.append("access.granted" if decision.granted else "access.denied",
                            door=name, person=decision.person, reason=decision.reason, **fields)
        if unlock and isinstance(verdict, Validated):
            door.controller.grant(extended=policy is not None
                                  and policy.extended_time(verdict.identity.key))
            if self.modes.first_person_in(name, policy, now):
                self._apply_modes()
        door.controller.signal(decision.granted)
        self._tell_waiters(door, {"read": read_to_json(item), "verdict": verdict_to_json(verdict),
                                  "decision": {"granted": decision.granted,
                                               "reason": decision.reason}})
        log.info("door %s: %s (%s) in %.1f ms", name,
                 "granted" if decision.granted else "denied", decision.reason, elapsed_ms)
        self.learn_crl_points(item, verdict)

    def _tell_waiters(self, door: DoorRuntime, result: dict[str, Any]) -> None:
        waiters, door.waiters = door.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(result)

    # --- control API ----------------------------------------------------------------------
    def _doors_json(self) -> list[dict[str, Any]]:
        out = []
        for d in self.doors.values():
            snap = d.controller.snapshot()
            out.append({"name": d.config.name, "reader": d.config.reader or None,
                        "nfc": d.config.nfc or None, "reader_online": d.reader_online,
                        "board": d.config.board,
                        "board_online": self.links[d.config.board].online,
                        "state": snap.state, "mode": snap.mode, "alarm": snap.alarm,
                        "faulted": snap.fault, "unlocked": snap.strike_unlocked,
                        "alarm_acknowledged": snap.alarm is not None
                        and d.acknowledged == snap.alarm,
                        "contact_open": snap.contact_open,
                        "manual_mode": self.modes.door_mode(d.config.name).value,
                        "last_presentation": d.last_presentation})
        return out

    async def _cmd_status(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        clock = clock_status()
        return {"gateway": self.config.gateway_id, "site": self.config.site,
                "site_mode": self.modes.site.value, "doors": self._doors_json(),
                "boards": [{"name": n, "online": link.online, "error": link.last_error}
                           for n, link in self.links.items()],
                "policy": self.policy.status(time.time()),
                "crls": [crl_status(i, time.time(), self.config.trust.crl_grace)
                         for i in self.trust.revocation.all()],
                "clock": {"synchronised": clock.synchronised, "detail": clock.describe(),
                          "behind_trusted_s": max(0, round(self.trust.trusted_time - time.time()))},
                "printers": self.printing.status() if self.printing is not None else [],
                "sync": self._sync_json(),
                "journal": {"last_seq": self.journal.last_seq},
                "journal_fault": self.journal.fault}

    def _sync_json(self) -> dict[str, Any] | None:
        if self.sync is None:
            return None
        c = self.sync.config
        return {**self.sync.snapshot(), "broker": f"{c.host}:{c.port}"}

    # --- head-office sync callbacks -------------------------------------------------------------
    def _on_policy(self, envelope: bytes) -> Any:
        """A signed bundle from head office; runs on a worker thread (SyncService's)."""
        outcome = self.policy.offer(envelope)
        if outcome.status == "applied":
            self._on_loop(self._policy_applied)
        return outcome

    def _policy_applied(self) -> None:
        self._apply_modes()
        self._status_changed()

    async def _on_command(self, cmd: VerifiedCommand) -> dict[str, Any]:
        """A verified, single-use head-office command (journaled by SyncService)."""
        if cmd.action == "door.unlock":
            name = cmd.args.get("door")
            door = self.doors.get(name) if isinstance(name, str) else None
            if door is None:
                raise CommandError(f"no door {name!r}; doors: {', '.join(self.doors)}")
            if door.controller.faulted:
                raise CommandError(f"door {name!r} is faulted: {door.controller.machine.fault}")
            if door.controller.machine.mode is DoorMode.LOCKDOWN:
                raise CommandError(f"door {name!r} is in lockdown: head office cannot open it "
                                   f"(a technician on site can, audited)")
            seconds = float(cmd.args.get("seconds") or door.config.timing.access)
            door.controller.unlock(seconds, "head office")
            return {"door": name, "seconds": seconds}
        if cmd.action in ("site.lockdown", "site.normal"):
            mode = DoorMode.LOCKDOWN if cmd.action == "site.lockdown" else DoorMode.NORMAL
            if self.modes.site is DoorMode.EMERGENCY_OPEN:
                raise CommandError("the site is in emergency-open, set on site: only a "
                                   "technician on site ends it")
            before = self.modes.set(None, mode)
            self._apply_modes()
            self._status_changed()
            return {"site_mode": mode.value, "before": before.value}
        raise CommandError(f"action {cmd.action!r} is not carried out by this gateway")

    def _sync_status(self) -> dict[str, Any]:
        """The retained status head office sees (SyncService adds journal, sync and online)."""
        now = time.time()
        doors = [{"name": d["name"], "state": d["state"], "mode": d["mode"],
                  "alarm": d["alarm"], "faulted": d["faulted"], "reader_online":
                  d["reader_online"], "board_online": d["board_online"]}
                 for d in self._doors_json()]
        alarms = [f"{d['name']}:{d['alarm']}" for d in doors if d["alarm"]]
        alarms += [f"{d['name']}:fault" for d in doors if d["faulted"]]
        pol = self.policy.status(now)
        if pol.get("stale"):
            alarms.append("policy-stale")
        alarms += [f"crl-stale:{issuer}" for issuer in sorted(self.stale_crls)]
        crls = [crl_status(i, now, self.config.trust.crl_grace)
                for i in self.trust.revocation.all()]
        printers = self.printing.status() if self.printing else []
        alarms += [f"{p['queue'] if p.get('hold') else p['name']}:{p['alarm']}"
                   for p in printers if p.get("alarm")]
        return {"site_mode": self.modes.site.value, "doors": doors, "alarms": alarms,
                "policy": {"version": pol.get("version"), "stale": pol.get("stale"),
                           "age_s": pol.get("age_s"), "rejected": pol.get("rejected")},
                "crls": crls,
                "printers": [{"name": p["name"], "state": p.get("state"),
                              "held_jobs": p.get("held_jobs"), "error": p.get("error"),
                              "alarm": p.get("alarm")} for p in printers]}

    async def _cmd_door_list(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        return {"site_mode": self.modes.site.value, "doors": self._doors_json()}

    async def _cmd_door_unlock(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        door = self._door_for(msg)
        seconds = msg.get("seconds", door.config.timing.access)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not 0 < seconds <= 3600:
            raise CommandError("seconds: expected a number, 0 < seconds <= 3600")
        if door.controller.faulted:
            raise CommandError(f"door {door.config.name!r} is faulted: "
                               f"{door.controller.machine.fault}")
        self.journal.append("control.door-unlock", door=door.config.name, user=user,
                            seconds=seconds)
        door.controller.unlock(float(seconds), f"technician {user}")
        return {"door": door.config.name, "seconds": seconds,
                "state": door.controller.machine.state.value}

    async def _cmd_door_lock(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        door = self._door_for(msg)
        self.journal.append("control.door-lock", door=door.config.name, user=user)
        door.controller.lock(f"technician {user}")
        return {"door": door.config.name, "state": door.controller.machine.state.value}

    async def _cmd_alarm_ack(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        door = self._door_for(msg)
        alarm = door.controller.snapshot().alarm
        if alarm is None:
            raise CommandError(f"door {door.config.name!r} has no alarm to acknowledge")
        door.acknowledged = alarm
        self.journal.append("alarm.acknowledged", door=door.config.name, user=user, alarm=alarm)
        return {"door": door.config.name, "alarm": alarm}

    async def _stream_events(self, msg: dict[str, Any], user: str
                             ) -> AsyncIterator[dict[str, Any]]:
        after = msg.get("after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)
                                  or after < 0):
            raise CommandError("after: expected a sequence number (an integer >= 0)")
        assert self.hub is not None
        async for ev in self.hub.follow(after):
            yield {"overflow": True} if ev is None else {"event": ev.to_json()}

    async def _cmd_door_mode(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        raw = msg.get("mode")
        try:
            mode = DoorMode(raw)
        except ValueError:
            raise CommandError(f"mode: expected one of {', '.join(m.value for m in DoorMode)}, "
                               f"got {raw!r}") from None
        site = msg.get("site") is True
        if site == ("door" in msg):
            raise CommandError("expected exactly one of door (a door name) or site: true")
        target = "site" if site else self._door_for(msg).config.name
        try:
            before = self.modes.set(None if site else target, mode)
        except OSError as e:
            raise CommandError(f"cannot persist the mode ({e}); nothing changed") from None
        self.journal.append("control.mode", door=None if site else target, user=user,
                            mode=mode.value, before=before.value,
                            scope="site" if site else "door")
        self._apply_modes()
        return {"target": target, "mode": mode.value, "before": before.value,
                "doors": self._doors_json()}

    async def _cmd_policy_reload(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        self.journal.append("control.policy-reload", user=user)
        outcome = await self.policy.reload_async()
        self._apply_modes()
        return {"outcome": outcome, "policy": self.policy.status(time.time())}

    async def _cmd_config_reload(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        """Check the configuration file again; if it is valid, restart the gateway's parts on
        it (as SIGHUP does). An invalid file is refused and nothing changes."""
        self.journal.append("control.config-reload", user=user)
        try:
            await asyncio.to_thread(validate_config, self.config.file, self.config.state_dir)
        except PortvaktError as e:
            raise CommandError(f"refused, the running configuration is kept: {e}") from None
        if self.request_reload is None:
            raise CommandError("this gateway cannot reload itself (not started by run_daemon)")
        self.request_reload()
        return {"outcome": "reloading"}

    async def _cmd_crl_import(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        """Side-load a CRL file (`portvakt crl import` while the daemon runs): read by the
        daemon's account, verified and installed off the loop, journaled with the caller."""
        path = msg.get("path")
        if not isinstance(path, str) or not Path(path).is_absolute():
            raise CommandError("path: expected the absolute path of a CRL file (DER or PEM)")
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}") from None
        try:
            idx = await asyncio.to_thread(crl_ingester(self.trust, "file"), data)
        except PortvaktError as e:  # TrustError: refused; InputError: not a CRL at all
            self.journal.append("crl.refused", reason="crl-refused", source=path, user=user,
                                detail=str(e)[:500])
            raise CommandError(str(e)) from None
        self.journal.append("crl.installed", source=path, user=user, number=idx.number)
        self.crl_wake.set()
        self._status_changed()
        return {"crl": crl_status(idx, time.time(), self.config.trust.crl_grace)}

    async def _cmd_card_check(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        door = self._door_for(msg)
        wait_s = msg.get("timeout", 30)
        if not isinstance(wait_s, int | float) or not 0 < wait_s <= 300:
            raise CommandError("timeout: expected seconds, 0 < timeout <= 300")
        self.journal.append("control.card-check", door=door.config.name, user=user)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        door.waiters.append(fut)
        try:
            result = await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            raise CommandError(f"no card presented at door {door.config.name!r} within "
                               f"{wait_s:g} s") from None
        finally:
            if fut in door.waiters:
                door.waiters.remove(fut)
        return {"door": door.config.name, **result}

    def _door_for(self, msg: dict[str, Any]) -> DoorRuntime:
        name, reader = msg.get("door"), msg.get("reader")
        if isinstance(name, str):
            if name in self.doors:
                return self.doors[name]
            raise CommandError(f"no door {name!r}; doors: {', '.join(self.doors)}")
        if isinstance(reader, str):
            base, slot = split_name(reader)
            for d in self.doors.values():
                if (d.config.reader, d.config.slot) == (base, slot) or d.config.nfc == reader:
                    return d
            raise CommandError(f"no door of this gateway reads at {reader!r}")
        raise CommandError("expected door (a door name) or reader (a reader name)")

    async def shutdown(self) -> None:
        self.loop = None  # a policy offer still on a worker thread no longer calls back
        if self.control is not None:
            await self.control.close()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.printing is not None:
            with contextlib.suppress(Exception):
                await self.printing.close()
        # Each door task locks its door in its own finally (retried, uncancellable).
        for t in self.door_tasks:
            t.cancel()
        for t in self.door_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for board in self.boards.values():
            with contextlib.suppress(Exception):
                await board.close()
        self.journal.append("gateway.stopped")
        # Off the loop: a refusing disk can hold the writer for seconds (the doors are locked).
        await asyncio.to_thread(self.journal.flush)
        await asyncio.to_thread(self.journal.close)
        with contextlib.suppress(Exception):
            self.policy.store.close()


def check_reader_mapping(config: Config) -> None:
    """Refuse to start when a door's (or printer's) reader name matches more than one PC/SC
    reader: the wrong door must never open. (A reader that is not there yet is fine: it is
    awaited.)"""
    if config.pcsc_socket is not None:
        os.environ["PCSCLITE_CSOCK_NAME"] = str(config.pcsc_socket)
    try:
        names = list_readers()
    except ReaderError as e:
        log.warning("cannot list PC/SC readers at start (%s); doors wait for them", e)
        return
    printers = config.print.printers if config.print is not None else ()
    for where, name, reader, slot in (
            *(("doors", d.name, d.reader, d.slot) for d in config.doors),
            *(("printers", p.name, p.reader, p.slot) for p in printers)):
        if reader:
            try:
                resolve_reader(names, reader, slot)
            except ReaderError as e:
                raise ConfigError(str(config.file), f"{where} ({name}).reader",
                                  f"a name that matches one reader: {e}") from e


def read_to_json(read: CardRead) -> dict[str, Any]:
    return {"reader": read.reader, "certificates": [c.hex() for c in read.certificates],
            "challenge": read.challenge.hex(), "signature": read.signature.hex(),
            "scheme": read.scheme.value, "transport": read.transport, "aid": read.aid.hex(),
            "ms": round((time.monotonic() - read.detected_at) * 1000, 2)}


def read_from_json(doc: dict[str, Any]) -> CardRead:
    return CardRead(str(doc["reader"]), tuple(bytes.fromhex(c) for c in doc["certificates"]),
                    bytes.fromhex(doc["challenge"]), bytes.fromhex(doc["signature"]),
                    ProofScheme(doc["scheme"]), str(doc["transport"]), bytes.fromhex(doc["aid"]),
                    time.monotonic() - float(doc["ms"]) / 1000)


def verdict_to_json(verdict: Validated | Rejection) -> dict[str, Any]:
    if isinstance(verdict, Rejection):
        return {"valid": False, "reason": verdict.reason, "detail": verdict.detail,
                "position": verdict.position}
    return {"valid": True, "identity": verdict.identity.key, "profile": verdict.profile,
            "revocation": verdict.revocation, "crl_age_s": verdict.crl_age,
            "clock_behind": verdict.clock_behind}


def validate_config(path: Path, state_dir: Path | None) -> Config:
    """Load and check a configuration as far as possible without touching the running gateway:
    the file, the reader mapping, the trust anchors and profiles, the pinned policy keys, the
    relay boards' buses, the head-office keys and broker secrets. Raises PortvaktError
    (ConfigError, InputError, ...) naming the fault."""
    config = load_config(path, state_dir)
    check_reader_mapping(config)
    load_trust_store(dataclasses.replace(config.trust, crls=()))
    load_keys(config.policy.keys)
    try:
        open_boards(board_params(b) for b in config.boards)
    except ValueError as e:
        raise ConfigError(str(config.file), "boards", str(e)) from None
    if config.mqtt is not None:
        SyncService.load_secrets(config.mqtt, config.site, config.gateway_id)
    return config


async def run_daemon(config: Config, state_dir: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT. SIGHUP reloads the configuration: a valid new one replaces the
    running gateway (doors lock for the moment of the swap); an invalid one is refused, logged
    and journaled, and the running gateway carries on untouched."""
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        check_reader_mapping(config)
    except PortvaktError as e:
        log.error("%s", e)
        return 2
    previous: Config | None = None
    while True:
        try:
            gateway = Gateway.build(config)
        except PortvaktError as e:
            if previous is None:
                log.error("%s", e)
                return 2
            # Validated, yet not buildable (a file changed in between): back to the last one.
            log.error("the reloaded configuration cannot start (%s); back on the previous one", e)
            config, previous = previous, None
            continue
        if previous is not None:
            gateway.journal.append("config.reloaded", file=str(config.file))
        log.info("portvakt %s (site %s) running: %d doors", config.gateway_id, config.site,
                 len(config.doors))
        swap = asyncio.Event()
        gateway.request_reload = reload.set
        running = asyncio.create_task(gateway.run(swap))
        new: Config | None = None
        while new is None:
            stopping = asyncio.create_task(stop.wait())
            reloading = asyncio.create_task(reload.wait())
            await asyncio.wait({running, stopping, reloading}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            reloading.cancel()
            if stop.is_set() or running.done():
                swap.set()
                await running
                log.info("stopped; relays safe, journal flushed")
                return 0
            reload.clear()
            try:
                new = await asyncio.to_thread(validate_config, config.file, state_dir)
            except PortvaktError as e:
                log.error("configuration reload refused, the running one is kept: %s", e)
                gateway.journal.append("alarm.config-refused", reason="config-invalid",
                                       detail=str(e))
        gateway.journal.append("config.reloading", file=str(new.file))
        log.info("configuration reloaded from %s: restarting the gateway's parts", new.file)
        swap.set()
        await running
        config, previous = new, config
