from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.errors import JournalError
from gateway.journal import MIGRATIONS, SCHEMA_VERSION, Event, Journal, migrate


def make_db_at_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=version)
    if version >= 1:
        conn.execute("INSERT INTO events (seq, at, kind, door, data) VALUES (1, 1.0, 'old', 'x', '{}')")
    conn.close()


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_every_earlier_schema_upgrades_and_keeps_its_events(tmp_path: Path, version: int):
    db = tmp_path / "j.db"
    make_db_at_version(db, version)
    j = Journal(db, "gw")
    try:
        ev = j.append("new", door="front")
        assert j.flush()
        assert ev.seq == (2 if version >= 1 else 1)
        kinds = [e.kind for e in j.events()]
        assert kinds == (["old", "new"] if version >= 1 else ["new"])
    finally:
        j.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_from_a_newer_portvakt_is_refused(tmp_path: Path):
    db = tmp_path / "j.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="newer than this Portvakt"):
        Journal(db, "gw")


def test_sequence_continues_across_restarts(tmp_path: Path):
    db = tmp_path / "j.db"
    j = Journal(db, "gw")
    for _ in range(5):
        j.append("a")
    j.close()
    j = Journal(db, "gw")
    try:
        assert j.append("b").seq == 6
        assert j.flush()
        assert [e.seq for e in j.events()] == [1, 2, 3, 4, 5, 6]
    finally:
        j.close()


def test_concurrent_appends_are_all_committed_in_sequence(tmp_path: Path):
    j = Journal(tmp_path / "j.db", "gw")
    try:
        def burst() -> None:
            for i in range(200):
                j.append("burst", n=i)

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert j.flush()
        seqs = [e.seq for e in j.events(limit=10_000)]
        assert seqs == list(range(1, 801))
    finally:
        j.close()


def test_a_failing_disk_keeps_events_in_memory_and_sets_a_fault(tmp_path: Path):
    db = tmp_path / "j.db"
    j = Journal(db, "gw")
    told: list[str | None] = []
    j.on_fault(told.append)
    try:
        j.append("before")
        assert j.flush()
        # Another writer holds the write lock: our commits fail (busy) until it lets go.
        blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
        j._conn.execute("PRAGMA busy_timeout=0")
        blocker.execute("BEGIN IMMEDIATE")
        j.append("during")
        assert not j.flush(timeout=0.3)
        assert j.fault is not None and "locked" in j.fault
        j.append("still during")  # retried, not a second fault
        assert not j.flush(timeout=0.6)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert j.flush(timeout=5)
        assert j.fault is None
        # Told once when it started and once when it ended; the gap is on record.
        assert told == [told[0], None] and told[0] is not None and "locked" in told[0]
        assert j.flush(timeout=5)
        events = j.events()
        assert [e.kind for e in events] == ["before", "during", "still during", "journal.recovered"]
        gap = events[-1]
        assert gap.reason == "journal-fault" and "locked" in gap.data["error"]
        assert gap.data["held"] == 2 and gap.data["seconds"] >= 0.5
    finally:
        j.close()


# --- the outbox ------------------------------------------------------------------------------

def test_events_stay_unacknowledged_until_head_office_acknowledges_them(tmp_path: Path):
    j = Journal(tmp_path / "j.db", "gw")
    try:
        for i in range(10):
            j.append("a", n=i)
        assert j.flush()
        assert (j.last_seq, j.committed_seq, j.acked, j.backlog) == (10, 10, 0, 10)
        assert [e.seq for e in j.unacked()] == list(range(1, 11))
        assert j.ack(4) == 4
        assert j.ack(2) == 4  # a mark never goes down
        assert j.backlog == 6
        assert [e.seq for e in j.unacked(limit=3)] == [5, 6, 7]
        assert [e.seq for e in j.unacked(after=8)] == [9, 10]
        with pytest.raises(JournalError, match="last event appended is 10"):
            j.ack(11)  # head office cannot have seen it
        assert [e.seq for e in j.events()] == list(range(1, 11))  # acknowledged, still kept
    finally:
        j.close()


def test_the_acknowledged_mark_survives_a_restart(tmp_path: Path):
    j = Journal(tmp_path / "j.db", "gw")
    for _ in range(5):
        j.append("a")
    j.flush()
    j.ack(3)
    j.close()  # the mark's write is queued behind nothing: on disk before close returns
    j = Journal(tmp_path / "j.db", "gw")
    try:
        assert (j.acked, j.backlog) == (3, 2)
        assert [e.seq for e in j.unacked()] == [4, 5]
    finally:
        j.close()


