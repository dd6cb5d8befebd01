"""Card profiles: the card-side exchange for one kind of credential, independent of transport.

A transport (PC/SC, NFC) hands a profile an exclusive `SmartCardConnection`; the profile runs one
transaction and returns what the gateway needs to verify. PIV PKI-CAK is the first profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.domain import ProofScheme
from gateway.errors import CardError, NotACredential
from readers.apdu import ApduProtocol, ApplicationNotAvailable, SmartCardConnection
from readers.piv import PIV_AID, KeyAlgorithm, PivSession

# DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass(frozen=True, slots=True)
class ProfileResult:
    certificates: tuple[bytes, ...]
    challenge: bytes
    signature: bytes
    scheme: ProofScheme
    aid: bytes


class CardProfile(Protocol):
    name: str

    def run(self, connection: SmartCardConnection) -> ProfileResult:
        """One transaction; raises CardError (with a reason) when the card misbehaves."""
        ...


def pkcs1v15_block(challenge: bytes, modulus_bytes: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(challenge) for a raw RSA private-key operation."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(challenge)
    t = SHA256_DIGEST_INFO + digest.finalize()
    if modulus_bytes < len(t) + 11:
        raise CardError("RSA key too small for a SHA-256 signature")
    return b"\x00\x01" + b"\xff" * (modulus_bytes - len(t) - 3) + b"\x00" + t


@dataclass(frozen=True, slots=True)
class Challenge:
    algorithm: int
    sent: bytes  # what goes to the card in tag 81
    challenge: bytes  # what the verifier checks the signature over
    scheme: ProofScheme


def make_challenge(certificate_der: bytes) -> Challenge:
    """A fresh random challenge shaped for the certificate's key (FIPS 201-3 PKI-CAK)."""
    try:
        key = x509.load_der_x509_certificate(certificate_der).public_key()
    except ValueError as e:
        raise CardError(f"card-authentication certificate does not parse: {e}") from e
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            c = os.urandom(32)
            return Challenge(KeyAlgorithm.ECCP256, c, c, ProofScheme.ECDSA_PREHASHED)
        if isinstance(key.curve, ec.SECP384R1):
            c = os.urandom(48)
            return Challenge(KeyAlgorithm.ECCP384, c, c, ProofScheme.ECDSA_PREHASHED)
        raise CardError(f"unsupported card key curve {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey):
        alg = {1024: KeyAlgorithm.RSA1024, 2048: KeyAlgorithm.RSA2048,
               3072: KeyAlgorithm.RSA3072}.get(key.key_size)
        if alg is None:
            raise CardError(f"unsupported card RSA key size {key.key_size}")
        c = os.urandom(32)
        block = pkcs1v15_block(c, key.key_size // 8)
        return Challenge(alg, block, c, ProofScheme.RSA_PKCS1_SHA256)
    raise CardError(f"unsupported card key type {type(key).__name__}")


class PivCakProfile:
    """PIV PKI-CAK: SELECT (first AID that answers), GET DATA 5FC101, GENERAL AUTHENTICATE 9E.

    `aids` is tried in order, so a phone app presenting its own AID with the same exchange is read
    too (docs/mobile-credential.md).
    """

    name = "piv-cak"

    def __init__(self, aids: tuple[bytes, ...] = (PIV_AID,)) -> None:
        if not aids:
            raise ValueError("at least one application identifier is needed")
        self.aids = aids

    def run(self, connection: SmartCardConnection) -> ProfileResult:
        session = PivSession(ApduProtocol(connection))
        selected: bytes | None = None
        for aid in self.aids:
            try:
                session.select(aid)
            except ApplicationNotAvailable:
                continue
            selected = aid
            break
        if selected is None:
            raise NotACredential("not a PIV credential: no configured application answered SELECT")
        cert = session.card_auth_certificate()
        ch = make_challenge(cert)
        signature = session.authenticate(ch.algorithm, ch.sent)
        return ProfileResult((cert,), ch.challenge, signature, ch.scheme, selected)
