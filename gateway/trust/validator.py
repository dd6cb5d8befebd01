"""Offline certificate path validation (RFC 5280) and the PKI-CAK proof check. Pure over
immutable inputs plus the revocation store.

`TrustStore.validate_der(chain, at)` returns `Validated` (identity, profile, revocation status
good | stale | unknown, clock trust) or `Rejection` (reason code, detail, position in the path).
Revocation status is returned, not acted on: each door applies its own stance
(`gateway.trust.stance`), and so does `portvakt verify`.

Path building (`gateway.trust.paths`) tries every candidate issuer (RFC 4158: bounded work,
shortest valid path first), so a cross-signed CA or a rolled-over root validates through
whichever certificate works. Names are matched as RFC 5280 7.1 says (`gateway.trust.dn`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.domain import Identity, ProofScheme
from gateway.trust.certinfo import KNOWN_CERT_EXTENSIONS, CertInfo
from gateway.trust.identity import extract_identity
from gateway.trust.paths import MAX_PATH, PathBuilder, PathOk
from gateway.trust.revocation import CrlIndex, RevocationStore
from gateway.trust.verdicts import Rejection

__all__ = ["KNOWN_CERT_EXTENSIONS", "MAX_PATH", "CredentialProfile", "PathOk", "Rejection",
           "TrustStore", "Validated", "verify_proof"]

CACHE_LIMIT = 50_000
MAX_SIGNER_DEPTH = 2  # a CRL signer's own CRL may be signed by another signer, no deeper


@dataclass(frozen=True, slots=True)
class CredentialProfile:
    """Which certificates may open anything: issuers allowed, EKUs and policies required.

    `identity_source` is upn, email, serial, cn or `oid:<dotted>` (a subject attribute)."""

    name: str
    issuers: frozenset[bytes] = frozenset()  # DER subject names; empty = any trusted issuer
    required_eku: frozenset[str] = frozenset()
    required_policies: frozenset[str] = frozenset()
    identity_source: str = "upn"


@dataclass(frozen=True, slots=True)
class Validated:
    identity: Identity
    profile: str
    revocation: str  # "good" | "stale" | "unknown"
    crl_age: float | None = None  # seconds past nextUpdate (+ grace) when stale
    clock_behind: bool = False  # the clock is behind the newest trusted time seen


def _reject(problem: tuple[str, str], position: int = 0) -> Rejection:
    return Rejection(problem[0], problem[1], position)


@dataclass
class TrustStore:
    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    revocation: RevocationStore
    profiles: tuple[CredentialProfile, ...]
    clock_skew: float = 300.0
    crl_grace: float = 0.0
    extra_trusted_time: float = 0.0  # e.g. the newest policy issue time accepted
    # Certificates given to the store that it could not use, with why (subject text, reason).
    set_aside: tuple[tuple[str, tuple[str, str]], ...] = ()
    _cache: dict[bytes, tuple[tuple[PathOk, ...] | Rejection, CertInfo | None]] = field(
        default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @classmethod
    def create(cls, *, anchors: Sequence[x509.Certificate],
               intermediates: Sequence[x509.Certificate] = (),
               revocation: RevocationStore | None = None,
               profiles: Sequence[CredentialProfile] = (), clock_skew: float = 300.0,
               crl_grace: float = 0.0,
               set_aside: Sequence[tuple[str, tuple[str, str]]] = ()) -> TrustStore:
        return cls(tuple(anchors), tuple(intermediates), revocation or RevocationStore(None),
                   tuple(profiles), clock_skew, crl_grace, set_aside=tuple(set_aside))

    def __post_init__(self) -> None:
        self.paths = PathBuilder([CertInfo.of(a) for a in self.anchors],
                                 [CertInfo.of(c) for c in self.intermediates], self.set_aside)

    @property
    def trusted_time(self) -> float:
        return max(self.revocation.trusted_time, self.extra_trusted_time)

    def signers(self) -> list[x509.Certificate]:
        """Certificates that may sign CRLs (subject to keyUsage, checked at ingest)."""
        return [*self.anchors, *self.intermediates]

    # --- the static part: paths whose checks do not depend on the time ------------------------
    def _static(self, chain_der: Sequence[bytes]) -> tuple[tuple[PathOk, ...] | Rejection,
                                                           CertInfo | None]:
        leaf_key = hashlib.sha256(chain_der[0]).digest()
        hit = self._cache.get(leaf_key)
        if hit is not None and len(chain_der) == 1:
            return hit
        leaf = CertInfo.read(chain_der[0])
        if not isinstance(leaf, CertInfo):
            result: tuple[tuple[PathOk, ...] | Rejection, CertInfo | None] = (_reject(leaf), None)
        else:
            extra = []
            for der in chain_der[1:]:
                info = CertInfo.read(der)
                if isinstance(info, CertInfo) and info.problem is None:
                    extra.append(info)
            result = (self.paths.build(leaf, extra), leaf)
        if len(chain_der) == 1:
            with self._lock:
                if len(self._cache) >= CACHE_LIMIT:
                    self._cache.clear()
                self._cache[leaf_key] = result
        return result

    # --- the dynamic part: validity and revocation at a time ----------------------------------
    def check_path(self, chain_der: Sequence[bytes], at: float
                   ) -> tuple[PathOk, str, float | None] | Rejection:
        """Path validation without profiles: (path, revocation status, stale age) or Rejection.

        Every statically valid path is tried, shortest first; the first whose validity and
        revocation are good wins, else the first that is not refused, else the first refusal."""
        if not chain_der:
            return Rejection("malformed", "no certificate was presented")
        static, _ = self._static(chain_der)
        if isinstance(static, Rejection):
            return static
        ku = static[0].infos[0].key_usage
        if ku is not None and not ku.digital_signature:
            return Rejection("key-usage", "the card-authentication key lacks digitalSignature", 0)
        fallback: tuple[PathOk, str, float | None] | None = None
        refusal: Rejection | None = None
        for path in static:
            r = self._dynamic(path, at)
            if isinstance(r, Rejection):
                refusal = refusal or r
                continue
            if r[0] == "good":
                return path, r[0], r[1]
            fallback = fallback or (path, r[0], r[1])
        if fallback is not None:
            return fallback
        assert refusal is not None
        return refusal

    def _dynamic(self, path: PathOk, at: float) -> tuple[str, float | None] | Rejection:
        for pos, info in enumerate(path.infos):
            if at < info.not_before:
                return Rejection("not-yet-valid", f"{info.name} is valid from "
                                 f"{info.cert.not_valid_before_utc.isoformat()}", pos)
            if at > info.not_after:
                return Rejection("expired", f"{info.name} expired "
                                 f"{info.cert.not_valid_after_utc.isoformat()}", pos)
        status, age = "good", None
        anchor = path.infos[-1]
        for pos in range(len(path.infos) - 1):
            info, issuer = path.infos[pos], path.infos[pos + 1]
            r = self._revocation_of(info, issuer, path.is_ca[pos], anchor, at)
            if isinstance(r, Rejection):
                return Rejection(r.reason, r.detail, pos)
            s, late = r
            if s == "unknown":
                status = "unknown"
            elif s == "stale" and status != "unknown":
                status = "stale"
                age = max(age or 0.0, late or 0.0)
        return status, (age if status == "stale" else None)

    def _revocation_of(self, info: CertInfo, issuer: CertInfo, is_ca: bool, anchor: CertInfo,
                       at: float) -> tuple[str, float | None] | Rejection:
        """(good | stale | unknown, seconds late) from the usable CRLs covering `info`, or the
        revocation. A CRL is usable when the key that signed it is the issuer's, or belongs to
        a certificate that itself validates to the same trust anchor (RFC 5280 6.3.3 (f))."""
        covering = [i for i in self.revocation.for_name(info.issuer_key)
                    if i.scope.covers(info.cert, is_ca, info.distribution_points)]
        usable: list[CrlIndex] = []
        late_signer = 0.0
        for idx in covering:
            ok = self._signer_usable(idx, issuer, anchor, at)
            if ok is None:
                continue
            usable.append(idx)
            late_signer = max(late_signer, ok)
        if not usable:
            return "unknown", None
        serial = info.serial
        for idx in usable:
            if idx.contains(serial):
                return Rejection("revoked", f"{info.name} (serial {serial:X}) is revoked on the "
                                 f"CRL of {idx.issuer_text}")
        freshest = max(usable, key=lambda i: i.this_update)
        if freshest.next_update is not None and at > freshest.next_update + self.crl_grace:
            return "stale", at - freshest.next_update
        if late_signer:
            return "stale", late_signer
        return "good", None

    def _signer_usable(self, idx: CrlIndex, issuer: CertInfo, anchor: CertInfo,
                       at: float) -> float | None:
        """None when the CRL's signer is not usable; else how late (seconds) its own CRLs
        are (0.0 when fresh)."""
        if not idx.signer_key_id or idx.signer_key_id == self.paths.key_id(issuer):
            return 0.0
        if idx.signer_der is None:
            return None
        depth = getattr(self._local, "depth", 0)
        busy: set[bytes] = getattr(self._local, "busy", set())
        signer_fp = hashlib.sha256(idx.signer_der).digest()
        if depth >= MAX_SIGNER_DEPTH or signer_fp in busy:
            return None
        self._local.depth, self._local.busy = depth + 1, busy | {signer_fp}
        try:
            static, _ = self._static([idx.signer_der])
            if isinstance(static, Rejection):
                return None
            for path in static:
                if path.infos[-1].fp != anchor.fp:
                    continue
                r = self._dynamic(path, at)
                if isinstance(r, Rejection) or r[0] == "unknown":
                    continue
                return r[1] or 0.0
            return None
        finally:
            self._local.depth, self._local.busy = depth, busy

    # --- the whole verdict --------------------------------------------------------------------
    def validate_der(self, chain_der: Sequence[bytes], at: float,
                     profile: str | None = None) -> Validated | Rejection:
        """Validate a presented chain (DER, presented certificate first) at POSIX time `at`."""
        checked = self.check_path(chain_der, at)
        if isinstance(checked, Rejection):
            return checked
        path, status, age = checked
        chosen = self.match_profile(path.infos, profile)
        if isinstance(chosen, Rejection):
            return chosen
        leaf = path.path[0]
        key = extract_identity(leaf, chosen.identity_source)
        if key is None:
            return Rejection("no-identity", f"certificate carries no {chosen.identity_source} "
                                            "identity", 0)
        ident = Identity(key, path.infos[0].name, path.infos[0].fp.hex(), path.infos[0].not_after)
        return Validated(ident, chosen.name, status, age, self.clock_behind(at))

    def clock_behind(self, at: float) -> bool:
        """Whether `at` is behind the newest trusted time seen (beyond the allowed skew)."""
        return at < self.trusted_time - self.clock_skew

    def validate(self, chain: Sequence[x509.Certificate], at: float,
                 profile: str | None = None) -> Validated | Rejection:
        return self.validate_der([c.public_bytes(Encoding.DER) for c in chain], at, profile)

    def leaf_key(self, chain_der: Sequence[bytes]) -> object | None:
        """The presented certificate's public key, from the path cache when it is there."""
        hit = self._cache.get(hashlib.sha256(chain_der[0]).digest())
        info = hit[1] if hit is not None else None
        if info is None:
            leaf = self.leaf(chain_der)
            info = None if leaf is None else CertInfo.of(leaf)
        key: object | None = None if info is None else info.public_key
        return key

    def leaf(self, chain_der: Sequence[bytes]) -> x509.Certificate | None:
        """The parsed presented certificate, from the path cache when it is there."""
        hit = self._cache.get(hashlib.sha256(chain_der[0]).digest())
        if hit is not None and hit[1] is not None:
            return hit[1].cert
        try:
            return x509.load_der_x509_certificate(chain_der[0])
        except ValueError:
            return None

    def match_profile(self, path: Sequence[x509.Certificate] | Sequence[CertInfo],
                      wanted: str | None) -> CredentialProfile | Rejection:
        """The first configured profile (or the one named `wanted`) the path's leaf meets."""
        infos = [p if isinstance(p, CertInfo) else CertInfo.of(p) for p in path[:2]]
        ekus = infos[0].eku
        policies = infos[0].policies
        issuer = infos[1].subject_der if len(infos) > 1 else b""
        reasons = []
        for p in self.profiles:
            if wanted is not None and p.name != wanted:
                continue
            if p.issuers and issuer not in p.issuers:
                reasons.append(f"{p.name}: issuer {infos[1].name} is not allowed")
                continue
            if not p.required_eku <= ekus:
                reasons.append(f"{p.name}: lacks extended key usage "
                               f"{', '.join(sorted(p.required_eku - ekus))}")
                continue
            if not p.required_policies <= policies:
                reasons.append(f"{p.name}: lacks certificate policy "
                               f"{', '.join(sorted(p.required_policies - policies))}")
                continue
            return p
        detail = "; ".join(reasons) or (f"no credential profile named {wanted}" if wanted
                                        else "no credential profile is configured")
        return Rejection("no-profile", detail, 0)


def verify_proof(cert: x509.Certificate | None, challenge: bytes, signature: bytes,
                 scheme: ProofScheme, key: object | None = None) -> bool:
    """Whether `signature` over our `challenge` verifies with the certificate's key (`key`:
    that key when the caller has it loaded already)."""
    try:
        if key is None:
            if cert is None:
                return False
            key = cert.public_key()
        if scheme is ProofScheme.ECDSA_PREHASHED and isinstance(key, ec.EllipticCurvePublicKey):
            h: hashes.HashAlgorithm = hashes.SHA384() if len(challenge) == 48 else hashes.SHA256()
            if len(challenge) != h.digest_size:
                return False
            key.verify(signature, challenge, ec.ECDSA(utils.Prehashed(h)))
            return True
        if scheme is ProofScheme.RSA_PKCS1_SHA256 and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return False
