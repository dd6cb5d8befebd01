"""The policy in force: the last good signed bundle from the SQLite store, offers of new bundles
(from the configured file until MQTT sync delivers them), and the journal lines and alarms about
them. A rejected bundle never replaces the policy in force."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from gateway.bundle import BundleError, Outcome, PolicyStore, VerifiedBundle, load_keys, stale
from gateway.config import Config
from gateway.journal import Journal
from gateway.policy import Policy

log = logging.getLogger(__name__)


class PolicySource:
    def __init__(self, config: Config, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        self.keys = load_keys(config.policy.keys)
        self.store = PolicyStore(config.database, self.keys, config.site)
        self.bundle: VerifiedBundle | None = None
        self.last_rejection: dict[str, Any] | None = None
        self._stale_alarmed = False
        # Offers come from the loop's worker threads (file reload) and from MQTT sync's.
        self._lock = threading.Lock()

    @property
    def current(self) -> Policy | None:
        return self.bundle.policy if self.bundle is not None else None

    def start(self) -> None:
        """Load the stored policy, then offer the configured bundle file."""
        try:
            self.bundle = self.store.current()
        except BundleError as e:
            log.error("the stored policy is unusable: %s; every door denies until a good "
                      "bundle arrives", e)
            self.journal.append("alarm.policy-invalid", reason=e.reason, detail=str(e))
        if self.bundle is not None:
            self.journal.append("policy.loaded", version=self.bundle.version,
                                digest=self.bundle.digest[:16])
        if self.config.policy.bundle is not None:
            self.reload()
        if self.bundle is None:
            log.error("no access policy: every door denies")
            self.journal.append("alarm.no-policy", reason="no-policy")

    def reload(self) -> str:
        """Offer the configured bundle file; returns applied / ignored / rejected / absent."""
        data = self._read()
        return data if isinstance(data, str) else self.offer(data).status

    async def reload_async(self) -> str:
        """`reload` off the event loop: opening a large bundle takes seconds (a 100,000-person
        bundle about three), during which doors keep deciding on the policy in force."""
        data = await asyncio.to_thread(self._read)
        if isinstance(data, str):
            return data
        return (await asyncio.to_thread(self.offer, data)).status

    def offer(self, data: bytes) -> Outcome:
        """Offer a signed bundle that arrived from head office (MQTT sync). Blocking (seconds
        for a large bundle): call it off the event loop. Journals its outcome."""
        with self._lock:
            outcome = self.store.offer(data)
            self._outcome(outcome)
        return outcome

    def _read(self) -> bytes | str:
        """The bundle file's bytes, or the outcome ("absent", "rejected") when there are none."""
        path = self.config.policy.bundle
        if path is None:
            return "absent"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            log.warning("no policy bundle at %s; the policy in force is kept", path)
            return "absent"
        except OSError as e:
            self._rejected("unreadable", f"{path}: {e.strerror}", None)
            return "rejected"

    def _outcome(self, outcome: Outcome) -> str:
        if outcome.status == "applied":
            self.bundle = outcome.bundle
            self._stale_alarmed = False
            self.last_rejection = None
            self.journal.append("policy.applied", version=outcome.version,
                                previous=outcome.previous, digest=outcome.digest[:16]
                                if outcome.digest else None)
            log.info("policy version %s applied (was %s)", outcome.version, outcome.previous)
        elif outcome.status == "rejected":
            self._rejected(outcome.reason or "rejected", outcome.detail or "", outcome.version)
        return outcome.status

    def _rejected(self, reason: str, detail: str, version: int | None) -> None:
        self.last_rejection = {"reason": reason, "detail": detail, "version": version}
        log.error("policy bundle rejected (%s): %s; the policy in force is kept", reason, detail)
        self.journal.append("alarm.policy-rejected", reason=reason, detail=detail,
                            offered=version,
                            kept=self.bundle.version if self.bundle is not None else None)

    def watch(self, now: float) -> None:
        """Raise the stale-policy alarm once when the policy passes its not_after."""
        if self.bundle is not None and stale(self.bundle, now) and not self._stale_alarmed:
            self._stale_alarmed = True
            log.error("policy version %d is past its not_after; still deciding on it",
                      self.bundle.version)
            self.journal.append("alarm.policy-stale", reason="policy-stale",
                                version=self.bundle.version)

    def status(self, now: float) -> dict[str, Any]:
        b = self.bundle
        if b is None:
            return {"version": None, "rejected": self.last_rejection}
        return {"version": b.version, "issued_at": b.issued_at.isoformat(),
                "not_after": b.not_after.isoformat(), "stale": stale(b, now),
                "age_s": round(now - b.issued_at.timestamp()), "rejected": self.last_rejection}
