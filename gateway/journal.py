"""The event journal: SQLite (WAL, synchronous=FULL), versioned schema, group commit.

`append` never blocks on disk: it assigns the next sequence number, queues the event and returns.
One writer thread commits whatever has queued in one transaction (group commit), so an event is
on disk within milliseconds while a door never waits for it. If a write fails the events stay in
memory, `fault` is set, and the writer retries.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import JournalError

log = logging.getLogger(__name__)

# Forward migrations; index i upgrades a database at user_version i to i + 1.
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: the event journal / outbox
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            door TEXT,
            person TEXT,
            reason TEXT,
            data TEXT NOT NULL DEFAULT '{}'
        )""",
    ),
    (  # 2: gateway metadata (id, acknowledged high-water mark), events by kind
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE INDEX events_kind ON events (kind, seq)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Upgrade the schema to `target`, one transaction per step; return the version reached."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise JournalError(f"database schema version {version} is newer than this Portvakt "
                           f"({SCHEMA_VERSION}); refusing to touch it")
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        version += 1
    return version


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    gateway: str
    at: float
    kind: str
    door: str | None = None
    person: str | None = None
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "seq": self.seq, "at": self.at, "kind": self.kind,
                "door": self.door, "person": self.person, "reason": self.reason, **self.data}


class Journal:
    def __init__(self, path: Path, gateway: str) -> None:
        self.path = path
        self.gateway = gateway
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = connect(path)
            migrate(self._conn)
            row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        except sqlite3.Error as e:
            raise JournalError(f"{path}: cannot open the journal: {e}") from e
        self._next = int(row[0] or 0) + 1
        self._seq_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._committed = threading.Condition()
        self._committed_seq = self._next - 1
        self._listeners: list[Callable[[Event], None]] = []
        self.fault: str | None = None
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` (from the appending thread) for every appended event."""
        self._listeners.append(listener)

    def append(self, kind: str, *, door: str | None = None, person: str | None = None,
               reason: str | None = None, at: float | None = None, **data: Any) -> Event:
        """Queue an event for the disk; returns at once with its sequence number assigned."""
        with self._seq_lock:
            ev = Event(self._next, self.gateway, time.time() if at is None else at, kind, door,
                       person, reason, data)
            self._next += 1
            self._queue.put(ev)
        for listener in self._listeners:
            listener(ev)
        return ev

    def _writer(self) -> None:
        pending: list[Event] = []
        stopping = False
        while not (stopping and not pending):
            if not pending:
                item = self._queue.get()
                if item is None:
                    stopping = True
                else:
                    pending.append(item)
            while True:  # take everything queued meanwhile: one transaction for all
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    pending.append(item)
            if not pending:
                continue
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    "INSERT INTO events (seq, at, kind, door, person, reason, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(e.seq, e.at, e.kind, e.door, e.person, e.reason,
                      json.dumps(e.data, separators=(",", ":"))) for e in pending])
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if self.fault is None:
                    log.error("journal write failed, keeping %d events in memory: %s",
                              len(pending), e)
                self.fault = str(e)
                if stopping:
                    break
                time.sleep(0.5)  # back off before retrying the disk
                continue
            self.fault = None
            with self._committed:
                self._committed_seq = pending[-1].seq
                self._committed.notify_all()
            pending = []

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event appended so far is on disk; False on timeout."""
        with self._seq_lock:
            target = self._next - 1
        with self._committed:
            return self._committed.wait_for(lambda: self._committed_seq >= target, timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)
        self._conn.close()

    def events(self, kind: str | None = None, after: int = 0, limit: int = 1000) -> list[Event]:
        """Committed events in sequence order (reads with its own connection)."""
        conn = sqlite3.connect(self.path)
        try:
            return read_events(conn, self.gateway, kind, after, limit)
        finally:
            conn.close()


def read_events(conn: sqlite3.Connection, gateway: str, kind: str | None = None, after: int = 0,
                limit: int = 1000) -> list[Event]:
    sql = "SELECT seq, at, kind, door, person, reason, data FROM events WHERE seq > ?"
    args: list[Any] = [after]
    if kind is not None:
        sql += " AND kind = ?"
        args.append(kind)
    sql += " ORDER BY seq LIMIT ?"
    args.append(limit)
    return [Event(r[0], gateway, r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))
            for r in conn.execute(sql, args)]
