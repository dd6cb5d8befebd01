"""Name constraints (RFC 5280 4.2.1.10, 6.1.3 (b)-(c), 6.1.4 (g)): directoryName, rfc822Name,
dNSName, iPAddress and uniformResourceIdentifier.

Pure functions over a built path (leaf first, trust anchor last). Choices this module makes:

- The trust anchor's own nameConstraints extension applies to every certificate below it, as if the
  anchor were configured with those constraints (RFC 5937 section 3). The anchor itself is never
  checked: it is trusted by configuration, not by its name.
- Distinguished names are compared RDN by RDN after RFC 4518 preparation (`gateway.trust.dn`): a
  subtree matches a name whose leading RDNs match it.
- rfc822Name: the local part is compared exactly (RFC 5280 7.5), the host part case-insensitively.
  A mailbox has exactly one "@" outside a quoted local part: `a@b@example.com` is malformed, and a
  malformed name under a constraint of its form is refused (it cannot be shown to be allowed).
  Every rfc822Name in subjectAltName and every emailAddress attribute of the subject DN is checked,
  whether or not the certificate has a subjectAltName (stricter than 4.2.1.10, which requires the
  emailAddress check only when there is no subjectAltName).
- dNSName: a name matches a constraint it equals or ends with after a "." (labels added on the
  left); a constraint with a leading "." matches only names below it; the empty constraint matches
  every name; case-insensitive. A name with an empty label, a space or "@" is malformed.
- iPAddress: an address matches a network of its own family (IPv4 or IPv6) that contains it.
- uniformResourceIdentifier: the constraint applies to the host of the URI: "host.example.com"
  is that host only, ".example.com" every host below the domain (RFC 5280); a URI without a
  host, or with an IP literal as host, matches no subtree (a permitted URI subtree refuses it).
- A self-issued intermediate certificate (subject equal to issuer, not the leaf) is not checked
  against the constraints above it (6.1.3 (b)); its own constraints still apply below it.
- otherName, registeredID, x400Address and ediPartyName are not implemented. If a critical
  nameConstraints extension constrains such a form and a certificate below carries a name of
  that form (an otherName of the same type-id), the path is refused: we cannot prove that the name
  is allowed. A non-critical extension's unsupported forms are ignored.
- The minimum and maximum fields of GeneralSubtree are not read (RFC 5280 requires 0 and absent).
- An extension that does not parse (a malformed iPAddress constraint, a bad subjectAltName) is a
  refusal naming the certificate, never an exception.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from gateway.trust.dn import DnKey, dn_key, names_match

__all__ = [
    "check_name_constraints",
    "dn_within",
    "dns_within",
    "has_policy_mappings",
    "mailbox_within",
    "parse_mailbox",
    "uri_host",
]

_DIRECTORY = "directoryName"
_RFC822 = "rfc822Name"
_DNS = "dNSName"
_IP = "iPAddress"
_URI = "uniformResourceIdentifier"
_FORMS: dict[type[x509.GeneralName], str] = {
    x509.DirectoryName: _DIRECTORY, x509.RFC822Name: _RFC822, x509.DNSName: _DNS,
    x509.IPAddress: _IP, x509.UniformResourceIdentifier: _URI,
}
# The forms we cannot evaluate, by the cryptography class that carries them.
_UNSUPPORTED: dict[type[x509.GeneralName], str] = {
    x509.OtherName: "otherName",
    x509.RegisteredID: "registeredID",
}

_Value = object  # DnKey | str | IPv4Network | IPv6Network | IPv4Address | IPv6Address | None


@dataclass(frozen=True, slots=True)
class _Subtree:
    form: str
    value: _Value  # prepared: DnKey, lower-case text, or an ip_network
    text: str  # for reasons
    source: int  # position in the path of the CA that imposed it


@dataclass(slots=True)
class _State:
    # One tuple per CA that set permitted subtrees of a form: a name must be within one subtree of
    # every tuple. This is the intersection of 6.1.4 (g)(i) without computing it.
    permitted: list[tuple[_Subtree, ...]]
    excluded: list[_Subtree]
    # (form label, otherName type-id or None, position of the CA) for unsupported critical forms.
    unsupported: list[tuple[str, str | None, int]]


def check_name_constraints(path: Sequence[x509.Certificate]) -> tuple[int, str] | None:
    """Check name constraints down `path` (leaf first, trust anchor last).

    Returns None when every certificate below the anchor satisfies the constraints of the CAs above
    it, else (position in `path` of the offending certificate, reason naming the constraint, the
    CA that imposed it and the name). Position 0 is the leaf; when several certificates offend,
    the one nearest the anchor is reported. A certificate whose extensions cannot be parsed is
    refused at its position. Raises nothing.
    """
    state = _State([], [], [])
    for pos in range(len(path) - 1, -1, -1):
        cert = path[pos]
        is_anchor = pos == len(path) - 1
        if not is_anchor and not (pos > 0 and _self_issued(cert)):
            refusal = _check_certificate(cert, pos, state, path)
            if refusal is not None:
                return refusal
        if pos > 0:
            refusal = _add_constraints(cert, pos, state)
            if refusal is not None:
                return refusal
    return None


def has_policy_mappings(cert: x509.Certificate) -> bool:
    """Whether `cert` carries a policyMappings extension (2.5.29.33), critical or not.

    Raises ValueError when the certificate's extensions cannot be parsed.
    """
    try:
        cert.extensions.get_extension_for_oid(ExtensionOID.POLICY_MAPPINGS)
    except x509.ExtensionNotFound:
        return False
    return True


def dn_within(name: x509.Name, subtree: x509.Name) -> bool:
    """Whether `name` is within the directoryName subtree `subtree` (its RDNs are a prefix)."""
    return _rdns_within(dn_key(name), dn_key(subtree))


def parse_mailbox(mailbox: str) -> tuple[str, str] | None:
    """(local part, host) of `local@host`, or None when malformed: no "@", an empty part, or a
    second "@" outside a quoted local part."""
    if mailbox.startswith('"'):
        end = mailbox.find('"', 1)
        while end > 0 and mailbox[end - 1] == "\\":
            end = mailbox.find('"', end + 1)
        if end < 0 or mailbox[end + 1 : end + 2] != "@":
            return None
        local, host = mailbox[: end + 1], mailbox[end + 2 :]
    else:
        local, at, host = mailbox.partition("@")
        if not at:
            return None
    if not local or not host or "@" in host or any(c.isspace() for c in host):
        return None
    return local, host


def mailbox_within(mailbox: str, constraint: str) -> bool:
    """Whether the mailbox `user@host` is within an rfc822Name constraint.

    Constraint forms: "user@host" (that mailbox), "host" (every mailbox at host), ".domain" (every
    mailbox at a host below domain, not at domain itself). A malformed mailbox is within nothing.
    """
    parsed = parse_mailbox(mailbox)
    if parsed is None:
        return False
    local, host = parsed
    host = host.casefold()
    if "@" in constraint:
        c = parse_mailbox(constraint)
        return c is not None and local == c[0] and host == c[1].casefold()
    if constraint.startswith("."):
        return host.endswith(constraint.casefold())
    return host == constraint.casefold()


def dns_within(name: str, constraint: str) -> bool:
    """Whether the DNS name `name` is within a dNSName constraint (see the module's choices)."""
    name = name.casefold().rstrip(".")
    c = constraint.casefold().rstrip(".")
    if not c:
        return True
    if c.startswith("."):
        return name.endswith(c)
    return name == c or name.endswith("." + c)


def uri_host(uri: str) -> str | None:
    """The host of a URI (lower case), or None when it has none or it is an IP literal."""
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    if not host or host.startswith("[") or _is_ip(host):
        return None
    return host.casefold()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _dns_malformed(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return (not name or any(not label for label in labels)
            or any(c.isspace() or c == "@" for c in name))


# -- per-certificate steps ------------------------------------------------------------------------

def _check_certificate(cert: x509.Certificate, pos: int, state: _State,
                       path: Sequence[x509.Certificate]) -> tuple[int, str] | None:
    try:
        san = _san(cert)
    except (ValueError, TypeError) as e:
        return pos, f"cannot read the subjectAltName of {_dn_text(cert.subject)}: {e}"
    for form, name, label in _names(cert, san):
        refusal = _check_name(form, name, label, state, path)
        if refusal is not None:
            return pos, refusal
    for form, type_id, source in state.unsupported:
        for general in san:
            if _UNSUPPORTED.get(type(general)) != form:
                continue
            if type_id is not None and (not isinstance(general, x509.OtherName)
                                        or general.type_id.dotted_string != type_id):
                continue
            what = f"{form} {type_id}" if type_id else form
            return pos, (f"{what} name constraints of {_dn_text(path[source].subject)} are not "
                         f"supported, and {_dn_text(cert.subject)} has a {what} name")
    return None


def _constrained(form: str, state: _State) -> bool:
    return (any(s.form == form for s in state.excluded)
            or any(t[0].form == form for t in state.permitted))


def _check_name(form: str, name: _Value, label: str, state: _State,
                path: Sequence[x509.Certificate]) -> str | None:
    if name is None:  # malformed: refused only where a constraint of its form applies
        if _constrained(form, state):
            return f"{label} is malformed and {form} name constraints apply to it"
        return None
    for subtree in state.excluded:
        if subtree.form == form and _within(form, name, subtree.value):
            return (f"{label} is within excluded {form} subtree {subtree.text} "
                    f"(of {_dn_text(path[subtree.source].subject)})")
    for subtrees in state.permitted:
        if subtrees[0].form != form:
            continue
        if not any(_within(form, name, s.value) for s in subtrees):
            allowed = ", ".join(s.text for s in subtrees)
            return (f"{label} is not within the permitted {form} subtrees [{allowed}] "
                    f"(of {_dn_text(path[subtrees[0].source].subject)})")
    return None


def _add_constraints(cert: x509.Certificate, pos: int, state: _State) -> tuple[int, str] | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, TypeError) as e:
        return pos, f"cannot read the nameConstraints of {_dn_text(cert.subject)}: {e}"
    nc = ext.value
    by_form: dict[str, list[_Subtree]] = {}
    try:
        permitted = list(nc.permitted_subtrees or ())
        excluded = list(nc.excluded_subtrees or ())
        for general in permitted:
            subtree = _subtree(general, pos)
            if subtree is not None:
                by_form.setdefault(subtree.form, []).append(subtree)
            elif ext.critical:
                state.unsupported.append(_unsupported(general, pos))
        state.permitted.extend(tuple(subtrees) for subtrees in by_form.values())
        for general in excluded:
            subtree = _subtree(general, pos)
            if subtree is not None:
                state.excluded.append(subtree)
            elif ext.critical:
                state.unsupported.append(_unsupported(general, pos))
    except (ValueError, TypeError) as e:
        return pos, f"malformed nameConstraints in {_dn_text(cert.subject)}: {e}"
    return None


def _subtree(general: x509.GeneralName, pos: int) -> _Subtree | None:
    form = _FORMS.get(type(general))
    if form is None:
        return None
    if isinstance(general, x509.DirectoryName):
        return _Subtree(form, dn_key(general.value), _dn_text(general.value), pos)
    if isinstance(general, x509.IPAddress):
        net = general.value
        if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
            raise ValueError(f"iPAddress constraint {net} is not an address and mask")
        return _Subtree(form, net, str(net), pos)
    value = str(general.value)
    return _Subtree(form, value, repr(value), pos)


def _unsupported(general: x509.GeneralName, pos: int) -> tuple[str, str | None, int]:
    form = _UNSUPPORTED.get(type(general), type(general).__name__)
    type_id = general.type_id.dotted_string if isinstance(general, x509.OtherName) else None
    return form, type_id, pos


def _names(cert: x509.Certificate, san: Sequence[x509.GeneralName]
           ) -> Iterator[tuple[str, _Value, str]]:
    """(form, comparable value or None when malformed, label) of each name of `cert` we check."""
    if len(cert.subject) > 0:  # an empty subject is not checked (6.1.3 (b))
        yield _DIRECTORY, dn_key(cert.subject), f"subject {_dn_text(cert.subject)}"
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
        yield (_RFC822, value if parse_mailbox(value) else None,
               f"subject emailAddress {value!r}")
    for general in san:
        if isinstance(general, x509.DirectoryName):
            yield (_DIRECTORY, dn_key(general.value),
                   f"subjectAltName directoryName {_dn_text(general.value)}")
        elif isinstance(general, x509.RFC822Name):
            yield (_RFC822, general.value if parse_mailbox(general.value) else None,
                   f"subjectAltName rfc822Name {general.value!r}")
        elif isinstance(general, x509.DNSName):
            yield (_DNS, None if _dns_malformed(general.value) else general.value,
                   f"subjectAltName dNSName {general.value!r}")
        elif isinstance(general, x509.IPAddress):
            yield _IP, general.value, f"subjectAltName iPAddress {general.value}"
        elif isinstance(general, x509.UniformResourceIdentifier):
            # A URI without a host is not malformed; it is simply within no host subtree.
            yield _URI, general.value, f"subjectAltName URI {general.value!r}"


def _within(form: str, name: _Value, subtree: _Value) -> bool:
    if form == _DIRECTORY:
        return isinstance(name, tuple) and isinstance(subtree, tuple) and _rdns_within(name, subtree)
    if form == _IP:
        return (isinstance(subtree, ipaddress.IPv4Network | ipaddress.IPv6Network)
                and isinstance(name, ipaddress.IPv4Address | ipaddress.IPv6Address)
                and name.version == subtree.version and name in subtree)
    if not isinstance(name, str) or not isinstance(subtree, str):
        return False
    if form == _RFC822:
        return mailbox_within(name, subtree)
    if form == _DNS:
        return dns_within(name, subtree)
    # A URI constraint is a host ("host.example.com": that host only) or a domain (".example.com":
    # every host below it), RFC 5280 4.2.1.10.
    host = uri_host(name)
    c = subtree.casefold()
    return host is not None and (host.endswith(c) if c.startswith(".") else host == c)


# -- names ----------------------------------------------------------------------------------------

def _san(cert: x509.Certificate) -> Sequence[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _self_issued(cert: x509.Certificate) -> bool:
    return names_match(cert.subject, cert.issuer)


def _rdns_within(name: DnKey, subtree: DnKey) -> bool:
    return len(subtree) <= len(name) and name[:len(subtree)] == subtree


def _dn_text(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty DN)"
