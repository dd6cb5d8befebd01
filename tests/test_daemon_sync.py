"""Head-office sync through the daemon: real mosquitto (TLS, passwords, the shipped ACL), the
daemon's own [mqtt] configuration, head office's collector as a process (`portvakt hq collect`)
and mosquitto_sub as the independent reader of the retained status."""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.pki_demo import DemoPki
from gateway.rig.mosquitto import Mosquitto
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, wait_until
from gateway.sync.signed import make_command, sign_document
from tests.fixtures_daemon import POLICY, STRIKE, Daemon
from tests.fixtures_mqtt import BROKER_SETTINGS, REPO, SHIPPED_ACL, write_secret

USER = "test/gw-test"  # the daemon fixture's site/gateway
TOPIC = "portvakt/test/gw-test"


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto.start(tmp_path_factory.mktemp("broker"),
                        users={USER: secrets.token_urlsafe(12), "hq": secrets.token_urlsafe(12)},
                        acl=SHIPPED_ACL.read_text(), settings=BROKER_SETTINGS)
    try:
        yield b
    finally:
        b.stop()
        print(b.log_tail(60))


def mqtt_toml(broker: Mosquitto, tmp: Path, key: Path) -> str:
    pw = write_secret(tmp / "mqtt-password", broker.users[USER])
    return f"""
[mqtt]
host = "127.0.0.1"
port = {broker.tls_port}
ca_file = "{broker.ca_file}"
username = "{USER}"
password_file = "{pw}"
manifest_keys = ["{key}"]
command_keys = ["{key}"]
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
status_interval_seconds = 30
"""


@pytest.fixture
def collector(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[RigProcess, Path]]:
    pw = write_secret(tmp_path / "hq-password", broker.users["hq"])
    store = tmp_path / "hq.db"
    proc = RigProcess("collector", [
        sys.executable, "-m", "gateway.cli", "hq", "collect", "--store", str(store),
        "--broker", f"127.0.0.1:{broker.tls_port}", "--ca-file", str(broker.ca_file),
        "--username", "hq", "--password-file", str(pw)], tmp_path / "collector.log", cwd=REPO)
    try:
        wait_until(lambda: "collecting into" in proc.log_tail(), 15, "the collector", proc)
        yield proc, store
    finally:
        proc.stop()


def stored(store: Path) -> list[int]:
    if not store.exists():
        return []
    with sqlite3.connect(store) as conn:
        try:
            return [r[0] for r in conn.execute(
                "SELECT seq FROM events WHERE site = 'test' AND gateway = 'gw-test' ORDER BY seq")]
        except sqlite3.OperationalError:
            return []


def hq(broker: Mosquitto, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_sub" if args[0] == "sub" else "mosquitto_pub",
                           "-h", "127.0.0.1", "-p", str(broker.tls_port), "--cafile",
                           str(broker.ca_file), "-u", "hq", "-P", broker.users["hq"], *args[1:]],
                          capture_output=True, text=True, timeout=timeout, check=False)


def publish(broker: Mosquitto, topic: str, payload: bytes, tmp: Path, retain: bool = False) -> None:
    f = tmp / f"payload-{secrets.token_hex(4)}"
    f.write_bytes(payload)
    r = hq(broker, "pub", "-t", topic, "-f", str(f), "-q", "1", *(["-r"] if retain else []))
    assert r.returncode == 0, r.stderr


def retained_status(broker: Mosquitto) -> dict[str, Any]:
    r = hq(broker, "sub", "-t", f"{TOPIC}/status", "-C", "1", "-W", "5")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def start(daemon_factory: Any, broker: Mosquitto, tmp_path: Path, head_office: Any) -> Daemon:
    d: Daemon = daemon_factory(door_toml=mqtt_toml(broker, tmp_path, head_office.public))
    wait_until(lambda: connected(d), 15, "the daemon connected to the broker", d.proc)
    return d


def connected(d: Daemon) -> bool:
    return bool(d.ask({"cmd": "status"})["sync"]["connected"])


