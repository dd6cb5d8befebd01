"""PIV PKI-CAK profile against the virtual applet, with no transport in between."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.domain import CardRead, ProofScheme
from gateway.errors import InputError, MalformedCardData, NotACredential
from gateway.pki_demo import MOBILE_AID, DemoPki
from gateway.trust.validator import verify_proof
from readers.piv import PIV_AID
from readers.profile import PivCakProfile, make_challenge
from readers.virtual.applet import PivApplet, Stall
from readers.virtual.cardfile import read_card, write_card


class AppletConnection:
    """The applet behind a `SmartCardConnection`, as a transport would present it."""

    extended_length = False

    def __init__(self, applet: PivApplet) -> None:
        self.applet = applet

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        r = self.applet.process(apdu)
        return r[:-2], int.from_bytes(r[-2:], "big")


def run(card_path: Path, aids=(PIV_AID,), behaviour: str | None = None):
    card = read_card(card_path)
    if behaviour:
        card = dataclasses.replace(card, behaviour=behaviour)
    return PivCakProfile(tuple(aids)).run(AppletConnection(PivApplet(card)))


def test_pki_cak_signature_verifies_with_the_certificate_key(demo_pki: DemoPki):
    r = run(demo_pki.cards["alice"])
    cert = x509.load_der_x509_certificate(r.certificates[0])
    assert r.scheme is ProofScheme.ECDSA_PREHASHED and len(r.challenge) == 32
    assert verify_proof(cert, r.challenge, r.signature, r.scheme)


def test_every_presentation_gets_a_fresh_challenge(demo_pki: DemoPki):
    assert run(demo_pki.cards["alice"]).challenge != run(demo_pki.cards["alice"]).challenge


def test_mobile_credential_answers_its_own_aid_only(demo_pki: DemoPki):
    with pytest.raises(NotACredential):
        run(demo_pki.cards["carol"], aids=(PIV_AID,))
    assert run(demo_pki.cards["carol"], aids=(PIV_AID, MOBILE_AID)).aid == MOBILE_AID


def self_signed_card(tmp_path: Path, key, hash_: hashes.SHA256 | hashes.SHA384):
    """A card file whose certificate is self-signed with `key` (the card never checks it)."""
    name = x509.Name.from_rfc4514_string("CN=Test card")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(dt.datetime(2020, 1, 1)).not_valid_after(dt.datetime(2040, 1, 1))
            .sign(key, hash_))
    path = tmp_path / "self-signed.card.json"
    write_card(path, "test", cert, key)
    return path, cert


def test_rsa_card_signs_a_pkcs1_block(tmp_path: Path):
    path, cert = self_signed_card(tmp_path, rsa.generate_private_key(65537, 2048),
                                  hashes.SHA256())
    r = run(path)
    assert r.scheme is ProofScheme.RSA_PKCS1_SHA256
    assert verify_proof(cert, r.challenge, r.signature, r.scheme)
    assert make_challenge(r.certificates[0]).sent[:2] == b"\x00\x01"


@pytest.mark.parametrize(("behaviour", "error", "match"), [
    ("not-piv", NotACredential, "not a PIV credential"),
    ("truncated-tlv", MalformedCardData, "certificate object"),
    ("absurd-length", MalformedCardData, "claims 16777215 bytes"),
])
def test_misbehaving_cards_are_refused_with_a_reason(demo_pki, behaviour, error, match):
    with pytest.raises(error, match=match):
        run(demo_pki.cards["alice"], behaviour=behaviour)


def test_wrong_signature_fails_the_proof(demo_pki: DemoPki):
    r = run(demo_pki.cards["alice"], behaviour="wrong-signature")
    cert = x509.load_der_x509_certificate(r.certificates[0])
    assert not verify_proof(cert, r.challenge, r.signature, r.scheme)


def test_stalling_card_never_answers_authenticate(demo_pki: DemoPki):
    with pytest.raises(Stall):
        run(demo_pki.cards["alice"], behaviour="stall")


def test_copied_certificate_fails_the_proof(demo_pki: DemoPki):
    r = run(demo_pki.cards["mallory"])
    read = CardRead("r", r.certificates, r.challenge, r.signature, r.scheme, "test", r.aid,
                    time.monotonic())
    cert = x509.load_der_x509_certificate(read.certificates[0])
    assert cert == read_card(demo_pki.cards["alice"]).certificate
    assert not verify_proof(cert, read.challenge, read.signature, read.scheme)


def test_card_file_errors_name_the_field(tmp_path: Path):
    p = tmp_path / "bad.json"
    p.write_text('{"format": "portvakt-card/1", "certificate": "nope", "key": ""}')
    with pytest.raises(InputError, match="certificate: expected a PEM certificate"):
        read_card(p)


def test_gzip_compressed_certificate_is_read(demo_pki: DemoPki):
    card = dataclasses.replace(read_card(demo_pki.cards["alice"]), compress_certificate=True)
    r = PivCakProfile((PIV_AID,)).run(AppletConnection(PivApplet(card)))
    assert r.certificates[0] == card.certificate_der()
    assert verify_proof(card.certificate, r.challenge, r.signature, r.scheme)


def test_a_gzip_bomb_certificate_is_refused():
    import gzip

    from readers.piv import parse_certificate_object
    from readers.tlv import tlv

    bomb = gzip.compress(bytes(10_000_000))
    obj = tlv(0x53, tlv(0x70, bomb) + tlv(0x71, b"\x01"))
    with pytest.raises(MalformedCardData, match="longer than"):
        parse_certificate_object(obj)


def test_p384_card_gets_a_48_byte_challenge(tmp_path: Path):
    path, cert = self_signed_card(tmp_path, ec.generate_private_key(ec.SECP384R1()),
                                  hashes.SHA384())
    r = run(path)
    assert len(r.challenge) == 48 and r.scheme is ProofScheme.ECDSA_PREHASHED
    assert verify_proof(cert, r.challenge, r.signature, r.scheme)
