"""The revocation index: each usable CRL's serials, sorted, fixed-width, in a file mapped into
memory, so a lookup is a binary search (O(log n), a few microseconds at a million entries) and a
restart needs no re-parse.

Ingest checks everything once: DER structure, issuer, the signature over the original
to-be-signed bytes with a key allowed to sign CRLs, thisUpdate not in the future, critical
extensions, scope (issuingDistributionPoint), and that it is newer than the CRL in use. A new
index is written beside the old one (temporary file, fsync, rename) and swapped in by one
assignment: lookups during an ingest keep answering from the old one.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import hashlib
import json
import logging
import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from gateway.errors import TrustError
from gateway.trust.certinfo import DSA_SIGNATURE_OIDS
from gateway.trust.crlscan import CrlScan, Progress, scan_crl
from gateway.trust.dn import DnKey, dn_key, key_from_json, key_to_json, names_match

log = logging.getLogger(__name__)
MAGIC = b"PVCRLIX1"
KNOWN_CRL_EXTENSIONS = {
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_NUMBER,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT, ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    ExtensionOID.FRESHEST_CRL,
}


@dataclass(frozen=True, slots=True)
class CrlScope:
    """Which certificates a CRL speaks for (RFC 5280 5.2.5, issuingDistributionPoint)."""

    only_user: bool = False
    only_ca: bool = False
    dp_names: tuple[str, ...] = ()  # distribution point full names; () = not partitioned

    @property
    def key(self) -> str:
        return json.dumps([self.only_user, self.only_ca, sorted(self.dp_names)])

    def covers(self, cert: x509.Certificate, is_ca: bool,
               points: Sequence[str] | None = None) -> bool:
        """Whether this CRL speaks for `cert`; `points`: its distribution point names when the
        caller has them already."""
        if (self.only_user and is_ca) or (self.only_ca and not is_ca):
            return False
        if not self.dp_names:
            return True
        return bool(set(self.dp_names) & set(_distribution_points(cert) if points is None
                                             else points))


def _distribution_points(cert: x509.Certificate) -> list[str]:
    try:
        dps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [str(n.value) for dp in dps for n in (dp.full_name or [])]


class CrlIndex:
    """One installed CRL: metadata plus the mapped, sorted serial keys. Immutable."""

    def __init__(self, path: Path | None, meta: dict[str, object], blob: bytes | mmap.mmap,
                 offset: int) -> None:
        self.path = path
        self.issuer = base64.b64decode(str(meta["issuer"]))
        self.issuer_text = str(meta["issuer_text"])
        ik = meta.get("issuer_key")
        # Indexes written before names were compared prepared: the key from the issuer's text.
        self.issuer_key: DnKey = (key_from_json(ik) if isinstance(ik, list)
                                  else dn_key(x509.Name.from_rfc4514_string(self.issuer_text)))
        # The certificate whose key verified the CRL (None: written before it was recorded,
        # taken to be the issuing CA's own) and that key's identifier.
        signer = meta.get("signer")
        self.signer_der = base64.b64decode(str(signer)) if signer else None
        self.signer_key_id = str(meta.get("signer_key_id") or "")
        self.this_update = float(meta["this_update"])  # type: ignore[arg-type]
        nu = meta["next_update"]
        self.next_update = float(nu) if nu is not None else None  # type: ignore[arg-type]
        num = meta["number"]
        self.number = int(str(num)) if num is not None else None
        self.width = int(meta["width"])  # type: ignore[call-overload]
        self.count = int(meta["count"])  # type: ignore[call-overload]
        self.negatives = frozenset(int(x) for x in meta["negatives"])  # type: ignore[attr-defined]
        sc = meta["scope"]
        assert isinstance(sc, dict)
        self.scope = CrlScope(bool(sc["only_user"]), bool(sc["only_ca"]), tuple(sc["dp_names"]))
        self.source = str(meta["source"])
        self.sha256 = str(meta["sha256"])
        self._blob = blob
        self._offset = offset
        self._positives = int(meta["positives"])  # type: ignore[call-overload]

    def contains(self, serial: int) -> bool:
        """Whether `serial` (by integer value) is on this CRL. O(log n)."""
        if serial < 0:
            return serial in self.negatives
        w = self.width
        if serial.bit_length() > 8 * w:
            return False
        key = serial.to_bytes(w, "big")
        blob, base = self._blob, self._offset
        lo, hi = 0, self._positives
        while lo < hi:
            mid = (lo + hi) >> 1
            p = base + mid * w
            if blob[p : p + w] < key:
                lo = mid + 1
            else:
                hi = mid
        p = base + lo * w
        return lo < self._positives and blob[p : p + w] == key

    def close(self) -> None:
        if isinstance(self._blob, mmap.mmap):
            with contextlib.suppress(BufferError):
                self._blob.close()


def _verify_signature(cert: x509.Certificate, scan: CrlScan) -> bool:
    key = cert.public_key()
    crl = scan.skeleton
    h = crl.signature_hash_algorithm
    # cryptography reads any buffer; a memoryview spares a copy of a CRL's worth of bytes.
    # (Every key type goes through here in tests/test_trust_validation.py.)
    tbs = cast(bytes, scan.tbs)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            params = crl.signature_algorithm_parameters
            pad = params if isinstance(params, padding.PSS | padding.PKCS1v15) else padding.PKCS1v15()
            if h is None:
                return False
            key.verify(scan.signature, tbs, pad, h)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if h is None:
                return False
            key.verify(scan.signature, tbs, ec.ECDSA(h))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(scan.signature, tbs)
        else:
            return False  # DSA and anything else: not an algorithm we accept for CRLs
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def key_id(cert: x509.Certificate) -> str:
    """The SHA-256 of a certificate's SubjectPublicKeyInfo, hex: names a key, whatever
    certificates carry it."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TrustError(f"the key of {cert.subject.rfc4514_string()} cannot be read: {e}") from e
    return hashlib.sha256(spki).hexdigest()


