"""SyncService: the gateway's side of head-office sync (docs/mqtt.md).

One persistent MQTT session, reconnected with backoff for as long as the service runs:
- events out: the journal is the outbox; committed events are published in sequence order with
  QoS 1, at most `window` beyond head office's acknowledgement, and leave the outbox only when
  head office's `events/ack` high-water mark covers them (a broker's PUBACK is not delivery);
  with no acknowledgement progress for `resend_after` seconds they are sent again;
- status out: retained, refreshed every `status_interval` and on request, "offline" as the
  last will (and said by the gateway itself at a clean stop);
- policy, CRLs and commands in: gateway/sync/inbound.py;
- without any broker: CRLs from their distribution points (gateway/sync/crl.py) and the purge
  of acknowledged events past their retention.

Work that may take seconds (verifying a large policy, ingesting a million-entry CRL, HTTP
fetches, database writes) runs on worker threads; the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.bundle import VerifyKey, load_keys
from gateway.errors import ConfigError, InputError, JournalError
from gateway.journal import Journal
from gateway.sync.config import SyncConfig
from gateway.sync.crl import CrlFetcher
from gateway.sync.inbound import Inbound, OnCommand, OnCrl, OnPolicy
from gateway.sync.info import Changes, SyncInfo
from gateway.sync.messages import MessageError, chunk_events, decode_ack, encode_status, offline_status
from gateway.sync.mqtt import (
    BrokerError,
    BrokerParams,
    Client,
    check_private,
    connect,
    read_secret,
    suback_failures,
)
from gateway.sync.signed import pin
from gateway.sync.state import SyncState
from gateway.sync.topics import Topics

__all__ = ["OnCommand", "OnCrl", "OnPolicy", "StatusFn", "SyncInfo", "SyncService"]

log = logging.getLogger(__name__)

StatusFn = Callable[[], Mapping[str, Any]]


def broker_params(config: SyncConfig, site: str, gateway_id: str,
                  password: str | None) -> BrokerParams:
    """How this gateway reaches and logs in to its broker: the persistent session
    (``client_id``, default ``portvakt-<site>-<gateway>``) with the configured credentials."""
    return BrokerParams(
        config.host, config.port, config.ca_file,
        config.client_id or f"portvakt-{site}-{gateway_id}", config.username, password,
        config.client_cert, config.client_key, config.protocol, config.keepalive,
        config.session_expiry, True, config.connect_timeout)


def _first_error(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = next((x for x in e.exceptions if not isinstance(x, asyncio.CancelledError)),
                 e.exceptions[0])
    return e


class SyncService:
    """Head-office sync for one gateway. Build it once; `await run()` until cancelled.

    Callbacks (see docs/mqtt.md):
    - `on_policy(envelope: bytes)`: offer a signed policy envelope; runs on a worker thread
      (it may also return an awaitable, then awaited on the loop). Its result should look like
      gateway.bundle.Outcome (`status` applied/ignored/rejected, `reason`, `version`,
      `detail`); it journals its outcome itself, as PolicySource does.
    - `on_crl(crl: bytes)`: verify and install a CRL (DER or PEM); worker thread (or
      awaitable). Raises when refused; may return an object with `next_update` (CrlIndex
      does). `gateway.sync.crl.crl_ingester(trust_store)` is one.
    - `on_command(command: VerifiedCommand)`: carry out door.unlock, site.lockdown or
      site.normal, on the loop; returns a JSON-able result for the journal, raises when it
      cannot. status.resend is handled here.
    - `status()`: the gateway's status (JSON-able; `alarms`: a list of strings), for the
      retained status message; called on the loop.

    Raises ConfigError at construction for unusable keys or secrets, naming the setting.
    """

    def __init__(self, config: SyncConfig, site: str, gateway_id: str, journal: Journal,
                 on_policy: OnPolicy, on_crl: OnCrl, on_command: OnCommand,
                 status: StatusFn) -> None:
        self.config = config
        self.site = site
        self.gateway = gateway_id
        self.journal = journal
        self.on_policy = on_policy
        self.on_crl = on_crl
        self.on_command = on_command
        self.status = status
        self.topics, self.manifest_keys, self.command_keys, password = self.load_secrets(
            config, site, gateway_id)
        self.params = broker_params(config, site, gateway_id, password)
        self.state = SyncState(journal)
        self.info = SyncInfo(acked=journal.acked)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changes = Changes()
        self._backlog_alarmed = False
        self._ack_ahead_alarmed = False
        self._last_progress = time.monotonic()
        self.fetcher = CrlFetcher(config.crl, self._ingest_crl, self.state, journal,
                                  ca_file=config.fetch_ca_file, on_result=self._crl_result)
        journal.on_commit(self._committed_threadsafe)

    @classmethod
    def load_secrets(cls, config: SyncConfig, site: str, gateway_id: str
                     ) -> tuple[Topics, dict[str, VerifyKey], dict[str, VerifyKey], str | None]:
        """The topics, the pinned manifest and command keys and the broker password, read and
        checked (secret files readable by the service only). Raises ConfigError naming the
        setting; `portvakt run` calls it before a reload replaces the running gateway."""
        file = config.source
        try:
            topics = Topics(config.topic_prefix, site, gateway_id)
        except ValueError as e:
            raise ConfigError(file, "gateway", str(e)) from None
        manifest_keys = cls._keys(config.manifest_keys, file, "mqtt.manifest_keys")
        command_keys = cls._keys(config.command_keys, file, "mqtt.command_keys")
        password = None
        if config.password_file is not None:
            password = read_secret(config.password_file, file, "mqtt.password_file")
        if config.client_key is not None:
            try:
                check_private(config.client_key.stat(), config.client_key, file,
                              "mqtt.client_key")
            except OSError as e:
                raise ConfigError(file, "mqtt.client_key",
                                  f"cannot read {config.client_key}: {e.strerror}") from None
        return topics, manifest_keys, command_keys, password

    @staticmethod
    def _keys(paths: tuple[Path, ...], file: str, key: str) -> dict[str, VerifyKey]:
        try:
            return pin(load_keys(paths))
        except InputError as e:
            raise ConfigError(file, key, str(e)) from None

    # --- running -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sync until cancelled: the broker session (reconnected with backoff, forever), the
        messages from head office, CRLs from their distribution points, the purge."""
        self._wake = asyncio.Event()
        self._status_now = asyncio.Event()
        self.inbound = Inbound(
            self.config, self.site, self.gateway, self.journal, self.state, self.info,
            manifest_keys=self.manifest_keys, command_keys=self.command_keys,
            on_policy=self.on_policy, on_crl=self.on_crl, on_command=self.on_command,
            changed=self._changes.notify, publish_status=self.request_status,
            fetcher=self.fetcher)
        self._loop = asyncio.get_running_loop()
        self._check_backlog()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._connection_loop(), name="sync-connection")
                tg.create_task(self.inbound.run(), name="sync-inbound")
                tg.create_task(self._purge_loop(), name="sync-purge")
                if self.config.crl.fetches:
                    tg.create_task(self.fetcher.run(), name="sync-crl-fetch")
        finally:
            self._loop = None

    async def _ingest_crl(self, data: bytes) -> Any:
        return await self.inbound.ingest_crl(data)

    def _crl_result(self, source: str, outcome: str, detail: str) -> None:
        self.inbound.crl_result(source, outcome, detail)

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        """Return once `predicate()` holds (checked at each change of `info`); TimeoutError
        after `within` seconds."""
        await self._changes.wait_for(predicate, within)

    def request_status(self) -> None:
        """Publish the status now (the daemon calls it after a change head office should see:
        a door's state or mode, an alarm). Call it on the loop; a no-op when not running."""
        if self._loop is not None:
            self._status_now.set()

    def snapshot(self) -> dict[str, Any]:
        """The sync state as JSON-able data (for the gateway's own status)."""
        return {**asdict(self.info), "backlog": self.journal.backlog,
                "last_seq": self.journal.last_seq}

    def _committed_threadsafe(self, seq: int) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._committed)

    def _committed(self) -> None:
        if self._loop is not None:
            self._wake.set()
            self._check_backlog()

    def _check_backlog(self) -> None:
        backlog, limit = self.journal.backlog, self.config.backlog_alarm
        if not self._backlog_alarmed and backlog > limit:
            self._backlog_alarmed = True
            self._alarm("sync-backlog", True)
            log.error("%d events wait for head office (alarm above %d)", backlog, limit)
            self.journal.append("alarm.sync-backlog", reason="sync-backlog", backlog=backlog,
                                limit=limit)
        elif self._backlog_alarmed and backlog <= limit:
            self._backlog_alarmed = False
            self._alarm("sync-backlog", False)
            self.journal.append("sync.backlog-cleared", backlog=backlog, limit=limit)

    def _alarm(self, name: str, on: bool) -> None:
        if on and name not in self.info.alarms:
            self.info.alarms.append(name)
        elif not on and name in self.info.alarms:
            self.info.alarms.remove(name)
        else:
            return
        self.request_status()
        self._changes.notify()

    # --- the broker session --------------------------------------------------------------------
    async def _connection_loop(self) -> None:
        backoff = self.config.backoff_initial
        while True:
            connects = self.info.connects
            try:
                await self._session()
                error = "session ended"
            except BrokerError as e:
                error = str(e)
            self.info.connected = False
            self.info.last_error = error
            self._changes.notify()
            if self.info.connects != connects:
                backoff = self.config.backoff_initial  # it worked for a while: start over
            delay = backoff * random.uniform(0.75, 1.25)
            log.warning("head-office sync: %s; reconnecting in %.1f s", error, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.config.backoff_max)

    async def _session(self) -> None:
        will = aiomqtt.Will(self.topics.status, offline_status(self.site, self.gateway), qos=1,
                            retain=True)
        async with connect(self.params, will=will, inflight=min(self.config.window, 1000)) \
                as client:
            self.info.connected = True
            self.info.connects += 1
            self.info.last_error = None
            self._last_progress = time.monotonic()
            log.info("head-office sync: connected to %s:%d as %s", self.params.host,
                     self.params.port, self.params.client_id)
            self._changes.notify()
            try:
                codes = await client.subscribe([(self.topics.policy, 1), (self.topics.cmd, 1),
                                                (self.topics.ack, 1), (self.topics.crl_all, 1)])
                self.info.subscribe_failures = suback_failures(codes)
                if self.info.subscribe_failures:
                    log.error("the broker refused subscriptions: %s",
                              self.info.subscribe_failures)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client))
                    tg.create_task(self._drain(client))
                    tg.create_task(self._status_loop(client))
                    tg.create_task(client.wait_disconnected())
            except asyncio.CancelledError:
                # A clean stop: say "offline" ourselves (the will is only for a lost link).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await client.publish_checked(self.topics.status,
                                                     offline_status(self.site, self.gateway),
                                                     retain=True)
                raise
            except aiomqtt.MqttError as e:
                raise BrokerError(str(e)) from None
            except BaseExceptionGroup as eg:
                first = _first_error(eg)
                if isinstance(first, BrokerError):
                    raise first from None
                if isinstance(first, aiomqtt.MqttError):
                    raise BrokerError(str(first)) from None
                raise

    async def _receive(self, client: Client) -> None:
        t = self.topics
        crl_prefix = t.crl_all[:-1]
        async for message in client.messages:
            topic, payload = message.topic.value, message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            if topic == t.ack:
                self._handle_ack(data)
            elif topic == t.policy:
                self.inbound.policy.put("policy", data)
            elif topic == t.cmd:
                self.inbound.command(data)
            elif topic.startswith(crl_prefix):
                self.inbound.crl.put(topic, data)
            else:
                log.warning("message on unexpected topic %s ignored", topic)

    # --- events out ----------------------------------------------------------------------------
    async def _drain(self, client: Client) -> None:
        cfg, journal = self.config, self.journal
        sent = journal.acked
        while True:
            acked = journal.acked
            sent = max(sent, acked)
            room = cfg.window - (sent - acked)
            if room > 0 and journal.committed_seq > sent:
                # Reading and encoding a batch costs milliseconds: not on the doors' loop.
                batch = await asyncio.to_thread(self._next_batch, sent, acked,
                                                min(cfg.batch, room))
                if batch:
                    # Pipelined: the whole batch is in flight at once, in sequence order.
                    async with asyncio.TaskGroup() as tg:
                        for _, payload in batch:
                            tg.create_task(client.publish_checked(self.topics.events, payload))
                    sent = batch[-1][0]
                    self.info.sent = sent
                    self._changes.notify()
                    continue
            self._wake.clear()
            if room > 0 and journal.committed_seq > sent:
                continue
            timeout = None
            if sent > journal.acked:
                timeout = cfg.resend_after - (time.monotonic() - self._last_progress)
                if timeout <= 0:
                    # The broker took them, head office did not confirm: dropped for want of a
                    # subscriber, or lost with a broker that crashed. Send them again.
                    log.warning("no acknowledgement from head office for %.0f s: sending "
                                "events %d..%d again", cfg.resend_after, journal.acked + 1, sent)
                    sent = journal.acked
                    self._last_progress = time.monotonic()
                    self.info.resends += 1
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _next_batch(self, sent: int, acked: int, limit: int) -> list[tuple[int, bytes]]:
        events = self.journal.unacked(after=sent, limit=limit)
        return chunk_events(events, self.site, acked, per_message=self.config.events_per_message,
                            max_bytes=self.config.message_bytes)

    def _handle_ack(self, payload: bytes) -> None:
        try:
            seq = decode_ack(payload)
        except MessageError as e:
            log.warning("%s: ignored: %s", self.topics.ack, e)
            return
        if seq > self.journal.last_seq:
            # Head office has seen more than this journal holds: the database was replaced, or
            # another gateway uses our name. Never mark unsent events delivered.
            if not self._ack_ahead_alarmed:
                self._ack_ahead_alarmed = True
                self._alarm("sync-ack-ahead", True)
                log.error("head office acknowledges sequence %d, but the journal ends at %d",
                          seq, self.journal.last_seq)
                self.journal.append("alarm.sync-ack-ahead", reason="ack-ahead", acked=seq,
                                    last_seq=self.journal.last_seq)
            return
        before = self.journal.acked
        mark = self.journal.ack(seq)
        self.info.acked = mark
        if mark > before:
            self._last_progress = time.monotonic()
            self._wake.set()
            self._check_backlog()
            self._changes.notify()

    # --- status and housekeeping ---------------------------------------------------------------
    def _status_doc(self) -> bytes:
        try:
            base = dict(self.status())
        except Exception as e:
            log.exception("status() failed")
            base = {"status_error": str(e)}
        j, i = self.journal, self.info
        alarms = [str(a) for a in base.get("alarms", []) or []]
        alarms += [a for a in i.alarms if a not in alarms]
        if j.fault is not None and "journal-fault" not in alarms:
            alarms.append("journal-fault")
        base.update({
            "site": self.site, "gateway": self.gateway, "online": True, "state": "online",
            "at": round(time.time(), 3), "alarms": alarms,
            "journal": {"last_seq": j.last_seq, "acked": j.acked, "backlog": j.backlog,
                        "fault": j.fault},
            "sync": {"connects": i.connects, "resends": i.resends, "policy": i.policy,
                     "crl": i.crl, "commands": i.commands,
                     "subscribe_failures": i.subscribe_failures},
        })
        return encode_status(base)

    async def _status_loop(self, client: Client) -> None:
        while True:
            self._status_now.clear()
            await client.publish_checked(self.topics.status, self._status_doc(), retain=True)
            self.info.status_published += 1
            self._changes.notify()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.status_interval):
                    await self._status_now.wait()

    async def _purge_loop(self) -> None:
        while True:
            try:
                n = await asyncio.to_thread(self.journal.purge, self.config.event_retention)
                if n:
                    log.info("purged %d acknowledged events older than %.1f days", n,
                             self.config.event_retention / 86400)
            except JournalError as e:
                log.error("purge of acknowledged events failed: %s", e)
            await asyncio.sleep(self.config.purge_interval)
