"""The journal's disk refuses writes while the daemon runs: doors keep deciding, technicians and
head office see the fault, and every event reaches the disk, in order, once it takes them again."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.rig.proc import wait_until
from tests.fixtures_daemon import STRIKE, Daemon, start_daemon
from tests.test_doctor import doctor


def strike_values(d: Daemon, since: int) -> list[bool]:
    return [w["value"] for w in d.board.writes() if w["coil"] == STRIKE][since:]


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Another process holds the database's write lock (as a technician's sqlite3 shell could):
    every commit the daemon tries fails once its busy timeout runs out."""
    blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def badge_opens_the_door(d: Daemon, pcsc_rig: Any, card: Path) -> None:
    """The card at the door: the strike pulses (unlocked, then locked again)."""
    before = len(strike_values(d, 0))
    pcsc_rig.insert("Door0", card)
    wait_until(lambda: strike_values(d, before)[:2] == [True, False], 10, "strike pulse")
    pcsc_rig.remove("Door0", wait=True)


def test_a_journal_that_cannot_write_keeps_the_door_deciding_and_loses_nothing(
        daemon: Daemon, pcsc_rig, demo_pki):
    status = daemon.ask({"cmd": "status"})
    assert status["journal_fault"] is None
    last = status["journal"]["last_seq"]
    daemon.wait_event("board.online")  # on disk: the fault below is the only thing in the way
    follower = socket.socket(socket.AF_UNIX)
    follower.settimeout(15)
    follower.connect(str(daemon.state / "control.sock"))
    follower.sendall(json.dumps({"id": 1, "cmd": "events.follow", "after": last}).encode() + b"\n")
    stream = follower.makefile("rb")
    with write_locked(daemon.db), follower, stream:
        # The door opens and relocks without waiting for the disk...
        badge_opens_the_door(daemon, pcsc_rig, demo_pki.cards["alice"])
        # ...the live stream carries the decision although it is not on disk...
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["kind"] != "access.granted":
            seen.append(json.loads(stream.readline())["event"])
        assert seen[-1]["person"] == "p-alice"
        # ...and once the commit gives up, the fault is in the status and doctor fails on it.
        wait_until(lambda: daemon.ask({"cmd": "status"})["journal_fault"], 15, "journal fault")
        assert "locked" in daemon.ask({"cmd": "status"})["journal_fault"]
        r = doctor(daemon)
        assert r.returncode == 1 and "JOURNAL FAULT" in r.stdout, r.stdout
        assert not daemon.events("access.granted")  # held in memory, not lost
    gap = daemon.wait_event("journal.recovered")
    assert gap["reason"] == "journal-fault" and "locked" in gap["error"] and gap["held"] >= 1
    assert daemon.events("access.granted")[0]["person"] == "p-alice"
    assert daemon.ask({"cmd": "status"})["journal_fault"] is None
    seqs = [e["seq"] for e in daemon.events()]
    assert seqs == list(range(1, len(seqs) + 1))


def test_stopped_while_the_journal_cannot_write_the_next_start_puts_the_events_in(
        daemon: Daemon, pcsc_rig, demo_pki, tmp_path):
    daemon.wait_event("board.online")
    with write_locked(daemon.db):
        badge_opens_the_door(daemon, pcsc_rig, demo_pki.cards["alice"])
        wait_until(lambda: daemon.ask({"cmd": "status"})["journal_fault"], 15, "journal fault")
        daemon.proc.stop(timeout=25)  # SIGTERM: the daemon closes with the events unwritten
        assert daemon.proc.popen.returncode == 0
        held = daemon.db.with_name(daemon.db.name + ".held")
        assert held.stat().st_mode & 0o777 == 0o600
        kinds = [json.loads(line)["kind"] for line in held.read_text().splitlines()]
        assert "access.granted" in kinds and "gateway.stopped" in kinds, kinds
    restarted = Daemon(start_daemon(tmp_path, daemon.config, daemon.state, "portvakt-again"),
                       daemon.db, daemon.board, daemon.state, daemon.config, daemon.bundle,
                       daemon.office)
    try:
        restored = restarted.wait_event("journal.restored")
        assert restored["events"] == len(kinds)
        # The side file goes right after the commit that holds journal.restored (never before:
        # a crash in between must not lose them), so a reader can see the event first.
        wait_until(lambda: not held.exists(), 10, "the .held side file removed after the commit")
        assert restarted.events("access.granted")[0]["person"] == "p-alice"
        # journal.restored is the journal's first event at open; the daemon's own
        # gateway.started comes after it, once the gateway runs: wait for it, then count.
        restarted.wait_event("gateway.started", 2)
        assert [e["kind"] for e in restarted.events()].count("gateway.started") == 2
        seqs = [e["seq"] for e in restarted.events()]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        restarted.proc.stop()
