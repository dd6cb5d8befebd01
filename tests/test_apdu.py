"""The APDU layer against recorded transcripts (python-fido2 style scripted transmit)."""

import pytest

from gateway.errors import CardError
from readers.apdu import ApduError, ApduProtocol, encode_apdu


class Script:
    extended_length = False

    def __init__(self, *exchanges: tuple[str, str]) -> None:
        self.exchanges = [(bytes.fromhex(c), bytes.fromhex(r)) for c, r in exchanges]
        self.sent: list[bytes] = []

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu)
        expected, response = self.exchanges.pop(0)
        assert apdu == expected, f"sent {apdu.hex()}, transcript has {expected.hex()}"
        return response[:-2], int.from_bytes(response[-2:], "big")


def test_get_response_chaining_collects_every_part():
    s = Script(("00CB3FFF055C035FC10100", "AABB6102"), ("00C0000002", "CCDD9000"))
    assert ApduProtocol(s).send(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC101")) == bytes.fromhex("AABBCCDD")


def test_wrong_le_is_resent_with_the_length_the_card_asks_for():
    s = Script(("00CA010000", "6C04"), ("00CA010004", "010203049000"))
    assert ApduProtocol(s).send(0, 0xCA, 1, 0) == bytes.fromhex("01020304")


def test_long_command_data_is_chained():
    data = bytes(300)
    s = Script(("108700" + "9EFF" + "00" * 255, "9000"), ("0087009E2D" + "00" * 45 + "00", "9000"))
    ApduProtocol(s).send(0, 0x87, 0, 0x9E, data)
    assert len(s.sent) == 2


def test_error_status_word_is_named():
    s = Script(("00A4040005A00000030800", "6A82"))
    with pytest.raises(ApduError, match="file not found \\(6A82\\)") as e:
        ApduProtocol(s).send(0, 0xA4, 4, 0, bytes.fromhex("A000000308"), what="SELECT")
    assert e.value.sw == 0x6A82


def test_endless_get_response_is_cut_off():
    class Endless:
        extended_length = False

        def transmit(self, apdu: bytes) -> tuple[bytes, int]:
            return bytes(255), 0x61FF

    with pytest.raises(CardError, match="longer than"):
        ApduProtocol(Endless()).send(0, 0xCB, 0x3F, 0xFF)


def test_extended_encoding():
    assert encode_apdu(0, 0xCB, 0x3F, 0xFF, b"\x01", 0, extended=True).hex() == "00cb3fff00000101" + "0000"