def test_policy_in_events_out_across_a_broker_outage_and_status_for_head_office(
        daemon_factory: Any, broker: Mosquitto, collector: tuple[RigProcess, Path],
        pcsc_rig: PcscRig, demo_pki: DemoPki, tmp_path: Path, head_office: Any) -> None:
    _, store = collector
    d = start(daemon_factory, broker, tmp_path, head_office)

    # Policy in: version 2 (Bob removed) published retained with mosquitto_pub, applied at once.
    v2 = {**POLICY, "people": [p for p in POLICY["people"] if p["id"] != "p-bob"]}
    publish(broker, f"{TOPIC}/policy", head_office.sign(v2, 2), tmp_path, retain=True)
    applied = d.wait_event("policy.applied", 2)
    assert applied["version"] == 2
    assert d.ask({"cmd": "status"})["policy"]["version"] == 2
    # A rollback to version 1 is refused with a reason; version 2 stays in force.
    publish(broker, f"{TOPIC}/policy", head_office.sign(POLICY, 1), tmp_path, retain=True)
    assert d.wait_event("alarm.policy-rejected")["reason"] == "rollback"
    policy = d.ask({"cmd": "status"})["policy"]
    assert policy["version"] == 2 and policy["rejected"]["reason"] == "rollback"

    # Events out: every event so far reaches head office, acknowledged, in order.
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    d.wait_event("access.granted")
    pcsc_rig.remove("Door0", wait=True)

    def all_delivered() -> bool:
        last = d.ask({"cmd": "status"})["journal"]["last_seq"]
        return stored(store) == list(range(1, last + 1))

    wait_until(all_delivered, 15, "every event at head office")

    # The broker goes away: the door keeps working on what it has, events wait on disk ...
    broker.stop()
    wait_until(lambda: not connected(d), 15, "the daemon to see the broker gone", d.proc)
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    d.wait_event("access.granted", 2)
    pcsc_rig.remove("Door0", wait=True)
    status = d.ask({"cmd": "status"})
    assert status["sync"]["connected"] is False and status["sync"]["backlog"] >= 1
    # ... and drain in order when it is back, none lost, none twice.
    broker.restart()
    wait_until(all_delivered, 30, "the backlog drained to head office")
    wait_until(lambda: d.ask({"cmd": "status"})["sync"]["backlog"] == 0, 15, "outbox empty")

    # The retained status, read by an independent client.
    doc = retained_status(broker)
    assert doc["online"] is True and doc["gateway"] == "gw-test"
    assert doc["policy"]["version"] == 2 and doc["policy"]["rejected"]["reason"] == "rollback"
    assert [x["name"] for x in doc["doors"]] == ["front"]
    assert "journal" in doc and isinstance(doc["crls"], list)


def test_signed_commands_open_the_door_lock_the_site_down_and_a_replay_is_refused(
        daemon_factory: Any, broker: Mosquitto, pcsc_rig: PcscRig, demo_pki: DemoPki,
        tmp_path: Path, head_office: Any) -> None:
    d = start(daemon_factory, broker, tmp_path, head_office)
    strikes = len([w for w in d.board.writes() if w["coil"] == STRIKE])
    unlock = sign_document(make_command("door.unlock", {"door": "front", "seconds": 0.5},
                                        site="test", gateway="gw-test", ttl=300),
                           head_office.key)
    publish(broker, f"{TOPIC}/cmd", unlock, tmp_path)
    done = d.wait_event("sync.command-executed")
    assert done["action"] == "door.unlock"
    wait_until(lambda: len([w for w in d.board.writes() if w["coil"] == STRIKE]) >= strikes + 2,
               5, "the strike pulsed")
    publish(broker, f"{TOPIC}/cmd", unlock, tmp_path)  # the same message again
    refused = d.wait_event("sync.command-refused")
    assert refused["reason"] == "replayed"

    # A command for another door, and one signed by an unknown key, are refused too.
    publish(broker, f"{TOPIC}/cmd", sign_document(make_command(
        "door.unlock", {"door": "vault"}, site="test", gateway="gw-test"), head_office.key),
        tmp_path)
    failed = d.wait_event("sync.command-failed")
    assert "vault" in failed["detail"]
    from cryptography.hazmat.primitives.asymmetric import ed25519
    publish(broker, f"{TOPIC}/cmd", sign_document(make_command(
        "site.lockdown", site="test", gateway="gw-test"),
        ed25519.Ed25519PrivateKey.generate()), tmp_path)
    assert d.wait_event("sync.command-refused", 2)["reason"] == "unknown-key"
    assert d.ask({"cmd": "status"})["site_mode"] == "normal"

    # Lockdown from head office: Carol (not in the override group) is refused at the door.
    publish(broker, f"{TOPIC}/cmd", sign_document(make_command(
        "site.lockdown", site="test", gateway="gw-test"), head_office.key), tmp_path)
    d.wait_event("sync.command-executed", 2)
    assert d.ask({"cmd": "status"})["site_mode"] == "lockdown"
    pcsc_rig.insert("Door0", demo_pki.cards["carol"])
    denied = d.wait_event("access.denied")
    assert (denied["person"], denied["reason"]) == ("p-carol", "lockdown")
    wait_until(lambda: retained_status(broker).get("site_mode") == "lockdown", 10,
               "the lockdown in the retained status")
    # ... and back to normal from head office.
    publish(broker, f"{TOPIC}/cmd", sign_document(make_command(
        "site.normal", site="test", gateway="gw-test"), head_office.key), tmp_path)
    d.wait_event("sync.command-executed", 3)
    assert d.ask({"cmd": "status"})["site_mode"] == "normal"
    # Every head-office command is in the journal for the site to see.
    assert [e["action"] for e in d.events("sync.command-executed")] == [
        "door.unlock", "site.lockdown", "site.normal"]


