"""The hand-encoded CRL generator, checked against independent parsers and an independent encoder.

cryptography's parser is strict DER (it refuses non-minimal integers and lengths), openssl is a
second parser, and cryptography's own CRL builder, signing with Ed25519 (deterministic), must
produce the very same bytes.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.rig.crlgen import (
    IssuerKey,
    crl_bytes,
    encode_entry,
    encode_extension,
    encode_integer,
    expected_entry,
    make_ca,
    reason_code_extension,
    write_crl,
)

THIS_UPDATE = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
REASON_FLAGS = {1: x509.ReasonFlags.key_compromise, 3: x509.ReasonFlags.affiliation_changed,
                4: x509.ReasonFlags.superseded, 5: x509.ReasonFlags.cessation_of_operation}
# Serials whose encodings sit on a boundary: 1 byte, top bit set (0x00 in front), all ones, long.
EDGE_SERIALS = [1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 2**63, 2**127, 2**128 - 1, 2**159,
                2**160 - 1]


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, IssuerKey]:
    return make_ca()


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def test_a_generated_crl_loads_verifies_and_lists_exactly_the_returned_serials(ca):
    cert, key = ca
    der, serials = crl_bytes(cert, key, 2000, seed=7, include=EDGE_SERIALS, this_update=THIS_UPDATE,
                             crl_number=42)
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(cert.public_key())
    assert len(serials) == len(set(serials)) == 2000 + len(EDGE_SERIALS)
    assert [r.serial_number for r in crl] == serials
    assert crl.issuer == cert.subject
    assert crl.last_update_utc == THIS_UPDATE
    assert crl.next_update_utc == THIS_UPDATE + dt.timedelta(days=7)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_each_entry_carries_the_date_and_reason_expected_entry_gives(ca):
    cert, key = ca
    der, _ = crl_bytes(cert, key, 500, this_update=THIS_UPDATE)
    reasons = set()
    for r in x509.load_der_x509_crl(der):
        date, code = expected_entry(r.serial_number, THIS_UPDATE)
        assert r.revocation_date_utc == date < THIS_UPDATE
        assert _reason(r) == (REASON_FLAGS[code] if code is not None else None)
        if code is not None:
            assert not r.extensions.get_extension_for_class(x509.CRLReason).critical
        reasons.add(code)
    assert reasons == {None, 1, 3, 4, 5}


def test_without_reason_codes_entries_have_no_extensions(ca):
    cert, key = ca
    der, _ = crl_bytes(cert, key, 50, reason_codes=False)
    assert all(len(r.extensions) == 0 for r in x509.load_der_x509_crl(der))


def test_same_seed_same_serials_other_seed_others(ca):
    cert, key = ca
    assert crl_bytes(cert, key, 20, seed=1)[1] == crl_bytes(cert, key, 20, seed=1)[1]
    assert crl_bytes(cert, key, 20, seed=1)[1] != crl_bytes(cert, key, 20, seed=2)[1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(include=st.lists(st.one_of(st.sampled_from(EDGE_SERIALS), st.integers(0, 2**160 - 1)),
                        max_size=30),
       count=st.integers(0, 5), serial_bytes=st.integers(1, 20))
def test_any_serials_round_trip_through_the_strict_parser(ca, include, count, serial_bytes):
    cert, key = ca
    der, serials = crl_bytes(cert, key, count, include=include, serial_bytes=serial_bytes)
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(cert.public_key())
    assert [r.serial_number for r in crl] == serials
    assert len(serials) == len(set(serials)) == count + len(set(include))
    assert set(include) <= set(serials)
    assert all(0 < s < 2 ** (8 * serial_bytes) for s in serials if s not in include)


def test_one_byte_serials_fill_up_without_repeats(ca):
    cert, key = ca
    der, serials = crl_bytes(cert, key, 250, serial_bytes=1)
    assert sorted(serials) == sorted(r.serial_number for r in x509.load_der_x509_crl(der))
    assert len(set(serials)) == 250 and all(1 <= s <= 255 for s in serials)
    with pytest.raises(ValueError, match="do not fit"):
        crl_bytes(cert, key, 256, serial_bytes=1)


def test_the_bytes_equal_what_cryptography_builder_encodes():
    cert, key = make_ca(key=ed25519.Ed25519PrivateKey.generate())
    builder_serials = [s for s in EDGE_SERIALS if s < 2**159]  # the builder refuses 160-bit serials
    der, serials = crl_bytes(cert, key, 200, include=builder_serials, this_update=THIS_UPDATE,
                             crl_number=3)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(cert.subject)
               .last_update(THIS_UPDATE).next_update(THIS_UPDATE + dt.timedelta(days=7)))
    for s in serials:
        date, code = expected_entry(s, THIS_UPDATE)
        entry = x509.RevokedCertificateBuilder().serial_number(s).revocation_date(date)
        if code is not None:
            entry = entry.add_extension(x509.CRLReason(REASON_FLAGS[code]), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    reference = (builder.add_extension(x509.CRLNumber(3), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
                 .sign(key, None))
    assert der == reference.public_bytes(Encoding.DER)


@pytest.mark.parametrize(("make_key", "hash_name"), [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "sha256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "sha384"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "sha256"),
    (ed25519.Ed25519PrivateKey.generate, None),
], ids=["p256", "p384", "rsa2048", "ed25519"])
def test_the_signature_follows_the_issuer_key(make_key, hash_name):
    cert, key = make_ca(key=make_key())
    crl = x509.load_der_x509_crl(crl_bytes(cert, key, 10)[0])
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    algorithm = crl.signature_hash_algorithm
    assert (algorithm.name if isinstance(algorithm, hashes.HashAlgorithm) else None) == hash_name


def test_dates_from_2050_are_generalized_time(ca):
    cert, key = ca
    this_update = dt.datetime(2050, 1, 1, 0, 0, 30, tzinfo=dt.UTC)
    der, _ = crl_bytes(cert, key, 30, this_update=this_update)
    crl = x509.load_der_x509_crl(der)
    assert b"\x18\x0f20500101000030Z" in der
    assert crl.last_update_utc == this_update
    assert {r.revocation_date_utc for r in crl} == {expected_entry(r.serial_number, this_update)[0]
                                                   for r in crl}


def test_long_entries_get_long_form_lengths(ca):
    cert, key = ca
    bulky = encode_extension("1.3.6.1.4.1.99999.1", b"\x04\x82\x01\x2c" + b"x" * 300)
    der, serials = crl_bytes(cert, key, 5, extra_entry_extensions=[bulky])
    crl = x509.load_der_x509_crl(der)
    assert [r.serial_number for r in crl] == serials
    assert all(len(r.extensions) in (1, 2) for r in crl)


def test_an_empty_crl_leaves_the_revoked_list_out(ca):
    cert, key = ca
    der, serials = crl_bytes(cert, key, 0)
    crl = x509.load_der_x509_crl(der)
    assert serials == [] and len(crl) == 0 and crl.is_signature_valid(cert.public_key())


def test_raw_entries_pass_through_untouched(ca):
    cert, key = ca
    odd = [encode_entry(-5, THIS_UPDATE),
           encode_entry(7, THIS_UPDATE, [encode_extension("1.2.3.4", b"\x05\x00", critical=True)]),
           encode_entry(8, THIS_UPDATE, [reason_code_extension(1, critical=True)])]
    der, serials = crl_bytes(cert, key, 3, raw_entries=odd)
    entries = list(x509.load_der_x509_crl(der))
    assert [r.serial_number for r in entries] == [*serials, -5, 7, 8]
    assert entries[-2].extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.3.4")).critical
    with pytest.raises(ValueError, match="raw_entries"):
        crl_bytes(cert, key, 1, include=[-1])


def test_integers_are_minimal_twos_complement():
    assert encode_integer(0) == b"\x02\x01\x00"
    assert encode_integer(0x7F) == b"\x02\x01\x7f"
    assert encode_integer(0x80) == b"\x02\x02\x00\x80"
    assert encode_integer(-128) == b"\x02\x01\x80"
    assert encode_integer(-129) == b"\x02\x02\xff\x7f"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_openssl_parses_the_crl_and_verifies_its_signature(ca, tmp_path: Path):
    cert, key = ca
    (tmp_path / "issuing.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    serials = write_crl(tmp_path / "c.crl", cert, key, 2000, include=[0x80], crl_number=9)
    out = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "c.crl"),
                          "-CAfile", str(tmp_path / "issuing.pem"), "-noout", "-text"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert "verify OK" in out.stderr
    assert out.stdout.count("Serial Number:") == len(serials)
    assert "Serial Number: 80\n" in out.stdout  # top bit set: the 0x00 pad is not part of the value
    assert "X509v3 CRL Number: \n                9" in out.stdout
    assert "Key Compromise" in out.stdout and "Superseded" in out.stdout
