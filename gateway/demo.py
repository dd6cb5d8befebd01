"""`portvakt demo` (`make demo`): the gateway with virtual cards, a simulated relay board and
real pcscd, driven by config/demo.toml, narrated in plain words. Stops everything it started."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config
from gateway.journal import Event, read_events
from gateway.pki_demo import make_demo_pki
from gateway.rig.board import RelayBoardRig
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, port_open, wait_until

BOLD, GREEN, RED, DIM, RESET = "\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m"


class Narrator:
    def __init__(self) -> None:
        self.colour = sys.stdout.isatty()
        self.t0 = time.monotonic()

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.colour else text

    def say(self, text: str) -> None:
        print(f"{self._c(DIM, f'[{time.monotonic() - self.t0:6.2f}s]')} {text}", flush=True)

    def step(self, text: str) -> None:
        print(flush=True)
        self.say(self._c(BOLD, text))

    def good(self, text: str) -> None:
        self.say("  " + self._c(GREEN, "✔ " + text))

    def bad(self, text: str) -> None:
        self.say("  " + self._c(RED, "✘ " + text))

    def note(self, text: str) -> None:
        self.say("  " + text)


class JournalWatch:
    """Follows the daemon's journal from outside, as an auditor would."""

    def __init__(self, db: Path, gateway: str, daemon: RigProcess) -> None:
        self.db, self.gateway, self.daemon = db, gateway, daemon
        self.seen = 0

    def _new(self) -> list[Event]:
        if not self.db.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(self.db, timeout=1)) as conn:
                return read_events(conn, self.gateway, after=self.seen)
        except sqlite3.Error:
            return []

    def wait(self, match: Callable[[Event], bool], what: str, timeout: float = 15) -> Event:
        found: list[Event] = []

        def check() -> bool:
            for ev in self._new():
                self.seen = ev.seq
                if match(ev):
                    found.append(ev)
                    return True
            return False

        wait_until(check, timeout, what, self.daemon)
        return found[0]


def _is_decision_at(door: str, ev: Event) -> bool:
    return ev.kind.startswith("access.") and ev.door == door


def _strike_writes(board: RelayBoardRig, coil: int) -> list[dict[str, Any]]:
    return [w for w in board.writes() if w["coil"] == coil]


def _has_writes(board: RelayBoardRig, coil: int, n: int) -> bool:
    return len(_strike_writes(board, coil)) >= n


# The demo site's policy, as head office would sign it: who may open which door, when.
DEMO_POLICY: dict[str, Any] = {
    "time_zone": "Europe/Stockholm",
    "doors": ["front", "lab"],
    "schedules": {"office-hours": [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                    "from": "07:00", "to": "19:00"}]},
    "holidays": [{"date": "2026-12-24", "schedule": None}, {"date": "2026-12-25", "schedule": None}],
    "access_levels": {"everywhere": {"resources": ["front", "lab"], "schedule": "always"},
                      "front-door": {"resources": ["front"], "schedule": "always"}},
    "groups": {"lab-staff": {"access_levels": ["everywhere"]},
               "office": {"access_levels": ["front-door"]},
               "security": {"access_levels": ["everywhere"]}},
    "people": [
        {"id": "p-alice", "identities": ["upn:alice@demo.example"], "groups": ["lab-staff", "security"]},
        {"id": "p-bob", "identities": ["upn:bob@demo.example"], "groups": ["office"]},
        {"id": "p-carol", "identities": ["upn:carol@demo.example"], "groups": ["lab-staff"]},
        {"id": "p-dave", "identities": ["upn:dave@demo.example"], "groups": ["office"]},
    ],
    "lockdown_override": "security",
}


