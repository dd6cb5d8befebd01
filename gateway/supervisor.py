"""Supervised parts: a part of the daemon (a reader, a relay board's poller, a door, the mode
clock) that fails is logged, journaled and restarted with exponential backoff; it never takes
the others down. A part that ran for a while before failing starts its backoff afresh."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.journal import Journal

log = logging.getLogger(__name__)


async def supervise(name: str, part: Callable[[], Awaitable[None]], journal: Journal, *,
                    first: float = 0.5, most: float = 30.0, healthy_after: float = 60.0) -> None:
    """Run `part()` until cancelled, restarting it whenever it raises or returns."""
    backoff = first
    while True:
        started = time.monotonic()
        try:
            await part()
            reason = "ended"
            log.error("%s ended by itself; restarting in %.1f s", name, backoff)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the point of a supervisor: any failure is contained here
            reason = f"{type(e).__name__}: {e}"
            log.exception("%s failed; restarting in %.1f s", name, backoff)
        if time.monotonic() - started >= healthy_after:
            backoff = first
        journal.append("alarm.part-restarted", part=name, reason="part-failed", detail=reason,
                       backoff_s=backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, most)
