"""Head office's side, enough for a site to run without other head-office software: the event
collector (`portvakt hq collect`) and one-shot publishing (policy, CRL, commands).

The collector is a persistent-session consumer of every gateway's events. It stores them in
SQLite, drops duplicates by (site, gateway, sequence), and after each committed batch publishes
each gateway's high-water mark (the highest sequence up to which it holds every event) retained
on the gateway's `events/ack`. Only then may the gateway let the events go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from gateway.errors import PortvaktError
from gateway.sync.info import Changes
from gateway.sync.messages import MessageError, decode_events, encode_ack
from gateway.sync.mqtt import BrokerError, BrokerParams, Client, connect
from gateway.sync.topics import events_filter, split_gateway_topic, status_filter

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        site TEXT NOT NULL,
        gateway TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (site, gateway, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS gateways (
        site TEXT NOT NULL,
        gateway TEXT NOT NULL,
        acked INTEGER NOT NULL,
        last_seen REAL NOT NULL,
        status TEXT,
        PRIMARY KEY (site, gateway)
    )""",
)


class StoreError(PortvaktError):
    """The collector's database cannot be opened or written."""


@dataclass
class CollectorInfo:
    connected: bool = False
    connects: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    acks_published: int = 0
    last_error: str | None = None
    acked: dict[tuple[str, str], int] = field(default_factory=dict)


class EventStore:
    """Every gateway's events, deduplicated; each gateway's high-water mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            for stmt in SCHEMA:
                self.conn.execute(stmt)
            rows = self.conn.execute("SELECT site, gateway, acked FROM gateways").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the event store: {e}") from e
        self.acked: dict[tuple[str, str], int] = {(r[0], r[1]): int(r[2]) for r in rows}

    def close(self) -> None:
        self.conn.close()

    def store(self, batch: list[tuple[str, str, int, float, str, int, str]],
              now: float) -> tuple[int, dict[tuple[str, str], int]]:
        """Insert (site, gateway, seq, at, kind, floor, body) rows in one transaction; returns
        (rows new to the store, the gateways whose high-water mark rose: new mark). `floor`:
        the mark the gateway said head office had already confirmed."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO events (site, gateway, seq, at, kind, body, "
                          "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          [(s, g, q, a, k, b, now) for s, g, q, a, k, _, b in batch])
            new = c.total_changes - before
            floors: dict[tuple[str, str], int] = {}
            for s, g, _, _, _, f, _ in batch:
                floors[(s, g)] = max(floors.get((s, g), 0), f)
            raised: dict[tuple[str, str], int] = {}
            for key, floor in floors.items():
                old = self.acked.get(key, 0)
                mark = max(old, floor)
                while True:  # walk the unbroken run above the mark
                    seqs = [r[0] for r in c.execute(
                        "SELECT seq FROM events WHERE site = ? AND gateway = ? AND seq > ? "
                        "ORDER BY seq LIMIT 5000", (*key, mark))]
                    run = 0
                    for q in seqs:
                        if q != mark + run + 1:
                            break
                        run += 1
                    mark += run
                    if run < 5000:
                        break
                c.execute("INSERT INTO gateways (site, gateway, acked, last_seen) VALUES "
                          "(?, ?, ?, ?) ON CONFLICT (site, gateway) DO UPDATE SET "
                          "acked = excluded.acked, last_seen = excluded.last_seen",
                          (*key, mark, now))
                if mark != old or key not in self.acked:
                    raised[key] = mark
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise StoreError(f"{self.path}: cannot store events: {e}") from e
        self.acked.update(raised)
        return new, raised

    def store_status(self, site: str, gateway: str, body: str, now: float) -> None:
        try:
            self.conn.execute(
                "INSERT INTO gateways (site, gateway, acked, last_seen, status) VALUES "
                "(?, ?, 0, ?, ?) ON CONFLICT (site, gateway) DO UPDATE SET status = "
                "excluded.status, last_seen = excluded.last_seen", (site, gateway, now, body))
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot store a status: {e}") from e

    def seqs(self, site: str, gateway: str) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT seq FROM events WHERE site = ? AND gateway = ? ORDER BY seq", (site, gateway))]


