"""A failing part is restarted with backoff and journaled; the others keep running."""

from __future__ import annotations

import asyncio

import pytest

from gateway.journal import Journal
from gateway.supervisor import supervise


async def test_a_failing_part_is_restarted_with_backoff_and_journaled(tmp_path):
    journal = Journal(tmp_path / "j.db", "gw")
    runs: list[float] = []
    third = asyncio.Event()
    healthy = asyncio.Event()

    async def flaky() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) == 3:
            third.set()
            await asyncio.Event().wait()  # the third start stays up
        raise RuntimeError(f"boom {len(runs)}")

    async def other() -> None:
        healthy.set()
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(supervise("flaky", flaky, journal, first=0.01, most=1)),
             asyncio.create_task(supervise("other", other, journal))]
    try:
        await asyncio.wait_for(third.wait(), 5)
        await asyncio.wait_for(healthy.wait(), 5)
        # Backoff doubles: each restart waited at least its own (doubled) time; a loaded
        # machine only makes the waits longer.
        assert runs[1] - runs[0] >= 0.01 and runs[2] - runs[1] >= 0.02
        assert not tasks[1].done()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with pytest.raises(asyncio.CancelledError):
                await t
    journal.flush()
    restarts = journal.events("alarm.part-restarted")
    journal.close()
    assert [e.data["detail"] for e in restarts] == ["RuntimeError: boom 1", "RuntimeError: boom 2"]
    assert all(e.data["part"] == "flaky" for e in restarts)
