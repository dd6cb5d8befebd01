"""Status out (retained, "offline" as the last will) and signed commands in (expiring,
single use: a replay is refused, also after a restart)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.rig.mosquitto import Mosquitto
from gateway.sync.signed import make_command, sign_document
from tests.fixtures_mqtt import (
    SITE,
    HqKeys,
    make_gateway,
    running,
    spec_for,
    sync_config,
)
from tests.test_sync_crash import GatewayProcess
from tests.test_sync_policy import broker_args, mosquitto_pub, portvakt, write_key

STATUS = f"portvakt/{SITE}/gw-1/status"
CMD = f"portvakt/{SITE}/gw-1/cmd"


def retained(broker: Mosquitto, topic: str) -> dict[str, Any]:
    """The retained message on `topic`, read by mosquitto_sub as head office."""
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.tls_port),
                        "--cafile", str(broker.ca_file), "-u", "hq", "-P", broker.users["hq"],
                        "-t", topic, "-C", "1", "-W", "10", "--retained-only"],
                       capture_output=True, text=True, timeout=20, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert isinstance(doc, dict)
    return doc


async def test_status_is_retained_with_what_head_office_needs(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        async with running(gw.service):
            for _ in range(3):
                gw.journal.append("access.granted", door="main")
            await gw.service.wait_for(lambda: gw.service.info.sent == 3)
            gw.service.request_status()  # as the daemon does after a change
            await gw.service.wait_for(lambda: gw.service.info.status_published >= 2)
            status = await asyncio.to_thread(retained, sync_broker, STATUS)
            assert status["online"] is True
            assert (status["site"], status["gateway"]) == (SITE, "gw-1")
            assert status["journal"]["last_seq"] == 3
            assert status["journal"]["backlog"] == 3  # no collector: all waiting
            assert status["doors"] == [{"name": "main", "state": "locked"}]
            assert status["policy"] == {"version": None}
            assert status["alarms"] == []
        # A clean stop says so itself.
        assert (await asyncio.to_thread(retained, sync_broker, STATUS))["online"] is False
    finally:
        gw.close()


async def test_a_gateway_that_dies_is_reported_offline_by_its_last_will(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    gw_dir = tmp_path / "gw"
    spec = spec_for(gw_dir, sync_config(sync_broker, gw_dir, hq_keys, user=f"{SITE}/gw-1"),
                    hq_keys)
    proc = GatewayProcess(spec)
    watcher: subprocess.Popen[str] | None = None
    try:
        await asyncio.to_thread(proc.wait, lambda: "started" in proc.values)
        online = await asyncio.to_thread(retained, sync_broker, STATUS)
        assert online["online"] is True
        # Head office watches: the retained "online" first, then whatever comes next.
        watcher = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p",
             str(sync_broker.tls_port), "--cafile", str(sync_broker.ca_file), "-u", "hq", "-P",
             sync_broker.users["hq"], "-t", STATUS, "-C", "2", "-W", "20"],
            stdout=subprocess.PIPE, text=True)
        assert watcher.stdout is not None
        seen: list[str] = []
        while "received SUBACK" not in (line := await asyncio.to_thread(watcher.stdout.readline)):
            assert line, seen
            seen.append(line)
    finally:
        proc.kill()  # SIGKILL: no goodbye; the broker publishes the will
    assert watcher is not None
    out, _ = await asyncio.to_thread(watcher.communicate, timeout=30)
    first, second = (json.loads(line) for line in out.splitlines() if line.startswith("{"))
    assert first["online"] is True
    assert second == {"site": SITE, "gateway": "gw-1", "online": False, "state": "offline"}


# --- commands ------------------------------------------------------------------------------------

def command(keys: HqKeys, action: str = "door.unlock", *, gateway: str = "gw-1",
            ttl: float = 60, issued: datetime | None = None, **args: Any) -> bytes:
    if action == "door.unlock" and not args:
        args = {"door": "main", "seconds": 5}
    doc = make_command(action, args, site=SITE, gateway=gateway, ttl=ttl, now=issued)
    return sign_document(doc, keys.command)


async def test_a_command_is_carried_out_once_and_its_replay_refused_even_after_a_restart(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1")
    unlock = command(hq_keys, ttl=300)  # still valid after the restart, however slow the machine
    with make_gateway(tmp_path / "gw", cfg, hq_keys) as gw:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.connected)
            mosquitto_pub(sync_broker, CMD, unlock, tmp_path)
            await gw.service.wait_for(lambda: gw.service.info.handled["cmd"] == 1)
            mosquitto_pub(sync_broker, CMD, unlock, tmp_path)  # captured and replayed
            await gw.service.wait_for(lambda: gw.service.info.handled["cmd"] == 2)
        assert [(c.action, dict(c.args)) for c in gw.commands] == [
            ("door.unlock", {"door": "main", "seconds": 5})]
        assert gw.service.info.commands == {"executed": 1, "refused": 1, "failed": 0}
    again = make_gateway(tmp_path / "gw", cfg, hq_keys)  # the gateway restarted
    try:
        async with running(again.service):
            # mosquitto_pub retained it: the broker hands the same command to the restarted
            # gateway as it subscribes, as a replay by anyone would.
            await again.service.wait_for(lambda: again.service.info.handled["cmd"] == 1)
        assert again.commands == []
        again.journal.flush()
        refused = [e for e in again.journal.events(limit=10_000)
                   if e.kind == "sync.command-refused"]
        assert [e.reason for e in refused] == ["replayed", "replayed"]
    finally:
        again.close()


PAST = datetime.now(UTC) - timedelta(hours=1)
REFUSED = {
    "expired": (lambda k: command(k, ttl=60, issued=PAST), "expired"),
    "other-gateway": (lambda k: command(k, gateway="gw-2"), "wrong-gateway"),
    "too-long": (lambda k: command(k, ttl=86400), "too-long"),
    "policy-key": (lambda k: sign_document(make_command("site.lockdown", site=SITE,
                                                        gateway="gw-1"), k.policy),
                   "unknown-key"),
    "not-a-command": (lambda k: b"unlock main", "bad-envelope"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_command_that_must_not_run_is_refused_with_a_reason(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, case: str) -> None:
    make, reason = REFUSED[case]
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.connected)
            mosquitto_pub(sync_broker, CMD, make(hq_keys), tmp_path)
            await gw.service.wait_for(lambda: gw.service.info.handled["cmd"] == 1)
        assert gw.commands == []
        gw.journal.flush()
        assert [e.reason for e in gw.journal.events(kind="sync.command-refused")] == [reason]
    finally:
        gw.close()


async def test_a_command_that_fails_is_journaled_as_failed(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.connected)
            mosquitto_pub(sync_broker, CMD, command(hq_keys, door="cellar"), tmp_path)
            await gw.service.wait_for(lambda: gw.service.info.handled["cmd"] == 1)
        gw.journal.flush()
        failed = gw.journal.events(kind="sync.command-failed")
        assert [(e.data["action"], e.data["args"]) for e in failed] == [
            ("door.unlock", {"door": "cellar"})]
        assert "no door 'cellar'" in str(failed[0].reason) + str(failed[0].data)
    finally:
        gw.close()


async def test_cmd_send_from_the_cli_makes_the_gateway_resend_its_status(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.status_published == 1)
            r = await asyncio.to_thread(
                portvakt, "cmd", "send", "status", "--site", SITE, "--gateway", "gw-1", "--key",
                str(write_key(tmp_path / "command.key", hq_keys.command)),
                *broker_args(sync_broker, tmp_path))
            assert r.returncode == 0, r.stderr
            await gw.service.wait_for(lambda: gw.service.info.status_published == 2)
        assert gw.service.info.commands["executed"] == 1
    finally:
        gw.close()
