"""Offline certificate path validation (RFC 5280, the subset a physical-access validator needs)
and the PKI-CAK proof check. Pure over immutable inputs plus the revocation store.

`TrustStore.validate_der(chain, at)` returns `Validated` (identity, profile, revocation status
good | stale | unknown, clock trust) or `Rejection` (reason code, detail, position in the path).
Revocation status is returned, not acted on: each door applies its own stance.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ExtensionOID

from gateway.domain import Identity, ProofScheme
from gateway.trust.identity import extract_identity
from gateway.trust.names import check_name_constraints, has_policy_mappings
from gateway.trust.revocation import RevocationStore

MAX_PATH = 8
CACHE_LIMIT = 50_000
KNOWN_CERT_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.CERTIFICATE_POLICIES, ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.INHIBIT_ANY_POLICY, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.POLICY_MAPPINGS,
}


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


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a code: revoked, expired, untrusted-issuer, proof-failed, ...
    detail: str
    position: int = 0  # 0 = the presented certificate, 1 = its issuer, ...


@dataclass(frozen=True, slots=True)
class PathOk:
    """A built path whose static checks passed (signatures, extensions, constraints)."""

    path: tuple[x509.Certificate, ...]
    is_ca: tuple[bool, ...]
    not_before: float
    not_after: float


@dataclass(frozen=True, slots=True)
class _Cached:
    path: PathOk | Rejection
    expires: float
    generation: int


def _name(c: x509.Certificate) -> str:
    return c.subject.rfc4514_string()


@dataclass
class TrustStore:
    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    revocation: RevocationStore
    profiles: tuple[CredentialProfile, ...]
    clock_skew: float = 300.0
    crl_grace: float = 0.0
    extra_trusted_time: float = 0.0  # e.g. the newest policy issue time accepted
    _by_subject: dict[bytes, list[x509.Certificate]] = field(default_factory=dict, repr=False)
    _cache: dict[bytes, _Cached] = field(default_factory=dict, repr=False)
    _verified: set[tuple[bytes, bytes]] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, *, anchors: Sequence[x509.Certificate],
               intermediates: Sequence[x509.Certificate] = (),
               revocation: RevocationStore | None = None,
               profiles: Sequence[CredentialProfile] = (), clock_skew: float = 300.0,
               crl_grace: float = 0.0) -> TrustStore:
        return cls(tuple(anchors), tuple(intermediates), revocation or RevocationStore(None),
                   tuple(profiles), clock_skew, crl_grace)

    def __post_init__(self) -> None:
        for c in (*self.anchors, *self.intermediates):
            self._by_subject.setdefault(c.subject.public_bytes(), []).append(c)
        self._anchor_set = {a.fingerprint(hashes.SHA256()) for a in self.anchors}

    @property
    def trusted_time(self) -> float:
        return max(self.revocation.trusted_time, self.extra_trusted_time)

    def signers(self) -> list[x509.Certificate]:
        """Certificates that may sign CRLs (subject to keyUsage, checked at ingest)."""
        return [*self.anchors, *self.intermediates]

    # --- path building and static checks --------------------------------------------------
    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return cert.fingerprint(hashes.SHA256()) in self._anchor_set

    def _signed_by(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        key = (cert.fingerprint(hashes.SHA256()), issuer.fingerprint(hashes.SHA256()))
        if key in self._verified:
            return True
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if len(self._verified) < CACHE_LIMIT:
            self._verified.add(key)
        return True

    def build_path(self, leaf: x509.Certificate,
                   extra: Sequence[x509.Certificate] = ()) -> list[x509.Certificate] | Rejection:
        """Leaf first, anchor last; each link's signature verified."""
        path = [leaf]
        cert = leaf
        while not self._is_anchor(cert):
            if len(path) > MAX_PATH:
                return Rejection("path-too-long", f"no trust anchor within {MAX_PATH} "
                                                  "certificates", len(path) - 1)
            candidates = [*self._by_subject.get(cert.issuer.public_bytes(), []),
                          *(c for c in extra if c.subject == cert.issuer)]
            issuer = next((c for c in candidates if c != cert and c not in path
                           and self._signed_by(cert, c)), None)
            if issuer is None:
                if candidates:
                    return Rejection("bad-signature", f"the signature on {_name(cert)} does not "
                                     f"verify with any key of {cert.issuer.rfc4514_string()}",
                                     len(path) - 1)
                return Rejection("untrusted-issuer", f"{_name(cert)} is issued by "
                                 f"{cert.issuer.rfc4514_string()}, which is not trusted",
                                 len(path) - 1)
            path.append(issuer)
            cert = issuer
        return path

    def _static_checks(self, chain: Sequence[x509.Certificate]) -> PathOk | Rejection:
        built = self.build_path(chain[0], chain[1:])
        if isinstance(built, Rejection):
            return built
        path = built
        is_ca = []
        for pos, cert in enumerate(path):
            r = _check_extensions(cert, pos, path)
            if isinstance(r, Rejection):
                return r
            is_ca.append(r)
        nc = check_name_constraints(path)
        if nc is not None:
            return Rejection("name-constraints", nc[1], nc[0])
        for pos, cert in enumerate(path):
            if has_policy_mappings(cert):
                return Rejection("policy-mapping", f"{_name(cert)} maps certificate policies; "
                                 "policy mapping is not supported", pos)
        nb = max(c.not_valid_before_utc.timestamp() for c in path)
        na = min(c.not_valid_after_utc.timestamp() for c in path)
        return PathOk(tuple(path), tuple(is_ca), nb, na)

    def check_path(self, chain_der: Sequence[bytes], at: float
                   ) -> tuple[PathOk, str, float | None] | Rejection:
        """Path validation without profiles: (path, revocation status, stale age) or Rejection."""
        leaf_key = hashlib.sha256(chain_der[0]).digest()
        gen = self.revocation.generation
        hit = self._cache.get(leaf_key)
        if hit is not None and hit.generation == gen and at < hit.expires:
            static = hit.path
        else:
            try:
                chain = [x509.load_der_x509_certificate(d) for d in chain_der]
            except ValueError as e:
                return Rejection("malformed", f"certificate does not parse: {e}")
            static = self._static_checks(chain)
            expires = static.not_after if isinstance(static, PathOk) else at + 60
            if isinstance(static, PathOk):
                for pos in range(len(static.path) - 1):
                    for idx in self.revocation.for_issuer(static.path[pos + 1].subject.public_bytes()):
                        if idx.next_update is not None:
                            expires = min(expires, idx.next_update + self.crl_grace)
            with self._lock:
                if len(self._cache) >= CACHE_LIMIT:
                    self._cache.clear()
                self._cache[leaf_key] = _Cached(static, expires, gen)
        if isinstance(static, Rejection):
            return static
        for pos, cert in enumerate(static.path):
            if at < cert.not_valid_before_utc.timestamp():
                return Rejection("not-yet-valid", f"{_name(cert)} is valid from "
                                 f"{cert.not_valid_before_utc.isoformat()}", pos)
            if at > cert.not_valid_after_utc.timestamp():
                return Rejection("expired", f"{_name(cert)} expired "
                                 f"{cert.not_valid_after_utc.isoformat()}", pos)
        status, age = "good", None
        for pos in range(len(static.path) - 1):
            cert, issuer = static.path[pos], static.path[pos + 1]
            indexes = [i for i in self.revocation.for_issuer(issuer.subject.public_bytes())
                       if i.scope.covers(cert, static.is_ca[pos])]
            if not indexes:
                status = "unknown"
                continue
            serial = cert.serial_number
            for idx in indexes:
                if idx.contains(serial):
                    return Rejection("revoked", f"{_name(cert)} (serial {serial:X}) is revoked "
                                     f"on the CRL of {idx.issuer_text}", pos)
            freshest = max(indexes, key=lambda i: i.this_update)
            if freshest.next_update is not None and at > freshest.next_update + self.crl_grace:
                late = at - freshest.next_update
                if status != "unknown":
                    status = "stale"
                    age = max(age or 0.0, late)
        return static, status, age

    def validate_der(self, chain_der: Sequence[bytes], at: float,
                     profile: str | None = None) -> Validated | Rejection:
        """Validate a presented chain (DER, presented certificate first) at POSIX time `at`."""
        checked = self.check_path(chain_der, at)
        if isinstance(checked, Rejection):
            return checked
        path, status, age = checked
        chosen = self.match_profile(path.path, profile)
        if isinstance(chosen, Rejection):
            return chosen
        leaf = path.path[0]
        key = extract_identity(leaf, chosen.identity_source)
        if key is None:
            return Rejection("no-identity", f"certificate carries no {chosen.identity_source} "
                                            "identity", 0)
        ident = Identity(key, _name(leaf), leaf.fingerprint(hashes.SHA256()).hex(),
                         leaf.not_valid_after_utc.timestamp())
        behind = at < self.trusted_time - self.clock_skew
        return Validated(ident, chosen.name, status, age, behind)

    def validate(self, chain: Sequence[x509.Certificate], at: float,
                 profile: str | None = None) -> Validated | Rejection:
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.validate_der([c.public_bytes(Encoding.DER) for c in chain], at, profile)

    def leaf(self, chain_der: Sequence[bytes]) -> x509.Certificate | None:
        """The parsed presented certificate, from the path cache when it is there."""
        hit = self._cache.get(hashlib.sha256(chain_der[0]).digest())
        if hit is not None and isinstance(hit.path, PathOk):
            return hit.path.path[0]
        try:
            return x509.load_der_x509_certificate(chain_der[0])
        except ValueError:
            return None

    def match_profile(self, path: Sequence[x509.Certificate],
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
                reasons.append(f"{p.name}: issuer {_name(path[1])} is not allowed")
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


def _check_extensions(cert: x509.Certificate, pos: int,
                      path: list[x509.Certificate]) -> bool | Rejection:
    """Per-certificate static checks; returns whether the certificate is a CA."""
    try:
        exts = cert.extensions
    except x509.DuplicateExtension as e:
        return Rejection("malformed", f"{_name(cert)} has a duplicate extension "
                                      f"{e.oid.dotted_string}", pos)
    except ValueError as e:
        return Rejection("malformed", f"{_name(cert)}: malformed extensions: {e}", pos)
    for ext in exts:
        if ext.critical and ext.oid not in KNOWN_CERT_EXTENSIONS:
            return Rejection("critical-extension", f"{_name(cert)} has an unknown critical "
                                                   f"extension {ext.oid.dotted_string}", pos)
    ku = None
    bc = None
    with contextlib.suppress(x509.ExtensionNotFound):
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    with contextlib.suppress(x509.ExtensionNotFound):
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    is_ca = bool(bc is not None and bc.ca)
    if pos == 0:
        if ku is not None and not ku.digital_signature:
            return Rejection("key-usage", "the card-authentication key lacks digitalSignature",
                             pos)
        return is_ca
    if not is_ca:
        return Rejection("not-a-ca", f"{_name(cert)} issues certificates but is not a CA "
                                     "(basicConstraints)", pos)
    if ku is not None and not ku.key_cert_sign:
        return Rejection("key-usage", f"{_name(cert)} lacks keyCertSign", pos)
    if bc is not None and bc.path_length is not None:
        # Non-self-issued intermediates below this CA, leaf excluded (RFC 5280 6.1.4 (l)).
        below = sum(1 for c in path[1:pos] if c.subject != c.issuer)
        if below > bc.path_length:
            return Rejection("path-length", f"{_name(cert)} allows {bc.path_length} CA(s) "
                                            f"below it, the path has {below}", pos)
    return True


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
