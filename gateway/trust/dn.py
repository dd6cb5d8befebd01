"""Distinguished-name comparison as RFC 5280 section 7.1 says: exact DER first (the fast path),
else attribute by attribute after RFC 4518 string preparation.

One comparison for every place a name is matched: path building (a certificate's issuer against
candidate subjects), CRL issuer matching and name constraints (directoryName subtrees).

Choices:

- Two names match when they have the same number of RDNs and each RDN has the same set of
  (attribute type, prepared value) pairs; a multi-valued RDN matches whatever its order.
- Every attribute value that is a string is prepared, whatever its ASN.1 string type
  (PrintableString, UTF8String, TeletexString, BMPString, UniversalString, IA5String): a CA that
  moves from PrintableString to UTF8String (RFC 5280 7.1 allows it) keeps its name. RFC 5280
  requires this for PrintableString and UTF8String; for the other types it leaves comparison
  undefined, and we choose the same rule rather than refuse.
- RFC 4518 preparation: map (control and format characters to nothing, the listed spaces and
  separators to SPACE, soft hyphens, joiners and variation selectors to nothing), case fold,
  NFKC, prohibit (unassigned, private-use, surrogate and non-character code points and U+FFFD),
  insignificant-space handling (leading and trailing space dropped, inner runs of space count as
  one). Python's `str.casefold` stands in for RFC 3454 table B.2 (full case folding; B.2 adds
  the NFKC closure, which the NFKC step after it gives here).
- A value containing a prohibited character is compared exactly (its original text): RFC 4518
  makes such a comparison undefined, and "undefined" must not make two different names equal.
- A value that is not a string (a BIT STRING such as x500UniqueIdentifier) is compared exactly.
"""

from __future__ import annotations

import unicodedata

from cryptography import x509

__all__ = ["DnKey", "dn_key", "key_from_json", "key_to_json", "names_match", "prepare"]

Rdn = frozenset[tuple[str, object]]
DnKey = tuple[Rdn, ...]

_TO_SPACE = frozenset({0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85})
_TO_NOTHING = frozenset({0xAD, 0x1806, 0x034F, 0x180B, 0x180C, 0x180D, 0xFFFC, 0x200B,
                         *range(0xFE00, 0xFE10)})
_SEPARATORS = frozenset({"Zs", "Zl", "Zp"})
_PROHIBITED = frozenset({"Cn", "Co", "Cs"})
_CACHE_LIMIT = 100_000
_cache: dict[bytes, DnKey] = {}


def prepare(value: str) -> str | None:
    """The RFC 4518 prepared form of an attribute value, or None if it has a prohibited
    character (then only an exact comparison is meaningful)."""
    if value.isascii():
        # The common case, ASCII: the mapping step only turns controls into nothing or space.
        if not value.isprintable():
            value = "".join(" " if ord(c) in _TO_SPACE else c for c in value
                            if c.isprintable() or ord(c) in _TO_SPACE)
        words = value.lower().split()
        return " ".join(words) if words else (" " if value else "")
    mapped = []
    for c in value:
        o = ord(c)
        if o in _TO_SPACE:
            mapped.append(" ")
            continue
        if o in _TO_NOTHING:
            continue
        cat = unicodedata.category(c)
        if cat in ("Cc", "Cf"):
            continue
        mapped.append(" " if cat in _SEPARATORS else c)
    text = unicodedata.normalize("NFKC", "".join(mapped).casefold())
    for c in text:
        o = ord(c)
        if (unicodedata.category(c) in _PROHIBITED or o == 0xFFFD
                or (o & 0xFFFE) == 0xFFFE or 0xFDD0 <= o <= 0xFDEF):
            return None
    words = [w for w in text.split(" ") if w]
    return " ".join(words) if words else (" " if value else "")


def _attribute(attr: x509.NameAttribute[str | bytes]) -> tuple[str, object]:
    value = attr.value
    if isinstance(value, str):
        prepared = prepare(value)
        return attr.oid.dotted_string, (prepared if prepared is not None else ("exact", value))
    return attr.oid.dotted_string, ("bytes", bytes(value))


def dn_key(name: x509.Name, der: bytes | None = None) -> DnKey:
    """A hashable key equal for names that match under RFC 5280 7.1. `der`: the name's DER when
    the caller has it (saves re-encoding). Results are cached by DER."""
    if der is None:
        der = name.public_bytes()
    key = _cache.get(der)
    if key is None:
        key = tuple(frozenset(_attribute(a) for a in rdn) for rdn in name.rdns)
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[der] = key
    return key


def names_match(a: x509.Name, b: x509.Name) -> bool:
    """Whether two distinguished names match (RFC 5280 7.1): exact DER, else prepared values."""
    da, db = a.public_bytes(), b.public_bytes()
    return da == db or dn_key(a, da) == dn_key(b, db)


def key_to_json(key: DnKey) -> list[list[list[object]]]:
    """A DnKey as JSON-friendly lists (for the revocation index's header)."""
    out = []
    for rdn in key:
        pairs = []
        for oid, value in sorted(rdn, key=repr):
            if isinstance(value, tuple):
                kind, raw = value
                value = [kind, raw.hex() if isinstance(raw, bytes) else raw]
            pairs.append([oid, value])
        out.append(pairs)
    return out


def key_from_json(data: list[list[list[object]]]) -> DnKey:
    """The inverse of `key_to_json`."""
    rdns = []
    for pairs in data:
        items: list[tuple[str, object]] = []
        for oid, value in pairs:
            if isinstance(value, list):
                kind, raw = value
                value = (kind, bytes.fromhex(str(raw)) if kind == "bytes" else raw)
            items.append((str(oid), value))
        rdns.append(frozenset(items))
    return tuple(rdns)
