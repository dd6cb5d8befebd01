"""A certificate factory for tests of the trust layer: chains, odd extensions and CRLs in a line each.

    root = Pki.root("Root", key="p384")
    ca = root.issue_ca("O=Acme,CN=Issuing", path_length=0,
                       name_constraints=name_constraints(permitted=[dn("O=Acme")]))
    alice = ca.issue_leaf("O=Acme,CN=alice", upn="alice@example.org")
    crl = ca.crl(revoked=[alice.serial], number=2)
    alice.path  # [alice, ca, root] certificates, leaf first

Names given as text are RFC 4514 strings (most specific RDN first, as OpenSSL prints them); text
without "=" is a bare common name. Keys: "p256", "p384", "rsa" (2048, PKCS#1 v1.5 signatures),
"rsa-pss" (the same RSA keys, RSASSA-PSS signatures) and "ed25519". RSA keys come from a small
pool shared by the session, because generating one takes a tenth of a second.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict, Unpack, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier

from gateway.pki_demo import PIV_CARD_AUTH_EKU
from gateway.rig.crlgen import encode_oid
from gateway.trust.identity import UPN_OID

__all__ = [
    "KEY_TYPES",
    "NOW",
    "PIV_CARD_AUTH_EKU",
    "UNKNOWN_EXTENSION_OID",
    "CertOptions",
    "Crl",
    "Issued",
    "KeyType",
    "Pki",
    "PrivateKey",
    "Revoked",
    "dn",
    "issuing_distribution_point",
    "key_usage",
    "name_constraints",
    "new_key",
    "policy_mappings",
    "unknown_extension",
]

KeyType = Literal["p256", "p384", "rsa", "rsa-pss", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
Extensions = Sequence[tuple[x509.ExtensionType, bool]]  # (value, critical)

# One instant for a test session, whole seconds (certificates carry no fractions).
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
UNKNOWN_EXTENSION_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1.1")  # a private arc nobody parses

_RSA_POOL_SIZE = 4
_rsa_pool: list[rsa.RSAPrivateKey] = []
_rsa_turn = itertools.count()


def new_key(key_type: KeyType) -> PrivateKey:
    """A private key of `key_type`: fresh for EC and Ed25519, the next of a small pool for RSA."""
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    turn = next(_rsa_turn) % _RSA_POOL_SIZE
    if turn >= len(_rsa_pool):
        _rsa_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _rsa_pool[turn]


def dn(text: str) -> x509.Name:
    """`"CN=alice,O=Acme"` (RFC 4514, most specific first) as a Name; `"alice"` is `CN=alice`."""
    return x509.Name.from_rfc4514_string(text if "=" in text else f"CN={text}")


_KEY_USAGE_FLAGS = ("digital_signature", "content_commitment", "key_encipherment",
                    "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                    "encipher_only", "decipher_only")


def key_usage(*flags: str) -> x509.KeyUsage:
    """KeyUsage with the named bits set, e.g. `key_usage("key_cert_sign", "crl_sign")`."""
    unknown = set(flags) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ValueError(f"unknown keyUsage bits {sorted(unknown)}; known: {_KEY_USAGE_FLAGS}")
    return x509.KeyUsage(*(f in flags for f in _KEY_USAGE_FLAGS))


def name_constraints(permitted: Iterable[x509.GeneralName | x509.Name] = (),
                     excluded: Iterable[x509.GeneralName | x509.Name] = ()) -> x509.NameConstraints:
    """NameConstraints from general names; a bare Name is a directoryName subtree."""
    def subtrees(names: Iterable[x509.GeneralName | x509.Name]) -> list[x509.GeneralName] | None:
        out = [x509.DirectoryName(n) if isinstance(n, x509.Name) else n for n in names]
        return out or None
    return x509.NameConstraints(permitted_subtrees=subtrees(permitted),
                                excluded_subtrees=subtrees(excluded))


def policy_mappings(*pairs: tuple[str, str]) -> x509.UnrecognizedExtension:
    """A policyMappings extension (cryptography has no class for it): (issuer, subject) policy OIDs."""
    body = b"".join(_der(0x30, _der_oid(issuer) + _der_oid(subject)) for issuer, subject in pairs)
    return x509.UnrecognizedExtension(ExtensionOID.POLICY_MAPPINGS, _der(0x30, body))


def unknown_extension(oid: ObjectIdentifier = UNKNOWN_EXTENSION_OID,
                      value: bytes = b"\x05\x00") -> x509.UnrecognizedExtension:
    """An extension no validator knows (default value: DER NULL); mark it critical to test refusal."""
    return x509.UnrecognizedExtension(oid, value)


def issuing_distribution_point(*, uri: str | None = None, only_user: bool = False,
                               only_ca: bool = False, indirect: bool = False,
                               reasons: Iterable[x509.ReasonFlags] = ()
                               ) -> x509.IssuingDistributionPoint:
    """An IssuingDistributionPoint; cryptography refuses one that says nothing at all."""
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(uri)] if uri else None, relative_name=None,
        only_contains_user_certs=only_user, only_contains_ca_certs=only_ca,
        only_some_reasons=frozenset(reasons) or None, indirect_crl=indirect,
        only_contains_attribute_certs=False)


class CertOptions(TypedDict, total=False):
    """Knobs shared by every certificate the factory issues. Absent = the sensible default."""

    key: KeyType | PrivateKey  # default "p256"
    validity: tuple[dt.datetime, dt.datetime]  # default NOW - 1 day .. NOW + 365 days
    serial: int  # default random
    basic_constraints: x509.BasicConstraints | None  # override; None omits the extension
    key_usage: x509.KeyUsage | None  # override the default (critical); None omits it
    eku: Sequence[ObjectIdentifier]  # empty omits the extension
    policies: Sequence[str]  # certificatePolicies OIDs; empty omits the extension
    upn: str  # subjectAltName otherName UPN
    email: Sequence[str]  # subjectAltName rfc822Names
    directory_names: Sequence[x509.Name]  # subjectAltName directoryNames
    san: Sequence[x509.GeneralName]  # further subjectAltNames
    name_constraints: x509.NameConstraints
    name_constraints_critical: bool  # default True (RFC 5280 says MUST)
    policy_mappings: Sequence[tuple[str, str]]  # (issuerDomainPolicy, subjectDomainPolicy)
    extensions: Extensions  # anything else, (extension, critical)
    key_ids: bool  # subjectKeyIdentifier and authorityKeyIdentifier; default True


@dataclass(frozen=True, eq=False)
class Issued:
    """A certificate and its private key; `issuer` is None for a self-signed root."""

    cert: x509.Certificate
    key: PrivateKey
    key_type: KeyType
    issuer: Pki | None = field(default=None, repr=False)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def subject(self) -> x509.Name:
        return self.cert.subject

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def path(self) -> list[x509.Certificate]:
        """This certificate and its issuers up to the root: leaf first, anchor last."""
        out: list[x509.Certificate] = []
        node: Issued | None = self
        while node is not None:
            out.append(node.cert)
            node = node.issuer
        return out


@dataclass(frozen=True, eq=False)
class Pki(Issued):
    """A CA: issues CA, leaf and CRL-signer certificates and CRLs."""

    @classmethod
    def root(cls, subject: str | x509.Name, *, path_length: int | None = None,
             **options: Unpack[CertOptions]) -> Pki:
        """A self-signed root CA."""
        key, key_type = _key(options.get("key", "p256"))
        name = dn(subject) if isinstance(subject, str) else subject
        cert = _certificate(name, key, name, key, key_type, ca=True, path_length=path_length,
                            options=options)
        return cls(cert, key, key_type)

    def issue_ca(self, subject: str | x509.Name, *, path_length: int | None = None,
                 **options: Unpack[CertOptions]) -> Pki:
        """An intermediate CA (basicConstraints CA, keyCertSign and cRLSign) issued by this CA."""
        key, key_type = _key(options.get("key", "p256"))
        name = dn(subject) if isinstance(subject, str) else subject
        cert = _certificate(name, key, self.subject, self.key, self.key_type, ca=True,
                            path_length=path_length, options=options)
        return Pki(cert, key, key_type, self)

    def rollover(self, *, path_length: int | None = None, **options: Unpack[CertOptions]) -> Pki:
        """A self-issued CA (same subject, a new key) signed by this CA's key: a key rollover."""
        if "key" not in options:
            options["key"] = self.key_type
        pki = self.issue_ca(self.subject, path_length=path_length, **options)
        if pki.key.public_key() == self.key.public_key():
            raise ValueError("the rollover key is the old key")
        return pki

    def issue_leaf(self, subject: str | x509.Name, **options: Unpack[CertOptions]) -> Issued:
        """An end-entity certificate (digitalSignature, EKU id-PIV-cardAuth unless `eku` given)."""
        options.setdefault("eku", (PIV_CARD_AUTH_EKU,))
        key, key_type = _key(options.get("key", "p256"))
        name = dn(subject) if isinstance(subject, str) else subject
        cert = _certificate(name, key, self.subject, self.key, self.key_type, ca=False,
                            path_length=None, options=options)
        return Issued(cert, key, key_type, self)

    def issue_crl_signer(self, subject: str | x509.Name | None = None,
                         **options: Unpack[CertOptions]) -> Issued:
        """A CRL-signing certificate (cRLSign only); by default under this CA's own name."""
        options.setdefault("key_usage", key_usage("crl_sign"))
        return self.issue_leaf(self.subject if subject is None else subject, **options)

    def crl(self, revoked: Iterable[int | Revoked] = (), *, number: int | None = 1,
            this_update: dt.datetime | None = None, next_update: dt.datetime | None = None,
            idp: x509.IssuingDistributionPoint | None = None, delta_of: int | None = None,
            extensions: Extensions = (), signer: Issued | None = None,
            key_ids: bool = True) -> Crl:
        """A CRL under the signer's name (default this CA), with CRLNumber `number` (None omits).

        `idp` is added critical, `delta_of` adds a critical deltaCRLIndicator naming that base CRL
        number. Defaults: thisUpdate NOW - 1 minute, nextUpdate thisUpdate + 7 days; revocation
        date of a bare serial: thisUpdate - 1 minute.
        """
        by = signer or self
        this = this_update or NOW - dt.timedelta(minutes=1)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(by.subject)
                   .last_update(this).next_update(next_update or this + dt.timedelta(days=7)))
        for item in revoked:
            entry = item if isinstance(item, Revoked) else Revoked(item)
            builder = builder.add_revoked_certificate(entry.build(this))
        if number is not None:
            builder = builder.add_extension(x509.CRLNumber(number), critical=False)
        if key_ids:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(by.key.public_key()),
                critical=False)
        if idp is not None:
            builder = builder.add_extension(idp, critical=True)
        if delta_of is not None:
            builder = builder.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        algorithm, rsa_padding = _signature(by.key_type)
        return Crl(builder.sign(by.key, algorithm, rsa_padding=rsa_padding), by)


