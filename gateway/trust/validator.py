"""Offline certificate path validation (RFC 5280 subset for physical access) and PKI-CAK proof.

Pure over immutable inputs: `TrustStore.validate(chain, at)` returns `Validated` or `Rejection`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from gateway.domain import Identity, ProofScheme
from gateway.trust.identity import extract_identity
from gateway.trust.revocation import RevocationIndex

MAX_PATH = 8
KNOWN_CERT_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.CERTIFICATE_POLICIES, ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.INHIBIT_ANY_POLICY, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
}


@dataclass(frozen=True, slots=True)
class CredentialProfile:
    """Which certificates may open anything: issuers allowed, EKUs and policies required."""

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
    crl_age: float | None = None  # seconds past nextUpdate when stale


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a code: revoked, expired, untrusted-issuer, ...
    detail: str
    position: int = 0  # 0 = the presented certificate, 1 = its issuer, ...


@dataclass(frozen=True)
class TrustStore:
    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    revocation: RevocationIndex
    profiles: tuple[CredentialProfile, ...]
    clock_skew: float = 300.0
    crl_grace: float = 0.0
    allow_unknown_revocation: bool = False
    _by_subject: dict[bytes, list[x509.Certificate]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for c in (*self.anchors, *self.intermediates):
            self._by_subject.setdefault(c.subject.public_bytes(), []).append(c)

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return any(cert == a for a in self.anchors)

    def _issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        return self._by_subject.get(cert.issuer.public_bytes(), [])

    def build_path(self, leaf: x509.Certificate,
                   extra: Sequence[x509.Certificate] = ()) -> list[x509.Certificate] | Rejection:
        """Leaf first, anchor last; each link's signature verified."""
        path = [leaf]
        cert = leaf
        pool_extra = {c.subject.public_bytes(): c for c in extra}
        while not self._is_anchor(cert):
            if len(path) > MAX_PATH:
                return Rejection("path-too-long", f"no anchor within {MAX_PATH} certificates",
                                 len(path) - 1)
            candidates = list(self._issuers_of(cert))
            x = pool_extra.get(cert.issuer.public_bytes())
            if x is not None:
                candidates.append(x)
            issuer = None
            for cand in candidates:
                if cand == cert:
                    continue  # self-issued: keep looking for a different key
                try:
                    cert.verify_directly_issued_by(cand)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                issuer = cand
                break
            if issuer is None:
                why = ("bad-signature" if candidates else "untrusted-issuer")
                return Rejection(why, f"no trusted issuer verifies "
                                      f"{cert.subject.rfc4514_string()} (issuer "
                                      f"{cert.issuer.rfc4514_string()})", len(path) - 1)
            path.append(issuer)
            cert = issuer
        return path

    def validate(self, chain: Sequence[x509.Certificate], at: float,
                 profile: str | None = None) -> Validated | Rejection:
        """Validate `chain` (presented certificate first) at POSIX time `at`."""
        leaf = chain[0]
        built = self.build_path(leaf, chain[1:])
        if isinstance(built, Rejection):
            return built
        path = built
        for pos, cert in enumerate(path):
            r = _check_certificate(cert, pos, at, is_leaf=pos == 0, path=path)
            if r is not None:
                return r
        worst = "good"
        age: float | None = None
        for pos, cert in enumerate(path[:-1]):
            issuer = path[pos + 1]
            entry = self.revocation.entry(issuer.subject.public_bytes())
            if entry is None:
                if self.allow_unknown_revocation:
                    worst = "unknown"
                    continue
                return Rejection("revocation-unknown",
                                 f"no CRL for issuer {issuer.subject.rfc4514_string()}", pos)
            if entry.this_update > at + self.clock_skew:
                return Rejection("revocation-unknown", f"CRL {entry.source} is from the future",
                                 pos)
            if cert.serial_number in entry.serials:
                return Rejection("revoked", f"serial {cert.serial_number:X} is on "
                                            f"{entry.source}", pos)
            if entry.next_update is not None and at > entry.next_update:
                late = at - entry.next_update
                if late > self.crl_grace and worst != "unknown":
                    worst, age = "stale", max(age or 0.0, late)
        chosen = self._match_profile(path, profile)
        if isinstance(chosen, Rejection):
            return chosen
        key = extract_identity(leaf, chosen.identity_source)
        if key is None:
            return Rejection("no-identity", f"certificate carries no {chosen.identity_source} "
                                            f"identity", 0)
        ident = Identity(key, leaf.subject.rfc4514_string(),
                         hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest(),
                         leaf.not_valid_after_utc.timestamp())
        return Validated(ident, chosen.name, worst, age)

    def _match_profile(self, path: list[x509.Certificate],
                       wanted: str | None) -> CredentialProfile | Rejection:
        leaf = path[0]
        ekus = _ekus(leaf)
        policies = _policies(leaf)
        issuer = path[1].subject.public_bytes() if len(path) > 1 else b""
        reasons = []
        for p in self.profiles:
            if wanted is not None and p.name != wanted:
                continue
            if p.issuers and issuer not in p.issuers:
                reasons.append(f"{p.name}: issuer not allowed")
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


