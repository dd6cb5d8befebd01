"""Card files: what a virtual credential holds (JSON: certificate, private key, behaviour)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import InputError

FORMAT = "portvakt-card/1"

# Misbehaviours a test card can show; each must be refused with a precise reason.
BEHAVIOURS = frozenset({
    "normal",         # a well-behaved PIV card
    "not-piv",        # SELECT answers 6A82
    "truncated-tlv",  # the certificate object is cut short
    "wrong-signature",  # GENERAL AUTHENTICATE returns a signature over something else
    "stall",          # never answers GENERAL AUTHENTICATE
    "absurd-length",  # the certificate object claims 16 MB
    "leave-mid-transaction",  # pulled away after GET DATA, before GENERAL AUTHENTICATE
})

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CardFile:
    name: str
    certificate: x509.Certificate
    key: PrivateKey
    aid: bytes | None
    behaviour: str
    compress_certificate: bool = False  # store it gzip-compressed (CertInfo bit 0), SP 800-73

    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def write_card(path: Path, name: str, certificate: x509.Certificate, key: PrivateKey, *,
               aid: bytes | None = None, behaviour: str = "normal",
               compress_certificate: bool = False) -> None:
    """Write a card file readable only by its owner (it holds a private key)."""
    doc: dict[str, object] = {
        "format": FORMAT,
        "name": name,
        "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode(),
        "behaviour": behaviour,
    }
    if compress_certificate:
        doc["compress_certificate"] = True
    if aid is not None:
        doc["aid"] = aid.hex().upper()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)


def read_card(path: Path) -> CardFile:
    """Load a card file; raise InputError naming the file and field at fault."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable card file: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path}: format: expected \"{FORMAT}\"")
    try:
        cert = x509.load_pem_x509_certificate(str(doc["certificate"]).encode())
    except (KeyError, ValueError) as e:
        raise InputError(f"{path}: certificate: expected a PEM certificate ({e})") from e
    try:
        key = serialization.load_pem_private_key(str(doc["key"]).encode(), password=None)
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"{path}: key: expected an unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InputError(f"{path}: key: expected an EC or RSA private key")
    behaviour = doc.get("behaviour", "normal")
    if behaviour not in BEHAVIOURS:
        raise InputError(f"{path}: behaviour: expected one of {', '.join(sorted(BEHAVIOURS))}")
    aid = None
    if "aid" in doc:
        try:
            aid = bytes.fromhex(str(doc["aid"]))
        except ValueError as e:
            raise InputError(f"{path}: aid: expected hex bytes") from e
    compress = doc.get("compress_certificate", False)
    if not isinstance(compress, bool):
        raise InputError(f"{path}: compress_certificate: expected true or false")
    return CardFile(str(doc.get("name", path.stem)), cert, key, aid, behaviour, compress)
