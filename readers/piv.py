"""PIV (NIST SP 800-73-4) card-side exchange: SELECT, GET DATA, GENERAL AUTHENTICATE."""

from __future__ import annotations

import enum
import gzip
import io
from dataclasses import dataclass

from gateway.errors import MalformedCardData
from readers.apdu import SW, ApduError, ApduProtocol, ApplicationNotAvailable
from readers.tlv import TlvError, iter_tlv, parse_tlv, tlv, unwrap

PIV_AID = bytes.fromhex("A000000308000010000100")
PIV_PIX = bytes.fromhex("000010000100")
CARD_AUTH_OBJECT = 0x5FC101
CARD_AUTH_KEY = 0x9E
MAX_CERTIFICATE_BYTES = 16 * 1024


class KeyAlgorithm(enum.IntEnum):
    RSA3072 = 0x05
    RSA1024 = 0x06
    RSA2048 = 0x07
    ECCP256 = 0x11
    ECCP384 = 0x14


@dataclass(frozen=True, slots=True)
class PivApplication:
    aid: bytes
    pix: bytes
    label: str
    algorithms: tuple[int, ...]


def parse_select_response(aid: bytes, data: bytes) -> PivApplication:
    """Parse the application property template (tag 61) returned by SELECT."""
    if not data:
        return PivApplication(aid, b"", "", ())
    try:
        apt = parse_tlv(unwrap(data, 0x61))
        algorithms: list[int] = []
        if 0xAC in apt:
            for tag, value in iter_tlv(apt[0xAC]):
                if tag == 0x80 and len(value) == 1:
                    algorithms.append(value[0])
    except TlvError as e:
        raise MalformedCardData(f"malformed SELECT response: {e}") from e
    label = apt.get(0x50, b"").decode("ascii", "replace")
    return PivApplication(aid, apt.get(0x4F, b""), label, tuple(algorithms))


def parse_certificate_object(data: bytes) -> bytes:
    """The DER certificate inside a PIV certificate object (53 { 70 cert, 71 certinfo, FE })."""
    try:
        inner = parse_tlv(unwrap(data, 0x53))
    except TlvError as e:
        raise MalformedCardData(f"malformed certificate object: {e}") from e
    cert = inner.get(0x70)
    if not cert:
        raise MalformedCardData("certificate object has no certificate (tag 70)")
    info = inner.get(0x71, b"\x00")
    if info and info[0] & 0x01:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(cert)) as f:
                cert = f.read(MAX_CERTIFICATE_BYTES + 1)
        except (OSError, EOFError) as e:
            raise MalformedCardData(f"compressed certificate does not decompress: {e}") from e
    if len(cert) > MAX_CERTIFICATE_BYTES:
        raise MalformedCardData(f"certificate longer than {MAX_CERTIFICATE_BYTES} bytes")
    return cert


def parse_authenticate_response(data: bytes) -> bytes:
    """The signature in a GENERAL AUTHENTICATE response template (7C { 82 sig })."""
    try:
        sig = parse_tlv(unwrap(data, 0x7C)).get(0x82)
    except TlvError as e:
        raise MalformedCardData(f"malformed GENERAL AUTHENTICATE response: {e}") from e
    if not sig:
        raise MalformedCardData("GENERAL AUTHENTICATE response has no signature (tag 82)")
    return sig


class PivSession:
    """One PIV application session over an APDU protocol."""

    def __init__(self, protocol: ApduProtocol) -> None:
        self.protocol = protocol

    def select(self, aid: bytes = PIV_AID) -> PivApplication:
        try:
            data = self.protocol.send(0x00, 0xA4, 0x04, 0x00, aid, what="SELECT")
        except ApduError as e:
            if e.sw in (SW.FILE_NOT_FOUND, SW.FUNCTION_NOT_SUPPORTED, SW.INS_NOT_SUPPORTED,
                        SW.CLA_NOT_SUPPORTED, SW.INCORRECT_P1P2):
                raise ApplicationNotAvailable(e.sw, f"SELECT {aid.hex().upper()}") from e
            raise
        return parse_select_response(aid, data)

    def get_object(self, object_id: int) -> bytes:
        """GET DATA for a data object; returns the whole response (53 container)."""
        tag = tlv(0x5C, object_id.to_bytes((object_id.bit_length() + 7) // 8, "big"))
        return self.protocol.send(0x00, 0xCB, 0x3F, 0xFF, tag, what=f"GET DATA {object_id:X}")

    def card_auth_certificate(self) -> bytes:
        return parse_certificate_object(self.get_object(CARD_AUTH_OBJECT))

    def authenticate(self, algorithm: int, challenge: bytes, key: int = CARD_AUTH_KEY) -> bytes:
        """GENERAL AUTHENTICATE (internal authenticate): the card signs `challenge` with `key`."""
        template = tlv(0x7C, tlv(0x82, b"") + tlv(0x81, challenge))
        data = self.protocol.send(0x00, 0x87, algorithm, key, template,
                                  what="GENERAL AUTHENTICATE")
        return parse_authenticate_response(data)