def test_purge_drops_only_acknowledged_events_past_the_retention(tmp_path: Path):
    j = Journal(tmp_path / "j.db", "gw")
    try:
        for i in range(10):
            j.append("a", at=1000.0 + i)  # old events
        j.append("new", at=5000.0)
        assert j.flush()
        j.ack(7)
        # Retention 100 s at t=2000: events 1..7 are acknowledged and old; 8..10 are old but
        # not acknowledged; 11 is recent.
        assert j.purge(100, now=2000.0, batch=3) == 7
        assert [e.seq for e in j.events()] == [8, 9, 10, 11]
        assert j.purge(100, now=2000.0) == 0
    finally:
        j.close()


def test_the_sequence_goes_on_after_every_event_was_purged(tmp_path: Path):
    db = tmp_path / "j.db"
    j = Journal(db, "gw")
    for _ in range(5):
        j.append("a", at=1.0)
    j.flush()
    j.ack(5)
    assert j.purge(0, now=10.0) == 5
    j.close()
    j = Journal(db, "gw")
    try:
        assert j.events() == []
        assert j.append("b").seq == 6  # never 1 again: head office would drop it as a duplicate
    finally:
        j.close()


def test_writes_run_on_the_writer_thread_after_the_events_queued_before_them(tmp_path: Path):
    j = Journal(tmp_path / "j.db", "gw")
    seen: list[int] = []
    j.on_commit(seen.append)
    try:
        j.append("a")
        count = j.write(lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0])
        assert count == 1  # the event was committed before the write ran
        assert seen and seen[-1] == 1
        with pytest.raises(JournalError, match="write failed"):
            j.write(lambda c: c.execute("INSERT INTO no_such_table VALUES (1)"))
        j.write(lambda c: c.execute("INSERT INTO sync_state VALUES ('k', '1')"))
        assert j.read(lambda c: c.execute("SELECT value FROM sync_state").fetchone()[0]) == "1"
    finally:
        j.close()


def test_events_the_disk_refuses_until_close_wait_in_a_side_file_for_the_next_start(
        tmp_path: Path):
    db = tmp_path / "j.db"
    j = Journal(db, "gw")
    j.append("before")
    assert j.flush()
    blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
    j._conn.execute("PRAGMA busy_timeout=0")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        j.append("door.unlocked", door="front", person="p-alice", reason="granted", n=1)
        j.append("door.locked", door="front")
        assert not j.flush(timeout=0.3)
        j.close()  # stopping while the disk still refuses
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert j.held_file.exists() and j.held_file.stat().st_mode & 0o777 == 0o600
    # A torn last line (a crash mid-write) is kept aside, not fatal and not silently dropped.
    with j.held_file.open("ab") as f:
        f.write(b'{"seq": 9, "at": 1.0, "ki')
    # The next start finds the database locked again: the journal opens all the same (doors
    # must work), numbers new events after the held ones, and writes them all once it can.
    blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    again = Journal(db, "gw")
    try:
        again._conn.execute("PRAGMA busy_timeout=0")
        assert not again.flush(timeout=0.3) and again.fault is not None
        assert again.held_file.exists()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert again.flush(timeout=5)
        assert not again.held_file.exists()
        assert again.flush(timeout=5)  # journal.recovered, appended by that commit
        events = again.events()
        assert [e.kind for e in events] == ["before", "door.unlocked", "door.locked",
                                            "journal.restored", "journal.recovered"]
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert (events[1].door, events[1].person, events[1].reason, events[1].data) == (
            "front", "p-alice", "granted", {"n": 1})
        assert events[3].data == {"events": 2}
        (rejected,) = tmp_path.glob("j.db.held.*.rejected")
        assert rejected.read_bytes() == b'{"seq": 9, "at": 1.0, "ki\n'
        assert again.append("next").seq == 6
    finally:
        again.close()


def test_journal_recovered_on_the_last_commit_before_close_is_not_lost(tmp_path: Path):
    db = tmp_path / "j.db"
    j = Journal(db, "gw")
    blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
    j._conn.execute("PRAGMA busy_timeout=0")
    blocker.execute("BEGIN IMMEDIATE")
    j.append("during")
    assert not j.flush(timeout=0.3)
    blocker.execute("ROLLBACK")
    blocker.close()
    j.close()  # the commit at close succeeds: its journal.recovered must still be written
    again = Journal(db, "gw")
    try:
        assert [e.kind for e in again.events()] == ["during", "journal.recovered"]
        assert again.append("next").seq == 3
        assert not again.held_file.exists()
    finally:
        again.close()


def test_a_listener_that_raises_neither_stops_the_appender_nor_the_writer(tmp_path: Path):
    j = Journal(tmp_path / "j.db", "gw")
    try:
        def broken(ev: Event) -> None:
            raise RuntimeError("the loop is closed")

        j.subscribe(broken)
        j.append("one")
        j.append("two")
        assert j.flush(timeout=5) and j.fault is None
        assert [e.kind for e in j.events()] == ["one", "two"]
    finally:
        j.close()
