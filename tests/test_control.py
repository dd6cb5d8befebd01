"""The control API of a running daemon: status, bad messages, and `card check` through it."""

from __future__ import annotations

import getpass
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.control import MAX_LINE, request
from gateway.rig.proc import wait_until
from tests.fixtures_daemon import CONTACT, STRIKE, Daemon


def sock_of(d: Daemon) -> Path:
    return d.db.parent / "control.sock"


def test_status_and_socket_permissions(daemon: Daemon):
    path = sock_of(daemon)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    ans = request(path, {"id": 7, "cmd": "status"}, timeout=5)
    assert ans["ok"] and ans["id"] == 7 and ans["gateway"] == "gw-test"
    (front,) = ans["doors"]
    assert front["name"] == "front" and front["reader_online"] is True
    assert front["faulted"] is None


def test_bad_messages_get_errors_and_the_daemon_keeps_answering(daemon: Daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_of(daemon)))
        f = s.makefile("rwb")
        for bad in (b"not json\n", b"[1,2]\n", b'{"cmd": "nope"}\n', b'{"cmd": 5}\n',
                    b"\xff\xfe\n", b'{"cmd": "card.check", "door": "x"}\n'):
            f.write(bad)
            f.flush()
            ans = json.loads(f.readline())
            assert ans["ok"] is False and ans["error"], bad
        f.write(b'{"id": 1, "cmd": "status"}\n')
        f.flush()
        assert json.loads(f.readline())["ok"] is True  # same connection still works
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_of(daemon)))
        s.sendall(b"x" * (MAX_LINE + 10) + b"\n")
        answer = s.makefile("rb").readline()
        assert b"longer than" in answer
    assert request(sock_of(daemon), {"cmd": "status"}, timeout=5)["ok"]
    assert daemon.proc.alive()


def test_card_check_goes_through_the_daemon_that_holds_the_reader(daemon: Daemon,
                                                                  pcsc_rig, demo_pki, tmp_path):
    cfg = daemon.config
    cli = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "card", "check", "--reader", "Door0", "--config",
         str(cfg), "--state-dir", str(daemon.db.parent), "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pcsc_rig.env)
    try:
        check = daemon.wait_event("control.card-check")
        assert check["door"] == "front" and check["user"] == getpass.getuser()
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, out + err
    assert "read through the running gateway daemon" in out
    assert "VALID  identity=upn:alice@demo.example profile=piv" in out
    daemon.wait_event("access.granted")  # and it was a badge at the door too


def test_card_check_timeout_through_the_daemon_is_exit_2(daemon: Daemon, pcsc_rig):
    cfg = daemon.config
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "card", "check", "--reader", "Door0",
                        "--config", str(cfg), "--state-dir", str(daemon.db.parent), "--timeout",
                        "0.5"], capture_output=True, text=True, timeout=30, env=pcsc_rig.env)
    assert r.returncode == 2 and "no card presented at door 'front'" in r.stderr


def _follow(d: Daemon, after: int | None = None) -> tuple[socket.socket, Any]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(sock_of(d)))
    doc: dict[str, Any] = {"id": 9, "cmd": "events.follow"}
    if after is not None:
        doc["after"] = after
    s.sendall(json.dumps(doc).encode() + b"\n")
    return s, s.makefile("rb")


def test_events_follow_gives_the_backlog_then_live_events_in_order(daemon: Daemon):
    s, f = _follow(daemon, after=0)
    with s:
        seen: list[dict[str, Any]] = []
        while not any(e["kind"] == "board.online" for e in seen):
            line = json.loads(f.readline())
            assert line["ok"] and line["id"] == 9
            seen.append(line["event"])
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
        daemon.board.set_input(CONTACT, False)  # a live event: forced open
        while seen[-1]["kind"] != "alarm.forced-open":
            seen.append(json.loads(f.readline())["event"])
        seqs = [e["seq"] for e in seen]
        assert seqs == sorted(set(seqs)) and seqs == list(range(1, len(seqs) + 1))
        # Acknowledge the alarm: audited, shown in the door list, and itself an event.
        ans = request(sock_of(daemon), {"cmd": "alarm.ack", "door": "front"}, timeout=5)
        assert ans["ok"] and ans["alarm"] == "forced-open-alarm"
        while seen[-1]["kind"] != "alarm.acknowledged":
            seen.append(json.loads(f.readline())["event"])
        assert seen[-1]["user"] == getpass.getuser()
    (front,) = request(sock_of(daemon), {"cmd": "door.list"}, timeout=5)["doors"]
    assert front["alarm"] == "forced-open-alarm" and front["alarm_acknowledged"] is True
    assert daemon.proc.alive()


def test_bad_follow_and_ack_requests_are_refused(daemon: Daemon):
    for doc, error in (({"cmd": "events.follow", "after": "x"}, "after: expected"),
                       ({"cmd": "alarm.ack", "door": "front"}, "no alarm to acknowledge"),
                       ({"cmd": "door.lock", "door": "nope"}, "no door 'nope'")):
        ans = request(sock_of(daemon), doc, timeout=5)
        assert ans["ok"] is False and error in ans["error"], ans


def test_door_lock_ends_a_technician_unlock_at_once(daemon: Daemon):
    assert request(sock_of(daemon), {"cmd": "door.unlock", "door": "front", "seconds": 60},
                   timeout=5)["ok"]
    wait_until(lambda: daemon.board.coils()[STRIKE], 5, "unlocked")
    assert request(sock_of(daemon), {"cmd": "door.lock", "door": "front"}, timeout=5)["ok"]
    wait_until(lambda: not daemon.board.coils()[STRIKE], 5, "locked again well before 60 s")
    assert daemon.wait_event("control.door-lock")["user"] == getpass.getuser()
