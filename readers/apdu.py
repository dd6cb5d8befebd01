"""ISO 7816-4 APDUs over any connection that can transmit bytes.

The layer never imports a transport library: a `SmartCardConnection` (PC/SC, NFC ISO-DEP, a test
transcript) sends one command APDU and returns the response data and status word.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

from gateway.errors import CardError

log = logging.getLogger(__name__)
TRACE = 5

MAX_RESPONSE_BYTES = 64 * 1024
MAX_GET_RESPONSE_ROUNDS = 300


class SW(enum.IntEnum):
    OK = 0x9000
    WRONG_LENGTH = 0x6700
    SECURITY_NOT_SATISFIED = 0x6982
    CONDITIONS_NOT_SATISFIED = 0x6985
    INCORRECT_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_NOT_FOUND = 0x6A88
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


class ApduError(CardError):
    """The card answered with a status word other than 9000."""

    def __init__(self, sw: int, what: str) -> None:
        self.sw = sw
        try:
            name = SW(sw).name.lower().replace("_", " ")
        except ValueError:
            name = "status"
        super().__init__(f"{what}: card answered {name} ({sw:04X})")


class ApplicationNotAvailable(ApduError):
    """SELECT of the application failed: the credential does not carry it."""


class SmartCardConnection(Protocol):
    """One exclusive connection to a card; `transmit` raises CardError or ReaderError."""

    def transmit(self, apdu: bytes) -> tuple[bytes, int]: ...

    @property
    def extended_length(self) -> bool: ...


def encode_apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None,
                *, extended: bool = False) -> bytes:
    """Encode a command APDU (cases 1-4, short or extended). `le=0` asks for the maximum."""
    header = bytes([cla, ins, p1, p2])
    if not extended:
        if len(data) > 255:
            raise ValueError("short APDU data longer than 255 bytes")
        body = (bytes([len(data)]) + data) if data else b""
        if le is not None:
            body += bytes([le & 0xFF])
        return header + body
    if len(data) > 65535:
        raise ValueError("extended APDU data longer than 65535 bytes")
    body = (b"\x00" + len(data).to_bytes(2, "big") + data) if data else b""
    if le is not None:
        body += (le & 0xFFFF).to_bytes(2, "big") if data else b"\x00" + (le & 0xFFFF).to_bytes(2, "big")
    return header + body


class ApduProtocol:
    """Command/response handling over a connection: `61xx` GET RESPONSE, `6Cxx` resend and
    command chaining (CLA bit 0x10) for data longer than one short APDU."""

    def __init__(self, connection: SmartCardConnection) -> None:
        self.connection = connection

    def _transmit(self, apdu: bytes) -> tuple[bytes, int]:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "> %s", apdu.hex())
        data, sw = self.connection.transmit(apdu)
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "< %s %04X", data.hex(), sw)
        return data, sw

    def send(self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"",
             le: int = 0, *, what: str = "command") -> bytes:
        """Send a command, following chaining; return the response data or raise ApduError."""
        ext = self.connection.extended_length and len(data) > 255
        chunk = 65535 if ext else 255
        while len(data) > chunk:
            _, sw = self._transmit(encode_apdu(cla | 0x10, ins, p1, p2, data[:chunk], None,
                                               extended=ext))
            if sw != SW.OK:
                raise ApduError(sw, f"{what} (chained part)")
            data = data[chunk:]
        apdu = encode_apdu(cla, ins, p1, p2, data, le, extended=ext)
        resp, sw = self._transmit(apdu)
        if sw >> 8 == 0x6C:
            apdu = encode_apdu(cla, ins, p1, p2, data, sw & 0xFF, extended=ext)
            resp, sw = self._transmit(apdu)
        buf = bytearray(resp)
        rounds = 0
        while sw >> 8 == 0x61:
            rounds += 1
            if rounds > MAX_GET_RESPONSE_ROUNDS or len(buf) > MAX_RESPONSE_BYTES:
                raise CardError(f"{what}: response longer than {MAX_RESPONSE_BYTES} bytes")
            more, sw = self._transmit(encode_apdu(0x00, 0xC0, 0, 0, b"", sw & 0xFF))
            buf += more
        if len(buf) > MAX_RESPONSE_BYTES:
            raise CardError(f"{what}: response longer than {MAX_RESPONSE_BYTES} bytes")
        if sw != SW.OK:
            raise ApduError(sw, what)
        return bytes(buf)