def _ekus(cert: x509.Certificate) -> frozenset[str]:
    try:
        return frozenset(o.dotted_string for o in
                         cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return frozenset()


def _policies(cert: x509.Certificate) -> frozenset[str]:
    try:
        return frozenset(p.policy_identifier.dotted_string for p in
                         cert.extensions.get_extension_for_class(x509.CertificatePolicies).value)
    except x509.ExtensionNotFound:
        return frozenset()


def _check_certificate(cert: x509.Certificate, pos: int, at: float, *, is_leaf: bool,
                       path: list[x509.Certificate]) -> Rejection | None:
    if at < cert.not_valid_before_utc.timestamp():
        return Rejection("not-yet-valid", f"{cert.subject.rfc4514_string()} is valid from "
                                          f"{cert.not_valid_before_utc.isoformat()}", pos)
    if at > cert.not_valid_after_utc.timestamp():
        return Rejection("expired", f"{cert.subject.rfc4514_string()} expired "
                                    f"{cert.not_valid_after_utc.isoformat()}", pos)
    try:
        exts = cert.extensions
    except ValueError as e:  # duplicate or malformed extensions
        return Rejection("malformed", f"{cert.subject.rfc4514_string()}: {e}", pos)
    for ext in exts:
        if ext.critical and ext.oid not in KNOWN_CERT_EXTENSIONS:
            return Rejection("critical-extension", f"unknown critical extension "
                                                   f"{ext.oid.dotted_string}", pos)
    ku = None
    with contextlib.suppress(x509.ExtensionNotFound):
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    if is_leaf:
        if ku is not None and not ku.digital_signature:
            return Rejection("key-usage", "card key lacks digitalSignature", pos)
        return None
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        return Rejection("not-a-ca", f"{cert.subject.rfc4514_string()} is not a CA", pos)
    if ku is not None and not ku.key_cert_sign:
        return Rejection("key-usage", f"{cert.subject.rfc4514_string()} lacks keyCertSign", pos)
    if bc.path_length is not None:
        # Non-self-issued intermediates below this CA (RFC 5280 6.1.4 (l)).
        below = sum(1 for c in path[1:pos] if c.subject != c.issuer)
        if below > bc.path_length:
            return Rejection("path-length", f"{cert.subject.rfc4514_string()} allows "
                                            f"{bc.path_length} CAs below it", pos)
    return None


def verify_proof(cert: x509.Certificate, challenge: bytes, signature: bytes,
                 scheme: ProofScheme) -> bool:
    """Whether `signature` over our `challenge` verifies with the certificate's key."""
    key = cert.public_key()
    try:
        if scheme is ProofScheme.ECDSA_PREHASHED and isinstance(key, ec.EllipticCurvePublicKey):
            h: hashes.HashAlgorithm = hashes.SHA384() if len(challenge) == 48 else hashes.SHA256()
            if len(challenge) != h.digest_size:
                return False
            key.verify(signature, challenge, ec.ECDSA(utils.Prehashed(h)))
            return True
        if scheme is ProofScheme.RSA_PKCS1_SHA256 and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError):
        return False
    return False
