"""Huge CRLs, fast: X.509 v2 CRLs (RFC 5280 5.1) encoded by hand, signed with cryptography.

cryptography's CertificateRevocationListBuilder needs minutes for a million entries; this module
writes one in about two seconds, so tests and the benchmark can use CRLs the size real national
PKIs publish. Only the signature is computed by cryptography; every byte of DER is ours, and
tests/test_crlgen.py proves it with cryptography's and openssl's parsers.

Generated entries are deterministic in `seed`. Each entry's revocationDate and reasonCode follow
from its serial (see `expected_entry`), so a test can check any entry without a second list.
Odd entries (negative serials, critical unknown extensions, odd encodings) go in via
`raw_entries`, built with `encode_entry` or by hand.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from gateway.pki_demo import make_issuing_ca, make_root, write_private_key

IssuerKey = (ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
             | ed448.Ed448PrivateKey)

# Revocation date and reason of a generated entry are picked by `serial & _POOL_MASK`.
_POOL_MASK = 0xFFF
_DATE_STEP = 3607  # seconds between pool dates: spreads them over ~171 days, odd seconds included
# CRLReason codes cycled through the pool; None: the entry has no reasonCode (RFC 5280 prefers
# leaving out "unspecified" to writing it).
REASONS: tuple[int | None, ...] = (None, 1, 3, 4, 5)  # keyCompromise, affiliationChanged, ...

_OID_REASON_CODE = "2.5.29.21"
_OID_CRL_NUMBER = "2.5.29.20"
_OID_AUTHORITY_KEY_ID = "2.5.29.35"


# --- DER primitives -------------------------------------------------------------------------

def encode_length(n: int) -> bytes:
    """DER length octets: short form below 128, else the minimal long form."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, value: bytes) -> bytes:
    """One DER element with a single-byte `tag`."""
    return bytes((tag,)) + encode_length(len(value)) + value


def encode_integer(n: int) -> bytes:
    """A DER INTEGER, minimal two's complement (0x00 in front when the top bit would be set)."""
    width = ((n if n >= 0 else ~n).bit_length() + 8) // 8
    return tlv(0x02, n.to_bytes(width, "big", signed=True))