def _may_sign_crls(cert: x509.Certificate) -> bool:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return bool(ku.crl_sign)


def _aki_matches(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return True
    return aki.key_identifier is None or aki.key_identifier == ski.digest


def _scope(crl: x509.CertificateRevocationList, source: str) -> CrlScope:
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return CrlScope()
    if idp.indirect_crl:
        raise TrustError(f"{source}: indirect CRL (issuingDistributionPoint) is not supported")
    if idp.only_some_reasons is not None:
        raise TrustError(f"{source}: reason-partitioned CRL (onlySomeReasons) is not supported")
    if idp.only_contains_attribute_certs:
        raise TrustError(f"{source}: CRL covers attribute certificates only")
    if idp.relative_name is not None:
        raise TrustError(f"{source}: CRL distribution point by relative name is not supported")
    names = tuple(str(n.value) for n in (idp.full_name or []))
    return CrlScope(idp.only_contains_user_certs, idp.only_contains_ca_certs, names)


@dataclass(frozen=True)
class Checked:
    scan: CrlScan
    signer: x509.Certificate
    scope: CrlScope
    number: int | None


def check_crl(data: bytes, signers: Sequence[x509.Certificate], *, now: float,
              clock_skew: float = 300.0, source: str = "CRL",
              progress: Progress | None = None) -> Checked:
    """Every check of ingest except 'newer than the one in use'. Raises TrustError."""
    scan = scan_crl(data, progress)
    crl = scan.skeleton
    issuer_text = crl.issuer.rfc4514_string()
    candidates = [c for c in signers if names_match(c.subject, crl.issuer)]
    if not candidates:
        raise TrustError(f"{source}: no trusted certificate for CRL issuer {issuer_text}")
    allowed = [c for c in candidates if _may_sign_crls(c)]
    if not allowed:
        raise TrustError(f"{source}: no certificate of {issuer_text} may sign CRLs "
                         "(keyUsage lacks cRLSign)")
    signer = next((c for c in allowed if _aki_matches(crl, c) and _verify_signature(c, scan)),
                  None)
    if signer is None:
        if crl.signature_algorithm_oid.dotted_string in DSA_SIGNATURE_OIDS:
            raise TrustError(f"{source}: CRL signed with DSA (unsupported-algorithm)")
        raise TrustError(f"{source}: CRL signature does not verify with any key of "
                         f"{issuer_text} allowed to sign CRLs")
    try:
        exts = list(crl.extensions)
    except ValueError as e:
        raise TrustError(f"{source}: malformed CRL extensions: {e}") from e
    for ext in exts:
        if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise TrustError(f"{source}: delta CRLs are not supported")
        if ext.critical and ext.oid not in KNOWN_CRL_EXTENSIONS:
            raise TrustError(f"{source}: unknown critical CRL extension {ext.oid.dotted_string}")
    if scan.entry_problem:
        raise TrustError(f"{source}: {scan.entry_problem}")
    this_update = crl.last_update_utc.timestamp()
    if this_update > now + clock_skew:
        raise TrustError(f"{source}: thisUpdate {crl.last_update_utc.isoformat()} is in the "
                         f"future (more than {clock_skew:.0f} s ahead of this clock)")
    nu = crl.next_update_utc
    if nu is not None and nu < crl.last_update_utc:
        raise TrustError(f"{source}: nextUpdate is before thisUpdate")
    # RFC 5280 5.2.3: CRL issuers MUST include a CRLNumber and MUST mark it non-critical.
    numbers = [e for e in exts if e.oid == ExtensionOID.CRL_NUMBER]
    if not numbers:
        raise TrustError(f"{source}: no CRLNumber extension (RFC 5280 5.2.3 requires one)")
    if numbers[0].critical:
        raise TrustError(f"{source}: CRLNumber marked critical (RFC 5280 5.2.3 forbids it)")
    value = numbers[0].value
    number = value.crl_number if isinstance(value, x509.CRLNumber) else None
    return Checked(scan, signer, _scope(crl, source), number)


def _sorted_keys(scan: CrlScan) -> bytes:
    if not scan.keys:
        return b""
    arr = np.frombuffer(scan.keys, dtype=f"S{scan.width}").copy()
    arr.sort()  # equal-width byte strings sort in memcmp order (checked by the tests)
    return arr.tobytes()


class RevocationStore:
    """The installed CRLs, one per (issuer, scope); persisted in `directory` (None: memory)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # serialises installs; lookups never take it
        # (issuer key, scope, signer key): a CRL belongs to the key that signed it, so a CA's
        # old and new keys (rollover) or a separate CRL-signing key each keep their own.
        self._indexes: dict[tuple[str, str, str], CrlIndex] = {}
        self._by_name: dict[DnKey, list[CrlIndex]] = {}
        self.generation = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            for f in sorted(directory.glob("*.idx")):
                try:
                    idx = _load(f)
                except (OSError, ValueError, KeyError, TrustError) as e:
                    log.error("revocation index %s unusable, ignored: %s", f, e)
                    continue
                self._indexes[_store_key(idx)] = idx
        self._by_name = _by_name(self._indexes)

    @property
    def trusted_time(self) -> float:
        """The newest thisUpdate of any installed CRL: the clock must not be behind it."""
        return max((i.this_update for i in self._indexes.values()), default=0.0)

    def all(self) -> list[CrlIndex]:
        return list(self._indexes.values())

    def for_issuer(self, issuer: bytes) -> list[CrlIndex]:
        """The CRLs whose issuer name is exactly this DER."""
        return [i for i in self._indexes.values() if i.issuer == issuer]

    def for_name(self, issuer: DnKey) -> list[CrlIndex]:
        """The CRLs whose issuer name matches (RFC 5280 7.1) the prepared name `issuer`."""
        return self._by_name.get(issuer, [])

    def ingest(self, data: bytes, signers: Sequence[x509.Certificate], *, now: float,
               clock_skew: float = 300.0, source: str = "CRL",
               progress: Progress | None = None) -> CrlIndex:
        """Verify `data` and install it; return the index in use afterwards.

        Raises TrustError with a reason if the CRL is unusable or older than the one in use;
        the index in use is then untouched. Re-ingesting the CRL in use is a no-op.
        """
        checked = check_crl(data, signers, now=now, clock_skew=clock_skew, source=source,
                            progress=progress)
        crl = checked.scan.skeleton
        issuer = crl.issuer.public_bytes()
        issuer_key = dn_key(crl.issuer, issuer)
        signer_key = key_id(checked.signer)
        key = (json.dumps(key_to_json(issuer_key)), checked.scope.key, signer_key)
        digest = hashlib.sha256(data).hexdigest()
        this_update = crl.last_update_utc.timestamp()
        current = self._indexes.get(key)
        if current is not None:
            if current.sha256 == digest:
                return current
            older = (checked.number <= current.number
                     if checked.number is not None and current.number is not None
                     else this_update <= current.this_update)
            if older:
                raise TrustError(f"{source}: not newer than the CRL in use for "
                                 f"{crl.issuer.rfc4514_string()} (number {checked.number} vs "
                                 f"{current.number}, thisUpdate {crl.last_update_utc.isoformat()})")
        nu = crl.next_update_utc
        meta: dict[str, object] = {
            "issuer": base64.b64encode(issuer).decode(),
            "issuer_text": crl.issuer.rfc4514_string(),
            "issuer_key": key_to_json(issuer_key),
            "signer": base64.b64encode(checked.signer.public_bytes(Encoding.DER)).decode(),
            "signer_key_id": signer_key,
            "this_update": this_update,
            "next_update": nu.timestamp() if nu else None,
            "number": str(checked.number) if checked.number is not None else None,
            "width": checked.scan.width,
            "count": checked.scan.count,
            "positives": len(checked.scan.keys) // checked.scan.width,
            "negatives": [str(n) for n in sorted(checked.scan.negatives)],
            "scope": {"only_user": checked.scope.only_user, "only_ca": checked.scope.only_ca,
                      "dp_names": list(checked.scope.dp_names)},
            "source": source,
            "sha256": digest,
        }
        blob = _sorted_keys(checked.scan)
        with self._lock:
            if self.directory is None:
                idx = CrlIndex(None, meta, blob, 0)
            else:
                name = hashlib.sha256(issuer + checked.scope.key.encode()
                                      + signer_key.encode()).hexdigest()[:24]
                idx = _write(self.directory / f"{name}.idx", meta, blob)
            indexes = dict(self._indexes)
            old = indexes.get(key)
            indexes[key] = idx
            self._by_name = _by_name(indexes)
            self._indexes = indexes  # the swap: one assignment
            self.generation += 1
        if old is not None and old.path != idx.path:
            old.close()
        del checked, blob
        _release_free_memory()
        return idx


def _store_key(idx: CrlIndex) -> tuple[str, str, str]:
    return json.dumps(key_to_json(idx.issuer_key)), idx.scope.key, idx.signer_key_id


def _by_name(indexes: dict[tuple[str, str, str], CrlIndex]) -> dict[DnKey, list[CrlIndex]]:
    out: dict[DnKey, list[CrlIndex]] = {}
    for idx in indexes.values():
        out.setdefault(idx.issuer_key, []).append(idx)
    return out


def _release_free_memory() -> None:
    """Hand the ingest's freed buffers back to the OS. glibc keeps freed large blocks in the
    heap once its dynamic mmap threshold has risen; on a small box that is tens of MB held for
    nothing after a million-entry CRL. No-op where malloc_trim does not exist."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _write(path: Path, meta: dict[str, object], blob: bytes) -> CrlIndex:
    header = json.dumps(meta, separators=(",", ":")).encode()
    offset = len(MAGIC) + 4 + len(header)
    pad = (-offset) % 16
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(4, "big") + header + b"\x00" * pad)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return _load(path)


