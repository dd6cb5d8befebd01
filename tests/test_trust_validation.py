"""Offline path validation: each RFC 5280 check the physical-access validator makes."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from gateway.trust.revocation import RevocationStore
from gateway.trust.validator import CredentialProfile, Rejection, TrustStore, Validated
from tests.certs import (
    KEY_TYPES,
    NOW,
    PIV_CARD_AUTH_EKU,
    UNKNOWN_EXTENSION_OID,
    Issued,
    Pki,
    dn,
    key_usage,
    unknown_extension,
)

PIV = CredentialProfile("piv", required_eku=frozenset({PIV_CARD_AUTH_EKU.dotted_string}))
AT = NOW.timestamp()


def store_for(root: Pki, *cas: Pki, crls=(), profiles=(PIV,), **kw) -> TrustStore:
    ts = TrustStore.create(anchors=[root.cert], intermediates=[c.cert for c in cas],
                           revocation=RevocationStore(None), profiles=profiles, **kw)
    for crl in crls:
        ts.revocation.ingest(crl.der, ts.signers(), now=AT)
    return ts


def validate(ts: TrustStore, leaf: Issued, at: float = AT, chain=None):
    return ts.validate(chain or [leaf.cert], at)


@pytest.fixture(scope="module")
def pki():
    root = Pki.root("Root", key="p384")
    ca = root.issue_ca("Issuing", path_length=0)
    return root, ca


def good(pki) -> TrustStore:
    root, ca = pki
    return store_for(root, ca, crls=[root.crl(), ca.crl()])


@pytest.mark.parametrize("key", KEY_TYPES)
def test_every_signature_algorithm_validates(key):
    root = Pki.root("Root", key=key)
    ca = root.issue_ca("Issuing", key=key)
    leaf = ca.issue_leaf("alice", key=key, upn="alice@example.org")
    v = validate(store_for(root, ca, crls=[root.crl(), ca.crl()]), leaf)
    assert isinstance(v, Validated), v
    assert v.identity.key == "upn:alice@example.org" and v.revocation == "good"


def test_tampered_signature_is_refused(pki):
    root, ca = pki
    other = Pki.root("Issuing")  # same name as the issuing CA, different key
    leaf = other.issue_leaf("mallory", upn="m@example.org")
    v = validate(good(pki), leaf)
    assert isinstance(v, Rejection) and v.reason == "bad-signature" and v.position == 0


def test_unknown_issuer_is_untrusted(pki):
    leaf = Pki.root("Elsewhere").issue_leaf("x", upn="x@example.org")
    v = validate(good(pki), leaf)
    assert isinstance(v, Rejection) and v.reason == "untrusted-issuer"


@pytest.mark.parametrize(("delta", "reason"), [(-2, "not-yet-valid"), (2, "expired")])
def test_validity_period_to_the_second(pki, delta, reason):
    root, ca = pki
    start, end = NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1)
    leaf = ca.issue_leaf("alice", upn="a@example.org", validity=(start, end))
    ts = good(pki)
    edge = start.timestamp() if delta < 0 else end.timestamp()
    assert isinstance(validate(ts, leaf, edge), Validated)
    v = validate(ts, leaf, edge + (delta / 2))
    assert isinstance(v, Rejection) and v.reason == reason


def test_an_intermediate_that_is_not_a_ca_is_refused(pki):
    root, _ = pki
    notca = root.issue_ca("NotCA", basic_constraints=x509.BasicConstraints(ca=False,
                                                                            path_length=None))
    leaf = notca.issue_leaf("x", upn="x@example.org")
    v = validate(store_for(root, notca, crls=[root.crl(), notca.crl()]), leaf)
    assert isinstance(v, Rejection) and v.reason == "not-a-ca" and v.position == 1


def test_ca_without_keycertsign_is_refused(pki):
    root, _ = pki
    ca = root.issue_ca("NoSign", key_usage=key_usage("crl_sign"))
    leaf = ca.issue_leaf("x", upn="x@example.org")
    v = validate(store_for(root, ca, crls=[root.crl()]), leaf)
    assert isinstance(v, Rejection) and v.reason == "key-usage" and v.position == 1


def test_card_key_without_digital_signature_is_refused(pki):
    root, ca = pki
    leaf = ca.issue_leaf("x", upn="x@example.org", key_usage=key_usage("key_encipherment"))
    v = validate(good(pki), leaf)
    assert isinstance(v, Rejection) and v.reason == "key-usage" and v.position == 0


def test_path_length_constraint(pki):
    root = Pki.root("Root")
    ca1 = root.issue_ca("CA1", path_length=0)
    ca2 = ca1.issue_ca("CA2")
    leaf = ca2.issue_leaf("x", upn="x@example.org")
    v = validate(store_for(root, ca1, ca2, crls=[root.crl(), ca1.crl(), ca2.crl()]), leaf)
    assert isinstance(v, Rejection) and v.reason == "path-length" and v.position == 2


def test_unknown_critical_extension_is_refused(pki):
    root, ca = pki
    leaf = ca.issue_leaf("x", upn="x@example.org", extensions=[(unknown_extension(), True)])
    v = validate(good(pki), leaf)
    assert isinstance(v, Rejection) and v.reason == "critical-extension"
    assert UNKNOWN_EXTENSION_OID.dotted_string in v.detail


def test_unknown_non_critical_extension_is_fine(pki):
    root, ca = pki
    leaf = ca.issue_leaf("x", upn="x@example.org", extensions=[(unknown_extension(), False)])
    assert isinstance(validate(good(pki), leaf), Validated)


def test_self_issued_rollover_certificate_links_old_and_new_keys():
    root = Pki.root("Root")
    new_root_key_ca = root.rollover()  # old key signs the new key, same name
    leaf = new_root_key_ca.issue_leaf("x", upn="x@example.org")
    ts = store_for(root, new_root_key_ca, crls=[root.crl()])
    v = validate(ts, leaf)
    assert isinstance(v, Validated), v


def test_revocation_is_checked_for_every_certificate_in_the_path():
    root = Pki.root("Root")
    ca = root.issue_ca("Issuing")
    leaf = ca.issue_leaf("x", upn="x@example.org")
    v = validate(store_for(root, ca, crls=[root.crl(revoked=[ca.serial]), ca.crl()]), leaf)
    assert isinstance(v, Rejection) and v.reason == "revoked" and v.position == 1


def test_no_crl_for_an_issuer_means_unknown_not_good(pki):
    root, ca = pki
    leaf = ca.issue_leaf("x", upn="x@example.org")
    v = validate(store_for(root, ca, crls=[root.crl()]), leaf)
    assert isinstance(v, Validated) and v.revocation == "unknown"


def test_crl_past_next_update_is_good_within_grace_then_stale(pki):
    root, ca = pki
    this = NOW - dt.timedelta(days=2)
    crl = ca.crl(this_update=this, next_update=this + dt.timedelta(days=1))
    ts = store_for(root, ca, crls=[root.crl(), crl], crl_grace=3600)
    leaf = ca.issue_leaf("x", upn="x@example.org")
    nu = (this + dt.timedelta(days=1)).timestamp()
    assert validate(ts, leaf, nu + 1800).revocation == "good"
    v = validate(ts, leaf, nu + 7200)
    assert v.revocation == "stale" and v.crl_age == pytest.approx(7200)


def test_only_user_certs_crl_does_not_cover_a_ca(pki):
    from tests.certs import issuing_distribution_point

    root = Pki.root("Root")
    ca = root.issue_ca("Issuing")
    leaf = ca.issue_leaf("x", upn="x@example.org")
    root_crl = root.crl(idp=issuing_distribution_point(only_user=True))
    v = validate(store_for(root, ca, crls=[root_crl, ca.crl()]), leaf)
    assert isinstance(v, Validated) and v.revocation == "unknown"


def test_profile_requires_the_card_auth_eku(pki):
    root, ca = pki
    ordinary = ca.issue_leaf("x", upn="x@example.org", eku=[x509.ObjectIdentifier("1.3.6.1.5.5.7.3.2")])
    v = validate(good(pki), ordinary)
    assert isinstance(v, Rejection) and v.reason == "no-profile"
    assert "2.16.840.1.101.3.6.8" in v.detail


def test_profile_policy_and_issuer_allow_list(pki):
    root, ca = pki
    loa3 = "1.2.752.29.6.3"
    prof = CredentialProfile("loa3", frozenset({ca.subject.public_bytes()}),
                             frozenset({PIV_CARD_AUTH_EKU.dotted_string}), frozenset({loa3}))
    ts = store_for(root, ca, crls=[root.crl(), ca.crl()], profiles=(prof,))
    assert isinstance(validate(ts, ca.issue_leaf("a", upn="a@x", policies=[loa3])), Validated)
    v = validate(ts, ca.issue_leaf("b", upn="b@x"))
    assert isinstance(v, Rejection) and "lacks certificate policy" in v.detail
    other = root.issue_ca("Other")
    ts2 = store_for(root, ca, other, crls=[root.crl(), ca.crl(), other.crl()], profiles=(prof,))
    v = validate(ts2, other.issue_leaf("c", upn="c@x", policies=[loa3]))
    assert isinstance(v, Rejection) and "issuer" in v.detail


def test_no_profile_configured_means_no_access(pki):
    root, ca = pki
    ts = store_for(root, ca, crls=[root.crl(), ca.crl()], profiles=())
    v = validate(ts, ca.issue_leaf("a", upn="a@x"))
    assert isinstance(v, Rejection) and v.reason == "no-profile"


@pytest.mark.parametrize(("source", "expected"), [
    ("upn", "upn:alice@example.org"),
    ("email", "email:alice@example.org"),
    ("serial", "serial:SE2321000016-1234"),
    ("cn", "cn:Alice"),
    ("oid:2.5.4.5", "oid:2.5.4.5:SE2321000016-1234"),
])
def test_identity_sources(pki, source, expected):
    root, ca = pki
    prof = CredentialProfile("p", required_eku=frozenset({PIV_CARD_AUTH_EKU.dotted_string}),
                             identity_source=source)
    ts = store_for(root, ca, crls=[root.crl(), ca.crl()], profiles=(prof,))
    leaf = ca.issue_leaf(dn("CN=Alice,2.5.4.5=SE2321000016-1234"),
                         upn="Alice@Example.org", email=["alice@example.org"])
    v = validate(ts, leaf)
    assert isinstance(v, Validated) and v.identity.key == expected


def test_clock_behind_trusted_time_is_flagged(pki):
    root, ca = pki
    ts = good(pki)
    leaf = ca.issue_leaf("x", upn="x@example.org")
    behind = ts.trusted_time - 3600
    v = validate(ts, leaf, behind)
    assert isinstance(v, Validated) and v.clock_behind
    assert not validate(ts, leaf).clock_behind


def test_duplicate_extension_is_refused_not_a_traceback(pki):
    """A correctly signed certificate carrying one extension twice (RFC 5280 forbids it)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.rig.crlgen import tlv

    root, ca = pki
    a, b = x509.ObjectIdentifier("1.2.3.4"), x509.ObjectIdentifier("1.2.3.5")
    cert = (x509.CertificateBuilder().subject_name(dn("dup")).issuer_name(ca.subject)
            .public_key(ca.key.public_key()).serial_number(7)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(a, b"\x05\x00"), False)
            .add_extension(x509.UnrecognizedExtension(b, b"\x05\x00"), False)
            .sign(ca.key, hashes.SHA256()))
    tbs = cert.tbs_certificate_bytes.replace(bytes.fromhex("06032a0305"), bytes.fromhex("06032a0304"))
    assert ca.key_type == "p256" and isinstance(ca.key, ec.EllipticCurvePrivateKey)
    sig = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    alg = tlv(0x30, bytes.fromhex("06082a8648ce3d040302"))
    der = tlv(0x30, tbs + alg + tlv(0x03, b"\x00" + sig))
    dup = x509.load_der_x509_certificate(der)
    dup.verify_directly_issued_by(ca.cert)  # the signature is genuine
    v = good(pki).validate_der([der], AT)
    assert isinstance(v, Rejection) and v.reason == "malformed" and "duplicate extension" in v.detail
    assert dup.public_bytes(Encoding.DER) == der


def test_path_cache_entry_is_dropped_when_crls_change(pki):
    root, ca = pki
    leaf = ca.issue_leaf("x", upn="x@example.org")
    ts = store_for(root, ca, crls=[root.crl(), ca.crl(number=1)])
    assert isinstance(validate(ts, leaf), Validated)
    ts.revocation.ingest(ca.crl(revoked=[leaf.serial], number=2).der, ts.signers(), now=AT)
    v = validate(ts, leaf)
    assert isinstance(v, Rejection) and v.reason == "revoked"
