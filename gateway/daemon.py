"""The composition root: `portvakt run`. Wires readers -> trust -> policy -> doors -> journal.

Each reader and each relay board runs as its own task; a card presentation costs one thread hop
(reader worker -> event loop). A grant starts the door's pulse as a task of its own, so neither
the reader nor the journal ever waits for the relay, and the relay never waits for the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from door_drivers.modbus import BoardParams, ModbusRelayBoard
from door_drivers.relay_door import RelayDoor
from gateway.access import Policy, check_presentation, decide
from gateway.config import Config, DoorConfig
from gateway.control import CommandError, ControlServer
from gateway.domain import CardFailure, CardRead, ProofScheme, ReaderStatus
from gateway.errors import ConfigError, DoorDriverError, PortvaktError, ReaderError
from gateway.journal import Journal
from gateway.trust.store import load_trust_store
from gateway.trust.validator import Rejection, TrustStore, Validated
from readers.nfc import NfcReader
from readers.pcsc import PcscReader, list_readers, resolve_reader, split_name
from readers.profile import PivCakProfile

log = logging.getLogger(__name__)


@dataclass
class DoorRuntime:
    config: DoorConfig
    driver: RelayDoor
    pulse: asyncio.Task[None] | None = None
    faulted: str | None = None
    reader_online: bool | None = None
    # control-API `card.check` callers waiting for this door's next presentation
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


@dataclass
class Gateway:
    config: Config
    journal: Journal
    trust: TrustStore
    policy: Policy
    boards: dict[str, ModbusRelayBoard]
    doors: dict[str, DoorRuntime]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    control: ControlServer | None = None

    @classmethod
    def build(cls, config: Config) -> Gateway:
        if config.pcsc_socket is not None:
            os.environ["PCSCLITE_CSOCK_NAME"] = str(config.pcsc_socket)
        trust = load_trust_store(config.trust, config.state_dir / "crl")
        journal = Journal(config.database, config.gateway_id)
        boards = {b.name: ModbusRelayBoard(BoardParams.tcp(b.host, b.port, unit=b.unit,
                                                           timeout=b.timeout))
                  for b in config.boards}
        doors = {d.name: DoorRuntime(d, RelayDoor(boards[d.board], d.relay,
                                                  energise_to_unlock=d.energise_to_unlock))
                 for d in config.doors}
        return cls(config, journal, trust, Policy.from_people(config.people), boards, doors)

    async def run(self, stop: asyncio.Event) -> None:
        self.journal.append("gateway.started", pid=os.getpid())
        behind = self.trust.trusted_time - time.time()
        if behind > self.trust.clock_skew:
            log.error("the system clock is %.0f s behind the newest trusted time (a CRL's "
                      "thisUpdate); doors apply their clock_behind stance", behind)
            self.journal.append("alarm.clock-behind", reason="clock-behind",
                                behind_s=round(behind))
        for name, board in self.boards.items():
            try:
                await board.connect()
            except DoorDriverError as e:
                log.error("relay board %s: %s", name, e)
                self.journal.append("board.fault", reason="unreachable", board=name, detail=str(e))
        for door in self.doors.values():
            await self._force_safe(door)
        self.control = ControlServer(self.config.state_dir / "control.sock",
                                     {"status": self._cmd_status,
                                      "card.check": self._cmd_card_check})
        await self.control.start()
        profile = PivCakProfile(self.config.aids)
        for door in self.doors.values():
            reader: PcscReader | NfcReader
            if door.config.nfc:
                reader = NfcReader(door.config.name, door.config.nfc, profile)
            else:
                reader = PcscReader(door.config.name, door.config.reader, door.config.slot,
                                    profile)
            self.tasks.append(asyncio.create_task(self._reader_loop(door, reader),
                                                  name=f"reader-{door.config.name}"))
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def _force_safe(self, door: DoorRuntime) -> None:
        try:
            await door.driver.force_safe()
            door.faulted = None
        except DoorDriverError as e:
            door.faulted = str(e)
            log.error("door %s: cannot force the relay safe: %s", door.config.name, e)
            self.journal.append("door.fault", door=door.config.name, reason="relay-unreachable",
                                detail=str(e))

    async def _reader_loop(self, door: DoorRuntime, reader: PcscReader | NfcReader) -> None:
        backoff = 0.5
        while True:
            try:
                async with reader:
                    backoff = 0.5
                    async for item in reader.presentations():
                        await self.on_presentation(door, item)
            except asyncio.CancelledError:
                raise
            except ReaderError as e:
                log.error("reader for door %s: %s (retrying in %.1fs)", door.config.name, e,
                          backoff)
                self.journal.append("reader.fault", door=door.config.name, detail=str(e))
            except Exception:  # a failing part is restarted, never takes the others down
                log.exception("reader task for door %s failed; restarting", door.config.name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)

    async def on_presentation(self, door: DoorRuntime,
                              item: CardRead | CardFailure | ReaderStatus) -> None:
        name = door.config.name
        if isinstance(item, ReaderStatus):
            door.reader_online = item.online
            self.journal.append("reader.online" if item.online else "reader.offline", door=name,
                                device=item.device, detail=item.detail)
            return
        if isinstance(item, CardFailure):
            self.journal.append("access.denied", door=name, reason=item.reason,
                                detail=item.detail, transport=item.transport)
            self._tell_waiters(door, {"failure": {"reason": item.reason, "detail": item.detail,
                                                  "transport": item.transport}})
            return
        verdict = check_presentation(self.trust, item, time.time())
        decision = decide(self.policy, verdict, name, door.config.stance)
        if decision.granted and door.faulted is None:
            if door.pulse is None or door.pulse.done():
                door.pulse = asyncio.create_task(self._pulse(door), name=f"pulse-{name}")
        elif decision.granted:
            decision = decision.__class__(False, "door-faulted", decision.person)
        elapsed_ms = round((time.monotonic() - item.detected_at) * 1000, 2)
        fields: dict[str, Any] = {"transport": item.transport, "decision_ms": elapsed_ms}
        if isinstance(verdict, Rejection):
            fields["detail"] = verdict.detail
        else:
            fields["revocation"] = verdict.revocation
            if verdict.crl_age is not None:
                fields["crl_age_s"] = round(verdict.crl_age)
        alarms = [a.removeprefix("alarm:") for a in decision.actions if a.startswith("alarm:")]
        if alarms:
            fields["alarms"] = alarms
        self.journal.append("access.granted" if decision.granted else "access.denied",
                            door=name, person=decision.person, reason=decision.reason, **fields)
        self._tell_waiters(door, {"read": read_to_json(item), "verdict": verdict_to_json(verdict),
                                  "decision": {"granted": decision.granted,
                                               "reason": decision.reason}})
        log.info("door %s: %s (%s) in %.1f ms", name,
                 "granted" if decision.granted else "denied", decision.reason, elapsed_ms)

    def _tell_waiters(self, door: DoorRuntime, result: dict[str, Any]) -> None:
        waiters, door.waiters = door.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(result)

    # --- control API ----------------------------------------------------------------------
    async def _cmd_status(self, msg: dict[str, Any], user: str) -> dict[str, Any]:
        return {"gateway": self.config.gateway_id, "site": self.config.site,
                "doors": [{"name": d.config.name, "reader": d.config.reader or None,
                           "nfc": d.config.nfc or None, "reader_online": d.reader_online,
                           "faulted": d.faulted,
                           "unlocked": d.pulse is not None and not d.pulse.done()}
                          for d in self.doors.values()],
                "journal_fault": self.journal.fault}

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
        if isinstance(name, str) and name in self.doors:
            return self.doors[name]
        if isinstance(reader, str):
            base, slot = split_name(reader)
            for d in self.doors.values():
                if (d.config.reader, d.config.slot) == (base, slot) or d.config.nfc == reader:
                    return d
            raise CommandError(f"no door of this gateway reads at {reader!r}")
        raise CommandError("expected door (a door name) or reader (a reader name)")

    async def _pulse(self, door: DoorRuntime) -> None:
        name = door.config.name
        try:
            await door.driver.pulse(door.config.unlock_seconds)
        except DoorDriverError as e:
            door.faulted = str(e)
            log.error("door %s: pulse failed: %s", name, e)
            self.journal.append("door.fault", door=name, reason="relay-unreachable", detail=str(e))

    async def shutdown(self) -> None:
        if self.control is not None:
            await self.control.close()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for door in self.doors.values():
            if door.pulse is not None and not door.pulse.done():
                door.pulse.cancel()  # the pulse relocks in its own finally
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await door.pulse
            await self._force_safe(door)
        for board in self.boards.values():
            with contextlib.suppress(Exception):
                await board.close()
        self.journal.append("gateway.stopped")
        self.journal.flush()
        self.journal.close()


def check_reader_mapping(config: Config) -> None:
    """Refuse to start when a door's reader name matches more than one PC/SC reader: the wrong
    door must never open. (A reader that is not there yet is fine: it is awaited.)"""
    if config.pcsc_socket is not None:
        os.environ["PCSCLITE_CSOCK_NAME"] = str(config.pcsc_socket)
    try:
        names = list_readers()
    except ReaderError as e:
        log.warning("cannot list PC/SC readers at start (%s); doors wait for them", e)
        return
    for door in config.doors:
        if door.reader:
            try:
                resolve_reader(names, door.reader, door.slot)
            except ReaderError as e:
                raise ConfigError(str(config.file), f"doors ({door.name}).reader",
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


async def run_daemon(config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        check_reader_mapping(config)
        gateway = Gateway.build(config)
    except PortvaktError as e:
        log.error("%s", e)
        return 2
    log.info("portvakt %s (site %s) running: %d doors", config.gateway_id, config.site,
             len(config.doors))
    await gateway.run(stop)
    log.info("stopped; relays safe, journal flushed")
    return 0
