"""A strict, fast DER walk over a CRL (RFC 5280 5.1) for what the revocation index needs.

cryptography re-encodes the whole revoked list when asked for it, which is slow at a million
entries. This walk finds, in the original bytes: the to-be-signed part (for the signature check),
the signature algorithm and value, each revoked serial, and whether any entry carries a critical
extension. Everything else (issuer, times, CRL extensions) is read by cryptography from a small
"skeleton" CRL: the same bytes with the revoked list cut out. Property-based differential tests
prove the walk gives the library's answers.

Deliberately not interpreted: the characters of each entry's revocationDate (its tag, length
and final Z are checked) and the values of entry extensions other than criticality. Neither
decides whether a serial is revoked; the library refuses a CRL with a bad date digit, we read it.

Serials are keyed by their integer value: non-negative serials as big-endian magnitudes padded to
one width (sortable, fixed-size), the rare negative ones (non-conformant, but seen) apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography import x509

from gateway.errors import TrustError

MAX_CRL_BYTES = 1 << 30  # 1 GiB: anything larger is refused before parsing
OID_REASON_CODE = bytes.fromhex("0603551d15")
OID_INVALIDITY_DATE = bytes.fromhex("0603551d18")
OID_CERTIFICATE_ISSUER = bytes.fromhex("0603551d1d")
# crlEntryExtensions holding only a non-critical reasonCode (the last byte, the code, varies).
REASON_CODE_EXTENSIONS = bytes.fromhex("300c300a0603551d1504030a01")
TIME_LENGTHS = {0x17: 13, 0x18: 15}  # UTCTime, GeneralizedTime (DER: seconds, no fraction, Z)


class CrlFormatError(TrustError):
    """The CRL's DER is malformed."""


def _header(d: bytes, i: int, end: int, what: str) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `i`; strict and bounded."""
    if i + 2 > end:
        raise CrlFormatError(f"malformed CRL: {what} truncated")
    tag = d[i]
    if tag & 0x1F == 0x1F:
        raise CrlFormatError(f"malformed CRL: {what} has a multi-byte tag")
    n = d[i + 1]
    if n < 0x80:
        start = i + 2
        length = n
    else:
        k = n & 0x7F
        if k == 0 or k > 4:
            raise CrlFormatError(f"malformed CRL: {what} has an unsupported length form")
        start = i + 2 + k
        if start > end:
            raise CrlFormatError(f"malformed CRL: {what} length truncated")
        length = int.from_bytes(d[i + 2 : start], "big")
    stop = start + length
    if stop > end:
        raise CrlFormatError(f"malformed CRL: {what} claims {length} bytes, "
                             f"{end - start} remain")
    return tag, start, stop


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


@dataclass(frozen=True)
class CrlScan:
    tbs: memoryview  # the original to-be-signed bytes (the signature covers exactly these)
    skeleton: x509.CertificateRevocationList  # the CRL without its revoked list
    signature: bytes
    keys: bytes  # non-negative serials, big-endian, each padded to `width` bytes, CRL order
    width: int
    negatives: frozenset[int]
    entry_problem: str | None  # why the entries make this CRL unusable, if they do

    @property
    def count(self) -> int:
        return len(self.keys) // self.width + len(self.negatives)

    def serials(self) -> list[int]:
        """Every serial as an integer (for tests and tools; the index never needs this)."""
        w = self.width
        return [int.from_bytes(self.keys[i : i + w], "big")
                for i in range(0, len(self.keys), w)] + sorted(self.negatives)


def _entry_extensions_problem(d: bytes, start: int, end: int) -> str | None:
    """Inspect one entry's extensions ([SEQUENCE OF Extension]); a reason if unusable."""
    _, s, e = _header(d, start, end, "entry extensions")
    i = s
    while i < e:
        _, xs, xe = _header(d, i, e, "entry extension")
        _, os_, oe = _header(d, xs, xe, "entry extension id")
        oid = d[xs:oe]
        critical = False
        j = oe
        if j < xe and d[j] == 0x01:
            _, bs, be = _header(d, j, xe, "entry extension critical flag")
            critical = d[bs:be] != b"\x00"
            j = be
        if oid == OID_CERTIFICATE_ISSUER:
            return "indirect CRL (certificateIssuer entry extension) is not supported"
        if critical and oid not in (OID_REASON_CODE, OID_INVALIDITY_DATE):
            return f"unknown critical CRL entry extension {d[os_:oe].hex()}"
        i = xe
    return None


Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


FAST_WIDTH = 21  # serial contents of up to 21 bytes (RFC 5280: 20 octets, plus a sign byte)
CHUNK = 1 << 22