def write_demo_policy(folder: Path, site: str, version: int = 1) -> None:
    """Play head office: a signing key, its public half pinned by the gateway, a signed bundle."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.bundle import make_bundle, sign_bundle

    folder.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    (folder / "head-office.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    now = datetime.now(UTC)
    bundle = make_bundle(DEMO_POLICY, version=version, site=site,
                         issued_at=now - timedelta(minutes=5), not_after=now + timedelta(days=7))
    (folder / "site.bundle").write_bytes(sign_bundle(bundle, key))


def run_demo(keep: bool = False) -> int:
    from gateway.cli import template_dir

    n = Narrator()
    config_file = template_dir() / "demo.toml"
    cfg = load_config(config_file)
    work = Path(tempfile.mkdtemp(prefix="portvakt-demo-"))
    state = work / "state"
    stack: list[Callable[[], None]] = []
    try:
        return _scenario(n, cfg, config_file, work, state, stack)
    finally:
        n.step("Stopping everything the demo started")
        for stop in reversed(stack):
            with contextlib.suppress(Exception):
                stop()
        if keep:
            n.note(f"demo folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        n.note("done")


def _scenario(n: Narrator, cfg: Config, config_file: Path, work: Path, state: Path,
              stack: list[Callable[[], None]]) -> int:
    n.step("Portvakt demo: one gateway, two doors, virtual employee cards")
    n.note(f"configuration: {config_file}")
    pki = make_demo_pki(state / "pki")
    n.note("demo PKI written: root CA -> issuing CA -> card certificates; CRL revokes Bob's card")
    write_demo_policy(state / "policy", cfg.site)
    n.note("site policy signed by 'head office' (Ed25519); the gateway pins its public key")

    readers = [d.reader for d in cfg.doors if d.reader]
    pcsc = PcscRig.start(work / "pcsc", readers)
    stack.append(pcsc.stop)
    os.environ["PCSCLITE_CSOCK_NAME"] = str(pcsc.socket)
    n.note(f"pcscd started with virtual readers {', '.join(readers)} (vpcd)")
    for d in cfg.doors:
        if d.nfc:
            n.note(f"door {d.name} reads phones over NFC ({d.nfc}, nfcpy's udp driver)")

    board_cfg = cfg.boards[0]
    if port_open(board_cfg.port):
        n.bad(f"port {board_cfg.port} (boards[0].port in {config_file}) is in use; "
              "stop what uses it and run the demo again")
        return 1
    board = RelayBoardRig.start(work / "board", port=board_cfg.port, unit=board_cfg.unit)
    for d in cfg.doors:
        if d.contact_input is not None:
            board.set_input(d.contact_input, True)  # every door shut (NC contacts active)
    stack.append(board.stop)
    n.note(f"simulated Modbus TCP relay board on 127.0.0.1:{board.port} "
           f"(try: mbpoll -m tcp -p {board.port} -a 1 -t 0 -0 -r 0 -c 4 -1 127.0.0.1)")

    daemon = RigProcess("portvakt", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                     str(config_file), "--state-dir", str(state)],
                        work / "daemon.log", env={**os.environ})
    stack.append(daemon.stop)
    watch = JournalWatch(state / "portvakt.db", cfg.gateway_id, daemon)
    for _ in cfg.doors:
        watch.wait(lambda e: e.kind == "reader.online", "the gateway to see its readers")
    wait_until(lambda: all(_strike_writes(board, d.relay) for d in cfg.doors), 10,
               "every strike forced locked", daemon)
    n.good(f"gateway {cfg.gateway_id} running; relays forced locked at start; readers online")

    doors = {d.name: d for d in cfg.doors}
    front, lab = doors["front"], doors["lab"]
    scenes = [
        ("alice", front, "Alice presents her card at the front door"),
        ("bob", front, "Bob presents his card, revoked yesterday, at the front door"),
        ("mallory", front, "Mallory presents a card carrying a copy of Alice's certificate"),
        ("dave", front, "Dave presents his card, which expired last month"),
        ("carol", lab, "Carol taps her phone (mobile credential, its own AID) on the lab door's "
                       "NFC reader"),
    ]
    ok = True
    for card, door, text in scenes:
        n.step(text)
        writes_before = len(_strike_writes(board, door.relay))
        phone = None
        if door.nfc:
            port = door.nfc.rsplit(":", 1)[1]
            phone = RigProcess("phone", [sys.executable, "-m", "gateway.cli", "phone", "serve",
                                         "--udp", port, "--card", str(pki.cards[card]),
                                         "--taps", "1"], work / "phone.log")
            stack.append(phone.stop)
        else:
            pcsc.insert(door.reader, pki.cards[card])
        ev = watch.wait(functools.partial(_is_decision_at, door.name),
                        f"a decision at door {door.name}")
        ms = ev.data.get("decision_ms")
        if ev.kind == "access.granted":
            n.good(f"granted to {ev.person} in {ms} ms: PKI-CAK proof and offline chain valid, "
                   f"CRL checked ({ev.data.get('revocation')})")
            wait_until(functools.partial(_has_writes, board, door.relay, writes_before + 2),
                       door.unlock_seconds + 5, "the relay to pulse")
            on, off = _strike_writes(board, door.relay)[writes_before:writes_before + 2]
            n.note(f"strike relay (coil {on['coil']}) on, then off {off['t'] - on['t']:.2f} s "
                   f"later (the board's own log); green LED flashed; door locked again")
        else:
            n.bad(f"refused ({ev.reason}) in {ms} ms: {ev.data.get('detail', '')}")
            if len(_strike_writes(board, door.relay)) != writes_before:
                n.bad("…but the relay moved: this is a bug")
                ok = False
        if phone is not None:
            phone.stop()
        else:
            pcsc.remove(door.reader, wait=True)

    ok = _supervision_scenes(n, cfg, board, pcsc, pki.cards, watch, state) and ok

    n.step("The journal (SQLite, on disk), as head office will receive it")
    with contextlib.closing(sqlite3.connect(state / "portvakt.db")) as conn:
        for ev in read_events(conn, cfg.gateway_id):
            if ev.kind.startswith(("access.", "alarm.", "control.")):
                who = ev.person or ev.data.get("user") or "-"
                n.note(f"#{ev.seq:<3} {ev.kind:<20} door={ev.door or '-':<6} who={who:<8} "
                       f"reason={ev.reason or ev.data.get('mode') or '-'}")
    return 0 if ok else 1


def _supervision_scenes(n: Narrator, cfg: Config, board: RelayBoardRig, pcsc: PcscRig,
                        cards: dict[str, Path], watch: JournalWatch, state: Path) -> bool:
    """The door is supervised: forced open, exit button, and a technician's lockdown."""
    from gateway.control import request

    front = next(d for d in cfg.doors if d.name == "front")
    assert front.contact_input is not None and front.exit_input is not None
    n.step("Someone pulls the front door open without badging")
    board.set_input(front.contact_input, False)
    ev = watch.wait(lambda e: e.kind == "alarm.forced-open", "the forced-open alarm")
    n.bad(f"ALARM forced-open at door {ev.door} (the door contact opened with the strike locked)")
    board.set_input(front.contact_input, True)
    watch.wait(lambda e: e.kind == "alarm.cleared", "the alarm to clear")
    n.note("door shut again: alarm cleared, journaled")

    n.step("Someone inside presses the exit button and walks out")
    board.set_input(front.exit_input, True)
    watch.wait(lambda e: e.kind == "door.exit-request", "the exit request")
    board.set_input(front.exit_input, False)
    board.set_input(front.contact_input, False)
    ev = watch.wait(lambda e: e.kind == "door.opened", "the door to open")
    n.good(f"door opened ({ev.data.get('detail')}): the exit button shunts the forced-open alarm")
    board.set_input(front.contact_input, True)
    watch.wait(lambda e: e.kind == "door.closed", "the door to close")

    n.step("A technician locks the site down: portvakt door lockdown --site")
    sock = state / "control.sock"
    request(sock, {"id": 1, "cmd": "door.mode", "site": True, "mode": "lockdown"}, 10)
    ok = True
    for who, expect in (("carol", False), ("alice", True)):
        pcsc.insert(front.reader, cards[who])
        ev = watch.wait(functools.partial(_is_decision_at, "front"), "a decision at front")
        pcsc.remove(front.reader, wait=True)
        if ev.kind == "access.granted":
            n.good(f"{ev.person} granted: member of the lockdown-override group")
        else:
            n.bad(f"{ev.person or who} refused ({ev.reason})")
        ok = ok and (ev.kind == "access.granted") == expect
    request(sock, {"id": 1, "cmd": "door.mode", "site": True, "mode": "normal"}, 10)
    n.note("back to normal; every command is journaled with the technician's OS user")
    return ok
