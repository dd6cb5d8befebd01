"""Doors end to end: the daemon against a real pymodbus relay-board process (TCP and RTU over a
socat serial pair), real pcscd readers with virtual cards, cross-checked with mbpoll and the
board's own write log."""

from __future__ import annotations

import base64
import getpass
import json
import os
import signal
import subprocess
import sys

from gateway.rig.proc import wait_until
from tests.fixtures_board import mbpoll_read
from tests.fixtures_daemon import (
    CONTACT,
    EXIT,
    GREEN,
    OPEN_TOO_LONG,
    PRE_ALARM,
    RED,
    STRIKE,
    UNLOCK_SECONDS,
    Daemon,
    start_daemon,
)


def strike_writes(d: Daemon) -> list[dict]:
    return [w for w in d.board.writes() if w["coil"] == STRIKE]


def badge(d: Daemon, pcsc_rig, card, kind: str = "access.granted", count: int = 1) -> dict:
    pcsc_rig.insert("Door0", card)
    ev = d.wait_event(kind, count)
    pcsc_rig.remove("Door0", wait=True)
    return ev


def test_start_forces_the_strike_locked_and_a_grant_pulses_the_access_time(daemon: Daemon, pcsc_rig,
                                                                             demo_pki):
    # The strike was left energised (unlocked) before the gateway started: it locked it.
    wait_until(lambda: [w["value"] for w in strike_writes(daemon)][-1:] == [False], 5, "relock")
    assert mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0
    before = len(strike_writes(daemon))
    ev = badge(daemon, pcsc_rig, demo_pki.cards["alice"])
    assert ev["person"] == "p-alice" and ev["door"] == "front"
    wait_until(lambda: len(strike_writes(daemon)) >= before + 2, 5, "unlock and relock")
    on, off = strike_writes(daemon)[before:before + 2]
    assert (on["value"], off["value"]) == (True, False)
    assert abs((off["t"] - on["t"]) - UNLOCK_SECONDS) < 0.05, off["t"] - on["t"]
    assert mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0  # independent client
    # The green LED was pulsed, the red one never.
    coils = [w["coil"] for w in daemon.board.writes()]
    assert GREEN in coils and RED not in coils
    kinds = [e["kind"] for e in daemon.events() if e["door"] == "front"]
    assert kinds.index("access.granted") < kinds.index("door.unlocked") < len(kinds)
    assert "door.locked" in kinds[kinds.index("door.unlocked"):]


def test_a_denied_badge_flashes_red_and_never_moves_the_strike(daemon: Daemon, pcsc_rig, demo_pki):
    wait_until(lambda: len(strike_writes(daemon)) >= 2, 5, "start-up relock")
    before = strike_writes(daemon)
    assert badge(daemon, pcsc_rig, demo_pki.cards["bob"], "access.denied")["reason"] == "revoked"
    wait_until(lambda: RED in [w["coil"] for w in daemon.board.writes()], 5, "red LED")
    assert strike_writes(daemon) == before
    assert mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0


def test_forced_open_alarm_and_the_exit_button_shunt(daemon: Daemon):
    daemon.board.set_input(CONTACT, False)  # opened with no grant, no exit press
    alarm = daemon.wait_event("alarm.forced-open")
    assert alarm["door"] == "front" and alarm["state"] == "forced-open-alarm"
    daemon.board.set_input(CONTACT, True)
    assert "forced-open" in daemon.wait_event("alarm.cleared")["detail"]
    # Someone leaves: the exit button, then the door opens: an exit, not an alarm.
    daemon.board.set_input(EXIT, True)
    daemon.wait_event("door.exit-request")
    daemon.board.set_input(EXIT, False)
    daemon.board.set_input(CONTACT, False)
    opened = daemon.wait_event("door.opened", 2)
    assert opened["detail"] == "exit"
    daemon.board.set_input(CONTACT, True)
    daemon.wait_event("door.closed", 2)
    assert len(daemon.events("alarm.forced-open")) == 1
    assert mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0  # the exit never unlocked it


