"""A PIV applet answering command APDUs: standard enough for OpenSC's PIV driver.

Pure (bytes in, bytes out), so the same applet serves a vpcd reader and an NFC phone.
"""

from __future__ import annotations

import gzip

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from readers.piv import CARD_AUTH_KEY, CARD_AUTH_OBJECT, PIV_AID, PIV_PIX, KeyAlgorithm
from readers.tlv import TlvError, parse_tlv, tlv, unwrap
from readers.virtual.cardfile import CardFile

SW_OK = b"\x90\x00"


def sw(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _key_algorithm(card: CardFile) -> int:
    key = card.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return KeyAlgorithm.ECCP384 if key.curve.key_size == 384 else KeyAlgorithm.ECCP256
    return {1024: KeyAlgorithm.RSA1024, 2048: KeyAlgorithm.RSA2048,
            3072: KeyAlgorithm.RSA3072}[key.key_size]


class Stall(Exception):
    """Raised by the applet when its behaviour is to never answer."""


class Leave(Exception):
    """Raised by the applet when its behaviour is to leave the field mid-transaction."""


class PivApplet:
    def __init__(self, card: CardFile) -> None:
        self.card = card
        self.aid = card.aid or PIV_AID
        self.algorithm = _key_algorithm(card)
        self.reset()

    def reset(self) -> None:
        self.selected = False
        self.pending = b""  # response bytes not yet fetched by GET RESPONSE
        self.chained = b""  # command data received with CLA chaining bit

    def _respond(self, data: bytes, le: int) -> bytes:
        """Return up to Le bytes now and announce the rest with 61xx."""
        limit = le or 256
        if len(data) <= limit:
            return data + SW_OK
        self.pending = data[limit:]
        rest = len(self.pending)
        return data[:limit] + bytes([0x61, 0 if rest > 255 else rest])

    def process(self, apdu: bytes) -> bytes:
        if len(apdu) < 4:
            return sw(0x6700)
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        data, le = b"", 256
        if len(body) == 1:
            le = body[0] or 256
        elif len(body) > 1:
            if body[0] == 0 and len(body) >= 3:  # extended length
                lc = int.from_bytes(body[1:3], "big")
                data = body[3 : 3 + lc]
                rest = body[3 + lc :]
                le = int.from_bytes(rest, "big") if rest else 0
                le = le or 65536
            else:
                lc = body[0]
                data = body[1 : 1 + lc]
                if len(data) != lc:
                    return sw(0x6700)
                rest = body[1 + lc :]
                le = (rest[0] or 256) if rest else 256
        if ins == 0xC0:  # GET RESPONSE
            if not self.pending:
                return sw(0x6985)
            data, self.pending = self.pending, b""
            return self._respond(data, le)
        self.pending = b""
        if cla & 0x10:
            self.chained += data
            return SW_OK
        if self.chained:
            data, self.chained = self.chained + data, b""
        if ins == 0xA4 and p1 == 0x04:
            return self._select(data, le)
        if not self.selected:
            return sw(0x6D00) if ins not in (0xCB, 0x87, 0x20) else sw(0x6985)
        if ins == 0xCB and p1 == 0x3F and p2 == 0xFF:
            return self._get_data(data, le)
        if ins == 0x87:
            return self._authenticate(p1, p2, data, le)
        if ins == 0x20:  # VERIFY: PIN status query; no PIN is ever needed for the CAK
            return sw(0x63C3)
        return sw(0x6D00)

    def _select(self, aid: bytes, le: int) -> bytes:
        if self.card.behaviour == "not-piv" or not aid or not self.aid.startswith(aid):
            self.selected = False
            return sw(0x6A82)
        self.selected = True
        apt = tlv(0x61, tlv(0x4F, PIV_PIX) + tlv(0x79, tlv(0x4F, self.aid[:5]))
                  + tlv(0x50, b"Portvakt virtual PIV")
                  + tlv(0xAC, tlv(0x80, bytes([self.algorithm])) + tlv(0x06, b"\x00")))
        return self._respond(apt, le)

    def _get_data(self, data: bytes, le: int) -> bytes:
        try:
            tag = unwrap(data, 0x5C)
        except TlvError:
            return sw(0x6A80)
        if int.from_bytes(tag, "big") != CARD_AUTH_OBJECT:
            return sw(0x6A82)
        cert = self.card.certificate_der()
        info = b"\x00"
        if self.card.compress_certificate:
            cert, info = gzip.compress(cert, mtime=0), b"\x01"
        obj = tlv(0x53, tlv(0x70, cert) + tlv(0x71, info) + tlv(0xFE, b""))
        if self.card.behaviour == "truncated-tlv":
            obj = obj[: len(obj) // 2]
        elif self.card.behaviour == "absurd-length":
            obj = b"\x53\x83\xff\xff\xff" + obj[4:]
        return self._respond(obj, le)

    def _authenticate(self, alg: int, key_ref: int, data: bytes, le: int) -> bytes:
        if key_ref != CARD_AUTH_KEY:
            return sw(0x6A88)
        if alg != self.algorithm:
            return sw(0x6A80)
        try:
            template = parse_tlv(unwrap(data, 0x7C))
        except TlvError:
            return sw(0x6A80)
        if 0x81 not in template or 0x82 not in template:
            return sw(0x6A80)
        challenge = template[0x81]
        if self.card.behaviour == "stall":
            raise Stall
        if self.card.behaviour == "leave-mid-transaction":
            raise Leave
        if self.card.behaviour == "wrong-signature":
            challenge = bytes(b ^ 0x5A for b in challenge)
        key = self.card.key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            h: hashes.HashAlgorithm = hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA256()
            if len(challenge) != h.digest_size:
                return sw(0x6A80)
            sig = key.sign(challenge, ec.ECDSA(utils.Prehashed(h)))
        else:
            raw = _raw_rsa(key, challenge)
            if raw is None:
                return sw(0x6A80)
            sig = raw
        return self._respond(tlv(0x7C, tlv(0x82, sig)), le)


def _raw_rsa(key: rsa.RSAPrivateKey, block: bytes) -> bytes | None:
    """The raw RSA private-key operation a PIV card performs on a padded block."""
    n_bytes = key.key_size // 8
    if len(block) != n_bytes:
        return None
    nums = key.private_numbers()
    m = int.from_bytes(block, "big")
    if m >= nums.public_numbers.n:
        return None
    return pow(m, nums.d, nums.public_numbers.n).to_bytes(n_bytes, "big")
