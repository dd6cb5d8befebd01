"""Events out: the journal is the outbox; an event leaves it only when head office's collector
acknowledges it, whatever the broker or the collector do meanwhile. Real mosquitto (TLS,
passwords, the shipped ACL), the real collector, mosquitto_sub as an independent consumer."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from gateway.rig.mosquitto import Mosquitto
from tests.fixtures_mqtt import (
    SITE,
    HqKeys,
    make_collector,
    make_gateway,
    running,
    sync_config,
)


def stored(db: Path, gateway: str = "gw-1") -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT seq FROM events WHERE site = ? AND gateway = ? ORDER BY seq", (SITE, gateway))]


async def test_events_stay_in_the_outbox_while_the_collector_is_away_until_it_acknowledges(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    collector = make_collector(tmp_path / "hq", sync_broker)
    async with running(collector):  # head office's persistent session exists ...
        await collector.wait_for(lambda: collector.info.connected)
    # ... and the collector is down while the broker is up.
    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1")
    with make_gateway(tmp_path / "gw", cfg, hq_keys) as gw:
        async with running(gw.service):
            for i in range(20):
                gw.journal.append("access.granted", door="main", person=f"p{i}")
            # The broker acknowledged all 20 (PUBACK) and queued them for the collector ...
            await gw.service.wait_for(lambda: gw.service.info.sent == 20)
            # ... but head office has none of them: they stay in the outbox.
            assert (gw.journal.acked, gw.journal.backlog) == (0, 20)
            async with running(collector):
                await gw.service.wait_for(lambda: gw.journal.acked == 20)
        assert gw.journal.backlog == 0
        assert stored(tmp_path / "hq" / "hq.db") == list(range(1, 21))
        assert gw.service.info.resends == 0  # the broker's queue delivered them, once


async def test_events_the_broker_dropped_for_want_of_a_subscriber_are_sent_again(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    # No collector session at all: the broker acknowledges and drops every event.
    cfg = replace(sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1"),
                  resend_after=0.3)
    gw = make_gateway(tmp_path / "gw", cfg, hq_keys)
    collector = make_collector(tmp_path / "hq", sync_broker)
    try:
        async with running(gw.service):
            for _ in range(5):
                gw.journal.append("access.denied", door="main", reason="unknown-card")
            await gw.service.wait_for(lambda: gw.service.info.sent == 5)
            async with running(collector):
                await gw.service.wait_for(lambda: gw.journal.acked == 5)
        assert gw.service.info.resends >= 1
        assert stored(tmp_path / "hq" / "hq.db") == [1, 2, 3, 4, 5]
    finally:
        gw.close()


class IndependentSubscriber:
    """mosquitto_sub on a persistent session (it reconnects by itself after a broker restart),
    collecting the sequence numbers of the events it sees, on a reader thread."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str) -> None:
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p",
             str(broker.tls_port), "--cafile", str(broker.ca_file), "-u", "hq", "-P",
             broker.users["hq"], "-c", "-i", client_id, "-q", "1", "-t", topic],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.seqs: list[int] = []
        self.subscribed = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="mosquitto_sub-reader")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "received SUBACK" in line:
                self.subscribed.set()
            elif line.startswith("{"):
                with self._cond:
                    self.seqs += [e["seq"] for e in json.loads(line)["events"]]
                    self._cond.notify_all()

    def wait_for(self, wanted: set[int], timeout: float = 60) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: wanted <= set(self.seqs), timeout)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._thread.join(5)


