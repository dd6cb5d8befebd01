"""`portvakt pki demo DIR`: a demo PKI for the demo and the tests.

Root CA -> issuing CA -> card-authentication certificates (EKU id-PIV-cardAuth) for:
alice (valid), bob (revoked on the CRL), carol (valid, a mobile credential), dave (expired), and
mallory (alice's certificate copied onto a card with a different key).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from gateway.trust.identity import UPN_OID
from readers.virtual.cardfile import write_card

PIV_CARD_AUTH_EKU = ObjectIdentifier("2.16.840.1.101.3.6.8")
DEMO_DOMAIN = "demo.example"
MOBILE_AID = bytes.fromhex("F0504F525456414B5401")  # "PORTVAKT" + 01, a proprietary RID


# What each demo card is, as `portvakt pki demo` tells it.
CARD_ROLES = {
    "alice": "valid",
    "bob": "revoked on the CRL",
    "carol": "valid, a phone (mobile credential AID)",
    "dave": "expired",
    "mallory": "a copy of alice's certificate with another key: fails the proof",
}


@dataclass(frozen=True)
class DemoPki:
    """The files of a demo PKI: CA certificates, the issuing CA's CRL, each card's card file
    (certificate and private key, for `portvakt card serve`) and certificate (PEM)."""

    root: Path
    issuing: Path
    crl: Path
    cards: dict[str, Path]
    certificates: dict[str, Path] = field(default_factory=dict)


def guarded_files(out: Path) -> list[Path]:
    """The files in `out` holding a demo CA or a private key that `make_demo_pki(out)` would
    overwrite: the CA certificates and keys and every card file; oldest-named first."""
    named = [out / n for n in ("root.pem", "root.key", "issuing.pem", "issuing.key")]
    cards = sorted((out / "cards").glob("*.card.json")) if (out / "cards").is_dir() else []
    return [p for p in [*named, *cards] if p.exists()]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Portvakt Demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _upn_der(upn: str) -> bytes:
    # The otherName value is a UTF8String; cryptography adds the [0] EXPLICIT wrapper itself.
    raw = upn.encode()
    return b"\x0c" + bytes([len(raw)]) + raw


def write_private_key(path: Path, key: PrivateKeyTypes) -> None:
    """Write `key` as unencrypted PKCS#8 PEM, mode 0600 from the moment the file exists."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ca_extensions(builder: x509.CertificateBuilder, path_length: int,
                   key: CertificatePublicKeyTypes) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False))


def make_root(name: x509.Name, now: dt.datetime) -> tuple[x509.Certificate,
                                                          ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-384 root CA, valid ten years (pathLen 1)."""
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=3650)))
    return _ca_extensions(builder, 1, key.public_key()).sign(key, hashes.SHA384()), key


def make_issuing_ca(name: x509.Name, root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey,
                    now: dt.datetime, key: CertificateIssuerPrivateKeyTypes | None = None
                    ) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """An issuing CA under `root`, valid five years (pathLen 0); its key EC P-256 by default."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(root.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=1825))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   root_key.public_key()), critical=False))
    return _ca_extensions(builder, 0, key.public_key()).sign(root_key, hashes.SHA384()), key


def make_demo_pki(out: Path, now: dt.datetime | None = None) -> DemoPki:
    """Write the demo PKI into `out` (created), replacing any there (`guarded_files` tells
    what would be lost); returns the paths written."""
    now = now or dt.datetime.now(dt.UTC)
    out.mkdir(parents=True, exist_ok=True)
    cards_dir = out / "cards"
    cards_dir.mkdir(exist_ok=True)

    root_name = _name("Portvakt Demo Root CA")
    root, root_key = make_root(root_name, now)
    ca_name = _name("Portvakt Demo Issuing CA")
    ca, ca_key = make_issuing_ca(ca_name, root, root_key, now)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    def card_cert(user: str, key: ec.EllipticCurvePrivateKey, *, expired: bool = False
                  ) -> x509.Certificate:
        start = now - dt.timedelta(days=400 if expired else 1)
        end = now - dt.timedelta(days=30) if expired else now + dt.timedelta(days=730)
        return (x509.CertificateBuilder()
                .subject_name(_name(user.capitalize())).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([PIV_CARD_AUTH_EKU,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([
                    x509.OtherName(UPN_OID, _upn_der(f"{user}@{DEMO_DOMAIN}"))]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))

    cards: dict[str, Path] = {}
    certs: dict[str, x509.Certificate] = {}
    for user in ("alice", "bob", "carol", "dave"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = card_cert(user, key, expired=user == "dave")
        certs[user] = cert
        path = cards_dir / f"{user}.card.json"
        write_card(path, user, cert, key, aid=MOBILE_AID if user == "carol" else None)
        cards[user] = path
    # mallory: alice's certificate, but mallory's own key (a copied certificate)
    path = cards_dir / "mallory.card.json"
    certs["mallory"] = certs["alice"]
    write_card(path, "mallory", certs["alice"], ec.generate_private_key(ec.SECP256R1()))
    cards["mallory"] = path
    cert_files: dict[str, Path] = {}
    for user, cert in certs.items():  # beside the card file: for `portvakt verify`, openssl
        cert_files[user] = cards_dir / f"{user}.cert.pem"
        cert_files[user].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_name)
           .last_update(now - dt.timedelta(minutes=1)).next_update(now + dt.timedelta(days=7))
           .add_revoked_certificate(
               x509.RevokedCertificateBuilder().serial_number(certs["bob"].serial_number)
               .revocation_date(now - dt.timedelta(minutes=2)).build())
           .add_extension(x509.CRLNumber(1), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
               ca_key.public_key()), critical=False)
           .sign(ca_key, hashes.SHA256()))
    root_crl = (x509.CertificateRevocationListBuilder().issuer_name(root_name)
                .last_update(now - dt.timedelta(minutes=1))
                .next_update(now + dt.timedelta(days=90))
                .add_extension(x509.CRLNumber(1), critical=False)
                .sign(root_key, hashes.SHA384()))

    pem = serialization.Encoding.PEM
    (out / "root.pem").write_bytes(root.public_bytes(pem))
    (out / "issuing.pem").write_bytes(ca.public_bytes(pem))
    (out / "issuing.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    (out / "root.crl").write_bytes(root_crl.public_bytes(serialization.Encoding.DER))
    write_private_key(out / "root.key", root_key)
    write_private_key(out / "issuing.key", ca_key)
    return DemoPki(out / "root.pem", out / "issuing.pem", out / "issuing.crl", cards, cert_files)