def test_a_daemon_with_an_unreadable_broker_password_refuses_to_start_clearly(
        tmp_path: Path, daemon_factory: Any, broker: Mosquitto, head_office: Any) -> None:
    toml = mqtt_toml(broker, tmp_path, head_office.public)
    (tmp_path / "mqtt-password").chmod(0o644)  # readable by everyone: refused
    with pytest.raises(RuntimeError, match="exited"):
        daemon_factory(door_toml=toml)
    log = (tmp_path / "portvakt0.log").read_text()
    assert "mqtt.password_file" in log and "Traceback" not in log


def test_doctor_checks_the_broker_without_disturbing_the_daemons_session(
        daemon_factory: Any, broker: Mosquitto, tmp_path: Path, head_office: Any) -> None:
    from tests.test_doctor import doctor

    d = start(daemon_factory, broker, tmp_path, head_office)
    r = doctor(d, "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["head office"]["ok"], checks["head office"]
    assert connected(d)  # its own client id: the daemon's session was not taken over
    broker.stop()
    r = doctor(d)
    line = next(x for x in r.stdout.splitlines() if "head office" in x)
    assert r.returncode == 1 and line.startswith("FAIL"), r.stdout
    assert "Traceback" not in r.stderr


def test_head_office_cannot_open_a_door_in_lockdown_nor_end_an_emergency_set_on_site(
        daemon_factory: Any, broker: Mosquitto, tmp_path: Path, head_office: Any) -> None:
    d = start(daemon_factory, broker, tmp_path, head_office)

    def send(action: str, args: dict[str, Any] | None = None) -> None:
        publish(broker, f"{TOPIC}/cmd", sign_document(make_command(
            action, args, site="test", gateway="gw-test"), head_office.key), tmp_path)

    assert d.ask({"cmd": "door.mode", "door": "front", "mode": "lockdown"})["ok"]
    strikes = [w for w in d.board.writes() if w["coil"] == STRIKE and w["value"]]
    send("door.unlock", {"door": "front"})
    failed = d.wait_event("sync.command-failed")
    assert "lockdown" in failed["detail"]
    assert [w for w in d.board.writes() if w["coil"] == STRIKE and w["value"]] == strikes
    assert d.ask({"cmd": "door.mode", "door": "front", "mode": "normal"})["ok"]

    assert d.ask({"cmd": "door.mode", "site": True, "mode": "emergency-open"})["ok"]
    send("site.lockdown")
    failed = d.wait_event("sync.command-failed", 2)
    assert "emergency-open" in failed["detail"]
    send("site.normal")
    d.wait_event("sync.command-failed", 3)
    assert d.ask({"cmd": "status"})["site_mode"] == "emergency-open"
    assert d.events("sync.command-executed") == []


def test_a_reload_with_an_unreadable_broker_password_is_refused_and_the_gateway_carries_on(
        daemon_factory: Any, broker: Mosquitto, tmp_path: Path, head_office: Any,
        pcsc_rig: PcscRig, demo_pki: DemoPki) -> None:
    d = start(daemon_factory, broker, tmp_path, head_office)
    (tmp_path / "mqtt-password").chmod(0o644)
    answer = d.ask({"cmd": "config.reload"})
    assert not answer["ok"] and "mqtt.password_file" in answer["error"]
    d.proc.popen.send_signal(signal.SIGHUP)
    refused = d.wait_event("alarm.config-refused")
    assert "mqtt.password_file" in refused["detail"]
    assert connected(d) and d.proc.alive()
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    assert d.wait_event("access.granted")["person"] == "p-alice"


def test_daemon_sigkilled_during_a_broker_outage_loses_no_event_once_both_are_back(
        daemon_factory: Any, broker: Mosquitto, collector: tuple[RigProcess, Path],
        tmp_path: Path, head_office: Any) -> None:
    """200 audited technician commands while the broker is down, the daemon SIGKILLed, started
    again on the same state, the broker back: head office has every event 1..N, once."""
    from tests.fixtures_daemon import start_daemon

    _, store = collector
    d = start(daemon_factory, broker, tmp_path, head_office)
    broker.stop()
    wait_until(lambda: not connected(d), 15, "the daemon to see the broker gone", d.proc)
    for _ in range(200):
        assert d.ask({"cmd": "door.lock", "door": "front"})["ok"]
    d.wait_event("control.door-lock", 200)  # on disk (read from the database)
    d.proc.popen.kill()
    d.proc.popen.wait()
    again = start_daemon(tmp_path, d.config, d.state, "portvakt-again")
    d = dataclasses.replace(d, proc=again)
    try:
        broker.restart()
        d.wait_event("gateway.started", 2)

        def delivered() -> bool:
            try:  # the new daemon journals its start before its control socket listens
                last = d.ask({"cmd": "status"})["journal"]["last_seq"]
            except ConnectionError:
                return False
            return stored(store) == list(range(1, last + 1))

        wait_until(delivered, 30, "every event at head office, once", again)
        kinds = [e["kind"] for e in d.events()]
        assert kinds.count("control.door-lock") == 200
        assert kinds.count("gateway.started") == 2 and "gateway.stopped" not in kinds
    finally:
        again.stop()
