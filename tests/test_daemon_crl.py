"""The daemon's CRL freshness watch: a CRL passing its nextUpdate raises alarm.crl-stale at that
moment (not at the next badge), doors apply their crl_stale stance, and the status says so."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.pki_demo import DemoPki
from gateway.rig import crlgen
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import wait_until

LIFETIME = 3.0  # seconds until the issuing CA's CRL is past its nextUpdate


@pytest.fixture
def demo_pki(demo_pki: DemoPki, tmp_path: Path) -> DemoPki:
    """The session's demo PKI with an issuing-CA CRL that goes stale LIFETIME s from now."""
    folder = demo_pki.issuing.parent
    ca = x509.load_pem_x509_certificate(demo_pki.issuing.read_bytes())
    key = load_pem_private_key((folder / "issuing.key").read_bytes(), None)
    short = tmp_path / "short-lived.crl"
    now = dt.datetime.now(dt.UTC)
    crlgen.write_crl(short, ca, key, 3, crl_number=2,  # type: ignore[arg-type]
                     this_update=now - dt.timedelta(seconds=30),
                     next_update=now + dt.timedelta(seconds=LIFETIME))
    return dataclasses.replace(demo_pki, crl=short)


def test_a_crl_going_stale_raises_an_alarm_when_it_happens_and_doors_apply_their_stance(
        daemon_factory: Any, pcsc_rig: PcscRig, demo_pki: DemoPki) -> None:
    d = daemon_factory()
    assert d.events("alarm.crl-stale") == []
    alarm = d.wait_event("alarm.crl-stale", timeout=LIFETIME + 10)
    assert "Issuing CA" in alarm["issuer"]
    states = {c["issuer"]: c["state"] for c in d.ask({"cmd": "status"})["crls"]}
    assert "stale" in states.values()
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    denied = d.wait_event("access.denied")
    assert (denied["person"], denied["reason"]) == ("p-alice", "crl-stale")
    wait_until(lambda: len(d.events("alarm.crl-stale")) == 1, 1, "one alarm, not one per check")


def test_crls_come_from_their_distribution_point_without_any_broker(
        daemon_factory: Any, pcsc_rig: PcscRig, demo_pki: DemoPki, tmp_path: Path) -> None:
    """[crl] urls, no [mqtt]: the daemon fetches the issuing CA's new CRL (number 3, Alice
    revoked) over http and decides on it; a broken CRL at another point is refused, journaled."""
    from gateway.rig.http import FileServer
    from readers.virtual.cardfile import read_card

    folder = demo_pki.issuing.parent
    ca = x509.load_pem_x509_certificate(demo_pki.issuing.read_bytes())
    key = load_pem_private_key((folder / "issuing.key").read_bytes(), None)
    www = tmp_path / "www"
    www.mkdir()
    alice = read_card(demo_pki.cards["alice"]).certificate.serial_number
    crlgen.write_crl(www / "issuing.crl", ca, key, 5, include=[alice],  # type: ignore[arg-type]
                     crl_number=3)
    (www / "broken.crl").write_bytes(b"\x30\x03\x02\x01\x01")
    with FileServer.start(www, tmp_path / "http", tls=False) as dp:
        d = daemon_factory(door_toml=f'\n[crl]\nurls = ["{dp.url("issuing.crl")}", '
                                     f'"{dp.url("broken.crl")}"]\n')
        d.wait_event("crl.installed")
        refused = d.wait_event("sync.crl-refused")
        assert refused["source"].endswith("broken.crl")
        numbers = sorted(c["number"] for c in d.ask({"cmd": "status"})["crls"])
        assert 3 in numbers
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        denied = d.wait_event("access.denied")
        assert denied["reason"] == "revoked"
