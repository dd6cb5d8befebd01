"""Domain types shared by every layer: immutable, free of I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ProofScheme(enum.StrEnum):
    """How a card's signature over our challenge is to be verified."""

    ECDSA_PREHASHED = "ecdsa-prehashed"  # challenge is hash-length, signed as a digest
    RSA_PKCS1_SHA256 = "rsa-pkcs1v15-sha256"  # card raw-signs a PKCS#1 v1.5 DigestInfo block


@dataclass(frozen=True, slots=True)
class CardRead:
    """One PKI-CAK transaction with a presented credential.

    `certificates` are DER, the card-authentication certificate first. `challenge` is the fresh
    random value we sent; `signature` the card's answer. `detected_at` is time.monotonic() when the
    reader reported the card (for latency measurement).
    """

    reader: str
    certificates: tuple[bytes, ...]
    challenge: bytes
    signature: bytes
    scheme: ProofScheme
    transport: str
    aid: bytes
    detected_at: float


@dataclass(frozen=True, slots=True)
class CardFailure:
    """A presentation that did not complete: the card misbehaved or left. `reason` is a code."""

    reader: str
    reason: str
    detail: str
    transport: str
    detected_at: float


@dataclass(frozen=True, slots=True)
class ReaderStatus:
    """A reader came online or went offline. `device` is the PC/SC reader name or the nfcpy
    device path it was found as (None when it is not there)."""

    reader: str
    online: bool
    device: str | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified identity: `key` is canonical `type:value` (e.g. `upn:alice@example.org`)."""

    key: str
    subject: str
    fingerprint: str  # SHA-256 of the certificate, hex
    not_after: float  # POSIX seconds


@dataclass(frozen=True, slots=True)
class Decision:
    granted: bool
    reason: str
    person: str | None = None
    actions: tuple[str, ...] = field(default=())
