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
from pathlib import Path

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


def _has_writes(board: RelayBoardRig, n: int) -> bool:
    return len(board.writes()) >= n


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
        writes_before = len(board.writes())
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
            wait_until(functools.partial(_has_writes, board, writes_before + 2),
                       door.unlock_seconds + 5, "the relay to pulse")
            on, off = board.writes()[writes_before:writes_before + 2]
            n.note(f"relay coil {on['coil']} on, then off {off['t'] - on['t']:.2f} s later "
                   f"(the board's own log); door locked again")
        else:
            n.bad(f"refused ({ev.reason}) in {ms} ms: {ev.data.get('detail', '')}")
            if len(board.writes()) != writes_before:
                n.bad("…but the relay moved: this is a bug")
                ok = False
        if phone is not None:
            phone.stop()
        else:
            pcsc.remove(door.reader, wait=True)

    n.step("The journal (SQLite, on disk), as head office will receive it")
    with contextlib.closing(sqlite3.connect(state / "portvakt.db")) as conn:
        for ev in read_events(conn, cfg.gateway_id):
            if ev.kind.startswith("access."):
                who = ev.person or "-"
                n.note(f"#{ev.seq:<3} {ev.kind:<15} door={ev.door:<6} person={who:<8} "
                       f"reason={ev.reason}")
    return 0 if ok else 1