def _entry_pattern() -> re.Pattern[bytes]:
    """The common entry shapes, each with its exact DER length byte: a minimal non-negative
    serial of 1..21 bytes, a UTCTime or GeneralizedTime with its digits, no extensions or only
    a reasonCode. A run of these that tiles the revoked list is a complete parse of it."""
    times = [(rb"\x17\x0d[0-9]{12}Z", 15), (rb"\x18\x0f[0-9]{14}Z", 17)]
    exts = [(b"", 0), (re.escape(REASON_CODE_EXTENSIONS) + rb"[\x00-\x06\x08-\x0a]", 14)]
    alternatives = []
    for sl in range(1, FAST_WIDTH + 1):
        serial = (rb"[\x00-\x7f]" if sl == 1 else
                  rb"(?:[\x01-\x7f].{%d}|\x00[\x80-\xff].{%d})" % (sl - 1, sl - 2))
        for time_re, tl in times:
            for ext_re, el in exts:
                head = re.escape(bytes([0x30, 2 + sl + tl + el, 0x02, sl]))
                alternatives.append(head + serial + time_re + ext_re)
    return re.compile(b"|".join(alternatives), re.DOTALL)


_ENTRY = _entry_pattern()


def _fast_keys(d: bytes, rs: int, re_: int, progress: Progress | None) -> bytes | None:
    """Serials padded to FAST_WIDTH, if the common shapes tile [rs, re_); else None.

    Works a chunk at a time so no per-entry object outlives its chunk."""
    parts: list[bytes] = []
    pos = rs
    w = FAST_WIDTH
    while pos < re_:
        end = min(pos + CHUNK, re_)
        entries = _ENTRY.findall(d, pos, end)
        joined = b"".join(entries)
        used = len(joined)
        # findall skips what it cannot match: the matches must BE the bytes from `pos` on,
        # up to within one entry of the chunk's end (all of it at the list's end). Then that
        # stretch is a concatenation of valid entries, which is its one DER parse.
        if (not entries or joined != d[pos : pos + used]
                or (end < re_ and used < end - pos - 64) or (end == re_ and used != end - pos)):
            return None
        del joined
        parts.append(b"".join([e[4 : 4 + e[3]].rjust(w, b"\x00") for e in entries]))
        pos += used
        if progress is not None:
            progress(pos, len(d))
    return b"".join(parts)


def _walk(d: bytes, rs: int, re_: int, n: int, progress: Progress | None
          ) -> tuple[list[bytes], set[int], str | None]:
    """The careful walk over every entry shape DER allows; returns (non-negative serials,
    negative serials, why the entries make the CRL unusable or None)."""
    magnitudes: list[bytes] = []
    negatives: set[int] = set()
    problem: str | None = None
    append = magnitudes.append
    startswith = d.startswith
    j = rs
    step = 1 << 22
    report = rs + step if progress is not None else re_ + 1
    # The hot loop: one revoked entry per turn, no function calls on the common path.
    while j < re_:
        if d[j] != 0x30:
            raise CrlFormatError(f"malformed CRL: revoked entry at byte {j} is not a SEQUENCE")
        ln = d[j + 1]
        if ln < 0x80:
            k = j + 2
        elif ln == 0x81:
            ln = d[j + 2]
            k = j + 3
        else:
            _, k, x = _header(d, j, re_, "revoked entry")
            ln = x - k
        stop = k + ln
        sl = d[k + 1]
        s = k + 2 + sl
        if stop > re_ or d[k] != 0x02 or sl == 0 or sl >= 0x80 or s + 2 > stop:
            raise CrlFormatError(f"malformed CRL: revoked entry at byte {j} has no valid "
                                 "serial INTEGER")
        first = d[k + 2]
        if first == 0:
            # DER integers are minimal: a leading zero only in front of a set top bit.
            if sl > 1 and d[k + 3] < 0x80:
                raise CrlFormatError(f"malformed CRL: non-minimal serial INTEGER at byte {k}")
            append(d[k + 3 : s])
        elif first < 0x80:
            append(d[k + 2 : s])
        else:
            if sl > 1 and first == 0xFF and d[k + 3] & 0x80:
                raise CrlFormatError(f"malformed CRL: non-minimal serial INTEGER at byte {k}")
            negatives.add(int.from_bytes(d[k + 2 : s], "big", signed=True))
        tl = d[s + 1]
        t = s + 2 + tl
        # The time's shape (UTCTime 13 bytes, GeneralizedTime 15, ending in Z), not its
        # digits: the date is informational and never changes whether a serial is revoked.
        if TIME_LENGTHS.get(d[s]) != tl or d[t - 1] != 0x5A:
            raise CrlFormatError(f"malformed CRL: revoked entry at byte {j} has no valid "
                                 "revocationDate")
        if t != stop:
            # Entry extensions. The usual one, a plain reasonCode, is recognised whole.
            if t > stop:
                raise CrlFormatError(f"malformed CRL: revocationDate overruns entry at {j}")
            if not (stop - t == 14 and startswith(REASON_CODE_EXTENSIONS, t)) and problem is None:
                problem = _entry_extensions_problem(d, t, stop)
        j = stop
        if j > report:
            report += step
            progress(j, n)  # type: ignore[misc]
    return magnitudes, negatives, problem


