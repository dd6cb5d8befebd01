"""What the sync service is doing, for the status message, the dashboard and tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncInfo:
    connected: bool = False
    connects: int = 0
    last_error: str | None = None
    sent: int = 0  # highest sequence the broker acknowledged in this session
    acked: int = 0  # head office's high-water mark
    resends: int = 0
    status_published: int = 0
    policy: dict[str, Any] | None = None  # the last policy offered: its outcome
    crl: dict[str, Any] = field(default_factory=dict)  # per topic or URL: the last outcome
    commands: dict[str, int] = field(default_factory=lambda: {"executed": 0, "refused": 0,
                                                              "failed": 0})
    handled: dict[str, int] = field(default_factory=lambda: {"policy": 0, "crl": 0, "cmd": 0})
    alarms: list[str] = field(default_factory=list)
    subscribe_failures: list[str] = field(default_factory=list)


class Changes:
    """Wait until a condition on some state holds, woken by `notify()` at each change of it
    (on the event loop). SyncService and head office's Collector use one each."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        """Return once `predicate()` holds (checked at each notify); TimeoutError after
        `within` seconds."""
        async with asyncio.timeout(within):
            while not predicate():
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
