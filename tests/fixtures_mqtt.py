"""pytest fixtures for MQTT: `mosquitto`, a private broker per test (it starts in ~50 ms, so
function scope keeps tests isolated — a test may restart or kill it — at no real cost), and
`sync_broker`, the same with the shipped ACL (config/mosquitto/acl) and users for head office
and two gateways of site sto-hq.

Helpers build a gateway's side of head-office sync around a real Journal, PolicyStore and
TrustStore (`make_gateway`), head office's collector (`make_collector`), and run either as a
task for the length of a block (`running`). `python -m tests.fixtures_mqtt gateway SPEC` runs
a gateway's sync in a process of its own (the SIGKILL test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.bundle import Outcome, PolicyStore, load_keys
from gateway.journal import Journal
from gateway.rig.mosquitto import Mosquitto
from gateway.sync.config import SyncConfig
from gateway.sync.crl import crl_ingester
from gateway.sync.hq import Collector
from gateway.sync.mqtt import BrokerParams
from gateway.sync.service import SyncService
from gateway.sync.signed import VerifiedCommand
from gateway.trust.revocation import RevocationStore
from gateway.trust.validator import TrustStore

SITE = "sto-hq"
GATEWAYS = ("gw-1", "gw-2")
REPO = Path(__file__).resolve().parent.parent
SHIPPED_ACL = REPO / "config" / "mosquitto" / "acl"
BROKER_SETTINGS = ("max_queued_messages 20000",)  # as config/mosquitto/mosquitto.conf


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto.start(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()
        # Shown by pytest only when the test failed.
        print(f"--- {broker.log_file} ---\n{broker.log_tail(50)}")


def start_sync_broker(workdir: Path) -> Mosquitto:
    users = {"hq": secrets.token_urlsafe(12)}
    users.update({f"{SITE}/{g}": secrets.token_urlsafe(12) for g in GATEWAYS})
    return Mosquitto.start(workdir, users=users, acl=SHIPPED_ACL.read_text(),
                           settings=BROKER_SETTINGS)


@pytest.fixture
def sync_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = start_sync_broker(tmp_path_factory.mktemp("sync-broker"))
    try:
        yield broker
    finally:
        broker.stop()
        print(f"--- {broker.log_file} ---\n{broker.log_tail(80)}")


# --- keys ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HqKeys:
    """Head office's signing keys (private) and their pinned public files."""

    policy: ed25519.Ed25519PrivateKey
    manifest: ed25519.Ed25519PrivateKey
    command: ed25519.Ed25519PrivateKey
    policy_pub: Path
    manifest_pub: Path
    command_pub: Path


def write_public(path: Path, key: ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def make_keys(directory: Path) -> HqKeys:
    directory.mkdir(parents=True, exist_ok=True)
    p, m, c = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))
    return HqKeys(p, m, c, write_public(directory / "policy.pub", p),
                  write_public(directory / "manifest.pub", m),
                  write_public(directory / "command.pub", c))


@pytest.fixture(scope="session")
def hq_keys(tmp_path_factory: pytest.TempPathFactory) -> HqKeys:
    return make_keys(tmp_path_factory.mktemp("hq-keys"))


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def sync_config(broker: Mosquitto, workdir: Path, keys: HqKeys, *, user: str,
                **overrides: Any) -> SyncConfig:
    """A gateway's [mqtt] settings for the rig broker (TLS, pinned rig CA, password file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = write_secret(workdir / "mqtt-password", broker.users[user])
    cfg = SyncConfig(host="127.0.0.1", port=broker.tls_port, ca_file=broker.ca_file,
                     username=user, password_file=secret, manifest_keys=(keys.manifest_pub,),
                     command_keys=(keys.command_pub,), backoff_initial=0.05, backoff_max=0.5,
                     connect_timeout=5.0, source=str(workdir / "portvakt.toml"))
    return replace(cfg, **overrides)


def hq_params(broker: Mosquitto, client_id: str = "portvakt-hq", *,
              persistent: bool = True) -> BrokerParams:
    return BrokerParams("127.0.0.1", broker.tls_port, broker.ca_file, client_id, "hq",
                        broker.users["hq"], persistent=persistent, timeout=5.0)


# --- a gateway -----------------------------------------------------------------------------------

@dataclass
class Gateway:
    """The gateway's side of sync around real parts; what the callbacks saw."""

    dir: Path
    journal: Journal
    store: PolicyStore
    trust: TrustStore
    service: SyncService
    outcomes: list[Outcome] = field(default_factory=list)
    commands: list[VerifiedCommand] = field(default_factory=list)

    @property
    def policy_version(self) -> int | None:
        b = self.store.current()
        return b.version if b is not None else None

    def close(self) -> None:
        self.journal.close()
        self.store.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_gateway(directory: Path, config: SyncConfig, keys: HqKeys, *, gateway: str = "gw-1",
                 site: str = SITE, trust: TrustStore | None = None) -> Gateway:
    directory.mkdir(parents=True, exist_ok=True)
    journal = Journal(directory / "portvakt.db", gateway)
    store = PolicyStore(directory / "portvakt.db", load_keys([keys.policy_pub]), site)
    trust = trust or TrustStore.create(anchors=[], revocation=RevocationStore(None))
    holder: list[Gateway] = []

    def on_policy(envelope: bytes) -> Outcome:
        # What the daemon's PolicySource does with an offered bundle, journal lines included.
        outcome = store.offer(envelope)
        holder[0].outcomes.append(outcome)
        if outcome.status == "applied":
            journal.append("policy.applied", version=outcome.version, previous=outcome.previous)
        elif outcome.status == "rejected":
            journal.append("alarm.policy-rejected", reason=outcome.reason, detail=outcome.detail,
                           offered=outcome.version, kept=outcome.previous)
        return outcome

    async def on_command(cmd: VerifiedCommand) -> Mapping[str, Any]:
        holder[0].commands.append(cmd)
        if cmd.action == "door.unlock" and cmd.args.get("door") != "main":
            raise ValueError(f"no door {cmd.args.get('door')!r}")
        return {"done": cmd.action}

    def status() -> dict[str, Any]:
        b = store.current()
        return {"policy": {"version": b.version if b else None},
                "doors": [{"name": "main", "state": "locked"}], "alarms": []}

    try:
        service = SyncService(config, site, gateway, journal, on_policy, crl_ingester(trust),
                              on_command, status)
    except BaseException:
        journal.close()
        store.close()
        raise
    gw = Gateway(directory, journal, store, trust, service)
    holder.append(gw)
    return gw