@dataclass(frozen=True)
class Revoked:
    """A CRL entry. `date` defaults to a minute before the CRL's thisUpdate."""

    serial: int
    date: dt.datetime | None = None
    reason: x509.ReasonFlags | None = None
    invalidity_date: dt.datetime | None = None
    extensions: Extensions = ()

    def build(self, this_update: dt.datetime) -> x509.RevokedCertificate:
        builder = (x509.RevokedCertificateBuilder().serial_number(self.serial)
                   .revocation_date(self.date or this_update - dt.timedelta(minutes=1)))
        if self.reason is not None:
            builder = builder.add_extension(x509.CRLReason(self.reason), critical=False)
        if self.invalidity_date is not None:
            builder = builder.add_extension(x509.InvalidityDate(self.invalidity_date),
                                            critical=False)
        for ext, critical in self.extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.build()


@dataclass(frozen=True, eq=False)
class Crl:
    crl: x509.CertificateRevocationList
    signer: Issued

    @property
    def der(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.crl.public_bytes(serialization.Encoding.PEM)


# -- building -------------------------------------------------------------------------------------

def _key(key: KeyType | PrivateKey) -> tuple[PrivateKey, KeyType]:
    if isinstance(key, str):
        if key not in KEY_TYPES:
            raise ValueError(f"unknown key type {key!r}; known: {KEY_TYPES}")
        return new_key(key), key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key, "p384" if isinstance(key.curve, ec.SECP384R1) else "p256"
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "rsa"
    return key, "ed25519"


def _signature(key_type: KeyType) -> tuple[hashes.SHA256 | hashes.SHA384 | None,
                                           padding.PSS | padding.PKCS1v15 | None]:
    if key_type == "p384":
        return hashes.SHA384(), None
    if key_type == "ed25519":
        return None, None
    if key_type == "rsa-pss":
        return hashes.SHA256(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                            salt_length=padding.PSS.DIGEST_LENGTH)
    if key_type == "rsa":
        return hashes.SHA256(), padding.PKCS1v15()
    return hashes.SHA256(), None


def _certificate(subject: x509.Name, key: PrivateKey, issuer: x509.Name, issuer_key: PrivateKey,
                 issuer_key_type: KeyType, *, ca: bool, path_length: int | None,
                 options: CertOptions) -> x509.Certificate:
    start, end = options.get("validity", (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=365)))
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key())
               .serial_number(options.get("serial", x509.random_serial_number()))
               .not_valid_before(start).not_valid_after(end))
    exts: list[tuple[x509.ExtensionType, bool]] = []
    bc = options.get("basic_constraints", x509.BasicConstraints(ca=ca, path_length=path_length))
    if bc is not None:
        exts.append((bc, True))
    ku = options.get("key_usage", key_usage("key_cert_sign", "crl_sign") if ca
                     else key_usage("digital_signature"))
    if ku is not None:
        exts.append((ku, True))
    if options.get("eku"):
        exts.append((x509.ExtendedKeyUsage(list(options["eku"])), False))
    if options.get("policies"):
        exts.append((x509.CertificatePolicies([x509.PolicyInformation(ObjectIdentifier(p), None)
                                               for p in options["policies"]]), False))
    san: list[x509.GeneralName] = []
    if "upn" in options:
        san.append(x509.OtherName(UPN_OID, _der(0x0C, options["upn"].encode())))
    san += [x509.RFC822Name(m) for m in options.get("email", ())]
    san += [x509.DirectoryName(n) for n in options.get("directory_names", ())]
    san += options.get("san", ())
    if san:  # critical when the subject is empty (RFC 5280 4.2.1.6)
        exts.append((x509.SubjectAlternativeName(san), len(subject) == 0))
    if "name_constraints" in options:
        exts.append((options["name_constraints"], options.get("name_constraints_critical", True)))
    if options.get("policy_mappings"):
        exts.append((policy_mappings(*options["policy_mappings"]), True))
    if options.get("key_ids", True):
        exts.append((x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
        exts.append((x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                     False))
    exts += options.get("extensions", ())
    for ext, critical in exts:
        builder = builder.add_extension(ext, critical=critical)
    algorithm, rsa_padding = _signature(issuer_key_type)
    return builder.sign(issuer_key, algorithm, rsa_padding=rsa_padding)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_oid(dotted: str) -> bytes:
    return encode_oid(dotted)
