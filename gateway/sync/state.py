"""The sync service's own durable state, in the gateway's database through the journal's writer
thread: command nonces already used (a replay is refused, also after a restart) and small
key/value facts (what a retained manifest pointed at, a CRL's HTTP validators)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.journal import Journal


class SyncState:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def use_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        """Record `nonce` as used until `expires_at` (POSIX seconds); False if it was used
        before. Nonces of commands that have expired are forgotten (an expired command is
        refused anyway). Blocking: call it from a worker thread. Raises JournalError."""

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM sync_nonces WHERE expires_at < ?", (now,))
            cur = conn.execute("INSERT OR IGNORE INTO sync_nonces (nonce, expires_at) "
                               "VALUES (?, ?)", (nonce, expires_at))
            return cur.rowcount == 1

        return self.journal.write(work)

    def get(self, key: str) -> Any:
        """The JSON value stored under `key`, None when none. Raises JournalError."""
        row = self.journal.read(lambda c: c.execute(
            "SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone())
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON) under `key`, durably. Blocking. Raises JournalError."""
        text = json.dumps(value, separators=(",", ":"))
        self.journal.write(lambda c: c.execute(
            "INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value", (key, text)))