def encode_oid(dotted: str) -> bytes:
    """A DER OBJECT IDENTIFIER from its dotted form ("2.5.29.21")."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"not an object identifier: {dotted!r}")
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def encode_time(when: dt.datetime) -> bytes:
    """UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5280 4.1.2.5); whole seconds, UTC.

    A naive datetime is taken as UTC.
    """
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, f"{when.year:04d}{when.strftime('%m%d%H%M%S')}Z".encode())


def encode_extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    """An Extension SEQUENCE; `value` is the DER the OCTET STRING wraps. DEFAULT FALSE is omitted."""
    flag = b"\x01\x01\xff" if critical else b""
    return tlv(0x30, encode_oid(oid) + flag + tlv(0x04, value))


def reason_code_extension(reason: int, *, critical: bool = False) -> bytes:
    """The reasonCode entry extension (an ENUMERATED CRLReason)."""
    return encode_extension(_OID_REASON_CODE, tlv(0x0A, bytes((reason,))), critical=critical)


def encode_entry(serial: int, revocation_date: dt.datetime, extensions: Sequence[bytes] = ()) -> bytes:
    """One revokedCertificates entry; `extensions` are encoded Extension SEQUENCEs (may be odd)."""
    body = encode_integer(serial) + encode_time(revocation_date)
    if extensions:
        body += tlv(0x30, b"".join(extensions))
    return tlv(0x30, body)


# --- signing ----------------------------------------------------------------------------------

_EC_HASHES: dict[str, tuple[hashes.HashAlgorithm, str]] = {
    "secp256r1": (hashes.SHA256(), "1.2.840.10045.4.3.2"),
    "secp384r1": (hashes.SHA384(), "1.2.840.10045.4.3.3"),
    "secp521r1": (hashes.SHA512(), "1.2.840.10045.4.3.4"),
}


def _signature_algorithm(key: IssuerKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _, oid = _EC_HASHES.get(key.curve.name, _EC_HASHES["secp256r1"])
        return tlv(0x30, encode_oid(oid))  # ECDSA: parameters absent (RFC 5758)
    if isinstance(key, rsa.RSAPrivateKey):
        return tlv(0x30, encode_oid("1.2.840.113549.1.1.11") + b"\x05\x00")  # NULL parameters
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return tlv(0x30, encode_oid("1.3.101.112"))
    if isinstance(key, ed448.Ed448PrivateKey):
        return tlv(0x30, encode_oid("1.3.101.113"))
    raise TypeError(f"cannot sign a CRL with a {type(key).__name__}")


def _sign(key: IssuerKey, tbs: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm, _ = _EC_HASHES.get(key.curve.name, _EC_HASHES["secp256r1"])
        return key.sign(tbs, ec.ECDSA(algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(tbs)


def _key_identifier(issuer_cert: x509.Certificate, key: IssuerKey) -> bytes:
    # The CRL's AKI must match the issuer certificate's SKI, however that was computed.
    try:
        return issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest


def encode_crl(issuer_cert: x509.Certificate, issuer_key: IssuerKey, entries: bytes | Sequence[bytes],
               *, this_update: dt.datetime, next_update: dt.datetime | None,
               extensions: Sequence[bytes] = ()) -> bytes:
    """A signed DER CertificateList with exactly the given entries and CRL extensions.

    `entries` are encoded entry SEQUENCEs (or their concatenation); none: the revoked list is left
    out, as RFC 5280 requires. `extensions` are encoded Extension SEQUENCEs, in order.
    Raises TypeError for a key type that cannot sign.
    """
    body = entries if isinstance(entries, bytes) else b"".join(entries)
    algorithm = _signature_algorithm(issuer_key)
    parts = [b"\x02\x01\x01", algorithm, issuer_cert.subject.public_bytes(), encode_time(this_update)]
    if next_update is not None:
        parts.append(encode_time(next_update))
    if body:
        parts.append(tlv(0x30, body))
    if extensions:
        parts.append(tlv(0xA0, tlv(0x30, b"".join(extensions))))
    tbs = tlv(0x30, b"".join(parts))
    signature = _sign(issuer_key, tbs)
    return tlv(0x30, tbs + algorithm + tlv(0x03, b"\x00" + signature))


# --- generated CRLs -------------------------------------------------------------------------

def expected_entry(serial: int, this_update: dt.datetime, *, reason_codes: bool = True
                   ) -> tuple[dt.datetime, int | None]:
    """(revocationDate, CRLReason code or None) the generator gives the entry for `serial`."""
    k = serial & _POOL_MASK
    date = this_update.replace(microsecond=0) - dt.timedelta(seconds=60 + k * _DATE_STEP)
    return date, (REASONS[k % len(REASONS)] if reason_codes else None)


def _random_serials(rng: random.Random, count: int, serial_bytes: int, exclude: set[int]) -> list[int]:
    bits = 8 * serial_bytes
    if count + len(exclude) > (1 << bits) - 1:
        raise ValueError(f"{count} distinct serials do not fit in {serial_bytes} bytes")
    draw = rng.getrandbits
    serials = [draw(bits) for _ in range(count)]
    distinct = set(serials)
    if len(distinct) == count and 0 not in distinct and distinct.isdisjoint(exclude):
        return serials
    # Repeats (to be expected only with short serials): keep the first of each, draw on.
    seen = set(exclude) | {0}
    kept: list[int] = []
    for s in serials:
        if s not in seen:
            seen.add(s)
            kept.append(s)
    while len(kept) < count:
        s = draw(bits)
        if s not in seen:
            seen.add(s)
            kept.append(s)
    return kept


def _encode_entries(serials: list[int], this_update: dt.datetime, reason_codes: bool,
                    extra: Sequence[bytes]) -> bytes:
    # The hot loop: one join over precomputed pieces, ~0.8 s per million entries.
    # tails[k]: revocationDate and extensions of the entries in pool slot k (only slots in use:
    # a small CRL should not pay for 4096 strftime calls).
    tails = [b""] * (_POOL_MASK + 1)
    for k in range(_POOL_MASK + 1) if len(serials) > _POOL_MASK else {s & _POOL_MASK for s in serials}:
        date, reason = expected_entry(k, this_update, reason_codes=reason_codes)
        exts = ([reason_code_extension(reason)] if reason is not None else []) + list(extra)
        tails[k] = encode_time(date) + (tlv(0x30, b"".join(exts)) if exts else b"")
    tail_lengths = [len(t) for t in tails]
    widest = max((s.bit_length() + 8) >> 3 for s in serials)
    longest = max(tail_lengths)
    # heads[w][t]: SEQUENCE header + INTEGER header of an entry whose serial takes w bytes
    heads = [[b"\x30" + encode_length(2 + w + t) + b"\x02" + bytes((w,))
              for t in range(longest + 1)] for w in range(widest + 1)]
    mask = _POOL_MASK
    return b"".join([
        heads[w := (s.bit_length() + 8) >> 3][tail_lengths[k := s & mask]] + s.to_bytes(w, "big")
        + tails[k]
        for s in serials
    ])


def crl_bytes(issuer_cert: x509.Certificate, issuer_key: IssuerKey, count: int, *, seed: int = 0,
              include: Sequence[int] = (), this_update: dt.datetime | None = None,
              next_update: dt.datetime | None = None, crl_number: int = 1,
              reason_codes: bool = True, serial_bytes: int = 16,
              extra_entry_extensions: Sequence[bytes] = (),
              extra_crl_extensions: Sequence[bytes] = (),
              raw_entries: Sequence[bytes] = ()) -> tuple[bytes, list[int]]:
    """A signed DER CRL and its serials, in CRL order; see `write_crl` for the parameters."""
    if serial_bytes < 1 or serial_bytes > 126:
        raise ValueError(f"serial_bytes must be 1..126, not {serial_bytes}")
    if any(s < 0 for s in include):
        raise ValueError("include takes non-negative serials; build negative ones with encode_entry "
                         "and pass them in raw_entries")
    if this_update is None:
        this_update = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    if next_update is None:
        next_update = this_update + dt.timedelta(days=7)
    rng = random.Random(seed)
    wanted = list(dict.fromkeys(include))
    serials = _random_serials(rng, count, serial_bytes, set(wanted))
    for s in wanted:  # each at a random place: O(1) per serial, not list.insert's O(n)
        at = rng.randrange(len(serials) + 1)
        if at == len(serials):
            serials.append(s)
        else:
            serials.append(serials[at])
            serials[at] = s
    body = _encode_entries(serials, this_update, reason_codes, extra_entry_extensions) if serials else b""
    aki = tlv(0x30, tlv(0x80, _key_identifier(issuer_cert, issuer_key)))
    extensions = [encode_extension(_OID_CRL_NUMBER, encode_integer(crl_number)),
                  encode_extension(_OID_AUTHORITY_KEY_ID, aki), *extra_crl_extensions]
    der = encode_crl(issuer_cert, issuer_key, body + b"".join(raw_entries), this_update=this_update,
                     next_update=next_update, extensions=extensions)
    return der, serials


def write_crl(path: Path, issuer_cert: x509.Certificate, issuer_key: IssuerKey, count: int, *,
              seed: int = 0, include: Sequence[int] = (), this_update: dt.datetime | None = None,
              next_update: dt.datetime | None = None, crl_number: int = 1,
              reason_codes: bool = True, serial_bytes: int = 16,
              extra_entry_extensions: Sequence[bytes] = (),
              extra_crl_extensions: Sequence[bytes] = (),
              raw_entries: Sequence[bytes] = ()) -> list[int]:
    """Write a DER CRL issued by `issuer_cert` to `path`; return its generated serials, in CRL order.

    `count` distinct random serials of `serial_bytes` bytes (seeded by `seed`), plus each serial
    in `include` (non-negative) at a random place. Dates are datetimes (naive = UTC); by default
    thisUpdate is a minute ago and nextUpdate 7 days later. Each entry gets the revocationDate
    and reasonCode `expected_entry` gives (none with `reason_codes=False`), then
    `extra_entry_extensions` (encoded Extensions). The CRL carries CRLNumber `crl_number`,
    an AuthorityKeyIdentifier (the issuer's SKI) and `extra_crl_extensions`. `raw_entries`
    (encoded entries, untouched) follow the generated ones; their serials are not returned.
    The signature is ECDSA with the curve's hash, RSA PKCS#1 v1.5 SHA-256, or EdDSA.
    Raises ValueError if the serials cannot fit `serial_bytes`, TypeError for an unusable key.
    """
    der, serials = crl_bytes(issuer_cert, issuer_key, count, seed=seed, include=include,
                             this_update=this_update, next_update=next_update,
                             crl_number=crl_number, reason_codes=reason_codes,
                             serial_bytes=serial_bytes, extra_entry_extensions=extra_entry_extensions,
                             extra_crl_extensions=extra_crl_extensions, raw_entries=raw_entries)
    path.write_bytes(der)
    return serials


# --- a CA to issue them -----------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Portvakt rig"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path | None = None, *, key: IssuerKey | None = None,
            root: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
            now: dt.datetime | None = None) -> tuple[x509.Certificate, IssuerKey]:
    """An issuing CA (key: `key`, default a new EC P-256) under `root` (default a new P-384 root).

    Returns (issuing certificate, its key). With a `directory`, also writes root.pem, issuing.pem
    and, mode 0600, root.key and issuing.key there.
    """
    now = now or dt.datetime.now(dt.UTC)
    root_cert, root_key = root or make_root(_name("Portvakt rig CRL root"), now)
    cert, issuing_key = make_issuing_ca(_name("Portvakt rig CRL issuing CA"), root_cert, root_key,
                                        now, key)
    key = cast(IssuerKey, issuing_key)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (directory / "root.pem").write_bytes(root_cert.public_bytes(pem))
        (directory / "issuing.pem").write_bytes(cert.public_bytes(pem))
        write_private_key(directory / "root.key", root_key)
        write_private_key(directory / "issuing.key", key)
    return cert, key