def test_held_open_pre_alarm_then_alarm_then_cleared_on_close(daemon: Daemon, pcsc_rig, demo_pki):
    badge(daemon, pcsc_rig, demo_pki.cards["alice"])
    daemon.board.set_input(CONTACT, False)  # walks through and leaves it open
    opened = daemon.wait_event("door.opened")
    assert opened["detail"] == "access"
    pre = daemon.wait_event("alarm.held-open-prealarm")
    alarm = daemon.wait_event("alarm.held-open")
    assert abs((alarm["at"] - pre["at"]) - PRE_ALARM) < 0.1
    assert abs((alarm["at"] - opened["at"]) - OPEN_TOO_LONG) < 0.1
    daemon.board.set_input(CONTACT, True)
    assert "held-open" in daemon.wait_event("alarm.cleared")["detail"]
    assert not daemon.events("alarm.forced-open")
    assert mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0


def test_board_killed_mid_pulse_faults_the_door_and_recovers_locked(daemon: Daemon, pcsc_rig,
                                                                    demo_pki):
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    wait_until(lambda: daemon.board.coils()[STRIKE], 5, "strike unlocked")
    daemon.board.kill()
    fault = daemon.wait_event("alarm.board-fault")
    assert fault["board"] == "b1"
    assert daemon.wait_event("door.fault")["door"] == "front"
    status = daemon.ask({"cmd": "door.list"})
    assert status["doors"][0]["state"] == "fault" and status["doors"][0]["board_online"] is False
    # A badge at a faulted door is denied with the reason.
    pcsc_rig.remove("Door0", wait=True)
    assert badge(daemon, pcsc_rig, demo_pki.cards["alice"], "access.denied")["reason"] \
        == "door-faulted"
    daemon.board.restart()
    daemon.board.set_input(CONTACT, True)  # the restarted board reads the (shut) door again
    daemon.wait_event("door.recovered")
    wait_until(lambda: any(w["coil"] == STRIKE and not w["value"] for w in daemon.board.writes()),
               5, "the strike asserted locked after recovery")
    assert mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0
    wait_until(lambda: daemon.ask({"cmd": "door.list"})["doors"][0]["state"] == "locked", 5,
               "the door supervised as locked and shut again")


def test_gateway_sigkilled_mid_pulse_the_board_timer_relocks(daemon_factory, pcsc_rig, demo_pki):
    d = daemon_factory(board_extra="timed_pulse = true")
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    wait_until(lambda: d.board.coils()[STRIKE], 5, "strike unlocked")
    d.proc.kill(signal.SIGKILL)
    d.proc.popen.wait(5)
    wait_until(lambda: not d.board.coils()[STRIKE], UNLOCK_SECONDS + 2, "board timer relock")
    on = [w for w in strike_writes(d) if w["value"]][-1]
    off = strike_writes(d)[-1]
    assert off.get("by") == "pulse-timer" and off["value"] is False
    assert abs((off["t"] - on["t"]) - UNLOCK_SECONDS) < 0.15
    assert mbpoll_read(d.board.port, "coils")[STRIKE] == 0


def test_gateway_sigkilled_in_emergency_mode_the_watchdog_relocks(daemon_factory):
    d = daemon_factory(board_extra="watchdog_seconds = 1")
    d.ask({"cmd": "door.mode", "site": True, "mode": "emergency-open"})
    wait_until(lambda: d.board.coils()[STRIKE], 5, "held unlocked")
    d.proc.kill(signal.SIGKILL)
    d.proc.popen.wait(5)
    wait_until(lambda: not d.board.coils()[STRIKE], 4, "watchdog de-energises")
    assert strike_writes(d)[-1].get("by") == "watchdog"


def test_a_door_on_a_modbus_rtu_board_over_a_serial_line(daemon_factory, serial_line, pcsc_rig,
                                                         demo_pki):
    d = daemon_factory(serial=serial_line.board_end,
                       board_toml=f'device = "{serial_line.gateway_end}"\nbaud = 19200')
    before = len(strike_writes(d))
    badge(d, pcsc_rig, demo_pki.cards["alice"])
    wait_until(lambda: len(strike_writes(d)) >= before + 2, 5, "unlock and relock over RTU")
    on, off = strike_writes(d)[before:before + 2]
    assert abs((off["t"] - on["t"]) - UNLOCK_SECONDS) < 0.05
    d.board.set_input(CONTACT, False)
    d.wait_event("alarm.forced-open")