async def test_broker_stopped_during_1000_badges_then_restarted_delivers_all_in_order(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    topic = f"portvakt/{SITE}/gw-1/events"
    audit = IndependentSubscriber(sync_broker, topic, "audit-sub")
    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1")
    gw = make_gateway(tmp_path / "gw", cfg, hq_keys)
    collector = make_collector(tmp_path / "hq", sync_broker)
    try:
        assert await asyncio.to_thread(audit.subscribed.wait, 10)
        async with running(collector):
            await collector.wait_for(lambda: collector.info.connected)
            async with running(gw.service):
                for i in range(300):
                    gw.journal.append("access.granted", door="main", person=f"p{i % 40}")
                await gw.service.wait_for(lambda: gw.journal.acked >= 100)
                await asyncio.to_thread(sync_broker.stop)  # mid-stream
                for i in range(300, 1000):
                    gw.journal.append("access.granted", door="main", person=f"p{i % 40}")
                await gw.service.wait_for(lambda: not gw.service.info.connected)
                assert gw.journal.backlog > 0  # waiting on disk for the broker
                await asyncio.to_thread(gw.journal.flush)
                await asyncio.to_thread(sync_broker.restart)
                await gw.service.wait_for(lambda: gw.journal.acked == 1000, 60)
        assert stored(tmp_path / "hq" / "hq.db") == list(range(1, 1001))
        assert gw.journal.backlog == 0
        # The independent consumer saw every one of them too (duplicates allowed, no gaps).
        assert await asyncio.to_thread(audit.wait_for, set(range(1, 1001)))
    finally:
        audit.close()
        gw.close()


async def test_a_growing_backlog_raises_an_alarm_that_clears_once_drained(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    cfg = replace(sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1"),
                  backlog_alarm=5)
    gw = make_gateway(tmp_path / "gw", cfg, hq_keys)
    collector = make_collector(tmp_path / "hq", sync_broker)
    async with running(collector):  # head office's session exists: it queues what comes
        await collector.wait_for(lambda: collector.info.connected)
    try:
        sync_broker.stop()
        async with running(gw.service):
            for _ in range(8):
                gw.journal.append("access.granted", door="main")
            await gw.service.wait_for(lambda: "sync-backlog" in gw.service.info.alarms)
            await asyncio.to_thread(sync_broker.restart)
            async with running(collector):
                await gw.service.wait_for(lambda: gw.journal.backlog == 0)
                await gw.service.wait_for(lambda: "sync-backlog" not in gw.service.info.alarms)
        gw.journal.flush()
        kinds = [e.kind for e in gw.journal.events(limit=100) if "backlog" in e.kind]
        assert kinds == ["alarm.sync-backlog", "sync.backlog-cleared"]
    finally:
        gw.close()


async def test_an_acknowledgement_beyond_the_journal_is_refused_with_an_alarm(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    from tests.test_sync_policy import mosquitto_pub

    mosquitto_pub(sync_broker, f"portvakt/{SITE}/gw-1/events/ack", b'{"seq": 5000}', tmp_path)
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        async with running(gw.service):
            gw.journal.append("access.granted", door="main")
            await gw.service.wait_for(lambda: "sync-ack-ahead" in gw.service.info.alarms)
        assert gw.journal.acked == 0 and gw.journal.backlog == 2  # + the alarm itself
        gw.journal.flush()
        assert [e.data["acked"] for e in gw.journal.events(kind="alarm.sync-ack-ahead")] == [5000]
    finally:
        gw.close()


async def test_hq_collect_on_the_command_line_stores_acknowledges_and_stops_on_sigterm(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    import signal
    import sys

    from tests.fixtures_mqtt import REPO
    from tests.test_sync_policy import broker_args

    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "hq", "collect", "--store", str(tmp_path / "hq.db"),
         *broker_args(sync_broker, tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("collecting into"), line
        async with running(gw.service):
            for _ in range(120):
                gw.journal.append("access.granted", door="main")
            await gw.service.wait_for(lambda: gw.journal.acked == 120)
    finally:
        gw.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0
    assert "120 events stored, 0 duplicates dropped, 0 refused" in out
    assert stored(tmp_path / "hq.db") == list(range(1, 121))


async def test_over_mqtt_3_1_1_policy_in_events_out_and_acknowledgements_work_the_same(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    """protocol = "3.1.1": no v5 session expiry or reason codes, a clean-session=false session
    instead; the outbox and the acknowledgements behave the same."""
    from tests.test_sync_policy import bundle, mosquitto_pub

    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1", protocol=4)
    gw = make_gateway(tmp_path / "gw", cfg, hq_keys)
    collector = make_collector(tmp_path / "hq", sync_broker)
    try:
        async with running(gw.service, collector):
            await gw.service.wait_for(lambda: gw.service.info.connected)
            mosquitto_pub(sync_broker, f"portvakt/{SITE}/gw-1/policy", bundle(1, hq_keys.policy),
                          tmp_path)
            await gw.service.wait_for(lambda: gw.policy_version == 1)
            for i in range(30):
                gw.journal.append("access.granted", door="main", person=f"p{i}")
            await gw.service.wait_for(lambda: gw.journal.acked >= 30)
        assert stored(tmp_path / "hq" / "hq.db")[:30] == list(range(1, 31))
    finally:
        gw.close()
