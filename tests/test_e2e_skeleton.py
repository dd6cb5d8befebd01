"""The walking skeleton end to end: card in a real pcscd reader -> PKI-CAK -> offline trust ->
policy -> Modbus relay pulsed on a real (simulated) board -> journal. Cross-checked with mbpoll."""

from __future__ import annotations

import signal
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
from tests.fixtures_board import mbpoll_read, mbpoll_write_coil

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


def test_granted_card_pulses_the_relay_and_is_journaled(daemon: Daemon, pcsc_rig, demo_pki):
    # The daemon forced the relay left energised before it started to its safe (locked) state.
    assert [w["value"] for w in daemon.board.writes() if w["coil"] == 3] == [True, False]
    assert mbpoll_read(daemon.board.port, "coils")[3] == 0
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    # Independent client: the coil goes on, then off again.
    wait_until(lambda: mbpoll_read(daemon.board.port, "coils")[3] == 1, 10, "coil 3 on (mbpoll)")
    wait_until(lambda: not mbpoll_read(daemon.board.port, "coils")[3], 10, "coil 3 off (mbpoll)")
    granted = daemon.wait_event("access.granted")
    assert granted["door"] == "front" and granted["person"] == "p-alice"
    assert granted["reason"] == "granted"
    # The board's own write log: exactly one on and one off for coil 3, the configured time apart.
    writes = [w for w in daemon.board.writes() if w["coil"] == 3][2:]  # after the start-up pair
    on = [w for w in writes if w["value"]]
    assert len(on) == 1 and writes[-1]["value"] is False
    assert abs((writes[-1]["t"] - on[0]["t"]) - UNLOCK_SECONDS) < 0.05


def test_revoked_card_is_denied_and_the_relay_never_moves(daemon: Daemon, pcsc_rig, demo_pki):
    before = daemon.board.writes()
    pcsc_rig.insert("Door0", demo_pki.cards["bob"])
    denied = daemon.wait_event("access.denied")
    assert denied["reason"] == "revoked" and denied["door"] == "front"
    assert daemon.board.writes() == before
    assert mbpoll_read(daemon.board.port, "coils")[3] == 0
    assert not daemon.events("access.granted")


def test_copied_certificate_is_denied_for_failed_proof(daemon: Daemon, pcsc_rig, demo_pki):
    pcsc_rig.insert("Door0", demo_pki.cards["mallory"])
    assert daemon.wait_event("access.denied")["reason"] == "proof-failed"


def test_sigterm_leaves_relays_safe_and_the_journal_closed(daemon: Daemon):
    daemon.proc.popen.send_signal(signal.SIGTERM)
    assert daemon.proc.popen.wait(15) == 0, daemon.proc.log_tail()
    assert daemon.events("gateway.stopped")
    assert mbpoll_read(daemon.board.port, "coils")[3] == 0
