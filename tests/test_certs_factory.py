"""The test certificate factory makes what it says it makes."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from gateway.trust.identity import extract_identity
from tests.certs import (
    KEY_TYPES,
    NOW,
    PIV_CARD_AUTH_EKU,
    UNKNOWN_EXTENSION_OID,
    Pki,
    Revoked,
    dn,
    issuing_distribution_point,
    key_usage,
    unknown_extension,
)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_makes_a_chain_that_verifies(key_type):
    root = Pki.root("Root", key=key_type)
    ca = root.issue_ca("Issuing", key=key_type, path_length=0)
    leaf = ca.issue_leaf("alice", key=key_type)
    root.cert.verify_directly_issued_by(root.cert)
    ca.cert.verify_directly_issued_by(root.cert)
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert leaf.path == [leaf.cert, ca.cert, root.cert]
    assert ca.crl(revoked=[leaf.serial]).crl.is_signature_valid(ca.key.public_key())


def test_rsa_pss_signatures_carry_pss_parameters():
    ca = Pki.root("Root", key="rsa-pss")
    assert ca.cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
    assert isinstance(ca.cert.signature_algorithm_parameters, padding.PSS)
    assert ca.crl().crl.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
    plain = Pki.root("Root", key="rsa")
    assert isinstance(plain.cert.signature_algorithm_parameters, padding.PKCS1v15)


def test_leaf_carries_the_requested_profile():
    ca = Pki.root("Root").issue_ca("CN=Issuing,O=Acme", path_length=0)
    start, end = NOW - dt.timedelta(days=2), NOW + dt.timedelta(days=30)
    leaf = ca.issue_leaf("CN=alice,O=Acme", upn="alice@example.org", email=["alice@example.org"],
                         policies=["2.16.840.1.101.3.2.1.3.13"], validity=(start, end))
    exts = leaf.cert.extensions
    assert leaf.subject == dn("CN=alice,O=Acme")
    assert (leaf.cert.not_valid_before_utc, leaf.cert.not_valid_after_utc) == (start, end)
    assert exts.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert exts.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert list(exts.get_extension_for_class(x509.ExtendedKeyUsage).value) == [PIV_CARD_AUTH_EKU]
    assert extract_identity(leaf.cert, "upn") == "upn:alice@example.org"
    assert extract_identity(leaf.cert, "email") == "email:alice@example.org"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    # otherName value is the bare UTF8String; the [0] EXPLICIT wrapper is the encoder's job.
    upn = exts.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.OtherName)[0]
    assert upn.value == b"\x0c\x11alice@example.org"


def test_unknown_critical_extension_is_present_and_critical():
    leaf = Pki.root("Root").issue_leaf("x", extensions=[(unknown_extension(), True)])
    ext = leaf.cert.extensions.get_extension_for_oid(UNKNOWN_EXTENSION_OID)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)


def test_policy_mappings_encode_as_rfc5280_der():
    ca = Pki.root("Root").issue_ca("Bridge", policy_mappings=[("1.2.3", "1.2.4")])
    ext = ca.cert.extensions.get_extension_for_oid(ExtensionOID.POLICY_MAPPINGS)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    # SEQUENCE { SEQUENCE { OID 1.2.3, OID 1.2.4 } }
    assert ext.value.value == bytes.fromhex("300a 3008 06022a03 06022a04")


def test_rollover_is_self_issued_with_a_new_key():
    root = Pki.root("Root")
    old = root.issue_ca("Issuing", key="rsa")
    new = old.rollover()
    assert new.subject == new.cert.issuer == old.subject
    assert new.key_type == "rsa"
    assert new.cert.public_key() != old.cert.public_key()
    new.cert.verify_directly_issued_by(old.cert)
    assert new.issue_leaf("alice").path[1:] == [new.cert, old.cert, root.cert]


def test_crl_signer_signs_crls_under_the_ca_name():
    ca = Pki.root("Root").issue_ca("Issuing")
    signer = ca.issue_crl_signer()
    assert signer.subject == ca.subject
    ku = signer.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku == key_usage("crl_sign")
    crl = ca.crl(revoked=[7], signer=signer).crl
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(signer.key.public_key())
    assert not crl.is_signature_valid(ca.key.public_key())


def test_crl_carries_entries_and_extensions():
    ca = Pki.root("Root").issue_ca("Issuing")
    this = NOW - dt.timedelta(hours=1)
    crl = ca.crl(revoked=[1, Revoked(2, reason=x509.ReasonFlags.key_compromise,
                                     extensions=[(unknown_extension(), True)])],
                 number=9, this_update=this, next_update=this + dt.timedelta(days=1),
                 idp=issuing_distribution_point(uri="http://crl.example/ca.crl", only_user=True),
                 delta_of=8, extensions=[(unknown_extension(), True)]).crl
    assert crl.last_update_utc == this
    assert crl.next_update_utc == this + dt.timedelta(days=1)
    assert {r.serial_number for r in crl} == {1, 2}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 9
    assert crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == 8
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value.only_contains_user_certs
    assert crl.extensions.get_extension_for_oid(UNKNOWN_EXTENSION_OID).critical
    entry = crl.get_revoked_certificate_by_serial_number(2)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    assert entry.extensions.get_extension_for_oid(UNKNOWN_EXTENSION_OID).critical


def test_outputs_round_trip_through_der_and_pem():
    leaf = Pki.root("Root").issue_leaf("alice")
    assert x509.load_der_x509_certificate(leaf.der) == leaf.cert
    assert x509.load_pem_x509_certificate(leaf.pem) == leaf.cert
    crl = Pki.root("Root").crl()
    assert x509.load_der_x509_crl(crl.der) == crl.crl
    assert x509.load_pem_x509_crl(crl.pem) == crl.crl


def test_unknown_key_usage_bit_is_refused():
    with pytest.raises(ValueError, match="unknown keyUsage"):
        key_usage("sign_everything")