class Collector:
    """`await run()` until cancelled: consume, store, acknowledge; reconnect with backoff."""

    def __init__(self, store: Path, params: BrokerParams, prefix: str = "portvakt", *,
                 batch: int = 1000, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0) -> None:
        self.store_path = store
        self.params = params
        self.prefix = prefix
        self.batch = batch
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.info = CollectorInfo()
        self._changes = Changes()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        """Return once `predicate()` holds (checked at each change of `info`); TimeoutError
        after `within` seconds."""
        await self._changes.wait_for(predicate, within)

    async def run(self) -> None:
        store = EventStore(self.store_path)
        self.info.acked = dict(store.acked)
        try:
            backoff = self.backoff_initial
            while True:
                connects = self.info.connects
                try:
                    await self._session(store)
                except BrokerError as e:
                    self.info.last_error = str(e)
                self.info.connected = False
                self._changes.notify()
                if self.info.connects != connects:
                    backoff = self.backoff_initial
                delay = backoff * random.uniform(0.75, 1.25)
                log.warning("collector: %s; reconnecting in %.1f s", self.info.last_error, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            store.close()

    async def _session(self, store: EventStore) -> None:
        async with connect(self.params, inflight=1000) as client:
            await client.subscribe([(events_filter(self.prefix), 1),
                                    (status_filter(self.prefix), 1)])
            self.info.connected = True
            self.info.connects += 1
            self.info.last_error = None
            log.info("collector: connected to %s:%d as %s", self.params.host, self.params.port,
                     self.params.client_id)
            self._changes.notify()
            messages = client.messages
            while True:
                first = await anext(messages)
                batch = [first]
                while len(messages) and len(batch) < self.batch:
                    batch.append(await anext(messages))
                await self._handle(client, store, batch)

    async def _handle(self, client: Client, store: EventStore, batch: list[aiomqtt.Message]) -> None:
        rows: list[tuple[str, str, int, float, str, int, str]] = []
        now = time.time()
        for m in batch:
            topic = m.topic.value
            payload = m.payload
            data = payload if isinstance(payload, bytes | bytearray) else b""
            where = split_gateway_topic(self.prefix, topic)
            if where is None:
                continue
            site, gw, rest = where
            if rest == "status":
                with contextlib.suppress(UnicodeDecodeError):
                    store.store_status(site, gw, bytes(data).decode("utf-8"), now)
                continue
            if rest != "events":
                continue
            try:
                events = decode_events(bytes(data), site, gw)
            except MessageError as e:
                self.info.refused += 1
                log.error("%s: message refused: %s", topic, e)
                continue
            rows += [(site, gw, ev.seq, ev.at, ev.kind, ev.acked,
                      json.dumps(ev.body, separators=(",", ":"), ensure_ascii=False))
                     for ev in events]
        if not rows:
            return
        new, raised = await asyncio.to_thread(store.store, rows, now)
        self.info.stored += new
        self.info.duplicates += len(rows) - new
        for (site, gw), mark in raised.items():
            await client.publish_checked(f"{self.prefix}/{site}/{gw}/events/ack",
                                         encode_ack(mark), retain=True)
            self.info.acks_published += 1
            self.info.acked[(site, gw)] = mark
        self._changes.notify()


async def publish_once(params: BrokerParams, topic: str, payload: bytes, *,
                       retain: bool) -> None:
    """Connect (clean session), publish with QoS 1 and wait for the PUBACK, disconnect.
    Raises BrokerError (PublishRefused when the broker refuses it)."""
    async with connect(params) as client:
        await client.publish_checked(topic, payload, retain=retain)
