"""Name constraints (RFC 5280 4.2.1.10, 6.1.3 (b)-(c), 6.1.4 (g)) for directoryName and rfc822Name.

Pure functions over a built path (leaf first, trust anchor last). Choices this module makes:

- The trust anchor's own nameConstraints extension applies to every certificate below it, as if the
  anchor were configured with those constraints (RFC 5937 section 3). The anchor itself is never
  checked: it is trusted by configuration, not by its name.
- Distinguished names are compared RDN by RDN (RFC 5280 7.1). An attribute value that is a string is
  normalized with NFKC, case folding and whitespace folding (leading and trailing space dropped,
  inner runs collapsed to one space) -- a subset of RFC 4518 that is exact for ASCII and for the
  names card issuers use. The ASN.1 string type (PrintableString, UTF8String, ...) is not compared.
  A multi-valued RDN matches one with the same set of attribute types and values.
- rfc822Name: the local part is compared exactly (RFC 5280 7.5), the host part case-insensitively.
  Every rfc822Name in subjectAltName and every emailAddress attribute of the subject DN is checked,
  whether or not the certificate has a subjectAltName (stricter than 4.2.1.10, which requires the
  emailAddress check only when there is no subjectAltName).
- A self-issued intermediate certificate (subject equal to issuer, not the leaf) is not checked
  against the constraints above it (6.1.3 (b)); its own constraints still apply below it.
- Other name forms (dNSName, iPAddress, URI, otherName, registeredID) are not implemented. If a
  critical nameConstraints extension constrains such a form and a certificate below carries a name
  of that form (an otherName of the same type-id), the path is refused: we cannot prove that the
  name is allowed. A non-critical extension's unsupported forms are ignored.
- The minimum and maximum fields of GeneralSubtree are not read (RFC 5280 requires 0 and absent).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = [
    "check_name_constraints",
    "dn_within",
    "has_policy_mappings",
    "mailbox_within",
]

_DIRECTORY = "directoryName"
_RFC822 = "rfc822Name"
# The forms we cannot evaluate, by the cryptography class that carries them.
_UNSUPPORTED: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "dNSName",
    x509.IPAddress: "iPAddress",
    x509.UniformResourceIdentifier: "uniformResourceIdentifier",
    x509.OtherName: "otherName",
    x509.RegisteredID: "registeredID",
}

_Rdn = frozenset[tuple[str, str | bytes]]


@dataclass(frozen=True, slots=True)
class _Subtree:
    form: str  # _DIRECTORY | _RFC822
    value: tuple[_Rdn, ...] | str  # normalized RDNs, or the rfc822 constraint text
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
    return _rdns_within(_normalize_dn(name), _normalize_dn(subtree))


def mailbox_within(mailbox: str, constraint: str) -> bool:
    """Whether the mailbox `user@host` is within an rfc822Name constraint.

    Constraint forms: "user@host" (that mailbox), "host" (every mailbox at host), ".domain" (every
    mailbox at a host below domain, not at domain itself). A mailbox without "@" is within nothing.
    """
    local, at, host = mailbox.rpartition("@")
    if not at or not local or not host:
        return False
    host = host.casefold()
    if "@" in constraint:
        c_local, _, c_host = constraint.rpartition("@")
        return local == c_local and host == c_host.casefold()
    if constraint.startswith("."):
        return host.endswith(constraint.casefold())
    return host == constraint.casefold()


# -- per-certificate steps ------------------------------------------------------------------------

def _check_certificate(cert: x509.Certificate, pos: int, state: _State,
                       path: Sequence[x509.Certificate]) -> tuple[int, str] | None:
    try:
        san = _san(cert)
    except ValueError as e:
        return pos, f"cannot read the extensions of {_dn_text(cert.subject)}: {e}"
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


def _check_name(form: str, name: tuple[_Rdn, ...] | str, label: str, state: _State,
                path: Sequence[x509.Certificate]) -> str | None:
    for subtree in state.excluded:
        if subtree.form == form and _within(name, subtree):
            return (f"{label} is within excluded {form} subtree {subtree.text} "
                    f"(of {_dn_text(path[subtree.source].subject)})")
    for subtrees in state.permitted:
        if subtrees[0].form != form:
            continue
        if not any(_within(name, s) for s in subtrees):
            allowed = ", ".join(s.text for s in subtrees)
            return (f"{label} is not within the permitted {form} subtrees [{allowed}] "
                    f"(of {_dn_text(path[subtrees[0].source].subject)})")
    return None


def _add_constraints(cert: x509.Certificate, pos: int, state: _State) -> tuple[int, str] | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:
        return pos, f"cannot read the nameConstraints of {_dn_text(cert.subject)}: {e}"
    nc = ext.value
    by_form: dict[str, list[_Subtree]] = {}
    for general in nc.permitted_subtrees or ():
        subtree = _subtree(general, pos)
        if subtree is not None:
            by_form.setdefault(subtree.form, []).append(subtree)
        elif ext.critical:
            state.unsupported.append(_unsupported(general, pos))
    state.permitted.extend(tuple(subtrees) for subtrees in by_form.values())
    for general in nc.excluded_subtrees or ():
        subtree = _subtree(general, pos)
        if subtree is not None:
            state.excluded.append(subtree)
        elif ext.critical:
            state.unsupported.append(_unsupported(general, pos))
    return None


def _subtree(general: x509.GeneralName, pos: int) -> _Subtree | None:
    if isinstance(general, x509.DirectoryName):
        return _Subtree(_DIRECTORY, _normalize_dn(general.value), _dn_text(general.value), pos)
    if isinstance(general, x509.RFC822Name):
        return _Subtree(_RFC822, general.value, repr(general.value), pos)
    return None


def _unsupported(general: x509.GeneralName, pos: int) -> tuple[str, str | None, int]:
    form = _UNSUPPORTED.get(type(general), type(general).__name__)
    type_id = general.type_id.dotted_string if isinstance(general, x509.OtherName) else None
    return form, type_id, pos


def _names(cert: x509.Certificate, san: Sequence[x509.GeneralName]
           ) -> Iterator[tuple[str, tuple[_Rdn, ...] | str, str]]:
    """(form, comparable value, label for reasons) of each name of `cert` we constrain."""
    if len(cert.subject) > 0:  # an empty subject is not checked (6.1.3 (b))
        yield _DIRECTORY, _normalize_dn(cert.subject), f"subject {_dn_text(cert.subject)}"
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
        yield _RFC822, value, f"subject emailAddress {value!r}"
    for general in san:
        if isinstance(general, x509.DirectoryName):
            yield (_DIRECTORY, _normalize_dn(general.value),
                   f"subjectAltName directoryName {_dn_text(general.value)}")
        elif isinstance(general, x509.RFC822Name):
            yield _RFC822, general.value, f"subjectAltName rfc822Name {general.value!r}"


def _within(name: tuple[_Rdn, ...] | str, subtree: _Subtree) -> bool:
    if isinstance(name, str):
        return isinstance(subtree.value, str) and mailbox_within(name, subtree.value)
    return not isinstance(subtree.value, str) and _rdns_within(name, subtree.value)


# -- names ----------------------------------------------------------------------------------------

def _san(cert: x509.Certificate) -> Sequence[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _self_issued(cert: x509.Certificate) -> bool:
    return _normalize_dn(cert.subject) == _normalize_dn(cert.issuer)


def _rdns_within(name: tuple[_Rdn, ...], subtree: tuple[_Rdn, ...]) -> bool:
    return len(subtree) <= len(name) and name[:len(subtree)] == subtree


def _normalize_dn(name: x509.Name) -> tuple[_Rdn, ...]:
    return tuple(frozenset((a.oid.dotted_string, _normalize_value(a.value)) for a in rdn)
                 for rdn in name.rdns)


def _normalize_value(value: str | bytes) -> str | bytes:
    if isinstance(value, bytes):  # a BIT STRING (x500UniqueIdentifier): compared exactly
        return value
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _dn_text(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty DN)"
