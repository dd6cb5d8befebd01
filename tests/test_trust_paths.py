"""Path building (RFC 4158): every candidate issuer is tried, the shortest valid path wins, the
work is bounded; names match as RFC 5280 7.1 says; CRLs from a separate or rolled-over key."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from gateway.trust.dn import names_match, prepare
from gateway.trust.revocation import RevocationStore
from gateway.trust.validator import Rejection, TrustStore
from tests.certs import NOW, Pki

AT = NOW.timestamp()


def store(anchors, intermediates=(), crls=()) -> TrustStore:
    ts = TrustStore.create(anchors=[a.cert for a in anchors],
                           intermediates=[c.cert for c in intermediates],
                           revocation=RevocationStore(None))
    for crl in crls:
        ts.revocation.ingest(crl.der, ts.signers(), now=AT)
    return ts


def path_names(ts: TrustStore, leaf, at: float = AT) -> list[str]:
    checked = ts.check_path([leaf.der], at)
    assert not isinstance(checked, Rejection), checked
    return [c.subject.rfc4514_string() for c in checked[0].path]


def test_a_cross_signed_ca_validates_through_the_issuer_that_leads_to_an_anchor():
    trusted, foreign = Pki.root("CN=Trusted Root"), Pki.root("CN=Foreign Root")
    under_foreign = foreign.issue_ca("CN=Issuing")
    cross = trusted.issue_ca("CN=Issuing", key=under_foreign.key)  # same name, same key
    leaf = under_foreign.issue_leaf("CN=alice")
    # The certificate from the untrusted root comes first: the builder must come back from it.
    ts = store([trusted], [under_foreign, foreign, cross])
    assert path_names(ts, leaf) == ["CN=alice", "CN=Issuing", "CN=Trusted Root"]


def test_root_rollover_an_expired_old_root_path_gives_way_to_the_new_root():
    old = Pki.root("CN=Root", validity=(NOW - dt.timedelta(days=3650), NOW + dt.timedelta(days=10)))
    new = Pki.root("CN=Root G2")
    ca_old = old.issue_ca("CN=Issuing")
    ca_new = new.issue_ca("CN=Issuing", key=ca_old.key)
    leaf = ca_old.issue_leaf("CN=alice")
    ts = store([old, new], [ca_old, ca_new], crls=[old.crl(), new.crl(), ca_old.crl()])
    later = AT + 30 * 86400  # the old root has expired by then
    assert path_names(ts, leaf, later)[-1] == "CN=Root G2"
    assert path_names(ts, leaf)[-1] in ("CN=Root", "CN=Root G2")


def test_the_shortest_valid_path_is_preferred():
    root = Pki.root("CN=Root")
    bridge = root.issue_ca("CN=Bridge")
    direct = root.issue_ca("CN=Issuing")
    via_bridge = bridge.issue_ca("CN=Issuing", key=direct.key)
    leaf = direct.issue_leaf("CN=alice")
    ts = store([root], [via_bridge, bridge, direct],
               crls=[root.crl(), bridge.crl(), direct.crl()])
    assert path_names(ts, leaf) == ["CN=alice", "CN=Issuing", "CN=Root"]


def test_a_path_refused_on_one_branch_is_accepted_on_another():
    root = Pki.root("CN=Root")
    not_ca = root.issue_ca("CN=Issuing", basic_constraints=x509.BasicConstraints(False, None))
    good = root.issue_ca("CN=Issuing", key=not_ca.key)
    leaf = good.issue_leaf("CN=alice")
    ts = store([root], [not_ca, good], crls=[root.crl(), good.crl()])
    assert path_names(ts, leaf) == ["CN=alice", "CN=Issuing", "CN=Root"]
    only_bad = store([root], [not_ca])
    v = only_bad.check_path([leaf.der], AT)
    assert isinstance(v, Rejection) and v.reason == "not-a-ca" and v.position == 1


def test_many_same_name_candidates_end_in_a_refusal_with_bounded_work():
    root = Pki.root("CN=Root")
    impostors = [Pki.root("CN=Issuing") for _ in range(80)]  # the right name, the wrong keys
    leaf = root.issue_ca("CN=Issuing").issue_leaf("CN=alice")
    ts = store([root], impostors)
    v = ts.check_path([leaf.der], AT)
    assert isinstance(v, Rejection) and v.reason in ("bad-signature", "path-too-long")


def test_issuer_names_match_across_case_whitespace_and_string_type():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    root = Pki.root("CN=Root")
    printable = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Corp", _ASN1Type.PrintableString),
        x509.NameAttribute(NameOID.COMMON_NAME, "Issuing CA", _ASN1Type.PrintableString)])
    spelled = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "  ACME   corp ", _ASN1Type.UTF8String),
        x509.NameAttribute(NameOID.COMMON_NAME, "issuing ca", _ASN1Type.UTF8String)])
    assert names_match(printable, spelled) and printable.public_bytes() != spelled.public_bytes()
    ca = root.issue_ca(printable)
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
            .issuer_name(spelled).public_key(ca.key.public_key()).serial_number(5)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    ts = store([root], [ca], crls=[root.crl(), ca.crl()])
    checked = ts.check_path([leaf.public_bytes(Encoding.DER)], AT)
    assert not isinstance(checked, Rejection), checked
    assert checked[1] == "good"  # the CA's CRL (issuer spelled as in the CA) covers it too


def test_rfc4518_preparation():
    assert prepare("  Good   CA ") == prepare("good ca") == "good ca"
    assert prepare("Stra\u00dfe") == prepare("STRASSE")
    assert prepare("a\u00adb") == "ab"  # soft hyphen: mapped to nothing
    assert prepare("\uff27ood") == "good"  # NFKC: fullwidth letters
    assert prepare("a\ue000") is None  # private use: prohibited, compared exactly
    assert prepare("   ") == " "


def test_a_crl_signed_by_a_separate_crl_signing_key_is_used_when_that_certificate_validates():
    root = Pki.root("CN=Root")
    ca = root.issue_ca("CN=Issuing")
    signer = ca.issue_crl_signer()  # same name as the CA, another key, cRLSign only
    leaf = ca.issue_leaf("CN=alice", upn="alice@example.org")
    crl = ca.crl(revoked=[leaf.serial], signer=signer)
    ts = TrustStore.create(anchors=[root.cert], intermediates=[ca.cert, signer.cert],
                           revocation=RevocationStore(None))
    ts.revocation.ingest(root.crl().der, ts.signers(), now=AT)
    ts.revocation.ingest(crl.der, ts.signers(), now=AT)
    ts.revocation.ingest(ca.crl(number=1).der, ts.signers(), now=AT)  # covers the signer
    v = ts.check_path([leaf.der], AT)
    assert isinstance(v, Rejection) and v.reason == "revoked"
    # The signer's own certificate revoked: its CRL is not usable, the CA's own still is.
    ts2 = TrustStore.create(anchors=[root.cert], intermediates=[ca.cert, signer.cert],
                            revocation=RevocationStore(None))
    ts2.revocation.ingest(root.crl().der, ts2.signers(), now=AT)
    ts2.revocation.ingest(crl.der, ts2.signers(), now=AT)
    ts2.revocation.ingest(ca.crl(revoked=[signer.serial], number=1).der, ts2.signers(), now=AT)
    checked = ts2.check_path([leaf.der], AT)
    assert not isinstance(checked, Rejection) and checked[1] == "good"
