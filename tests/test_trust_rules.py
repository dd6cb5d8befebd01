"""RFC 5280 profile rules the validator enforces (gateway/trust/rules.py), each by name."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from gateway.trust.revocation import RevocationStore
from gateway.trust.validator import Rejection, TrustStore
from tests.certs import NOW, Pki, dn, key_usage, name_constraints

AT = NOW.timestamp()


def check(root: Pki, *cas: Pki, leaf) -> Rejection | tuple:
    ts = TrustStore.create(anchors=[root.cert], intermediates=[c.cert for c in cas],
                           revocation=RevocationStore(None))
    return ts.check_path([leaf.der], AT)


@pytest.fixture(scope="module")
def root() -> Pki:
    return Pki.root("CN=Root")


def test_key_cert_sign_on_a_certificate_that_is_not_a_ca(root):
    ca = root.issue_ca("CN=Issuing")
    leaf = ca.issue_leaf("CN=x", key_usage=key_usage("digital_signature", "key_cert_sign"))
    v = check(root, ca, leaf=leaf)
    assert isinstance(v, Rejection) and v.reason == "profile" and "4.2.1.3" in v.detail


def test_a_ca_without_key_identifiers(root):
    ca = root.issue_ca("CN=Issuing", key_ids=False)
    v = check(root, ca, leaf=ca.issue_leaf("CN=x"))
    assert isinstance(v, Rejection) and v.reason == "profile" and v.position == 1
    assert "subjectKeyIdentifier" in v.detail


def test_name_constraints_in_an_end_entity_or_not_critical(root):
    ca = root.issue_ca("CN=Issuing")
    leaf = ca.issue_leaf("CN=x", name_constraints=name_constraints(permitted=[dn("CN=x")]))
    v = check(root, ca, leaf=leaf)
    assert isinstance(v, Rejection) and "not a CA" in v.detail
    soft = root.issue_ca("CN=Soft", name_constraints_critical=False,
                         name_constraints=name_constraints(permitted=[dn("CN=x")]))
    v = check(root, soft, leaf=soft.issue_leaf("CN=x"))
    assert isinstance(v, Rejection) and "not marked critical" in v.detail and v.position == 1


def test_a_critical_authority_information_access(root):
    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        AuthorityInformationAccessOID.CA_ISSUERS,
        x509.UniformResourceIdentifier("http://ca.example/issuing.crt"))])
    ca = root.issue_ca("CN=Issuing")
    v = check(root, ca, leaf=ca.issue_leaf("CN=x", extensions=[(aia, True)]))
    assert isinstance(v, Rejection) and "authorityInfoAccess" in v.detail
    ok = check(root, ca, leaf=ca.issue_leaf("CN=x", extensions=[(aia, False)]))
    assert not isinstance(ok, Rejection)
