"""CRL distribution points read from certificates: which points count, and that the gateway
fetches them (at start from its CA certificates, from a card's certificate when it is first
presented) without any configured URL, remembering them across restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.journal import Journal
from gateway.rig import crlgen
from gateway.rig.http import FileServer
from gateway.sync.config import CrlFetchConfig
from gateway.sync.crl import MAX_LEARNED, CrlFetcher
from gateway.sync.state import SyncState
from gateway.trust.distribution import distribution_points

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
KEY = ec.generate_private_key(ec.SECP256R1())


def point(*urls: str, reasons: frozenset[x509.ReasonFlags] | None = None,
          crl_issuer: list[x509.GeneralName] | None = None) -> x509.DistributionPoint:
    return x509.DistributionPoint([x509.UniformResourceIdentifier(u) for u in urls], None,
                                  reasons, crl_issuer)


def cert(*points: x509.DistributionPoint) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(KEY.public_key()).serial_number(1)
         .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1)))
    if points:
        b = b.add_extension(x509.CRLDistributionPoints(list(points)), critical=False)
    return b.sign(KEY, hashes.SHA256())


def naming_point(like: x509.Certificate, public_key: Any, serial: int, url: str, issuer_key: Any,
                 digest: hashes.SHA256 | hashes.SHA384) -> x509.Certificate:
    """A certificate as `like` (its names, validity and extensions) for `public_key` with
    `serial`, naming `url` as its CRL distribution point, signed by `issuer_key`."""
    b = (x509.CertificateBuilder().subject_name(like.subject).issuer_name(like.issuer)
         .public_key(public_key).serial_number(serial)
         .not_valid_before(like.not_valid_before_utc).not_valid_after(like.not_valid_after_utc))
    for ext in like.extensions:
        b = b.add_extension(ext.value, ext.critical)
    return b.add_extension(x509.CRLDistributionPoints([point(url)]), critical=False).sign(
        issuer_key, digest)


def test_only_plain_http_points_a_fetch_can_use_count() -> None:
    assert distribution_points(cert()) == ()
    c = cert(point("ldap://dir.example/cn=Issuing?certificateRevocationList",
                   "http://pki.example/issuing.crl"),
             point("HTTPS://pki.example/issuing.crl", "http://pki.example/issuing.crl"),
             point("http://pki.example/keycompromise.crl",
                   reasons=frozenset({x509.ReasonFlags.key_compromise})),
             point("http://pki.example/indirect.crl",
                   crl_issuer=[x509.DirectoryName(x509.Name(
                       [x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")]))]),
             x509.DistributionPoint(None, x509.RelativeDistinguishedName(
                 [x509.NameAttribute(NameOID.COMMON_NAME, "CRL1")]), None, None),
             point("ftp://pki.example/issuing.crl", "http://pki.example/a b.crl"))
    # ldap, ftp, a partitioned (reasons) CRL, an indirect CRL, a relative name and a URL with a
    # space are left out; a repeated URL counts once.
    assert distribution_points(c) == ("http://pki.example/issuing.crl",
                                      "HTTPS://pki.example/issuing.crl")


@pytest.fixture
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return crlgen.make_ca()  # type: ignore[return-value]


async def test_learned_points_are_fetched_at_once_and_remembered_across_restarts(
        tmp_path: Path, ca: Any) -> None:
    cert_, key = ca
    www = tmp_path / "www"
    www.mkdir()
    crlgen.write_crl(www / "issuing.crl", cert_, key, 3, crl_number=7)
    installed: list[bytes] = []

    async def ingest(data: bytes) -> Any:
        installed.append(data)
        return None

    config = CrlFetchConfig(refresh=3600.0, from_certificates=True)
    with FileServer.start(www, tmp_path / "http", tls=False) as dp:
        url = dp.url("issuing.crl")
        journal = Journal(tmp_path / "j.db", "gw")
        try:
            fetcher = CrlFetcher(config, ingest, SyncState(journal), journal)
            assert fetcher.learn([url], "CN=Alice") == []  # before the start: kept for it
            task = asyncio.create_task(fetcher.run())
            try:
                while not installed:
                    await asyncio.sleep(0.02)
                # The same point again (another card of that CA) is not a new one.
                assert fetcher.learn([url], "CN=Bob") == []
                assert [p.url for p in fetcher.points] == [url]
                # A card cannot make the gateway fetch from more than MAX_LEARNED places.
                many = [dp.url(f"missing-{i}.crl") for i in range(MAX_LEARNED + 5)]  # 404
                assert len(fetcher.learn(many, "CN=Mallory")) == MAX_LEARNED - 1
                assert len(fetcher.learned) == MAX_LEARNED
                while SyncState(journal).get("crl-dp-learned") != fetcher.learned:
                    await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert dp.requests("issuing.crl") == 1
            # Its supervisor restarts it (the same object): a point learned while it restores
            # is kept, nothing is doubled.
            task = asyncio.create_task(fetcher.run())
            try:
                fetcher.learn([url, "http://pki.example/late.crl"], "CN=Carol")
                while not fetcher._restored:
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            urls = [p.url for p in fetcher.points]
            assert len(urls) == len(set(urls)) == MAX_LEARNED
            learned = journal.events("crl.point-learned")
            assert (learned[0].data["source"], learned[0].data["named_by"]) == (url, "CN=Alice")
            assert len(learned) == MAX_LEARNED
            # Restarted: the points are there again without anyone presenting a card.
            again = CrlFetcher(config, ingest, SyncState(journal), journal)
            task = asyncio.create_task(again.run())
            try:
                while len(again.points) < MAX_LEARNED:
                    await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert again.points[0].url == url
            assert len(journal.events("crl.point-learned")) == MAX_LEARNED  # not again
        finally:
            journal.close()


async def test_without_from_certificates_nothing_is_learned(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "gw")
    try:
        fetcher = CrlFetcher(CrlFetchConfig(urls=("http://x/c.crl",)), None,  # type: ignore[arg-type]
                             SyncState(journal), journal)
        assert fetcher.learn(["http://pki.example/issuing.crl"], "CN=Alice") == []
        assert [p.url for p in fetcher.points] == ["http://x/c.crl"]
    finally:
        journal.close()


def test_a_card_names_its_crl_point_and_the_daemon_fetches_it_without_a_configured_url(
        daemon_factory: Any, pcsc_rig: Any, demo_pki: Any, tmp_path: Path) -> None:
    """A [crl] table without urls. A second CA certificate in the trust store names where the
    root publishes its CRL: fetched at start. Alice's new card names where its CA publishes its
    CRL; her first badge opens the door, the gateway fetches that CRL (which revokes the card),
    and her second badge is refused as revoked."""
    from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

    from gateway.pki_demo import make_issuing_ca
    from readers.virtual.cardfile import read_card, write_card

    ca = x509.load_pem_x509_certificate(demo_pki.issuing.read_bytes())
    ca_key = load_pem_private_key((demo_pki.issuing.parent / "issuing.key").read_bytes(), None)
    root = x509.load_pem_x509_certificate(demo_pki.root.read_bytes())
    root_key = load_pem_private_key((demo_pki.root.parent / "root.key").read_bytes(), None)
    www = tmp_path / "www"
    www.mkdir()
    with FileServer.start(www, tmp_path / "http", tls=False) as dp:
        # The root's CRL number 2 (the files have number 1), named by a second CA's certificate.
        crlgen.write_crl(www / "root.crl", root, root_key, 0, crl_number=2)  # type: ignore[arg-type]
        second, _ = make_issuing_ca(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                  "Second CA")]),
                                    root, root_key, NOW)  # type: ignore[arg-type]
        # make_issuing_ca adds no CRL distribution point: re-sign its certificate with one.
        second = naming_point(second, second.public_key(), second.serial_number,
                              dp.url("root.crl"), root_key, hashes.SHA384())
        second_pem = tmp_path / "second-ca.pem"
        second_pem.write_bytes(second.public_bytes(Encoding.PEM))
        url = dp.url("issuing.crl")
        old = read_card(demo_pki.cards["alice"]).certificate
        key = ec.generate_private_key(ec.SECP256R1())
        new = naming_point(old, key.public_key(), x509.random_serial_number(), url, ca_key,
                           hashes.SHA256())
        card = tmp_path / "alice-new.card.json"
        write_card(card, "alice", new, key)
        crlgen.write_crl(www / "issuing.crl", ca, ca_key, 5,  # type: ignore[arg-type]
                         include=[new.serial_number], crl_number=5)

        d = daemon_factory(door_toml="\n[crl]\nretry_seconds = 0.5\n",
                           intermediates=[second_pem])
        from_ca = d.wait_event("crl.point-learned")
        assert from_ca["source"] == dp.url("root.crl") and "Second CA" in from_ca["named_by"]
        assert d.wait_event("crl.installed")["source"] == dp.url("root.crl")
        assert dp.requests("issuing.crl") == 0  # nothing names it yet
        pcsc_rig.insert("Door0", card)
        assert d.wait_event("access.granted")["person"] == "p-alice"
        pcsc_rig.remove("Door0", wait=True)
        learned = d.wait_event("crl.point-learned", 2)
        assert learned["source"] == url and "Alice" in learned["named_by"]
        assert d.wait_event("crl.installed", 2)["source"] == url
        assert 5 in {c["number"] for c in d.ask({"cmd": "status"})["crls"]}
        pcsc_rig.insert("Door0", card)
        denied = d.wait_event("access.denied")
        assert denied["reason"] == "revoked"
        pcsc_rig.remove("Door0", wait=True)
        assert len(d.events("crl.point-learned")) == 2  # the second badge named nothing new
