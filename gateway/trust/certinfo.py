"""One parsed certificate and everything path validation reads from it, computed once.

`CertInfo.read(der)` never raises: a certificate that does not parse, or whose extensions do not,
carries a `problem` (a reason code and detail) that the validator turns into a rejection.
`signature_problem` checks a certificate's signature with a candidate issuer's key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from gateway.trust.dn import DnKey, dn_key

KNOWN_CERT_EXTENSIONS = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.CERTIFICATE_POLICIES, ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.INHIBIT_ANY_POLICY, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.POLICY_MAPPINGS,
})
# DSA: id-dsa (1.2.840.10040.4.1), dsa-with-sha1 (.4.3), dsa-with-sha224/256 (2.16.840.1.101.3.4.3.1/2)
_DSA_OID_DER = (bytes.fromhex("06072a8648ce380401"), bytes.fromhex("06072a8648ce380403"),
                bytes.fromhex("0609608648016503040301"), bytes.fromhex("0609608648016503040302"))
DSA_SIGNATURE_OIDS = frozenset({"1.2.840.10040.4.3", "2.16.840.1.101.3.4.3.1",
                                "2.16.840.1.101.3.4.3.2"})
DSA_REASON = ("DSA is not accepted (FIPS 186-5 no longer approves DSA signatures; PIV cards and "
              "CAs use RSA or ECDSA)")


def mentions_dsa(der: bytes) -> bool:
    """Whether DER bytes name a DSA algorithm: explains why a certificate did not parse."""
    return any(oid in der for oid in _DSA_OID_DER)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


@dataclass(eq=False)
class CertInfo:
    cert: x509.Certificate
    der: bytes
    fp: bytes  # SHA-256 of the DER
    issuer_der: bytes
    serial: int
    not_before: float
    not_after: float
    problem: tuple[str, str] | None = None  # (reason code, detail): the certificate is unusable
    is_ca: bool = False
    path_length: int | None = None
    key_usage: x509.KeyUsage | None = None
    ski: bytes | None = None
    aki: bytes | None = None
    has_name_constraints: bool = False
    policy_mappings: bool = False
    eku: frozenset[str] = frozenset()
    policies: frozenset[str] = frozenset()
    distribution_points: tuple[str, ...] = ()
    name_constraints_critical: bool | None = None  # None: no nameConstraints extension
    aia_critical: bool = False
    profile: tuple[str, ...] = ()  # RFC 5280 profile rules this certificate breaks (see rules.py)

    @classmethod
    def read(cls, der: bytes) -> CertInfo | tuple[str, str]:
        """The certificate in `der`, or (reason code, detail) when it cannot be read at all."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as e:
            if mentions_dsa(der):
                return "unsupported-algorithm", f"certificate with a DSA key or signature: {DSA_REASON}"
            return "malformed", f"certificate does not parse: {e}"
        return cls.of(cert, der)

    @classmethod
    def of(cls, cert: x509.Certificate, der: bytes | None = None) -> CertInfo:
        """Never raises: reading problems land in `problem`."""
        if der is None:
            der = cert.public_bytes(Encoding.DER)
        try:
            info = cls(cert, der, hashlib.sha256(der).digest(), cert.issuer.public_bytes(),
                       cert.serial_number,
                       cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
        except (ValueError, TypeError, OverflowError) as e:
            info = cls(cert, der, hashlib.sha256(der).digest(), b"", 0, 0.0, 0.0,
                       ("malformed", f"certificate fields do not parse: {e}"))
            return info
        info._read_extensions()
        if info.problem is None:
            from gateway.trust.rules import profile_violations

            info.profile = profile_violations(info)
        return info

    def _read_extensions(self) -> None:
        cert = self.cert
        try:
            exts = cert.extensions
        except x509.DuplicateExtension as e:
            self.problem = ("malformed", f"{_name(cert)} has a duplicate extension "
                                         f"{e.oid.dotted_string}")
            return
        except (ValueError, TypeError) as e:
            self.problem = ("malformed", f"{_name(cert)}: malformed extensions: {e}")
            return
        try:
            for ext in exts:
                oid = ext.oid
                read = _READERS.get(oid)
                if read is not None:
                    read(self, ext.value, ext.critical)
                elif ext.critical:
                    self.problem = ("critical-extension", f"{_name(cert)} has an unknown critical "
                                                          f"extension {oid.dotted_string}")
                    return
        except (ValueError, TypeError) as e:
            self.problem = ("malformed", f"{_name(cert)}: malformed extension: {e}")

    @property
    def name(self) -> str:
        return _name(self.cert)

    @cached_property
    def subject_der(self) -> bytes:
        try:
            return self.cert.subject.public_bytes()
        except (ValueError, TypeError):
            return b""

    @cached_property
    def subject_key(self) -> DnKey:
        return dn_key(self.cert.subject, self.subject_der)

    @cached_property
    def issuer_key(self) -> DnKey:
        return dn_key(self.cert.issuer, self.issuer_der)

    @cached_property
    def self_issued(self) -> bool:
        return self.subject_der == self.issuer_der or self.subject_key == self.issuer_key

    @cached_property
    def public_key(self) -> Any:
        """The subject public key, or None when it cannot be loaded (an unsupported algorithm)."""
        try:
            return self.cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            return None

    @cached_property
    def uses_dsa(self) -> bool:
        return (isinstance(self.public_key, dsa.DSAPublicKey)
                or self.cert.signature_algorithm_oid.dotted_string in DSA_SIGNATURE_OIDS)


def signature_problem(cert: x509.Certificate, issuer: CertInfo) -> tuple[str, str] | None:
    """None when `cert`'s signature verifies with `issuer`'s key, else (reason code, detail):
    `unsupported-algorithm` for DSA or an algorithm we do not know, `bad-signature` otherwise."""
    key = issuer.public_key
    alg = cert.signature_algorithm_oid.dotted_string
    if alg in DSA_SIGNATURE_OIDS or isinstance(key, dsa.DSAPublicKey):
        return "unsupported-algorithm", f"{_name(cert)} is signed with DSA: {DSA_REASON}"
    if key is None:
        return "unsupported-algorithm", f"the key of {issuer.name} cannot be used"
    try:
        h = cert.signature_hash_algorithm
        params = cert.signature_algorithm_parameters
        if isinstance(key, rsa.RSAPublicKey):
            if h is None or not isinstance(params, padding.PSS | padding.PKCS1v15):
                return "bad-signature", f"{_name(cert)}: signature algorithm {alg} does not fit an RSA key"
            key.verify(cert.signature, cert.tbs_certificate_bytes, params, h)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return "bad-signature", f"{_name(cert)}: signature algorithm {alg} does not fit an EC key"
            key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return "unsupported-algorithm", f"the key type of {issuer.name} is not supported"
    except InvalidSignature:
        return "bad-signature", (f"the signature on {_name(cert)} does not verify with the key "
                                 f"of {issuer.name}")
    except UnsupportedAlgorithm as e:
        return "unsupported-algorithm", f"{_name(cert)}: {e}"
    except (ValueError, TypeError) as e:
        return "bad-signature", f"the signature on {_name(cert)} cannot be checked: {e}"
    return None


def key_identifiers_disagree(cert: CertInfo, issuer: CertInfo) -> bool:
    """Whether the certificate's authorityKeyIdentifier names another key than the issuer's
    subjectKeyIdentifier (both present): a hint for path building, never a verdict."""
    return cert.aki is not None and issuer.ski is not None and cert.aki != issuer.ski


# What validation reads from each extension it knows, by OID: (info, value, critical) -> None.
def _basic_constraints(info: CertInfo, v: Any, critical: bool) -> None:
    info.is_ca, info.path_length = v.ca, v.path_length


def _set(attribute: str, get: Any) -> Any:
    def read(info: CertInfo, v: Any, critical: bool) -> None:
        setattr(info, attribute, get(v))
    return read


def _name_constraints(info: CertInfo, v: Any, critical: bool) -> None:
    info.has_name_constraints, info.name_constraints_critical = True, critical


def _aia(info: CertInfo, v: Any, critical: bool) -> None:
    info.aia_critical = critical


def _nothing(info: CertInfo, v: Any, critical: bool) -> None:
    pass


_READERS: dict[x509.ObjectIdentifier, Any] = {
    ExtensionOID.BASIC_CONSTRAINTS: _basic_constraints,
    ExtensionOID.KEY_USAGE: _set("key_usage", lambda v: v),
    ExtensionOID.SUBJECT_KEY_IDENTIFIER: _set("ski", lambda v: v.digest),
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER: _set("aki", lambda v: v.key_identifier),
    ExtensionOID.NAME_CONSTRAINTS: _name_constraints,
    ExtensionOID.EXTENDED_KEY_USAGE: _set("eku", lambda v: frozenset(o.dotted_string for o in v)),
    ExtensionOID.CERTIFICATE_POLICIES: _set(
        "policies", lambda v: frozenset(p.policy_identifier.dotted_string for p in v)),
    ExtensionOID.CRL_DISTRIBUTION_POINTS: _set(
        "distribution_points",
        lambda v: tuple(str(n.value) for dp in v for n in (dp.full_name or []))),
    ExtensionOID.POLICY_MAPPINGS: _set("policy_mappings", lambda v: True),
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS: _aia,
    **dict.fromkeys(KNOWN_CERT_EXTENSIONS - {
        ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.CERTIFICATE_POLICIES, ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.POLICY_MAPPINGS, ExtensionOID.AUTHORITY_INFORMATION_ACCESS}, _nothing),
}
