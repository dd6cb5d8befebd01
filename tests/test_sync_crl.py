"""CRLs in: inline or through a signed manifest on `portvakt/crl/<issuer-key-id>`, and straight
from the CRL distribution point (no broker needed), early when a notice arrives. Each goes
through the revocation index on a worker thread; an older CRL never replaces a newer one."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.rig.crlgen import crl_bytes, make_ca
from gateway.rig.http import FileServer
from gateway.rig.mosquitto import Mosquitto
from gateway.sync.config import CrlFetchConfig
from gateway.trust.revocation import RevocationStore
from gateway.trust.validator import TrustStore
from tests.fixtures_mqtt import SITE, Gateway, HqKeys, make_gateway, running, sync_config
from tests.test_sync_policy import broker_args, mosquitto_pub, portvakt, write_key


class Ca:
    def __init__(self, directory: Path) -> None:
        self.cert, self.key = make_ca(directory)
        self.root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
        aki = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.key_id = aki.digest.hex()

    def crl(self, count: int, number: int, **kw: object) -> tuple[bytes, list[int]]:
        return crl_bytes(self.cert, self.key, count, crl_number=number, **kw)  # type: ignore[arg-type]

    def trust(self, directory: Path) -> TrustStore:
        return TrustStore.create(anchors=[self.root], intermediates=[self.cert],
                                 revocation=RevocationStore(directory))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    return Ca(tmp_path_factory.mktemp("crl-ca"))


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    (tmp_path / "www").mkdir()
    with FileServer.start(tmp_path / "www", tmp_path / "http") as server:
        yield server


def gateway_with(broker: Mosquitto, tmp_path: Path, keys: HqKeys, ca: Ca, **cfg: Any) -> Gateway:
    config = replace(sync_config(broker, tmp_path / "gw", keys, user=f"{SITE}/gw-1"), **cfg)
    return make_gateway(tmp_path / "gw", config, keys, trust=ca.trust(tmp_path / "gw" / "crl"))


def installed(gw: Gateway) -> list[tuple[int | None, int]]:
    return [(i.number, i.count) for i in gw.trust.revocation.all()]


async def test_a_million_entry_crl_arrives_through_a_manifest_without_stalling_the_loop(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, ca: Ca,
        files: FileServer) -> None:
    der, serials = await asyncio.to_thread(ca.crl, 1_000_000, 7)
    assert len(der) > 30_000_000
    (tmp_path / "big.crl").write_bytes(der)
    r = await asyncio.to_thread(
        portvakt, "crl", "publish", str(tmp_path / "big.crl"), *broker_args(sync_broker, tmp_path),
        "--upload-dir", str(tmp_path / "www"), "--base-url", files.base_url, "--manifest-key",
        str(write_key(tmp_path / "manifest.key", hq_keys.manifest)))
    assert r.returncode == 0, r.stderr
    topic = f"portvakt/crl/{ca.key_id}"
    gw = gateway_with(sync_broker, tmp_path, hq_keys, ca, fetch_ca_file=files.ca_file)
    lags: list[float] = []

    async def ticker() -> None:  # how late the event loop runs a 10 ms timer
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)

    try:
        tick = asyncio.create_task(ticker())
        async with running(gw.service):
            await gw.service.wait_for(
                lambda: gw.service.info.crl.get(topic, {}).get("status") == "installed", 120)
        tick.cancel()
        assert installed(gw) == [(7, 1_000_000)]
        idx = gw.trust.revocation.all()[0]
        assert idx.contains(serials[123_456]) and not idx.contains(12345)
        assert files.requests("crl-") == 1
        # The fetch and the ingest ran on worker threads: the loop kept its timers.
        assert max(lags) < 0.25, f"event loop stalled {max(lags):.3f} s"
    finally:
        gw.close()


async def test_an_inline_crl_is_installed_and_an_older_one_never_replaces_it(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, ca: Ca) -> None:
    topic = f"portvakt/crl/{ca.key_id}"
    newer, _ = ca.crl(100, 2)
    older, _ = ca.crl(50, 1)
    gw = gateway_with(sync_broker, tmp_path, hq_keys, ca)
    try:
        async with running(gw.service):
            mosquitto_pub(sync_broker, topic, newer, tmp_path)
            await gw.service.wait_for(lambda: gw.service.info.handled["crl"] == 1)
            assert installed(gw) == [(2, 100)]
            mosquitto_pub(sync_broker, topic, older, tmp_path)
            await gw.service.wait_for(lambda: gw.service.info.handled["crl"] == 2)
        assert installed(gw) == [(2, 100)]
        gw.journal.flush()
        refused = gw.journal.events(kind="sync.crl-refused")
        assert len(refused) == 1 and "not newer" in refused[0].data["detail"]
    finally:
        gw.close()


async def test_crls_come_from_the_distribution_point_without_a_broker_and_early_on_a_notice(
        sync_broker: Mosquitto, tmp_path: Path, hq_keys: HqKeys, ca: Ca) -> None:
    www = tmp_path / "www"
    www.mkdir()
    first, _ = ca.crl(10, 1)
    (www / "ca.crl").write_bytes(first)
    with FileServer.start(www, tmp_path / "http", tls=False) as dp:  # DPs are plain http
        url = dp.url("ca.crl")
        gw = gateway_with(sync_broker, tmp_path, hq_keys, ca,
                          crl=CrlFetchConfig(urls=(url,), refresh=3600, lead=3600, retry=1))
        try:
            sync_broker.stop()  # no MQTT at all
            async with running(gw.service):
                await gw.service.wait_for(
                    lambda: gw.service.info.crl.get(url, {}).get("status") == "installed")
                assert installed(gw) == [(1, 10)]
                assert not gw.service.info.connected
                # The CA publishes a new CRL; head office sends a notice: fetched at once.
                second, _ = ca.crl(20, 2)
                (www / "ca.crl").write_bytes(second)
                later = time.time() + 5  # http.server's Last-Modified has whole seconds
                os.utime(www / "ca.crl", (later, later))
                (tmp_path / "second.crl").write_bytes(second)
                await asyncio.to_thread(sync_broker.restart)
                r = await asyncio.to_thread(
                    portvakt, "crl", "publish", "--notice", str(tmp_path / "second.crl"),
                    *broker_args(sync_broker, tmp_path))
                assert r.returncode == 0, r.stderr
                await gw.service.wait_for(lambda: installed(gw) == [(2, 20)])
            assert dp.requests("ca.crl") == 2
        finally:
            gw.close()


def test_pem_crls_are_accepted_too(tmp_path: Path, ca: Ca) -> None:
    from gateway.sync.crl import crl_ingester

    der, _ = ca.crl(5, 3, next_update=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    store = ca.trust(tmp_path / "crl")
    ingest = crl_ingester(store)
    idx = ingest(pem)
    assert (idx.number, idx.count) == (3, 5)
    assert ingest(der) is idx  # the same CRL again: nothing re-parsed
