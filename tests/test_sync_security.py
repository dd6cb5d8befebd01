"""Security of the link: TLS with the CA pinned, passwords only from private files, and the
shipped broker ACL: a gateway reads only its own policy, commands and acknowledgements and
writes only its own events and status (a refused publish is a failure, not a delivery)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.rig.mosquitto import Mosquitto
from gateway.rig.tls import make_ca
from tests.fixtures_mqtt import (
    SITE,
    HqKeys,
    make_gateway,
    running,
    sync_config,
)
from tests.test_sync_policy import bundle, mosquitto_pub


def sub_first(broker: Mosquitto, user: str, topics: list[str]) -> str:
    """The first message `user` receives after subscribing to `topics`, in that order, as
    "topic payload". Retained messages come in the order of the subscriptions, so a message
    on an earlier topic would come first if the ACL let it through."""
    r = subprocess.run(["mosquitto_sub", "-V", "5", "-h", "127.0.0.1", "-p", str(broker.tls_port),
                        "--cafile", str(broker.ca_file), "-u", user, "-P", broker.users[user],
                        *[a for t in topics for a in ("-t", t)], "-v", "-C", "1", "-W", "10"],
                       capture_output=True, text=True, timeout=20, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_gateway_a_cannot_read_gateway_bs_policy(sync_broker: Mosquitto, tmp_path: Path,
                                                 hq_keys: HqKeys) -> None:
    a, b = f"portvakt/{SITE}/gw-1/policy", f"portvakt/{SITE}/gw-2/policy"
    mosquitto_pub(sync_broker, b, b"policy-for-b", tmp_path)
    mosquitto_pub(sync_broker, a, b"policy-for-a", tmp_path)
    assert sub_first(sync_broker, f"{SITE}/gw-1", [b, a]) == f"{a} policy-for-a"
    assert sub_first(sync_broker, f"{SITE}/gw-2", [a, b]) == f"{b} policy-for-b"
    # Nor B's commands or acknowledgements, nor another gateway's status or events.
    for other in ("cmd", "events/ack", "status", "events"):
        mosquitto_pub(sync_broker, f"portvakt/{SITE}/gw-2/{other}", b"not-for-a", tmp_path)
    assert sub_first(sync_broker, f"{SITE}/gw-1", [f"portvakt/{SITE}/gw-2/#", a]) == \
        f"{a} policy-for-a"


async def test_a_gateway_posing_as_another_cannot_publish_its_events(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    # gw-1's credentials, gw-2's topics: every publish is refused (MQTT v5 PUBACK 135), and a
    # refused publish never counts as sent.
    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1")
    with make_gateway(tmp_path / "gw", cfg, hq_keys, gateway="gw-2") as gw:
        async with running(gw.service):
            mosquitto_pub(sync_broker, f"portvakt/{SITE}/gw-2/policy", bundle(1, hq_keys.policy),
                          tmp_path)
            gw.journal.append("access.granted", door="main")
            await gw.service.wait_for(lambda: "refused" in (gw.service.info.last_error or ""))
        assert "Not authorized (135)" in (gw.service.info.last_error or "")
        assert gw.service.info.sent == 0
        assert gw.journal.backlog == 1
        assert gw.outcomes == []  # nor did it read gw-2's policy


async def test_a_broker_certificate_from_another_ca_is_refused(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys) -> None:
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    cfg = replace(sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1"),
                  ca_file=other_ca)
    with make_gateway(tmp_path / "gw", cfg, hq_keys) as gw:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.last_error is not None)
        assert "certificate verify failed" in (gw.service.info.last_error or "")
        assert gw.service.info.connects == 0


async def test_a_wrong_password_is_refused(sync_broker: Mosquitto, tmp_path: Path,
                                           hq_keys: HqKeys) -> None:
    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1")
    assert cfg.password_file is not None
    cfg.password_file.write_text("not-the-password\n")
    with make_gateway(tmp_path / "gw", cfg, hq_keys) as gw:
        async with running(gw.service):
            await gw.service.wait_for(lambda: gw.service.info.last_error is not None)
        assert "Not authorized" in (gw.service.info.last_error or "")
        assert gw.service.info.connects == 0


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_password_file_others_can_read_is_refused_at_start(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, mode: int) -> None:
    cfg = sync_config(sync_broker, tmp_path / "gw", hq_keys, user=f"{SITE}/gw-1")
    assert cfg.password_file is not None
    cfg.password_file.chmod(mode)
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .* accessible to group or "
                                          rf"others \(mode 0{mode:o}\)"):
        make_gateway(tmp_path / "gw", cfg, hq_keys)


def client_cert(broker: Mosquitto, directory: Path, cn: str) -> tuple[Path, Path]:
    """A TLS client certificate for `cn` from the broker's CA (mode 0600 key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(broker.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(broker.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn)])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    stem = cn.replace("/", "_")
    crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


async def test_client_certificates_replace_passwords_and_the_acl_still_holds(
        tmp_path: Path, hq_keys: HqKeys) -> None:
    from gateway.sync.hq import Collector
    from gateway.sync.mqtt import BrokerParams
    from tests.fixtures_mqtt import BROKER_SETTINGS, SHIPPED_ACL

    broker = Mosquitto.start(tmp_path / "broker", users={"nobody": "x"},
                             acl=SHIPPED_ACL.read_text(), settings=BROKER_SETTINGS,
                             tls_settings=["require_certificate true",
                                           "use_identity_as_username true"])
    try:
        crt, key = client_cert(broker, tmp_path / "certs", f"{SITE}/gw-1")
        with_password = sync_config(broker, tmp_path / "gw", hq_keys, user="nobody")
        cfg = replace(with_password, username=None, password_file=None, client_cert=crt,
                      client_key=key)
        gw = make_gateway(tmp_path / "gw", cfg, hq_keys)
        hq_crt, hq_key = client_cert(broker, tmp_path / "certs", "hq")
        collector = Collector(tmp_path / "hq.db", BrokerParams(
            "127.0.0.1", broker.tls_port, broker.ca_file, "portvakt-hq", client_cert=hq_crt,
            client_key=hq_key), backoff_initial=0.05, backoff_max=0.5)
        try:
            async with running(collector, gw.service):
                await collector.wait_for(lambda: collector.info.connected)
                gw.journal.append("access.granted", door="main")
                await gw.service.wait_for(lambda: gw.journal.acked == 1)
        finally:
            gw.close()
        # Without a certificate the TLS listener refuses the gateway.
        with make_gateway(tmp_path / "gw2", with_password, hq_keys) as gw:
            async with running(gw.service):
                await gw.service.wait_for(lambda: gw.service.info.last_error is not None)
            assert gw.service.info.connects == 0
            assert "CERTIFICATE_REQUIRED" in (gw.service.info.last_error or "")
    finally:
        broker.stop()
