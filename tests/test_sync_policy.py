"""Policy in: head office's signed bundle on the retained `policy` topic, inline or through a
signed manifest with the content on an HTTPS server (a process of its own). A bundle that must
not be used is rejected with a journaled reason and the policy in force keeps deciding."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.bundle import PolicyStore, load_keys, make_bundle, sign_bundle
from gateway.rig.http import FileServer
from gateway.rig.mosquitto import Mosquitto
from gateway.sync.signed import make_manifest, sign_document
from tests.fixtures_mqtt import (
    REPO,
    SITE,
    Gateway,
    HqKeys,
    make_gateway,
    running,
    sync_config,
)

TOPIC = f"portvakt/{SITE}/gw-1/policy"


def content(people: int = 2) -> dict[str, Any]:
    return {"time_zone": "Europe/Stockholm", "doors": ["main"],
            "access_levels": {"all": {"resources": ["main"], "schedule": "always"}},
            "groups": {"staff": {"access_levels": ["all"]}},
            "people": [{"id": f"p{i}", "identities": [f"upn:user{i}@example.se"],
                        "groups": ["staff"]} for i in range(people)]}


def bundle(version: int, key: ed25519.Ed25519PrivateKey, *, site: str = SITE,
           people: int = 2) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    return sign_bundle(make_bundle(content(people), version=version, site=site, issued_at=now,
                                   not_after=now + timedelta(days=30)), key)


def mosquitto_pub(broker: Mosquitto, topic: str, payload: bytes, tmp: Path) -> None:
    f = tmp / "payload.bin"
    f.write_bytes(payload)
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.tls_port),
                        "--cafile", str(broker.ca_file), "-u", "hq", "-P", broker.users["hq"],
                        "-t", topic, "-f", str(f), "-r", "-q", "1"],
                       capture_output=True, text=True, timeout=10, check=False)
    assert r.returncode == 0, r.stderr


def kinds(gw: Gateway, prefix: str) -> list[dict[str, Any]]:
    gw.journal.flush()
    return [{"kind": e.kind, "reason": e.reason, **e.data} for e in gw.journal.events(limit=10_000)
            if e.kind.startswith(prefix)]


@pytest.fixture
def gateway(sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path / "gw", sync_config(sync_broker, tmp_path / "gw", hq_keys,
                                                   user=f"{SITE}/gw-1"), hq_keys)
    try:
        yield gw
    finally:
        gw.close()


async def test_a_policy_published_with_mosquitto_pub_is_applied_and_kept_without_a_broker(
        sync_broker: Mosquitto, gateway: Gateway, hq_keys: HqKeys, tmp_path: Path) -> None:
    mosquitto_pub(sync_broker, TOPIC, bundle(1, hq_keys.policy), tmp_path)  # retained, before
    async with running(gateway.service):
        await gateway.service.wait_for(lambda: gateway.service.info.policy is not None)
    assert gateway.service.info.policy is not None
    assert gateway.service.info.policy["status"] == "applied"
    assert [e["version"] for e in kinds(gateway, "policy.applied")] == [1]
    sync_broker.stop()
    # A restart with no broker resumes on the stored policy.
    again = PolicyStore(gateway.dir / "portvakt.db", load_keys([hq_keys.policy_pub]), SITE)
    try:
        current = again.current()
        assert current is not None and current.version == 1
    finally:
        again.close()


def _corrupt(envelope: bytes) -> bytes:
    env = json.loads(envelope)
    sig = bytearray(base64.b64decode(env["signature"]))
    sig[5] ^= 0x40
    env["signature"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(env).encode()


OTHER_KEY = ed25519.Ed25519PrivateKey.generate()
BAD = {
    "rollback": (lambda k: bundle(1, k), "rollback"),
    "wrong-key": (lambda k: bundle(3, OTHER_KEY), "unknown-key"),
    "wrong-site": (lambda k: bundle(3, k, site="gbg-lab"), "wrong-site"),
    "corrupt-signature": (lambda k: _corrupt(bundle(3, k)), "bad-signature"),
    "corrupt-bytes": (lambda k: bundle(3, k)[:-40], "bad-envelope"),
    "conflict": (lambda k: bundle(2, k, people=3), "conflict"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_refused_bundle_is_journaled_and_the_policy_in_force_stays(
        sync_broker: Mosquitto, gateway: Gateway, hq_keys: HqKeys, tmp_path: Path,
        case: str) -> None:
    make, reason = BAD[case]
    async with running(gateway.service):
        mosquitto_pub(sync_broker, TOPIC, bundle(1, hq_keys.policy), tmp_path)
        await gateway.service.wait_for(lambda: len(gateway.outcomes) == 1)
        mosquitto_pub(sync_broker, TOPIC, bundle(2, hq_keys.policy), tmp_path)
        await gateway.service.wait_for(lambda: len(gateway.outcomes) == 2)
        assert gateway.policy_version == 2
        mosquitto_pub(sync_broker, TOPIC, make(hq_keys.policy), tmp_path)
        await gateway.service.wait_for(lambda: len(gateway.outcomes) == 3)
    last = gateway.outcomes[-1]
    assert (last.status, last.reason) == ("rejected", reason), last.detail
    assert gateway.policy_version == 2  # still deciding on version 2
    alarms = kinds(gateway, "alarm.policy-rejected")
    assert [(a["reason"], a["kept"]) for a in alarms] == [(reason, 2)]


async def test_the_same_bundle_again_is_ignored(sync_broker: Mosquitto, gateway: Gateway,
                                                 hq_keys: HqKeys, tmp_path: Path) -> None:
    env = bundle(1, hq_keys.policy)
    async with running(gateway.service):
        mosquitto_pub(sync_broker, TOPIC, env, tmp_path)
        await gateway.service.wait_for(lambda: len(gateway.outcomes) == 1)
        mosquitto_pub(sync_broker, TOPIC, env, tmp_path)
        await gateway.service.wait_for(lambda: len(gateway.outcomes) == 2)
    assert [(o.status, o.reason) for o in gateway.outcomes] == [("applied", None),
                                                                ("ignored", "duplicate")]


# --- manifests -----------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    with FileServer.start(root, tmp_path / "http") as server:
        yield server


def manifest_gateway(broker: Mosquitto, tmp_path: Path, keys: HqKeys,
                     files: FileServer) -> Gateway:
    cfg = sync_config(broker, tmp_path / "gw", keys, user=f"{SITE}/gw-1",
                      fetch_ca_file=files.ca_file)
    return make_gateway(tmp_path / "gw", cfg, keys)


def write_key(path: Path, key: ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return path


def portvakt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def broker_args(broker: Mosquitto, tmp: Path) -> list[str]:
    pw = tmp / "hq-password"
    pw.write_text(broker.users["hq"])
    pw.chmod(0o600)
    return ["--broker", f"127.0.0.1:{broker.tls_port}", "--ca-file", str(broker.ca_file),
            "--username", "hq", "--password-file", str(pw)]


async def test_a_large_policy_arrives_through_a_manifest_published_by_the_cli(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, files: FileServer) -> None:
    env = bundle(1, hq_keys.policy, people=6000)
    assert len(env) > 256 * 1024
    (tmp_path / "bundle.json").write_bytes(env)
    r = portvakt("policy", "publish", str(tmp_path / "bundle.json"), "--gateway", "gw-1",
                 *broker_args(sync_broker, tmp_path), "--upload-dir", str(tmp_path / "www"),
                 "--base-url", files.base_url, "--manifest-key",
                 str(write_key(tmp_path / "manifest.key", hq_keys.manifest)))
    assert r.returncode == 0, r.stderr
    assert "published" in r.stdout
    gw = manifest_gateway(sync_broker, tmp_path, hq_keys, files)
    try:
        async with running(gw.service):
            await gw.service.wait_for(lambda: len(gw.outcomes) == 1, 60)
            assert gw.outcomes[0].status == "applied"
            assert gw.policy_version == 1
            assert files.requests("policy-") == 1
            # The retained manifest comes again at every reconnect: not fetched again.
            connects = gw.service.info.connects
            sync_broker.restart()
            await gw.service.wait_for(lambda: gw.service.info.connects > connects)
            await gw.service.wait_for(lambda: gw.service.info.handled["policy"] == 2)
        assert files.requests("policy-") == 1
        assert len(gw.outcomes) == 1
    finally:
        gw.close()


def publish_manifest(broker: Mosquitto, tmp: Path, files: FileServer, key: ed25519.Ed25519PrivateKey,
                     served: bytes, promised: bytes) -> None:
    import hashlib

    name = "policy-x.json"
    (tmp / "www" / name).write_bytes(served)
    doc = make_manifest("policy", SITE, files.url(name), hashlib.sha256(promised).hexdigest(),
                        len(promised), datetime.now(UTC))
    mosquitto_pub(broker, TOPIC, sign_document(doc, key), tmp)


async def test_a_manifest_whose_content_does_not_match_is_refused(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, files: FileServer) -> None:
    gw = manifest_gateway(sync_broker, tmp_path, hq_keys, files)
    try:
        async with running(gw.service):
            mosquitto_pub(sync_broker, TOPIC, bundle(1, hq_keys.policy), tmp_path)
            await gw.service.wait_for(lambda: len(gw.outcomes) == 1)
            good = bundle(2, hq_keys.policy)
            tampered = good.replace(b'"alg"', b' "alg"')  # same size + 1, other digest
            publish_manifest(sync_broker, tmp_path, files, hq_keys.manifest, tampered[:len(good)],
                             good)
            await gw.service.wait_for(lambda: (gw.service.info.policy or {}).get("reason")
                                      == "digest-mismatch")
        assert gw.policy_version == 1
        assert [a["reason"] for a in kinds(gw, "alarm.policy-rejected")] == ["digest-mismatch"]
    finally:
        gw.close()


async def test_a_manifest_signed_with_a_key_that_is_not_pinned_is_refused_unfetched(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, files: FileServer) -> None:
    gw = manifest_gateway(sync_broker, tmp_path, hq_keys, files)
    try:
        async with running(gw.service):
            env = bundle(1, hq_keys.policy)
            publish_manifest(sync_broker, tmp_path, files, OTHER_KEY, env, env)
            await gw.service.wait_for(lambda: gw.service.info.policy is not None)
        assert gw.service.info.policy is not None
        assert gw.service.info.policy["reason"] == "unknown-key"
        assert files.requests() == 0
        assert gw.policy_version is None
    finally:
        gw.close()
