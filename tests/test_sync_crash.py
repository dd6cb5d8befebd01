"""The gateway killed with SIGKILL mid-stream and started again: no event that reached the disk
is lost, none is stuck in the outbox. The gateway's sync runs in a process of its own
(`python -m tests.fixtures_mqtt gateway`), head office's collector in the test."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.rig.mosquitto import Mosquitto
from tests.fixtures_mqtt import REPO, SITE, HqKeys, make_collector, running, spec_for, sync_config

TOTAL = 2000


class GatewayProcess:
    """The gateway harness process; its stdout lines parsed on a reader thread."""

    def __init__(self, spec: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures_mqtt", "gateway",
                                      str(spec)], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.values: dict[str, int] = {}
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="gateway-process-reader")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                if m := re.fullmatch(r"(started|committed|drained) (\d+)\n", line):
                    self.values[m[1]] = int(m[2])
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate() or self.proc.poll() is not None, timeout)
            assert ok and predicate(), "".join(self.lines[-30:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.close()

    def close(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._thread.join(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return rc


async def test_sigkill_mid_stream_then_restart_loses_nothing_and_leaves_nothing_stuck(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    gw_dir = tmp_path / "gw"
    # A narrow window keeps the stream going long enough to be cut in the middle.
    spec = spec_for(gw_dir, sync_config(sync_broker, gw_dir, hq_keys, user=f"{SITE}/gw-1",
                                        window=100, batch=100, events_per_message=10), hq_keys)
    collector = make_collector(tmp_path / "hq", sync_broker)
    key = (SITE, "gw-1")
    async with running(collector):
        await collector.wait_for(lambda: collector.info.connected)
        first = GatewayProcess(spec)
        try:
            await asyncio.to_thread(first.wait, lambda: "started" in first.values)
            first.send("append 1500")
            await asyncio.to_thread(first.wait, lambda: first.values.get("committed") == 1500)
            # Head office has some of them, the rest are in flight or on disk: kill it.
            await collector.wait_for(lambda: collector.info.acked.get(key, 0) >= 300, 60)
        finally:
            first.kill()
        acked_at_kill = collector.info.acked.get(key, 0)

        second = GatewayProcess(spec)
        try:
            await asyncio.to_thread(second.wait, lambda: "started" in second.values)
            assert second.values["started"] == 1500  # the sequence goes on from the disk
            second.send(f"append {TOTAL - 1500}")
            second.send("drain")
            await asyncio.to_thread(second.wait, lambda: "drained" in second.values, 120)
            assert await asyncio.to_thread(second.close) == 0
        finally:
            second.kill()
        await collector.wait_for(lambda: collector.info.acked.get(key, 0) == TOTAL, 30)

    with sqlite3.connect(gw_dir / "portvakt.db") as conn:
        gw_seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
        acked = int(conn.execute("SELECT value FROM meta WHERE key = 'acked'").fetchone()[0])
    with sqlite3.connect(tmp_path / "hq" / "hq.db") as conn:
        hq_seqs = [r[0] for r in conn.execute(
            "SELECT seq FROM events WHERE site = ? AND gateway = 'gw-1' ORDER BY seq", (SITE,))]
    assert acked_at_kill < 1500, "the kill came after the stream had ended"
    assert gw_seqs == list(range(1, TOTAL + 1))
    assert hq_seqs == gw_seqs  # nothing lost
    assert acked == TOTAL == second.values["drained"]  # nothing stuck in the outbox
