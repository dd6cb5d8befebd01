"""The walking skeleton end to end: card in a real pcscd reader -> PKI-CAK -> offline trust ->
policy -> Modbus relay pulsed on a real (simulated) board -> journal. Cross-checked with mbpoll."""

from __future__ import annotations

import signal

from gateway.rig.proc import wait_until
from tests.fixtures_board import mbpoll_read
from tests.fixtures_daemon import UNLOCK_SECONDS, Daemon


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
    before = [w for w in daemon.board.writes() if w["coil"] == 3]
    pcsc_rig.insert("Door0", demo_pki.cards["bob"])
    denied = daemon.wait_event("access.denied")
    assert denied["reason"] == "revoked" and denied["door"] == "front"
    assert [w for w in daemon.board.writes() if w["coil"] == 3] == before
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


def test_an_ambiguous_reader_name_stops_the_daemon_at_start(tmp_path, demo_pki):
    """Two PC/SC readers named alike (pcscd 1.9.9 names both "Twin 00 00"): a door configured for
    "Twin" could be either, so the daemon refuses to start (the wrong door must never open)."""
    import subprocess
    import sys

    from gateway.rig.pcsc import PcscRig
    from tests.fixtures_daemon import write_config

    twins = PcscRig.start(tmp_path / "twins", ["Twin", "Twin"])  # a pcscd of its own
    try:
        cfg = tmp_path / "amb.toml"
        write_config(cfg, demo_pki, 1502, twins.socket)
        cfg.write_text(cfg.read_text().replace('reader = "Door0"', 'reader = "Twin"'))
        r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg),
                            "--state-dir", str(tmp_path / "s")], capture_output=True, text=True,
                           timeout=30)
    finally:
        twins.stop()
    assert r.returncode == 2, r.stderr
    assert "doors (front).reader" in r.stderr and "is ambiguous: Twin 00 00, Twin" in r.stderr