def _load(path: Path) -> CrlIndex:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC) + 4:
            raise TrustError(f"{path}: truncated index")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if mm[: len(MAGIC)] != MAGIC:
        mm.close()
        raise TrustError(f"{path}: not a Portvakt revocation index")
    hlen = int.from_bytes(mm[len(MAGIC) : len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    meta = json.loads(mm[start : start + hlen])
    offset = start + hlen + ((-(start + hlen)) % 16)
    if offset + int(meta["positives"]) * int(meta["width"]) != size:
        mm.close()
        raise TrustError(f"{path}: index size does not match its header")
    return CrlIndex(path, meta, mm, offset)


def iso_time(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def crl_status(idx: CrlIndex, now: float, grace: float) -> dict[str, Any]:
    """A CRL's age and freshness, as the CLI and the dashboard show it."""
    state = "fresh"
    if idx.next_update is not None and now > idx.next_update:
        state = "in-grace" if now <= idx.next_update + grace else "stale"
    return {"issuer": idx.issuer_text, "number": idx.number, "entries": idx.count,
            "this_update": iso_time(idx.this_update), "next_update": iso_time(idx.next_update),
            "age_s": round(now - idx.this_update),
            "until_next_update_s": (round(idx.next_update - now)
                                    if idx.next_update is not None else None),
            "state": state, "source": idx.source}