def tampered(envelope: bytes) -> bytes:
    """The envelope with one character of its payload changed (version 3 -> 4)."""
    env = json.loads(envelope)
    payload = base64.b64decode(env["payload"]).replace(b'"version":3', b'"version":4')
    return json.dumps({**env, "payload": base64.b64encode(payload).decode()}).encode()


def _portvakt(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "door", *args, "--config",
                           str(d.config), "--state-dir", str(d.state)],
                          capture_output=True, text=True, timeout=30)


def test_technician_door_commands_are_carried_out_and_audited(daemon: Daemon, pcsc_rig, demo_pki):
    r = _portvakt(daemon, "list")
    assert r.returncode == 0, r.stderr
    assert "front" in r.stdout and "locked" in r.stdout and "normal" in r.stdout
    before = len(strike_writes(daemon))
    r = _portvakt(daemon, "unlock", "front", "--seconds", "0.5")
    assert r.returncode == 0 and "unlocked for 0.5 s" in r.stdout, r.stderr
    wait_until(lambda: len(strike_writes(daemon)) >= before + 2, 5, "unlock and relock")
    on, off = strike_writes(daemon)[before:before + 2]
    assert abs((off["t"] - on["t"]) - 0.5) < 0.05
    audit = daemon.wait_event("control.door-unlock")
    assert audit["user"] == getpass.getuser() and audit["door"] == "front"
    r = _portvakt(daemon, "unlock", "front", "--seconds", "600")
    wait_until(lambda: daemon.board.coils()[STRIKE], 5, "unlocked for ten minutes")
    r = _portvakt(daemon, "lock", "front")
    assert r.returncode == 0 and "door front: locked" in r.stdout, r.stderr
    wait_until(lambda: not daemon.board.coils()[STRIKE], 5, "locked at once")

    # Lockdown: carol (staff) is denied, alice (the lockdown-override group) passes.
    r = _portvakt(daemon, "lockdown", "--site")
    assert r.returncode == 0 and "normal -> lockdown" in r.stdout, r.stderr
    assert daemon.wait_event("control.mode")["user"] == getpass.getuser()
    assert badge(daemon, pcsc_rig, demo_pki.cards["carol"], "access.denied")["reason"] == "lockdown"
    assert badge(daemon, pcsc_rig, demo_pki.cards["alice"])["person"] == "p-alice"
    assert _portvakt(daemon, "normal", "--site").returncode == 0
    assert badge(daemon, pcsc_rig, demo_pki.cards["carol"], count=2)["person"] == "p-carol"

    # Emergency open holds the strike unlocked until normal again.
    assert _portvakt(daemon, "emergency", "front").returncode == 0
    wait_until(lambda: mbpoll_read(daemon.board.port, "coils")[STRIKE] == 1, 5, "held open")
    assert _portvakt(daemon, "normal", "front").returncode == 0
    wait_until(lambda: mbpoll_read(daemon.board.port, "coils")[STRIKE] == 0, 5, "locked again")

    # Bad input: a clear error, exit 2, nothing changed.
    r = _portvakt(daemon, "unlock", "nowhere")
    assert r.returncode == 2 and "no door 'nowhere'" in r.stderr
    r = _portvakt(daemon, "unlock", "front", "--seconds", "-1")
    assert r.returncode == 2 and "seconds" in r.stderr
    r = _portvakt(daemon, "lockdown")
    assert r.returncode == 2 and "DOOR or give --site" in r.stderr


def test_lockdown_and_the_policy_survive_a_restart_without_the_bundle_file(daemon: Daemon, tmp_path,
                                                                           pcsc_rig, demo_pki):
    daemon.ask({"cmd": "door.mode", "door": "front", "mode": "lockdown"})
    daemon.proc.popen.send_signal(signal.SIGTERM)
    assert daemon.proc.popen.wait(15) == 0
    daemon.bundle.unlink()  # head office unreachable: nothing new to load
    proc = start_daemon(tmp_path, daemon.config, daemon.state, "restarted")
    try:
        daemon.proc = proc
        daemon.wait_event("gateway.started", 2)
        assert daemon.wait_event("policy.loaded")["version"] == 1
        assert daemon.ask({"cmd": "door.list"})["doors"][0]["mode"] == "lockdown"
        assert badge(daemon, pcsc_rig, demo_pki.cards["carol"], "access.denied")["reason"] \
            == "lockdown"
    finally:
        proc.stop()


