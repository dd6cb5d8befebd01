from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.errors import JournalError
from gateway.journal import MIGRATIONS, SCHEMA_VERSION, Journal, migrate


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
    try:
        j.append("before")
        assert j.flush()
        # Another writer holds the write lock: our commits fail (busy) until it lets go.
        blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
        j._conn.execute("PRAGMA busy_timeout=0")
        blocker.execute("BEGIN IMMEDIATE")
        j.append("during")
        assert not j.flush(timeout=0.3)
        assert j.fault is not None
        blocker.execute("ROLLBACK")
        blocker.close()
        assert j.flush(timeout=5)
        assert j.fault is None
        assert [e.kind for e in j.events()] == ["before", "during"]
    finally:
        j.close()
