"""Live events for control-API followers (the dashboard): every journaled event, in order, from
any thread, fanned out to each follower's bounded queue on the event loop.

A follower may ask for the events after a sequence number first (the backlog, read from the
journal once everything appended so far is on disk), then follows live without a gap or a
duplicate. A follower that falls more than `limit` events behind is dropped with an "overflow"
item: it reconnects with `after` = the last sequence it saw and misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.journal import Event, Journal

OVERFLOW = object()


class EventHub:
    def __init__(self, journal: Journal, limit: int = 10_000) -> None:
        self.journal = journal
        self.limit = limit
        self._loop = asyncio.get_running_loop()
        self._queues: set[asyncio.Queue[object]] = set()
        journal.subscribe(self._from_any_thread)

    def _from_any_thread(self, event: Event) -> None:
        if self._queues:
            self._loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: Event) -> None:
        for q in list(self._queues):
            if q.full():
                self._queues.discard(q)
                q.get_nowait()  # room for the overflow marker
                q.put_nowait(OVERFLOW)
            else:
                q.put_nowait(event)

    async def follow(self, after: int | None = None) -> AsyncIterator[Event | None]:
        """Events in sequence order: those after `after` (None: none of the past), then live.
        Yields None once when the follower fell too far behind, then ends."""
        q: asyncio.Queue[object] = asyncio.Queue(self.limit)
        self._queues.add(q)
        try:
            last = 0
            if after is not None:
                await asyncio.to_thread(self.journal.flush)
                last = after
                while True:
                    page = await asyncio.to_thread(self.journal.events, None, last, 1000)
                    for ev in page:
                        yield ev
                        last = ev.seq
                    if len(page) < 1000:
                        break
            while True:
                item = await q.get()
                if item is OVERFLOW:
                    yield None
                    return
                assert isinstance(item, Event)
                if item.seq > last:
                    last = item.seq
                    yield item
        finally:
            self._queues.discard(q)