def test_policy_bundles_newer_applied_others_rejected_with_the_previous_kept(daemon: Daemon,
                                                                             pcsc_rig, demo_pki):
    from tests.fixtures_daemon import POLICY

    office = daemon.office
    no_carol = {**POLICY, "people": [p for p in POLICY["people"] if p["id"] != "p-carol"]}

    def offer(data: bytes) -> dict:
        daemon.bundle.write_bytes(data)
        return daemon.ask({"cmd": "policy.reload"})

    v2 = office.sign(no_carol, 2)
    assert offer(v2)["outcome"] == "applied"
    assert badge(daemon, pcsc_rig, demo_pki.cards["carol"], "access.denied")["reason"] \
        == "unknown-person"
    assert offer(v2)["outcome"] == "ignored"  # redelivery of the same bytes
    for data, reason in ((office.sign(POLICY, 1), "rollback"),
                         (office.sign(POLICY, 2), "conflict"),
                         (office.sign(POLICY, 3, site="elsewhere"), "wrong-site"),
                         (tampered(office.sign(POLICY, 3)), "bad-signature"),
                         (b"not json", "bad-envelope")):
        ans = offer(data)
        assert ans["outcome"] == "rejected", ans
        assert ans["policy"]["version"] == 2 and ans["policy"]["rejected"]["reason"] == reason
    assert daemon.wait_event("alarm.policy-rejected", 5)["reason"] == "bad-envelope"
    # Still deciding on version 2.
    assert badge(daemon, pcsc_rig, demo_pki.cards["carol"], "access.denied", 2)["reason"] \
        == "unknown-person"
    assert os.stat(daemon.db).st_size > 0


def test_a_strike_the_board_refuses_to_drive_faults_the_door_and_is_retried(daemon_factory):
    """The board answers reads but refuses the strike's coil (a wiring/config mistake): the door
    is reported faulted with the board's reason, retried with a growing delay, never silent."""
    d = daemon_factory(coils=2)  # coil 3 does not exist on this board
    fault = d.wait_event("door.fault")
    assert "strike" in fault["detail"] and "illegal address" in fault["detail"]
    d.wait_event("door.recovered")  # retried...
    d.wait_event("door.fault", 2)  # ...and refused again
    assert d.ask({"cmd": "door.list"})["doors"][0]["board_online"] is True
    assert len(d.events("door.fault")) <= 4  # backoff, not a flood


def test_sighup_refuses_a_bad_config_and_applies_a_good_one(daemon: Daemon, pcsc_rig, demo_pki):
    good = daemon.config.read_text()
    daemon.config.write_text(good + "\n[[doors]]\nname = 'front'\n")  # a duplicate door
    daemon.proc.popen.send_signal(signal.SIGHUP)
    refused = daemon.wait_event("alarm.config-refused")
    assert "doors[1].reader: expected exactly one of reader" in refused["detail"]
    assert daemon.ask({"cmd": "door.list"})["doors"][0]["state"] == "locked"  # still running
    daemon.config.write_text(good.replace(f"unlock_seconds = {UNLOCK_SECONDS}",
                                          "unlock_seconds = 0.4"))
    daemon.proc.popen.send_signal(signal.SIGHUP)
    daemon.wait_event("config.reloading")
    daemon.wait_event("gateway.started", 2)
    daemon.wait_event("reader.online", 2)
    daemon.wait_event("board.online", 2)
    wait_until(lambda: not daemon.board.coils()[STRIKE], 5, "locked by the new gateway")
    before = len(strike_writes(daemon))
    badge(daemon, pcsc_rig, demo_pki.cards["alice"], count=1)
    wait_until(lambda: [w["value"] for w in strike_writes(daemon)[before:]][:2] == [True, False],
               5, "unlock and relock")
    on, off = strike_writes(daemon)[before:before + 2]
    assert abs((off["t"] - on["t"]) - 0.4) < 0.05
    # The same through the control API: refused with the reason while the file is bad.
    daemon.config.write_text("not toml [")
    ans = daemon.ask({"cmd": "config.reload"})
    assert ans["ok"] is False and "the running configuration is kept" in ans["error"]
    assert daemon.proc.alive()
