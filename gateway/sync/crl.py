"""CRLs without head office: each distribution point is fetched before the CRL's nextUpdate
(and polled with a conditional GET every `refresh` seconds), early when a notice arrives on
`portvakt/crl/<issuer-key-id>`. What comes in goes to the service's `on_crl` (verification and
the revocation index: an older CRL never replaces a newer one there).

The points are the configured `urls` and, with `from_certificates`, those the certificates name
(`learn`: the trust store's CA certificates at start, each validated card certificate as it is
presented), remembered across restarts, at most MAX_LEARNED of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import JournalError
from gateway.journal import Journal
from gateway.sync.config import CrlFetchConfig
from gateway.sync.fetch import FetchError, fetch
from gateway.sync.state import SyncState
from gateway.trust.revocation import CrlIndex
from gateway.trust.validator import TrustStore

log = logging.getLogger(__name__)

MAX_LEARNED = 32  # distribution points taken from certificates (a site has a handful of CAs)
LEARNED_KEY = "crl-dp-learned"
FETCHES_AT_ONCE = 4


def to_der(data: bytes) -> bytes:
    """A CRL as DER: PEM ("-----BEGIN X509 CRL-----") is decoded, anything else kept."""
    if b"-----BEGIN X509 CRL-----" in data[:4096]:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            return x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        except ValueError:
            return data  # the ingest says what is wrong with it
    return data


def crl_ingester(store: TrustStore, source: str = "sync") -> Callable[[bytes], CrlIndex]:
    """An `on_crl` for SyncService: verify and install a CRL (DER or PEM) in `store`'s
    revocation index; the CRL in use when it is the same one. Blocking (seconds for a
    million entries): SyncService calls it on a worker thread; lookups keep answering from the
    old index meanwhile. Raises TrustError when refused (also: not newer than the one in use)."""

    def ingest(data: bytes) -> CrlIndex:
        der = to_der(data)
        digest = hashlib.sha256(der).hexdigest()
        for idx in store.revocation.all():
            if idx.sha256 == digest:
                return idx
        return store.revocation.ingest(der, store.signers(), now=time.time(),
                                       clock_skew=store.clock_skew, source=source)

    return ingest


@dataclass
class _Point:
    url: str
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    next_update: float | None = None
    fetched_at: float = 0.0
    failures: int = 0
    due: float = 0.0  # monotonic


class CrlFetcher:
    """Fetch loop over the configured distribution points. `ingest(data)` installs a CRL (may
    return an object with `next_update`, POSIX seconds, as CrlIndex has); exceptions from it
    are a refused CRL. `on_result(url, outcome, detail)` reports each attempt."""

    def __init__(self, config: CrlFetchConfig, ingest: Callable[[bytes], Awaitable[Any]],
                 state: SyncState, journal: Journal, *, ca_file: Path | None = None,
                 on_result: Callable[[str, str, str], None] | None = None) -> None:
        self.config = config
        self.ingest = ingest
        self.state = state
        self.journal = journal
        self.ca_file = ca_file
        self.on_result = on_result
        self.points = [_Point(u) for u in config.urls]
        self.learned: list[str] = []
        self._learned_dirty = False
        self._restored = False
        self._early: list[tuple[tuple[str, ...], str]] = []  # learnt before the restore
        self._wake = asyncio.Event()

    def learn(self, urls: Sequence[str], named_by: str) -> list[str]:
        """Fetch `urls` too (distribution points a certificate of `named_by` names), at once and
        from then on; returns those that were new. A no-op without `from_certificates`. Call
        it on the loop."""
        if not self.config.from_certificates:
            return []
        if not self._restored:
            self._early.append((tuple(urls), named_by))
            return []
        known = {p.url for p in self.points}
        new = [u for u in dict.fromkeys(urls) if u not in known]
        room = MAX_LEARNED - len(self.learned)
        if len(new) > room:
            log.warning("CRL distribution points from certificates: %d already, not adding %s",
                        MAX_LEARNED, ", ".join(new[room:]))
            new = new[:max(0, room)]
        for url in new:
            self._add_learned(url)
            log.info("CRL distribution point %s (named by %s) will be fetched", url, named_by)
            self.journal.append("crl.point-learned", source=url, named_by=named_by)
        if new:
            self._learned_dirty = True
            self._wake.set()
        return new

    def _add_learned(self, url: str) -> None:
        self.points.append(_Point(url))
        self.learned.append(url)

    def wake(self) -> None:
        """Fetch every distribution point now (a notice of a new CRL arrived)."""
        for p in self.points:
            p.due = 0.0
        self._wake.set()

    def _load(self, urls: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """On a worker thread: the learned points saved by an earlier run, and the fetch state
        saved for each point (`urls` and those learned)."""
        learned: list[str] = []
        if self.config.from_certificates:
            try:
                got = self.state.get(LEARNED_KEY)
            except JournalError as e:
                log.warning("learned CRL distribution points unreadable: %s", e)
                got = None
            learned = [u for u in got if isinstance(u, str)] if isinstance(got, list) else []
        saved: dict[str, dict[str, Any]] = {}
        for url in dict.fromkeys([*urls, *learned]):
            try:
                value = self.state.get(f"crl-dp:{url}")
            except JournalError as e:
                log.warning("CRL fetch state unreadable, fetching %s now: %s", url, e)
                continue
            if isinstance(value, dict):
                saved[url] = value
        return learned, saved

    def _restore(self, learned: list[str], saved: dict[str, dict[str, Any]]) -> None:
        """On the loop: add the saved learned points, then set each point's saved state."""
        known = {p.url for p in self.points}
        for url in learned:
            if url not in known and len(self.learned) < MAX_LEARNED:
                self._add_learned(url)
                known.add(url)
        now_wall, now = time.time(), time.monotonic()
        for p in self.points:
            value = saved.get(p.url)
            if value is None:
                continue
            p.etag, p.last_modified = value.get("etag"), value.get("last_modified")
            p.sha256, p.next_update = value.get("sha256"), value.get("next_update")
            p.fetched_at = float(value.get("fetched_at", 0.0))
            p.due = now + max(0.0, self._next_due(p, p.fetched_at) - now_wall)

    def _next_due(self, p: _Point, after: float) -> float:
        """Wall-clock time of the next fetch after a successful one at `after`."""
        c = self.config
        due = after + c.refresh
        if p.next_update is not None:
            early = p.next_update - c.lead
            # Inside the lead window with nothing newer published yet: ask again soon.
            due = min(due, early) if early > after else min(due, after + c.retry)
        return due

    async def run(self) -> None:
        """Fetch until cancelled. May run again after that (a supervisor's restart)."""
        self._restored = False  # points learned meanwhile wait for the restore
        learned, saved = await asyncio.to_thread(self._load, [p.url for p in self.points])
        self._restore(learned, saved)
        self._restored = True
        early, self._early = self._early, []
        for urls, named_by in early:
            self.learn(urls, named_by)
        gate = asyncio.Semaphore(FETCHES_AT_ONCE)

        async def attempt(p: _Point) -> None:
            async with gate:
                await self._attempt(p)

        while True:
            if self._learned_dirty:
                try:
                    await asyncio.to_thread(self.state.put, LEARNED_KEY, list(self.learned))
                    self._learned_dirty = False
                except JournalError as e:  # tried again at the next round
                    log.warning("learned CRL distribution points not saved: %s", e)
            now = time.monotonic()
            # Together (a few at a time): a point that does not answer never holds up the
            # others, nor a notice's early fetch.
            due = [p for p in self.points if p.due <= now]
            await asyncio.gather(*(attempt(p) for p in due))
            self._wake.clear()
            wait = min((p.due for p in self.points), default=None)
            try:
                async with asyncio.timeout(None if wait is None else
                                           max(0.0, wait - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _attempt(self, p: _Point) -> None:
        c = self.config
        try:
            got = await asyncio.to_thread(
                fetch, p.url, max_bytes=c.max_bytes, ca_file=self.ca_file, allow_http=True,
                timeout=c.timeout, etag=p.etag, last_modified=p.last_modified)
        except FetchError as e:
            p.failures += 1
            delay = min(c.retry * 2 ** (p.failures - 1), c.refresh)
            p.due = time.monotonic() + delay
            log.warning("CRL fetch from %s failed (%s); again in %.0f s", p.url, e, delay)
            self._report(p.url, "failed", str(e))
            return
        p.failures = 0
        p.fetched_at = time.time()
        p.etag, p.last_modified = got.etag or p.etag, got.last_modified or p.last_modified
        if got.data is None or got.sha256 == p.sha256:
            self._report(p.url, "unchanged", "")
        else:
            try:
                result = await self.ingest(got.data)
            except Exception as e:
                log.warning("CRL from %s refused: %s", p.url, e)
                self.journal.append("sync.crl-refused", source=p.url, detail=str(e)[:500])
                self._report(p.url, "refused", str(e))
            else:
                nu = getattr(result, "next_update", None)
                p.next_update = float(nu) if isinstance(nu, int | float) else None
                self._report(p.url, "installed", "")
            p.sha256 = got.sha256  # refused or not: the same bytes are not ingested again
        p.due = time.monotonic() + max(0.0, self._next_due(p, p.fetched_at) - time.time())
        try:
            await asyncio.to_thread(self.state.put, f"crl-dp:{p.url}", {
                "etag": p.etag, "last_modified": p.last_modified, "sha256": p.sha256,
                "next_update": p.next_update, "fetched_at": p.fetched_at})
        except JournalError as e:
            log.warning("CRL fetch state not saved: %s", e)

    def _report(self, url: str, outcome: str, detail: str) -> None:
        if self.on_result is not None:
            self.on_result(url, outcome, detail)
