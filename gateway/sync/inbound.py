"""Messages from head office, each kind on its own worker so a slow one never holds up another
(nor the outbox): the policy (inline or a signed manifest), CRLs (inline, a manifest, or a
notice for the distribution-point fetcher), and signed commands.

Retained topics keep only their newest message: a policy or CRL that arrives while an older one
waits is the one handled. Verification, fetches and the callbacks' work run on worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.bundle import VerifyKey
from gateway.errors import JournalError
from gateway.journal import Journal
from gateway.sync.config import SyncConfig
from gateway.sync.crl import CrlFetcher
from gateway.sync.fetch import FetchError, fetch
from gateway.sync.info import SyncInfo
from gateway.sync.signed import (
    MANIFEST,
    SignedError,
    VerifiedCommand,
    open_command,
    open_manifest,
    payload_type,
)
from gateway.sync.state import SyncState

log = logging.getLogger(__name__)

OnPolicy = Callable[[bytes], Any]
OnCrl = Callable[[bytes], Any]
OnCommand = Callable[[VerifiedCommand], Awaitable[Mapping[str, Any]]]
CRL_NOTICE = "portvakt.crl-notice"
MAX_COMMANDS_WAITING = 1000
_FINAL = ("bad-url",)  # a fetch failure worth no retry; mismatches may be an upload in progress


class Latest:
    """The newest payload per key; an older one not yet handled is dropped."""

    def __init__(self) -> None:
        self._items: dict[str, bytes] = {}
        self._event = asyncio.Event()

    def put(self, key: str, payload: bytes) -> None:
        self._items.pop(key, None)
        self._items[key] = payload
        self._event.set()

    def newer(self, key: str) -> bool:
        return key in self._items

    async def get(self) -> tuple[str, bytes]:
        while not self._items:
            self._event.clear()
            await self._event.wait()
        key = next(iter(self._items))
        return key, self._items.pop(key)

    async def changed(self, seconds: float) -> None:
        """Wait until a new payload arrives, at most `seconds`."""
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()


async def call(fn: Callable[[bytes], Any], data: bytes) -> Any:
    """`fn(data)` on a worker thread; an awaitable it returns is awaited on the loop."""
    result = await asyncio.to_thread(fn, data)
    if inspect.isawaitable(result):
        result = await result
    return result


class Inbound:
    def __init__(self, config: SyncConfig, site: str, gateway: str, journal: Journal,
                 state: SyncState, info: SyncInfo, *, manifest_keys: Mapping[str, VerifyKey],
                 command_keys: Mapping[str, VerifyKey], on_policy: OnPolicy, on_crl: OnCrl,
                 on_command: OnCommand, changed: Callable[[], None],
                 publish_status: Callable[[], None], fetcher: CrlFetcher) -> None:
        self.config = config
        self.site = site
        self.gateway = gateway
        self.journal = journal
        self.state = state
        self.info = info
        self.manifest_keys = manifest_keys
        self.command_keys = command_keys
        self.on_policy = on_policy
        self.on_crl = on_crl
        self.on_command = on_command
        self.changed = changed
        self.publish_status = publish_status
        self.fetcher = fetcher
        self.policy = Latest()
        self.crl = Latest()
        self.commands: asyncio.Queue[bytes] = asyncio.Queue(MAX_COMMANDS_WAITING)
        self._refused_policy: str | None = None  # digest of the last inline policy refused
        self._alarmed: set[str] = set()  # manifests (or their content) refused and journaled

    def command(self, data: bytes) -> None:
        try:
            self.commands.put_nowait(data)
        except asyncio.QueueFull:
            log.error("more than %d commands waiting; one dropped", MAX_COMMANDS_WAITING)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._worker("policy", self.policy, self._policy))
            tg.create_task(self._worker("crl", self.crl, self._crl))
            tg.create_task(self._command_worker())

    async def _worker(self, kind: str, slot: Latest,
                      handle: Callable[[str, bytes], Awaitable[None]]) -> None:
        while True:
            key, data = await slot.get()
            try:
                await handle(key, data)
            except Exception:
                log.exception("%s message on %s not handled", kind, key)
            self.info.handled[kind] += 1
            self.changed()

    # --- manifests -----------------------------------------------------------------------------
    async def _fetch_manifest(self, slot: Latest, key: str, data: bytes, kind: str,
                              scope: str) -> tuple[bytes, str] | None:
        """The checked content a manifest points at; None when refused, already handled or
        superseded. A failing fetch is retried with backoff until it works or a newer message
        comes; its failure is journaled once."""
        cfg = self.config
        try:
            m = open_manifest(data, self.manifest_keys, kind=kind, scope=scope,
                              max_size=cfg.max_fetch_bytes, allow_http=cfg.allow_http)
        except SignedError as e:
            digest = hashlib.sha256(data).hexdigest()
            if digest not in self._alarmed:  # a retained one comes again at each reconnect
                self._alarmed.add(digest)
                self._refused(kind, key, e.reason, str(e), "manifest")
            return None
        if await asyncio.to_thread(self.state.get, f"manifest:{key}") == m.sha256:
            log.debug("%s: manifest %s already handled", key, m.sha256[:16])
            return None
        delay = cfg.backoff_initial
        while True:
            try:
                got = await asyncio.to_thread(
                    fetch, m.url, max_bytes=cfg.max_fetch_bytes, size=m.size, sha256=m.sha256,
                    ca_file=cfg.fetch_ca_file, allow_http=cfg.allow_http,
                    timeout=cfg.fetch_timeout)
            except FetchError as e:
                transient = e.reason in ("unreachable", "http-error")
                first = m.sha256 not in self._alarmed
                self._alarmed.add(m.sha256)
                if not transient and (first or e.reason in _FINAL):
                    self._refused(kind, key, e.reason, str(e), m.url)
                else:
                    if first:
                        self.journal.append("sync.fetch-failed", reason=e.reason,
                                            detail=str(e)[:500], source=m.url)
                    self._record(kind, key, {"status": "fetch-failed", "reason": e.reason,
                                             "detail": str(e)})
                if e.reason in _FINAL:
                    return None
                log.warning("%s: fetching %s failed (%s); again in %.1f s", key, m.url, e, delay)
                await slot.changed(delay)
                if slot.newer(key):
                    return None
                delay = min(delay * 2, cfg.backoff_max if transient else
                            max(cfg.backoff_max, 3600.0))
                continue
            assert got.data is not None
            self._alarmed.discard(m.sha256)
            return got.data, m.sha256

    def _refused(self, kind: str, key: str, reason: str, detail: str, source: str) -> None:
        log.error("%s refused (%s): %s", kind, reason, detail)
        if kind == "policy":
            self.journal.append("alarm.policy-rejected", reason=reason, detail=detail[:500],
                                source=source)
        else:
            self.journal.append("sync.crl-refused", reason=reason, detail=detail[:500],
                                source=source)
        self._record(kind, key, {"status": "rejected", "reason": reason, "detail": detail})
        self.publish_status()

    def _record(self, kind: str, key: str, outcome: dict[str, Any]) -> None:
        if kind == "policy":
            self.info.policy = outcome
        else:
            self.info.crl[key] = {**outcome, "at": round(time.time(), 3)}
        self.changed()

    # --- policy --------------------------------------------------------------------------------
    async def _policy(self, key: str, data: bytes) -> None:
        if not data:
            return  # the retained policy was cleared: the one in force stays
        manifest: str | None = None
        if payload_type(data) == MANIFEST:
            got = await self._fetch_manifest(self.policy, key, data, "policy", self.site)
            if got is None:
                return
            data, manifest = got
        else:
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._refused_policy:
                return  # the same refused bundle again (a reconnect): said once is enough
        try:
            outcome = await call(self.on_policy, data)
        except Exception as e:
            log.exception("on_policy failed")
            self._refused("policy", key, "error", str(e), "on_policy")
            return
        status = str(getattr(outcome, "status", "unknown"))
        self._record("policy", key, {
            "status": status, "reason": getattr(outcome, "reason", None),
            "version": getattr(outcome, "version", None),
            "detail": getattr(outcome, "detail", None), "manifest": manifest})
        log.info("policy from head office: %s (%s)", status, getattr(outcome, "detail", ""))
        if manifest is not None and status in ("applied", "ignored"):
            await asyncio.to_thread(self.state.put, f"manifest:{key}", manifest)
        if manifest is None:  # a store error may pass: that one is offered again
            self._refused_policy = digest if status == "rejected" and \
                getattr(outcome, "reason", None) != "store-error" else None
        self.publish_status()

    # --- CRLs ----------------------------------------------------------------------------------
    async def ingest_crl(self, data: bytes) -> Any:
        return await call(self.on_crl, data)

    def crl_result(self, source: str, outcome: str, detail: str) -> None:
        """The distribution-point fetcher's report of one attempt."""
        self._record("crl", source, {"status": outcome, "detail": detail})
        if outcome == "installed":
            self.publish_status()

    async def _crl(self, topic: str, data: bytes) -> None:
        if not data:
            return
        kind = payload_type(data)
        if kind is None and data[:1] == b"{":
            with contextlib.suppress(ValueError):
                doc = json.loads(data)
                kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == CRL_NOTICE:
            log.info("%s: notice of a new CRL; fetching the distribution points", topic)
            self.fetcher.wake()
            self._record("crl", topic, {"status": "notice"})
            return
        if kind == MANIFEST:
            got = await self._fetch_manifest(self.crl, topic, data, "crl",
                                             topic.rsplit("/", 1)[-1])
            if got is None:
                return
            data, digest = got
        else:
            digest = hashlib.sha256(data).hexdigest()
            if await asyncio.to_thread(self.state.get, f"manifest:{topic}") == digest:
                return
        try:
            result = await self.ingest_crl(data)
        except Exception as e:
            self._refused("crl", topic, "refused", str(e), topic)
        else:
            self.journal.append("sync.crl-installed", source=topic, sha256=digest[:16],
                                next_update=getattr(result, "next_update", None))
            self._record("crl", topic, {"status": "installed", "sha256": digest})
            self.publish_status()
        # Installed or refused, the same bytes are not ingested again.
        await asyncio.to_thread(self.state.put, f"manifest:{topic}", digest)

    # --- commands ------------------------------------------------------------------------------
    async def _command_worker(self) -> None:
        while True:
            data = await self.commands.get()
            try:
                await self._command(data)
            except Exception:
                log.exception("command not handled")
            self.info.handled["cmd"] += 1
            self.changed()

    async def _command(self, data: bytes) -> None:
        cfg = self.config
        try:
            cmd = open_command(data, self.command_keys, site=self.site, gateway=self.gateway,
                               now=time.time(), max_ttl=cfg.command_max_ttl,
                               clock_skew=cfg.clock_skew)
            # Recorded before it runs: a crash after the door opened cannot make it run twice.
            fresh = await asyncio.to_thread(self.state.use_nonce, cmd.nonce,
                                            cmd.expires_at + cfg.clock_skew, time.time())
            if not fresh:
                raise SignedError("replayed", f"command nonce {cmd.nonce[:12]}... was used "
                                              f"before")
        except (SignedError, JournalError) as e:
            reason = e.reason if isinstance(e, SignedError) else "journal-fault"
            log.error("command refused (%s): %s", reason, e)
            self.journal.append("sync.command-refused", reason=reason, detail=str(e)[:500])
            self.info.commands["refused"] += 1
            return
        fields: dict[str, Any] = {"action": cmd.action, "args": dict(cmd.args),
                                  "key_id": cmd.key_id[:16], "nonce": cmd.nonce}
        try:
            if cmd.action == "status.resend":
                self.publish_status()
                result: Mapping[str, Any] = {"status": "resent"}
            else:
                result = await self.on_command(cmd)
        except Exception as e:
            log.error("command %s failed: %s", cmd.action, e)
            self.journal.append("sync.command-failed", reason="failed", detail=str(e)[:500],
                                **fields)
            self.info.commands["failed"] += 1
        else:
            log.info("command %s carried out: %s", cmd.action, result)
            self.journal.append("sync.command-executed", result=dict(result), **fields)
            self.info.commands["executed"] += 1