def _trim(padded: bytes, w: int) -> tuple[bytes, int]:
    """Drop the leading columns that are zero in every key: (keys, their width)."""
    if not padded:
        return b"", 1
    arr = np.frombuffer(padded, dtype=np.uint8).reshape(-1, w)
    used = np.flatnonzero(arr.any(axis=0))
    first = int(used[0]) if used.size else w - 1
    if first == 0:
        return padded, w
    return np.ascontiguousarray(arr[:, first:]).tobytes(), w - first


def scan_crl(data: bytes, progress: Progress | None = None) -> CrlScan:
    """Walk a DER CRL. Raises CrlFormatError (a TrustError) with a reason on malformed input.

    `progress(done, total)` is called every few megabytes of the revoked list."""
    if len(data) > MAX_CRL_BYTES:
        raise CrlFormatError(f"CRL of {len(data)} bytes is larger than {MAX_CRL_BYTES}")
    d = data if type(data) is bytes else bytes(data)
    n = len(d)
    tag, os_, oe = _header(d, 0, n, "CertificateList")
    if tag != 0x30 or oe != n:
        raise CrlFormatError("malformed CRL: not one DER SEQUENCE")
    tag, ts, te = _header(d, os_, oe, "tbsCertList")
    if tag != 0x30:
        raise CrlFormatError("malformed CRL: tbsCertList is not a SEQUENCE")
    tbs = memoryview(d)[os_:te]
    tag, _, ae = _header(d, te, oe, "signatureAlgorithm")
    sigalg = d[te:ae]
    tag, ss, se = _header(d, ae, oe, "signatureValue")
    if tag != 0x03 or se != oe or ss == se or d[ss] != 0:
        raise CrlFormatError("malformed CRL: signatureValue is not a whole-byte BIT STRING")
    signature = d[ss + 1 : se]

    # Inside tbsCertList: [version] signature issuer thisUpdate [nextUpdate] [revoked] [0]exts
    i = ts
    tag, _, nxt = _header(d, i, te, "version or signature")
    if tag == 0x02:
        i = nxt
    for what in ("signature", "issuer"):
        tag, _, nxt = _header(d, i, te, what)
        if tag != 0x30:
            raise CrlFormatError(f"malformed CRL: {what} is not a SEQUENCE")
        i = nxt
    tag, _, nxt = _header(d, i, te, "thisUpdate")
    if tag not in (0x17, 0x18):
        raise CrlFormatError("malformed CRL: thisUpdate is not a time")
    i = nxt
    if i < te and d[i] in (0x17, 0x18):
        i = _header(d, i, te, "nextUpdate")[2]
    rev_start = rev_end = i
    keys = b""
    width = 1
    negatives: set[int] = set()
    problem: str | None = None
    if i < te and d[i] == 0x30:
        _, rs, re_ = _header(d, i, te, "revokedCertificates")
        rev_end = re_
        padded = _fast_keys(d, rs, re_, progress)
        if padded is not None:
            keys, width = _trim(padded, FAST_WIDTH)
        else:
            magnitudes, negatives, problem = _walk(d, rs, re_, n, progress)
            width = max(1, max(map(len, magnitudes), default=1))
            keys = b"".join([m.rjust(width, b"\x00") for m in magnitudes])
            del magnitudes
    # The skeleton: the same TBS without the revoked list, re-wrapped; parsed by the library.
    body = d[ts:rev_start] + d[rev_end:te]
    tbs_skel = b"\x30" + _encode_length(len(body)) + body
    inner = tbs_skel + sigalg + d[ae:se]
    try:
        skeleton = x509.load_der_x509_crl(b"\x30" + _encode_length(len(inner)) + inner)
        skeleton.issuer  # noqa: B018 - force the parse of the fields we use
        skeleton.last_update_utc  # noqa: B018
    except ValueError as e:
        raise CrlFormatError(f"malformed CRL: {e}") from e
    return CrlScan(tbs, skeleton, signature, keys, width, frozenset(negatives), problem)
