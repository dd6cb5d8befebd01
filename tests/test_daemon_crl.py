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

LIFETIME = 8.0  # seconds until the issuing CA's CRL is past its nextUpdate
STALE_AT: list[float] = []  # the short-lived CRL's nextUpdate (POSIX seconds)


def issuing_ca(pki: DemoPki) -> tuple[x509.Certificate, Any]:
    ca = x509.load_pem_x509_certificate(pki.issuing.read_bytes())
    return ca, load_pem_private_key((pki.issuing.parent / "issuing.key").read_bytes(), None)


@pytest.fixture
def demo_pki(demo_pki: DemoPki, tmp_path: Path) -> DemoPki:
    """The session's demo PKI with an issuing-CA CRL that goes stale LIFETIME s from now."""
    ca, key = issuing_ca(demo_pki)
    short = tmp_path / "short-lived.crl"
    now = dt.datetime.now(dt.UTC)
    crlgen.write_crl(short, ca, key, 3, crl_number=2,
                     this_update=now - dt.timedelta(seconds=30),
                     next_update=now + dt.timedelta(seconds=LIFETIME))
    STALE_AT[:] = [float(int(now.timestamp() + LIFETIME))]  # X.509 times have whole seconds
    return dataclasses.replace(demo_pki, crl=short)


def test_a_crl_going_stale_raises_an_alarm_when_it_happens_and_a_newer_one_clears_it(
        daemon_factory: Any, pcsc_rig: PcscRig, demo_pki: DemoPki, tmp_path: Path) -> None:
    from gateway.rig.http import FileServer

    www = tmp_path / "www"
    www.mkdir()
    with FileServer.start(www, tmp_path / "http", tls=False) as dp:
        # The distribution point has nothing yet (404): the fetcher retries, backing off.
        d = daemon_factory(door_toml=f'\n[crl]\nurls = ["{dp.url("issuing.crl")}"]\n'
                                     f"retry_seconds = 0.5\nrefresh_seconds = 10\n")
        alarm = d.wait_event("alarm.crl-stale", timeout=LIFETIME + 15)
        assert "Issuing CA" in alarm["issuer"]
        assert alarm["at"] >= STALE_AT[0] - 0.05  # raised when it went stale, not before
        assert "stale" in {c["state"] for c in d.ask({"cmd": "status"})["crls"]}
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        denied = d.wait_event("access.denied")
        assert (denied["person"], denied["reason"]) == ("p-alice", "crl-stale")
        pcsc_rig.remove("Door0", wait=True)

        # The CA publishes a fresh CRL: installed, the alarm cleared at once, doors open again.
        ca, key = issuing_ca(demo_pki)
        crlgen.write_crl(www / "issuing.crl", ca, key, 3, crl_number=3)
        d.wait_event("crl.installed", timeout=20)
        cleared = d.wait_event("alarm.cleared")
        assert (cleared["alarm"], cleared["issuer"]) == ("crl-stale", alarm["issuer"])
        assert len(d.events("alarm.crl-stale")) == 1  # one alarm, not one per check
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        assert d.wait_event("access.granted")["person"] == "p-alice"


def test_crls_come_from_their_distribution_point_without_any_broker(
        daemon_factory: Any, pcsc_rig: PcscRig, demo_pki: DemoPki, tmp_path: Path) -> None:
    """[crl] urls, no [mqtt]: the daemon fetches the issuing CA's new CRL (number 3, Alice
    revoked) over http and decides on it; a broken CRL at another point is refused, journaled."""
    from gateway.rig.http import FileServer
    from readers.virtual.cardfile import read_card

    ca, key = issuing_ca(demo_pki)
    www = tmp_path / "www"
    www.mkdir()
    alice = read_card(demo_pki.cards["alice"]).certificate.serial_number
    crlgen.write_crl(www / "issuing.crl", ca, key, 5, include=[alice], crl_number=3)
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


def test_crl_import_while_the_daemon_runs_goes_through_it_and_decides_at_once(
        daemon_factory: Any, pcsc_rig: PcscRig, demo_pki: DemoPki, tmp_path: Path) -> None:
    import subprocess
    import sys

    from readers.virtual.cardfile import read_card

    d = daemon_factory()
    ca, key = issuing_ca(demo_pki)
    alice = read_card(demo_pki.cards["alice"]).certificate.serial_number
    crl = tmp_path / "alice-revoked.crl"
    crlgen.write_crl(crl, ca, key, 5, include=[alice], crl_number=4)
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"\x30\x03\x02\x01\x01")

    def portvakt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "crl", "import", "--config",
                               str(d.config), "--state-dir", str(d.state), *args],
                              capture_output=True, text=True, timeout=60)

    r = portvakt(str(crl))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "in use (by the running daemon)" in r.stdout and "number 4" in r.stdout
    installed = d.wait_event("crl.installed")
    assert installed["number"] == 4 and installed["user"]
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    assert d.wait_event("access.denied")["reason"] == "revoked"

    r = portvakt(str(junk))
    assert r.returncode == 1 and "REFUSED" in r.stdout and "Traceback" not in r.stderr
    assert d.wait_event("crl.refused")["source"] == str(junk)
