"""`portvakt verify`, `portvakt crl import`, `portvakt crl list` as a technician runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from gateway.pki_demo import DemoPki
from gateway.rig import crlgen
from readers.virtual.cardfile import read_card
from tests.conftest import repo_root


def portvakt(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def certs(demo_pki: DemoPki, tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, card in demo_pki.cards.items():
        p = tmp_path / f"{name}.pem"
        p.write_bytes(read_card(card).certificate.public_bytes(Encoding.PEM))
        out[name] = p
    return out


def explicit(pki: DemoPki) -> list[str | Path]:
    return ["--trust-anchor", pki.root, "--intermediate", pki.issuing, "--crl", pki.crl,
            "--crl", pki.root.parent / "root.crl"]


def test_verify_reports_each_certificate_with_reason_and_exit_1(demo_pki, certs):
    r = portvakt("verify", *explicit(demo_pki), certs["alice"], certs["bob"], certs["dave"])
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert "path valid" in lines[0] and "revocation=good" in lines[0]
    assert "INVALID  revoked" in lines[1] and "the presented certificate" in lines[1]
    assert "INVALID  expired" in lines[2]


def test_verify_path_only_says_whether_a_configured_profile_would_accept(demo_pki, certs,
                                                                         tmp_path):
    state = tmp_path / "state"
    shutil.copytree(demo_pki.root.parent, state / "pki")
    cfg = repo_root() / "config" / "demo.toml"
    r = portvakt("verify", "--config", cfg, "--state-dir", state, *explicit(demo_pki), "--json",
                 certs["alice"])
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)
    assert res["valid"] and res["profile"]["accepted"]
    assert res["profile"]["identity"] == "upn:alice@demo.example"


def test_verify_with_the_configured_store_and_a_time(demo_pki, certs, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(demo_pki.root.parent, state / "pki")
    cfg = repo_root() / "config" / "demo.toml"
    r = portvakt("verify", "--config", cfg, "--state-dir", state, "--at", "2020-01-01T00:00:00",
                 certs["alice"])
    assert r.returncode == 1 and "not-yet-valid" in r.stdout
    r = portvakt("verify", "--config", cfg, "--state-dir", state, "--profile", "piv-card-auth",
                 certs["alice"])
    assert r.returncode == 0 and "identity=upn:alice@demo.example" in r.stdout


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_verify_unreadable_input_is_exit_2_without_traceback(demo_pki, tmp_path, content):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    r = portvakt("verify", *explicit(demo_pki), bad)
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_verify_bad_time_is_exit_2(demo_pki, certs):
    r = portvakt("verify", *explicit(demo_pki), "--at", "yesterday", certs["alice"])
    assert r.returncode == 2 and "--at: expected an ISO-8601 time" in r.stderr


def test_crl_import_then_list(demo_pki, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(demo_pki.root.parent, state / "pki")
    cfg = repo_root() / "config" / "demo.toml"
    key = load_pem_private_key((state / "pki" / "issuing.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((state / "pki" / "issuing.pem").read_bytes())
    big = tmp_path / "big.crl"
    crlgen.write_crl(big, ca, key, 20_000, crl_number=2)
    r = portvakt("crl", "import", "--config", cfg, "--state-dir", state, big)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "20,000 entries" in r.stdout and "number 2" in r.stdout
    # An older CRL (the demo's number 1) is refused now, and the newer stays in use.
    r = portvakt("crl", "import", "--config", cfg, "--state-dir", state, demo_pki.crl)
    assert r.returncode == 1 and "REFUSED" in r.stdout and "not newer" in r.stdout
    r = portvakt("crl", "list", "--config", cfg, "--state-dir", state, "--json")
    rows = {row["issuer"]: row for row in json.loads(r.stdout)}
    issuing = rows["CN=Portvakt Demo Issuing CA,O=Portvakt Demo"]
    assert issuing["entries"] == 20_000 and issuing["state"] == "fresh"
    assert 0 < issuing["until_next_update_s"] <= 7 * 86400


def test_crl_import_of_junk_is_refused_with_a_reason(demo_pki, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(demo_pki.root.parent, state / "pki")
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"\x30\x03\x02\x01\x01")
    r = portvakt("crl", "import", "--config", repo_root() / "config" / "demo.toml",
                 "--state-dir", state, junk, tmp_path / "missing.crl")
    assert r.returncode == 2
    assert "REFUSED: malformed CRL" in r.stdout and "cannot read" in r.stderr
    assert "Traceback" not in r.stderr


def test_verify_applies_the_stance_revocation_unknown_denies_unless_allowed(demo_pki, certs):
    no_issuing_crl = ["--trust-anchor", demo_pki.root, "--intermediate", demo_pki.issuing,
                      "--crl", demo_pki.root.parent / "root.crl"]
    r = portvakt("verify", *no_issuing_crl, certs["alice"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "INVALID  revocation-unknown" in r.stdout
    r = portvakt("verify", *no_issuing_crl, "--revocation-unknown", "allow", "--json",
                 certs["alice"])
    assert r.returncode == 0, r.stdout + r.stderr
    (res,) = json.loads(r.stdout)
    assert res["valid"] and res["revocation"] == "unknown"
    assert res["alarms"] == ["revocation-unknown"]


def test_verify_sets_a_bad_crl_aside_with_a_warning_and_judges_on_the_rest(demo_pki, certs,
                                                                           tmp_path):
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"\x30\x03\x02\x01\x01")
    r = portvakt("verify", *explicit(demo_pki), "--crl", junk, "--json", certs["alice"],
                 certs["bob"])
    assert r.returncode == 1, r.stderr
    assert f"CRL set aside: {junk}" in r.stderr and "Traceback" not in r.stderr
    alice, bob = json.loads(r.stdout)
    assert alice["valid"] and alice["revocation"] == "good"
    assert bob["reason"] == "revoked"
    assert any(str(junk) in w for w in alice["warnings"])


def test_verify_a_certificate_that_does_not_parse_is_a_refusal_not_bad_input(demo_pki, tmp_path):
    bad = tmp_path / "bad.der"
    bad.write_bytes(b"\x30\x06\x02\x01\x01\x02\x01\x02")  # a DER SEQUENCE, not a certificate
    r = portvakt("verify", *explicit(demo_pki), "--json", bad)
    assert r.returncode == 1, r.stdout + r.stderr
    (res,) = json.loads(r.stdout)
    assert res["reason"] == "malformed" and "Traceback" not in r.stderr


def test_verify_refuses_dsa_as_an_unsupported_algorithm():
    from tests.pkits import cases, data_dir

    (case,) = [c for c in cases() if c.name == "ValidDSASignaturesTest4"]
    certs = data_dir() / "certs"
    crls = data_dir() / "crls"
    r = portvakt("verify", "--at", "2025-06-01T00:00:00", "--trust-anchor",
                 certs / "TrustAnchorRootCertificate.crt", "--intermediate", certs / "DSACACert.crt",
                 "--crl", crls / "TrustAnchorRootCRL.crl", "--crl", crls / "DSACACRL.crl",
                 certs / "ValidDSASignaturesTest4EE.crt")
    assert case.certificates[0] == (certs / "ValidDSASignaturesTest4EE.crt").read_bytes()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "INVALID  unsupported-algorithm" in r.stdout
    assert "DSACACRL.crl" in r.stderr  # its DSA-signed CRL was set aside, named
