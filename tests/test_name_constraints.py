"""Name constraints (RFC 5280 4.2.1.10, 6.1) for every name form, and policy mappings."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier
from hypothesis import given
from hypothesis import strategies as st

from gateway.trust.identity import UPN_OID
from gateway.trust.names import (
    check_name_constraints,
    dn_within,
    dns_within,
    has_policy_mappings,
    mailbox_within,
)
from tests.certs import Pki, dn, name_constraints, unknown_extension


@pytest.fixture(scope="module")
def root() -> Pki:
    return Pki.root("CN=Root,O=Portvakt Test")


def constrained_ca(root: Pki, permitted=(), excluded=(), subject: str = "CN=Issuing") -> Pki:
    return root.issue_ca(subject, name_constraints=name_constraints(permitted, excluded))


# -- directoryName --------------------------------------------------------------------------------

def test_subject_inside_a_permitted_subtree_is_accepted(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme,C=SE")])
    leaf = ca.issue_leaf("CN=alice,OU=Doors,O=Acme,C=SE")
    assert check_name_constraints(leaf.path) is None


def test_subject_outside_a_permitted_subtree_is_refused_naming_both(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme,C=SE")])
    leaf = ca.issue_leaf("CN=mallory,O=Evil,C=SE")
    refusal = check_name_constraints(leaf.path)
    assert refusal is not None
    pos, reason = refusal
    assert pos == 0
    assert "permitted directoryName" in reason
    assert "CN=mallory,O=Evil,C=SE" in reason
    assert "O=Acme,C=SE" in reason
    assert "CN=Issuing" in reason  # the CA that imposed the constraint


def test_subtree_must_be_a_prefix_not_just_contained(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme")])
    # O=Acme appears, but after C=SE: the subtree's RDN sequence is not a prefix.
    assert check_name_constraints(ca.issue_leaf("CN=alice,O=Acme,C=SE").path) is not None


def test_dn_comparison_folds_case_and_whitespace(root):
    subtree = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME  Corp ")])
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, " acme corp"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    ca = constrained_ca(root, permitted=[subtree])
    assert check_name_constraints(ca.issue_leaf(subject).path) is None


def test_multi_valued_rdn_matches_regardless_of_attribute_order():
    subtree = x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Doors")])])
    subject = x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "doors"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])])
    assert dn_within(subject, subtree)
    assert not dn_within(dn("CN=alice,O=Acme"), subtree)


def test_excluded_subtree_wins_over_permitted(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme")], excluded=[dn("OU=Contractors,O=Acme")])
    assert check_name_constraints(ca.issue_leaf("CN=alice,OU=Staff,O=Acme").path) is None
    refusal = check_name_constraints(ca.issue_leaf("CN=eve,OU=Contractors,O=Acme").path)
    assert refusal is not None
    assert refusal[0] == 0
    assert "excluded directoryName subtree OU=Contractors,O=Acme" in refusal[1]


def test_permitted_subtrees_intersect_down_the_path(root):
    upper = constrained_ca(root, permitted=[dn("O=Acme")], subject="CN=Policy CA")
    lower = upper.issue_ca("CN=Doors CA,O=Acme", name_constraints=name_constraints(
        permitted=[dn("OU=Doors,O=Acme"), dn("O=Other")]))
    assert check_name_constraints(lower.issue_leaf("CN=a,OU=Doors,O=Acme").path) is None
    # Allowed by the lower CA, but not by the one above it.
    other = check_name_constraints(lower.issue_leaf("CN=b,O=Other").path)
    assert other is not None
    assert other[0] == 0
    assert "CN=Policy CA" in other[1]
    # Allowed by the upper CA, but not by the lower one.
    printing = check_name_constraints(lower.issue_leaf("CN=c,OU=Print,O=Acme").path)
    assert printing is not None
    assert "CN=Doors CA,O=Acme" in printing[1]


def test_excluded_subtrees_accumulate_down_the_path(root):
    upper = constrained_ca(root, excluded=[dn("OU=A,O=Acme")])
    lower = upper.issue_ca("CN=Lower,O=Acme", name_constraints=name_constraints(
        excluded=[dn("OU=B,O=Acme")]))
    assert check_name_constraints(lower.issue_leaf("CN=x,OU=C,O=Acme").path) is None
    for ou in ("A", "B"):
        assert check_name_constraints(lower.issue_leaf(f"CN=x,OU={ou},O=Acme").path) is not None


def test_constraints_apply_to_intermediate_certificates_too(root):
    upper = constrained_ca(root, permitted=[dn("O=Acme")])
    stray = upper.issue_ca("CN=Stray CA,O=Elsewhere")
    refusal = check_name_constraints(stray.issue_leaf("CN=x,O=Acme").path)
    assert refusal is not None
    assert refusal[0] == 1
    assert "CN=Stray CA,O=Elsewhere" in refusal[1]


def test_trust_anchor_constraints_apply_below_it_but_not_to_itself():
    anchor = Pki.root("CN=Root", name_constraints=name_constraints(permitted=[dn("O=Acme")]))
    ca = anchor.issue_ca("CN=Issuing,O=Acme")
    assert check_name_constraints(ca.issue_leaf("CN=alice,O=Acme").path) is None
    refusal = check_name_constraints(ca.issue_leaf("CN=mallory,O=Evil").path)
    assert refusal is not None
    assert refusal[0] == 0
    assert "CN=Root" in refusal[1]
    rogue = check_name_constraints(anchor.issue_ca("CN=Rogue CA").issue_leaf("CN=x,O=Acme").path)
    assert rogue is not None
    assert rogue[0] == 1


def test_self_issued_intermediate_is_not_checked_but_the_leaf_below_it_is(root):
    # A constrained CA rolls its key over: the new-with-old certificate carries the CA's own name,
    # which is outside the CA's own constraints; it is self-issued, so it is not checked.
    ca = constrained_ca(root, permitted=[dn("O=Acme")], subject="CN=Issuing")
    rolled = ca.rollover()
    assert rolled.subject == ca.subject
    assert check_name_constraints(rolled.issue_leaf("CN=alice,O=Acme").path) is None
    refusal = check_name_constraints(rolled.issue_leaf("CN=mallory,O=Evil").path)
    assert refusal is not None
    assert refusal[0] == 0


def test_self_issued_intermediate_constraints_still_apply_below_it(root):
    ca = root.issue_ca("CN=Issuing")
    rolled = ca.rollover(name_constraints=name_constraints(permitted=[dn("O=Acme")]))
    assert check_name_constraints(rolled.issue_leaf("CN=x,O=Evil").path) is not None


def test_self_issued_leaf_is_checked(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme")], subject="CN=Issuing")
    leaf = ca.issue_leaf("CN=Issuing")  # subject == issuer, but it is the final certificate
    assert check_name_constraints(leaf.path) is not None


def test_empty_subject_is_not_checked_against_directory_name_constraints(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme")])
    leaf = ca.issue_leaf(x509.Name([]), upn="alice@example.org")
    assert check_name_constraints(leaf.path) is None


def test_subject_alt_name_directory_names_are_checked(root):
    ca = constrained_ca(root, permitted=[dn("O=Acme")])
    leaf = ca.issue_leaf("CN=alice,O=Acme", directory_names=[dn("CN=alice,O=Evil")])
    refusal = check_name_constraints(leaf.path)
    assert refusal is not None
    assert "subjectAltName directoryName CN=alice,O=Evil" in refusal[1]


def test_a_path_of_only_the_anchor_has_nothing_to_check(root):
    assert check_name_constraints([root.cert]) is None
    assert check_name_constraints([]) is None


# -- rfc822Name -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("mailbox", "constraint", "within"), [
    ("alice@example.org", "alice@example.org", True),
    ("alice@EXAMPLE.org", "alice@example.org", True),  # the host part is case-insensitive
    ("Alice@example.org", "alice@example.org", False),  # the local part is not (RFC 5280 7.5)
    ("bob@example.org", "alice@example.org", False),
    ("bob@example.org", "example.org", True),
    ("bob@Example.ORG", "example.ORG", True),
    ("bob@doors.example.org", "example.org", False),
    ("bob@doors.example.org", ".example.org", True),
    ("bob@a.b.example.org", ".EXAMPLE.org", True),
    ("bob@example.org", ".example.org", False),  # the domain itself is not below itself
    ("bob@badexample.org", ".example.org", False),
    ("bob@badexample.org", "example.org", False),
    ('"a@b"@example.org', "example.org", True),  # a quoted local part may hold "@"
    ("a@b@example.org", "example.org", False),  # two "@" outside quotes: malformed
    ("a@b@example.org", "b@example.org", False),
    ("not-a-mailbox", "not-a-mailbox", False),
    ("@example.org", "example.org", False),
])
def test_mailbox_within_constraint_forms(mailbox, constraint, within):
    assert mailbox_within(mailbox, constraint) is within


def test_rfc822_permitted_domain_refuses_mailbox_elsewhere(root):
    ca = constrained_ca(root, permitted=[x509.RFC822Name(".example.org")])
    assert check_name_constraints(ca.issue_leaf("alice", email=["alice@hq.example.org"]).path) \
        is None
    refusal = check_name_constraints(ca.issue_leaf("bob", email=["bob@example.org"]).path)
    assert refusal is not None
    assert "rfc822Name 'bob@example.org'" in refusal[1]
    assert "'.example.org'" in refusal[1]


def test_rfc822_excluded_host_is_refused_case_insensitively(root):
    ca = constrained_ca(root, excluded=[x509.RFC822Name("partner.example")])
    refusal = check_name_constraints(ca.issue_leaf("eve", email=["eve@PARTNER.example"]).path)
    assert refusal is not None
    assert "excluded rfc822Name" in refusal[1]


def test_every_subject_alt_name_mailbox_is_checked(root):
    ca = constrained_ca(root, permitted=[x509.RFC822Name("example.org")])
    leaf = ca.issue_leaf("alice", email=["alice@example.org", "alice@gmail.example"])
    assert check_name_constraints(leaf.path) is not None


def test_subject_email_address_attribute_is_checked(root):
    ca = constrained_ca(root, permitted=[x509.RFC822Name("example.org")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                         x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@evil.example")])
    refusal = check_name_constraints(ca.issue_leaf(subject).path)
    assert refusal is not None
    assert "subject emailAddress 'alice@evil.example'" in refusal[1]


def test_name_forms_without_constraints_are_unconstrained(root):
    mail_only = constrained_ca(root, permitted=[x509.RFC822Name("example.org")])
    assert check_name_constraints(mail_only.issue_leaf("CN=anyone,O=Anywhere").path) is None
    dn_only = constrained_ca(root, permitted=[dn("O=Acme")])
    assert check_name_constraints(
        dn_only.issue_leaf("CN=alice,O=Acme", email=["alice@anywhere.example"]).path) is None


# -- dNSName, iPAddress, URI ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "constraint", "within"), [
    ("example.org", "example.org", True),
    ("door.example.org", "example.org", True),  # labels added on the left
    ("DOOR.Example.ORG", "example.org", True),
    ("badexample.org", "example.org", False),  # not a label boundary
    ("example.org", ".example.org", False),  # a leading dot: only below it
    ("a.example.org", ".example.org", True),
    ("anything.example", "", True),  # the empty constraint matches every name
])
def test_dns_within(name, constraint, within):
    assert dns_within(name, constraint) is within


def test_dns_constraint_permits_names_below_it_and_refuses_others(root):
    ca = constrained_ca(root, permitted=[x509.DNSName("example.org")])
    assert check_name_constraints(
        ca.issue_leaf("door", san=[x509.DNSName("door.example.org")]).path) is None
    refusal = check_name_constraints(
        ca.issue_leaf("door", san=[x509.DNSName("door.example.net")]).path)
    assert refusal is not None
    assert refusal[0] == 0
    assert "permitted dNSName subtrees ['example.org']" in refusal[1]


def test_a_constraint_form_the_leaf_does_not_carry_does_not_refuse_it(root):
    ca = constrained_ca(root, permitted=[x509.DNSName("example.org")],
                        excluded=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
    assert check_name_constraints(ca.issue_leaf("alice", upn="alice@example.org").path) is None


def test_ip_excluded_network_refuses_an_address_in_it_only(root):
    ca = constrained_ca(root, excluded=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])
    inside = ca.issue_leaf("door", san=[x509.IPAddress(ipaddress.ip_address("10.1.2.3"))])
    refusal = check_name_constraints(inside.path)
    assert refusal is not None
    assert "excluded iPAddress subtree 10.0.0.0/8" in refusal[1]
    outside = ca.issue_leaf("door", san=[x509.IPAddress(ipaddress.ip_address("192.0.2.1"))])
    assert check_name_constraints(outside.path) is None
    v6 = ca.issue_leaf("door", san=[x509.IPAddress(ipaddress.ip_address("::ffff:10.1.2.3"))])
    assert check_name_constraints(v6.path) is None  # another address family


def test_ip_permitted_network(root):
    ca = constrained_ca(root, permitted=[x509.IPAddress(ipaddress.ip_network("2001:db8::/32"))])
    ok = ca.issue_leaf("door", san=[x509.IPAddress(ipaddress.ip_address("2001:db8::1"))])
    assert check_name_constraints(ok.path) is None
    bad = ca.issue_leaf("door", san=[x509.IPAddress(ipaddress.ip_address("2001:db9::1"))])
    assert check_name_constraints(bad.path) is not None


@pytest.mark.parametrize(("uri", "constraint", "within"), [
    ("https://host.example.org/crl", "host.example.org", True),
    ("https://other.host.example.org/", "host.example.org", False),  # a host constraint is exact
    ("ldap://a.example.org:389/cn=x", ".example.org", True),
    ("https://example.org/", ".example.org", False),
    ("https://user@HOST.example.org/", "host.example.org", True),
    ("urn:uuid:1234", "example.org", False),  # no host: within no subtree
    ("https://192.0.2.1/", "192.0.2.1", False),
])
def test_uri_constraints_apply_to_the_host(root, uri, constraint, within):
    ca = constrained_ca(root, permitted=[x509.UniformResourceIdentifier(constraint)])
    leaf = ca.issue_leaf("svc", san=[x509.UniformResourceIdentifier(uri)])
    assert (check_name_constraints(leaf.path) is None) is within


def test_a_mailbox_with_two_at_signs_is_malformed_under_an_rfc822_constraint(root):
    # cryptography refuses to build such a name; a CA's encoder might not.
    two_at = [x509.RFC822Name._init_without_validation("a@b@example.com")]
    ca = constrained_ca(root, permitted=[x509.RFC822Name("example.com")])
    refusal = check_name_constraints(ca.issue_leaf("x", san=two_at).path)
    assert refusal is not None
    assert "malformed" in refusal[1]
    excluded = constrained_ca(root, excluded=[x509.RFC822Name("b")])
    assert check_name_constraints(excluded.issue_leaf("x", san=two_at).path) is not None
    free = constrained_ca(root, permitted=[dn("CN=x")])
    assert check_name_constraints(free.issue_leaf("CN=x", san=two_at).path) is None


def test_a_malformed_ip_constraint_is_a_rejection_not_an_exception(root):
    from gateway.trust.revocation import RevocationStore
    from gateway.trust.validator import Rejection, TrustStore
    from tests.certs import NOW

    # nameConstraints { permittedSubtrees [ { iPAddress 5 bytes } ] }: neither 8 nor 32 bytes.
    bad = x509.UnrecognizedExtension(ExtensionOID.NAME_CONSTRAINTS,
                                     bytes.fromhex("300ba009300787050a00000000"))
    ca = root.issue_ca("CN=Issuing", extensions=[(bad, True)])
    leaf = ca.issue_leaf("door", san=[x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
    store = TrustStore.create(anchors=[root.cert], intermediates=[ca.cert],
                              revocation=RevocationStore(None))
    v = store.check_path([leaf.der], NOW.timestamp())
    assert isinstance(v, Rejection)
    assert v.position == 1


# -- unsupported forms ----------------------------------------------------------------------------

def test_other_name_constraints_refuse_only_the_same_type_id(root):
    upn_constraint = x509.OtherName(UPN_OID, b"\x0c\x0bexample.org")
    ca = constrained_ca(root, permitted=[upn_constraint])
    refusal = check_name_constraints(ca.issue_leaf("alice", upn="alice@example.org").path)
    assert refusal is not None
    assert f"otherName {UPN_OID.dotted_string} name constraints" in refusal[1]
    other = x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    ca2 = constrained_ca(root, permitted=[other])
    assert check_name_constraints(ca2.issue_leaf("alice", upn="alice@example.org").path) is None


def test_unsupported_form_in_a_non_critical_extension_is_ignored(root):
    upn_constraint = x509.OtherName(UPN_OID, b"\x0c\x0bexample.org")
    ca = root.issue_ca("CN=Issuing", name_constraints_critical=False,
                       name_constraints=name_constraints(permitted=[upn_constraint]))
    assert check_name_constraints(ca.issue_leaf("alice", upn="alice@elsewhere.example").path) \
        is None


def test_supported_form_in_a_non_critical_extension_is_still_enforced(root):
    ca = root.issue_ca("CN=Issuing", name_constraints_critical=False,
                       name_constraints=name_constraints(permitted=[dn("O=Acme")]))
    assert check_name_constraints(ca.issue_leaf("CN=x,O=Evil").path) is not None


# -- policy mappings ------------------------------------------------------------------------------

def test_policy_mappings_are_detected(root):
    mapping = root.issue_ca("CN=Bridge", policy_mappings=[("2.16.840.1.101.3.2.1.3.13",
                                                           "1.3.6.1.4.1.55555.3.1")])
    assert has_policy_mappings(mapping.cert)
    assert not has_policy_mappings(root.cert)
    assert not has_policy_mappings(
        root.issue_ca("CN=Other", extensions=[(unknown_extension(), True)]).cert)


# -- properties -----------------------------------------------------------------------------------

_ATTRIBUTE_TYPES = [NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                    NameOID.COMMON_NAME, NameOID.LOCALITY_NAME, NameOID.DOMAIN_COMPONENT]
_values = st.text(st.characters(codec="ascii", categories=("L", "N", "Zs")), min_size=1,
                  max_size=12).filter(lambda s: s.strip())
_rdns = st.lists(st.builds(x509.NameAttribute, st.sampled_from(_ATTRIBUTE_TYPES), _values),
                 min_size=1, max_size=2, unique_by=lambda a: a.oid).map(x509.RelativeDistinguishedName)
_names = st.lists(_rdns, max_size=5).map(x509.Name)


def _respell(name: x509.Name) -> x509.Name:
    """The same name as RFC 5280 7.1 compares it: other case, padded and doubled whitespace."""
    return x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(a.oid, f"  {str(a.value).swapcase().replace(' ', '  ')} ")
        for a in rdn]) for rdn in name.rdns])


@given(_names, st.data())
def test_a_dn_is_within_every_prefix_of_itself_however_spelled(name, data):
    cut = data.draw(st.integers(0, len(name.rdns)))
    prefix = x509.Name(name.rdns[:cut])
    assert dn_within(name, prefix)
    assert dn_within(name, _respell(prefix))
    assert dn_within(_respell(name), prefix)


@given(_names, _names)
def test_a_dn_within_a_longer_subtree_is_never_possible(name, extra):
    longer = x509.Name([*name.rdns, *extra.rdns])
    assert dn_within(name, longer) is (len(extra.rdns) == 0)


_labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


@given(_labels, st.lists(_labels, min_size=1, max_size=3).map(".".join), _labels)
def test_mailbox_forms_agree_on_a_host_and_its_subdomains(local, host, sub):
    mailbox = f"{local}@{host}"
    below = f"{local}@{sub}.{host}"
    assert mailbox_within(mailbox, host.upper())
    assert mailbox_within(mailbox, mailbox)
    assert not mailbox_within(mailbox, f".{host}")
    assert mailbox_within(below, f".{host}")
    assert not mailbox_within(below, host)
