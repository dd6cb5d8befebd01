"""A running `portvakt run` daemon against the real rig (pcscd readers, a relay board)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.pki_demo import DemoPki
from gateway.rig.board import RelayBoardRig
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, wait_until
from tests.fixtures_board import mbpoll_write_coil

UNLOCK_SECONDS = 0.8


@dataclass
class Daemon:
    proc: RigProcess
    db: Path
    board: RelayBoardRig

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            try:
                rows = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
            except sqlite3.OperationalError:
                return []
        return [dict(r) for r in rows if kind is None or r["kind"] == kind]

    def wait_event(self, kind: str, count: int = 1, timeout: float = 15) -> dict:
        wait_until(lambda: len(self.events(kind)) >= count, timeout, f"{count} x {kind}",
                   self.proc)
        return self.events(kind)[count - 1]


def write_config(path: Path, pki: DemoPki, board_port: int, socket: Path) -> None:
    path.write_text(f"""
[gateway]
id = "gw-test"
site = "test"
[readers]
pcsc_socket = "{socket}"
[trust]
anchors = ["{pki.root}"]
intermediates = ["{pki.issuing}"]
crls = ["{pki.crl}", "{pki.root.parent / 'root.crl'}"]
[[trust.profiles]]
name = "piv"
eku = ["2.16.840.1.101.3.6.8"]
[[boards]]
name = "b1"
host = "127.0.0.1"
port = {board_port}
[[doors]]
name = "front"
reader = "Door0"
board = "b1"
relay = 3
unlock_seconds = {UNLOCK_SECONDS}
[[people]]
id = "p-alice"
identities = ["upn:alice@demo.example"]
doors = ["front"]
[[people]]
id = "p-bob"
identities = ["upn:bob@demo.example"]
doors = ["front"]
""")


@pytest.fixture
def daemon(tmp_path: Path, demo_pki: DemoPki, pcsc_rig: PcscRig) -> Iterator[Daemon]:
    board = RelayBoardRig.start(tmp_path / "board")
    # Leave the strike energised (unlocked), as a gateway that died mid-pulse could have.
    mbpoll_write_coil(board.port, 3, True)
    cfg = tmp_path / "portvakt.toml"
    write_config(cfg, demo_pki, board.port, pcsc_rig.socket)
    state = tmp_path / "state"
    proc = RigProcess("portvakt", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                   str(cfg), "--state-dir", str(state)], tmp_path / "daemon.log")
    d = Daemon(proc, state / "portvakt.db", board)
    try:
        d.wait_event("reader.online")
        yield d
    finally:
        proc.stop()
        board.stop()