def make_collector(directory: Path, broker: Mosquitto, client_id: str = "portvakt-hq") -> Collector:
    return Collector(directory / "hq.db", hq_params(broker, client_id), backoff_initial=0.05,
                     backoff_max=0.5)


@contextlib.asynccontextmanager
async def running(*services: SyncService | Collector) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run each service's `run()` as a task for the block; cancel and await them after."""
    tasks = [asyncio.create_task(s.run()) for s in services]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


# --- a gateway in a process of its own ----------------------------------------------------------

def spec_for(gw_dir: Path, config: SyncConfig, keys: HqKeys, *, gateway: str = "gw-1") -> Path:
    """Write what `python -m tests.fixtures_mqtt gateway SPEC` needs; returns the spec file."""
    spec = {"dir": str(gw_dir), "gateway": gateway,
            "config": {k: (str(v) if isinstance(v, Path) else
                           [str(x) for x in v] if isinstance(v, tuple) and k.endswith("keys")
                           else v)
                       for k, v in config.__dict__.items() if k != "crl"},
            "keys": {"policy": str(keys.policy_pub), "manifest": str(keys.manifest_pub),
                     "command": str(keys.command_pub)}}
    path = gw_dir / "spec.json"
    gw_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


async def _gateway_process(spec_file: Path) -> None:
    """Sync a gateway's journal; "started S" once it is online (its status published, S the
    last sequence on disk); then stdin says what to do: "append N" appends N badge events
    (printing "committed S" once event S is on disk), "drain" waits until head office has
    acknowledged everything (printing "drained S") and ends."""
    spec = json.loads(spec_file.read_text())
    raw = dict(spec["config"])
    for k in ("ca_file", "password_file"):
        raw[k] = Path(raw[k]) if raw.get(k) else None
    for k in ("manifest_keys", "command_keys"):
        raw[k] = tuple(Path(x) for x in raw[k])
    config = SyncConfig(**raw)
    k = spec["keys"]
    keys = HqKeys(ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate(),
                  ed25519.Ed25519PrivateKey.generate(), Path(k["policy"]), Path(k["manifest"]),
                  Path(k["command"]))
    gw = make_gateway(Path(spec["dir"]), config, keys, gateway=spec["gateway"])
    try:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.status_published >= 1, 60)
            print(f"started {gw.journal.last_seq}", flush=True)
            while line := await asyncio.to_thread(sys.stdin.readline):
                words = line.split()
                if words[:1] == ["append"]:
                    for i in range(int(words[1])):
                        gw.journal.append("access.granted", door="main", person=f"p{i % 50}")
                    await asyncio.to_thread(gw.journal.flush)
                    print(f"committed {gw.journal.committed_seq}", flush=True)
                elif words[:1] == ["drain"]:
                    await gw.service.wait_for(lambda: gw.journal.backlog == 0, 120)
                    print(f"drained {gw.journal.acked}", flush=True)
                    break
    finally:
        gw.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fixtures_mqtt")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gateway", help="sync a journal; commands on stdin (a test's gateway)")
    g.add_argument("spec", type=Path)
    args = p.parse_args(argv)
    asyncio.run(_gateway_process(args.spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
