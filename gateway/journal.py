"""The event journal: SQLite (WAL, synchronous=FULL), versioned schema, group commit.

`append` never blocks on disk: it assigns the next sequence number, queues the event and returns.
One writer thread commits whatever has queued in one transaction (group commit), so an event is
on disk within milliseconds while a door never waits for it. If a write fails the events stay in
memory, `fault` is set (and `on_fault` listeners told), and the writer retries; once the disk
takes them again a `journal.recovered` event records how long it refused and why. Events still
held when the journal closes are written to a side file (`<journal>.held`, JSON lines, mode 0600)
and put into the database by the first commit after the next open (`journal.restored`).

The journal is also the MQTT outbox (gateway/sync): every event with a sequence number above the
acknowledged high-water mark (`acked`, head office's `events/ack`) is still to be delivered.
`ack` raises the mark, `unacked` reads what is left, `purge` deletes acknowledged events once
they are older than the retention. Other small writes (`write`) go through the same writer
thread, so the database has one writer.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import JournalError

log = logging.getLogger(__name__)

_INSERT = ("INSERT INTO events (seq, at, kind, door, person, reason, data) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")
_INSERT_OR_IGNORE = _INSERT.replace("INSERT", "INSERT OR IGNORE", 1)

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
    (  # 3: MQTT sync state: seen command nonces (replays refused across restarts), small state
        """CREATE TABLE sync_nonces (
            nonce TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        )""",
        "CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
ACKED_KEY = "acked"  # meta key of head office's acknowledged high-water mark
_T = TypeVar("_T")


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


class _Op:
    """A write run by the writer thread in its own transaction; its result goes to `future`."""

    __slots__ = ("future", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class Journal:
    def __init__(self, path: Path, gateway: str) -> None:
        self.path = path
        self.gateway = gateway
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = connect(path)
            migrate(self._conn)
            row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
            acked = self._conn.execute("SELECT value FROM meta WHERE key = ?",
                                       (ACKED_KEY,)).fetchone()
            self._reader = connect(path)
        except sqlite3.Error as e:
            raise JournalError(f"{path}: cannot open the journal: {e}") from e
        self._acked = int(acked[0]) if acked is not None else 0
        # Events a previous run could not write: the writer's first commit puts them in (the
        # disk may still refuse; then they wait with the rest, and the file stays meanwhile).
        self._held = self._read_held()
        # Purged (acknowledged) events leave no row behind: the mark keeps the sequence going up.
        self._next = max(int(row[0] or 0), self._acked, *(e.seq for e in self._held)) + 1
        self._seq_lock = threading.RLock()  # a listener may append in turn
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Event | _Op | None] = queue.SimpleQueue()
        self._committed = threading.Condition()
        self._committed_seq = self._next - 1
        self._listeners: list[Callable[[Event], None]] = []
        self._commit_listeners: list[Callable[[int], None]] = []
        self._fault_listeners: list[Callable[[str | None], None]] = []
        self.fault: str | None = None
        self._fault_since: float | None = None
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()
        if self._held:
            self.append("journal.restored", reason="journal-fault", events=len(self._held))

    @property
    def held_file(self) -> Path:
        """Where events the disk refused until the journal closed wait for the next start."""
        return self.path.with_name(self.path.name + ".held")

    def _read_held(self) -> list[Event]:
        """The events of a previous run's side file, for the writer's first commit. Lines that
        do not parse (a crash mid-write) are kept aside in `<file>.<time>.rejected`. A file that
        cannot be read is left where it is, named in the log: the journal opens without it."""
        held = self.held_file
        try:
            lines = held.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            log.critical("%s: cannot read the events held from a previous run (%s); left there "
                         "for an operator, the journal goes on without them", held, e)
            return []
        events: list[Event] = []
        bad: list[bytes] = []
        for line in lines:
            try:
                doc = json.loads(line)
                data = doc.get("data") or {}
                if not isinstance(data, dict):
                    raise TypeError("data is not an object")
                events.append(Event(int(doc["seq"]), self.gateway, float(doc["at"]),
                                    str(doc["kind"]), doc.get("door"), doc.get("person"),
                                    doc.get("reason"), data))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad.append(line)
        if bad:
            rejected = held.with_name(held.name + f".{int(time.time())}.rejected")
            try:
                _write_private(rejected, b"\n".join(bad) + b"\n")
            except OSError as e:
                log.error("%s: %d lines could not be read back, nor kept aside in %s (%s)",
                          held, len(bad), rejected, e)
            else:
                log.error("%s: %d lines could not be read back; kept in %s", held, len(bad),
                          rejected)
        return events

    def _hold(self, pending: list[Event]) -> None:
        """The journal closes while the disk refuses: keep `pending` in the side file."""
        lines = b"".join(json.dumps({"seq": e.seq, "at": e.at, "kind": e.kind, "door": e.door,
                                     "person": e.person, "reason": e.reason, "data": e.data},
                                    separators=(",", ":")).encode() + b"\n" for e in pending)
        try:
            _write_private(self.held_file, lines, append=True)
        except OSError as e:
            log.critical("journal closing with %d events the disk refused, and %s cannot take "
                         "them either (%s): events %d..%d are lost", len(pending),
                         self.held_file, e, pending[0].seq, pending[-1].seq)
            return
        log.error("journal closing with %d events the disk refused: kept in %s for the next "
                  "start", len(pending), self.held_file)

    # --- outbox state ----------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """The sequence number of the last event appended (0: none ever)."""
        with self._seq_lock:
            return self._next - 1

    @property
    def committed_seq(self) -> int:
        """Every event up to this sequence number is on disk."""
        with self._committed:
            return self._committed_seq

    @property
    def acked(self) -> int:
        """Head office's acknowledged high-water mark: every event up to it has been delivered."""
        return self._acked

    @property
    def backlog(self) -> int:
        """Events not yet acknowledged by head office (the outbox), on disk or about to be."""
        return self.last_seq - self._acked

    def ack(self, seq: int) -> int:
        """Raise the acknowledged high-water mark to `seq` (never lowers it); returns the mark.

        The mark is in force at once and on disk within a group commit; a mark lost to a crash
        only means those events are sent again (consumers drop duplicates). Raises JournalError
        for a mark above the last sequence number appended: head office cannot have seen it."""
        if seq > self.last_seq:
            raise JournalError(f"acknowledgement of sequence {seq}, but the last event appended "
                               f"is {self.last_seq}")
        with self._seq_lock:
            if seq <= self._acked:
                return self._acked
            self._acked = seq

        def persist(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value WHERE CAST(value AS INTEGER) < "
                         "CAST(excluded.value AS INTEGER)", (ACKED_KEY, str(seq)))

        self.submit(persist).add_done_callback(_log_failure)
        return seq

    def unacked(self, after: int = 0, limit: int = 1000) -> list[Event]:
        """Committed events not yet acknowledged, in sequence order, from above
        max(`after`, acked). Reads with the journal's own read connection (thread-safe)."""
        with self._read_lock:
            try:
                return read_events(self._reader, self.gateway, None, max(after, self._acked),
                                   limit)
            except sqlite3.Error as e:
                raise JournalError(f"{self.path}: cannot read the outbox: {e}") from e

    def purge(self, retention: float, now: float | None = None, batch: int = 5000) -> int:
        """Delete acknowledged events older than `retention` seconds; returns how many. Never
        touches an unacknowledged event. Runs on the writer thread in batches of `batch` rows,
        so appends keep committing in between; blocks the caller until done (call it from a
        worker thread). Raises JournalError when the database refuses."""
        cutoff = (time.time() if now is None else now) - retention
        total = 0
        while True:
            mark = self._acked

            def chunk(conn: sqlite3.Connection, mark: int = mark) -> int:
                cur = conn.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? "
                    "AND at < ? ORDER BY seq LIMIT ?)", (mark, cutoff, batch))
                return int(cur.rowcount)

            n = self.write(chunk)
            total += n
            if n < batch:
                return total

    # --- generic writes ------------------------------------------------------------------------
    def submit(self, work: Callable[[sqlite3.Connection], _T]) -> concurrent.futures.Future[_T]:
        """Run `work(conn)` on the writer thread in one transaction (all or nothing) after the
        events queued before it are committed; the future holds its result or exception."""
        op = _Op(work)
        self._queue.put(op)
        return op.future

    def write(self, work: Callable[[sqlite3.Connection], _T], timeout: float = 30.0) -> _T:
        """`submit` and wait. Raises JournalError when the transaction fails or times out."""
        try:
            return self.submit(work).result(timeout)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: write failed: {e}") from e
        except concurrent.futures.TimeoutError:
            raise JournalError(f"{self.path}: the writer did not answer within {timeout:g} s "
                               f"(fault: {self.fault})") from None

    def read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work(conn)` with the journal's read connection (committed data only)."""
        with self._read_lock:
            try:
                return work(self._reader)
            except sqlite3.Error as e:
                raise JournalError(f"{self.path}: read failed: {e}") from e

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Call `listener(seq)` from the writer thread each time events up to `seq` are on disk."""
        self._commit_listeners.append(listener)

    def on_fault(self, listener: Callable[[str | None], None]) -> None:
        """Call `listener(error)` from the writer thread when writes start failing, and
        `listener(None)` when they succeed again."""
        self._fault_listeners.append(listener)

    def _fault_changed(self, error: str | None) -> None:
        for listener in self._fault_listeners:
            try:
                listener(error)
            except Exception:
                log.exception("journal fault listener failed")

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` (from the appending thread, in sequence order) for every
        appended event. Keep it short: it runs while other appends wait."""
        self._listeners.append(listener)

    def append(self, kind: str, *, door: str | None = None, person: str | None = None,
               reason: str | None = None, at: float | None = None, **data: Any) -> Event:
        """Queue an event for the disk; returns at once with its sequence number assigned."""
        with self._seq_lock:
            ev = Event(self._next, self.gateway, time.time() if at is None else at, kind, door,
                       person, reason, data)
            self._next += 1
            self._queue.put(ev)
            # Inside the lock: listeners see events in sequence order even when threads race
            # (the live event stream drops anything older than what it has passed on).
            for listener in self._listeners:
                try:
                    listener(ev)
                except Exception:  # never the appender's problem (a door, the writer thread)
                    log.exception("journal listener failed")
        return ev

    def _writer(self) -> None:
        pending: list[Event] = []
        ops: list[_Op] = []
        stopping = False
        # Stopping, the loop still takes what was queued after the sentinel (journal.recovered
        # from the last commit, an append racing close()).
        while not (stopping and not pending and not ops and self._queue.empty()):
            if not pending and not ops:
                stopping = self._sort(self._queue.get(), pending, ops) or stopping
            # Everything queued meanwhile too: one transaction for all.
            stopping = self._take_queued(pending, ops) or stopping
            if not pending:
                ops = self._run_ops(ops)
                continue
            try:
                self._conn.execute("BEGIN")
                if self._held:  # a row already there came from a commit never confirmed
                    self._insert(self._held, ignore_present=True)
                self._insert(pending)
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                first = self.fault is None
                self.fault = str(e)
                if first:
                    log.error("journal write failed, keeping %d events in memory: %s",
                              len(pending), e)
                    self._fault_since = time.time()
                    self._fault_changed(self.fault)
                if stopping:
                    self._take_queued(pending, ops)  # appended meanwhile: goes with them
                    self._hold(pending)
                    for op in ops:
                        op.future.set_exception(JournalError(f"journal closed: {e}"))
                    break
                time.sleep(0.5)  # back off before retrying the disk
                continue
            if self._held:
                self._restored()
            if self.fault is not None:
                self._recovered(len(pending))
            with self._committed:
                self._committed_seq = pending[-1].seq
                self._committed.notify_all()
            for listener in self._commit_listeners:
                try:
                    listener(pending[-1].seq)
                except Exception:
                    log.exception("journal commit listener failed")
            pending = []
            ops = self._run_ops(ops)

    @staticmethod
    def _sort(item: Event | _Op | None, pending: list[Event], ops: list[_Op]) -> bool:
        """File one queued item; True for the stop sentinel."""
        if item is None:
            return True
        if isinstance(item, _Op):
            ops.append(item)
        else:
            pending.append(item)
        return False

    def _take_queued(self, pending: list[Event], ops: list[_Op]) -> bool:
        """File everything queued right now; True if the stop sentinel was among it."""
        stop = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stop
            stop = self._sort(item, pending, ops) or stop

    def _insert(self, events: list[Event], *, ignore_present: bool = False) -> None:
        self._conn.executemany(
            _INSERT_OR_IGNORE if ignore_present else _INSERT,
            [(e.seq, e.at, e.kind, e.door, e.person, e.reason,
              json.dumps(e.data, separators=(",", ":"))) for e in events])

    def _restored(self) -> None:
        """The previous run's held events are in the database: the side file goes."""
        count, self._held = len(self._held), []
        try:
            self.held_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # read again next time: INSERT OR IGNORE makes that harmless
            log.error("%s: cannot remove (%s)", self.held_file, e)
        log.warning("%s: the %d events the disk refused in a previous run are in the journal",
                    self.held_file, count)

    def _recovered(self, held: int) -> None:
        """The disk took the events again: clear the fault and journal the gap it left."""
        error, since = self.fault, self._fault_since or time.time()
        self.fault, self._fault_since = None, None
        seconds = round(time.time() - since, 1)
        log.warning("journal writes succeed again after %.1f s; the %d events held in memory "
                    "are on disk", seconds, held)
        self.append("journal.recovered", reason="journal-fault", since=since, seconds=seconds,
                    error=error, held=held)
        self._fault_changed(None)

    def _run_ops(self, ops: list[_Op]) -> list[_Op]:
        for op in ops:
            if not op.future.set_running_or_notify_cancel():
                continue
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                result = op.work(self._conn)
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("journal: rollback failed")
                op.future.set_exception(e)
            else:
                op.future.set_result(result)
        return []

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event appended so far is on disk; False on timeout."""
        with self._seq_lock:
            target = self._next - 1
        with self._committed:
            return self._committed.wait_for(lambda: self._committed_seq >= target, timeout)

    def close(self) -> None:
        self._queue.put(None)
        # A refusing disk can take two busy timeouts (5 s each) before the writer gives up and
        # keeps what it holds in the side file. Wait for it whatever it takes: a second journal
        # opened on this database while the first still writes would reuse sequence numbers.
        self._thread.join(15)
        while self._thread.is_alive():
            log.error("journal writer still busy writing to %s; waiting for it", self.path)
            self._thread.join(15)
        self._conn.close()
        with self._read_lock:
            self._reader.close()

    def events(self, kind: str | None = None, after: int = 0, limit: int = 1000) -> list[Event]:
        """Committed events in sequence order (reads with its own connection)."""
        conn = sqlite3.connect(self.path)
        try:
            return read_events(conn, self.gateway, kind, after, limit)
        finally:
            conn.close()


def _write_private(path: Path, data: bytes, *, append: bool = False) -> None:
    """Write `data` to `path` (mode 0600 from its creation), fsync it and, when the file is new,
    its directory: it must survive a power cut. Raises OSError."""
    existed = path.exists()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    e = future.exception()
    if e is not None:
        log.error("journal: a deferred write failed: %s", e)


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
