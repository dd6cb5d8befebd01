"""The NFC transport against real nfcpy on both sides of its `udp` driver (loopback), a phone in
its own process; and the phone's ISO-DEP block protocol against nfcpy's own initiator, in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from pathlib import Path

import nfc.clf
import pytest
from cryptography import x509
from nfc.tag.tt4 import IsoDepInitiator

from gateway.domain import CardFailure, CardRead, ReaderStatus
from gateway.pki_demo import MOBILE_AID, DemoPki
from gateway.rig.proc import RigProcess, free_port, wait_until
from gateway.trust.validator import verify_proof
from readers.nfc import NfcReader
from readers.piv import PIV_AID
from readers.profile import PivCakProfile
from readers.virtual.applet import PivApplet
from readers.virtual.cardfile import read_card
from readers.virtual.phone import Apdu, IsoDepCard, fwt_seconds
from tests.conftest import repo_root

PROFILE = PivCakProfile((PIV_AID, MOBILE_AID))
WAIT_S = 10
POLL_S = 0.05


def udp_port() -> int:
    """A port free for UDP too, with no name in /etc/services (nfcpy's udp driver turns a named
    port into its name and then fails to parse it)."""
    while True:
        port = free_port()
        try:
            socket.getservbyport(port, "udp")
            continue
        except OSError:
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port


def udp_bound(port: int) -> bool:
    """Whether a socket is bound to UDP `port` (read from /proc: probing by binding would race
    the phone's own bind)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            if any(line.split()[1].endswith(suffix) for line in list(f)[1:]):
                return True
    return False


class Phones:
    """Phones (`python -m readers.virtual.phone`) tapping on one udp port, one at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = udp_port()
        self.device = f"udp:127.0.0.1:{self.port}"
        self.tmp_path = tmp_path
        self.procs: list[RigProcess] = []

    def tap(self, card: Path, *args: str, taps: int = 1, reader: NfcReader | None = None
            ) -> RigProcess:
        """A phone presenting `card` `taps` times, once the previous phone has left."""
        argv = [sys.executable, "-m", "readers.virtual.phone", "-v", "--udp", str(self.port),
                "--card", str(card), "--taps", str(taps), "--dwell", "0.05", "--away", "0", *args]
        return self._start(argv, reader)

    def run_python(self, code: str, reader: NfcReader | None = None) -> RigProcess:
        return self._start([sys.executable, "-c", code], reader)

    def _start(self, argv: list[str], reader: NfcReader | None) -> RigProcess:
        for p in self.procs:
            assert p.popen.wait(WAIT_S) == 0, p.log_tail()
        n = len(self.procs)
        proc = RigProcess(f"phone{n}", argv, self.tmp_path / f"phone{n}.log", cwd=repo_root())
        self.procs.append(proc)
        wait_until(lambda: udp_bound(self.port), WAIT_S, "the phone listening", proc)
        if reader is not None:
            # A udp sense sent before the phone listened waits out its 1 s: end it now (a real
            # frontend's sense takes milliseconds).
            reader._wake()
        return proc

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def phones(tmp_path: Path):
    ph = Phones(tmp_path)
    try:
        yield ph
    finally:
        ph.stop()


def card_with(demo_pki: DemoPki, tmp_path: Path, behaviour: str, user: str = "carol") -> Path:
    path = tmp_path / f"{user}-{behaviour}.card.json"
    doc = json.loads(demo_pki.cards[user].read_text())
    path.write_text(json.dumps({**doc, "behaviour": behaviour}))
    return path


async def next_tap(it) -> CardRead | CardFailure:
    while True:
        item = await asyncio.wait_for(it.__anext__(), WAIT_S)
        if not isinstance(item, ReaderStatus):
            return item


def proof_verifies(read: CardRead) -> bool:
    cert = x509.load_der_x509_certificate(read.certificates[0])
    return verify_proof(cert, read.challenge, read.signature, read.scheme)


# --- end to end over nfcpy's udp driver ---------------------------------------------------
async def test_a_tapped_phone_yields_one_pki_cak_read_under_its_own_aid(phones, demo_pki):
    phones.tap(demo_pki.cards["carol"])
    async with NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S) as reader:
        it = reader.presentations()
        status = await asyncio.wait_for(it.__anext__(), WAIT_S)
        assert isinstance(status, ReaderStatus) and status.online
        assert status.device == phones.device  # the status type is shared with PC/SC
        read = await next_tap(it)
        assert isinstance(read, CardRead), read
        assert read.reader == "front" and read.transport == "nfc" and read.aid == MOBILE_AID
        assert proof_verifies(read)
        assert "carol" in str(x509.load_der_x509_certificate(read.certificates[0]).extensions)


async def test_a_card_file_without_aid_answers_the_piv_aid(phones, demo_pki):
    phones.tap(demo_pki.cards["alice"])
    async with NfcReader("front", phones.device, PivCakProfile((MOBILE_AID, PIV_AID)),
                         poll_interval=POLL_S) as reader:
        read = await next_tap(reader.presentations())
        assert isinstance(read, CardRead) and read.aid == PIV_AID and proof_verifies(read)


async def test_a_phone_held_to_the_reader_is_read_once_and_each_new_tap_again(phones, demo_pki):
    proc = phones.tap(demo_pki.cards["carol"], "--dwell", "0.3", taps=3)
    async with NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S) as reader:
        it = reader.presentations()
        for _ in range(3):
            assert isinstance(await next_tap(it), CardRead)
        assert proc.popen.wait(WAIT_S) == 0
        assert "tap 3: taken away" in proc.log.read_text()
        # The phone answered presence checks for 0.3 s per tap and was not read again meanwhile.
        assert reader._queue is not None and reader._queue.empty()


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("not-piv", "not-piv"), ("truncated-tlv", "malformed-card-data"), ("wrong-signature", None),
])
async def test_a_misbehaving_phone_is_refused_and_the_reader_keeps_working(
        phones, demo_pki, tmp_path, behaviour, reason):
    phones.tap(card_with(demo_pki, tmp_path, behaviour))
    async with NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S) as reader:
        it = reader.presentations()
        bad = await next_tap(it)
        if reason is None:  # the exchange succeeds; the proof does not
            assert isinstance(bad, CardRead) and not proof_verifies(bad)
        else:
            assert isinstance(bad, CardFailure) and bad.reason == reason, bad
        phones.tap(demo_pki.cards["carol"], reader=reader)
        good = await next_tap(it)
        assert isinstance(good, CardRead) and proof_verifies(good)


@pytest.mark.parametrize("how", ["leave-after", "behaviour"])
async def test_a_phone_leaving_mid_transaction_ends_cleanly_and_the_next_tap_works(
        phones, demo_pki, tmp_path, caplog, how):
    if how == "leave-after":  # pulled away after GET DATA, then tapped again properly
        phones.tap(demo_pki.cards["carol"], "--leave-after", "get-data", taps=2)
    else:
        phones.tap(card_with(demo_pki, tmp_path, "leave-mid-transaction"))
    caplog.set_level(logging.DEBUG, logger="readers.nfc")
    async with NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S) as reader:
        it = reader.presentations()
        failure = await next_tap(it)
        assert isinstance(failure, CardFailure) and failure.reason == "card-removed", failure
        assert failure.transport == "nfc"
        assert reader._thread is not None and reader._thread.is_alive()
        if how == "behaviour":
            phones.tap(demo_pki.cards["carol"], reader=reader)
        assert isinstance(await next_tap(it), CardRead)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_slow_key_keeps_the_reader_waiting_with_wtx(phones, demo_pki):
    phones.tap(demo_pki.cards["carol"], "--latency", "0.4")  # five FWTs at FWI 8
    async with NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S) as reader:
        read = await next_tap(reader.presentations())
        assert isinstance(read, CardRead) and proof_verifies(read)
        assert reader.transaction_seconds is not None and reader.transaction_seconds >= 0.4


async def test_a_phone_that_never_finishes_times_out_and_the_next_tap_works(phones, demo_pki):
    phones.tap(demo_pki.cards["carol"], "--latency", "30")  # S(WTX) after S(WTX)
    async with NfcReader("front", phones.device, PROFILE, timeout=0.5, poll_interval=POLL_S) as reader:
        it = reader.presentations()
        failure = await next_tap(it)
        assert isinstance(failure, CardFailure) and failure.reason == "card-timeout", failure
        assert failure.detail
        phones.tap(demo_pki.cards["carol"], reader=reader)
        assert isinstance(await next_tap(it), CardRead)


async def test_commands_longer_than_the_phones_frame_size_are_chained(phones, demo_pki):
    """FSC 32: GENERAL AUTHENTICATE (44 bytes) goes in two I-blocks."""
    card = demo_pki.cards["carol"]
    phones.run_python(
        "from pathlib import Path; from readers.virtual.phone import PhoneOptions, serve; "
        f"serve({phones.port}, Path({str(card)!r}), taps=1, "
        "options=PhoneOptions(fsci=2, dwell=0.05))")
    async with NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S) as reader:
        read = await next_tap(reader.presentations())
        assert isinstance(read, CardRead) and proof_verifies(read)


async def test_stopping_a_reader_with_no_phone_is_prompt(phones):
    reader = NfcReader("front", phones.device, PROFILE, poll_interval=POLL_S)
    async with reader:
        it = reader.presentations()
        status = await asyncio.wait_for(it.__anext__(), WAIT_S)
        assert isinstance(status, ReaderStatus) and status.online
        assert reader._thread is not None
        await asyncio.to_thread(wait_until, lambda: reader._clf is not None and
                                reader._clf.device.socket is not None, WAIT_S, "a udp sense")
        started = time.monotonic()
    assert time.monotonic() - started < 0.5


async def test_a_frontend_that_cannot_be_opened_reports_offline_and_stops_promptly():
    async with NfcReader("front", "usb:ffff:ffff", PROFILE) as reader:
        status = await asyncio.wait_for(reader.presentations().__anext__(), WAIT_S)
        assert isinstance(status, ReaderStatus) and not status.online
        assert status.device == "usb:ffff:ffff" and "cannot open" in status.detail
        assert reader._thread is not None and reader._thread.is_alive()  # retrying
        started = time.monotonic()
    assert time.monotonic() - started < 0.5


# --- ISO-DEP block protocol, in memory ------------------------------------------------------
class Link:
    """nfcpy's frontend as its ISO-DEP initiator uses it, wired to an `IsoDepCard`. Frames whose
    number is in `lose` (1-based, card to reader) are lost on the way back."""

    def __init__(self, card: IsoDepCard, process, lose=()) -> None:
        self.card = card
        self.process = process
        self.lose = set(lose)
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    def exchange(self, data, timeout):
        self.sent.append(bytes(data))
        out = self.card.receive(bytes(data))
        if isinstance(out, Apdu):
            out = self.card.respond(self.process(out.data))
        if out is None:
            raise nfc.clf.TimeoutError("mute")
        self.received.append(out)
        if len(self.received) in self.lose:
            raise nfc.clf.TimeoutError("lost")
        return bytearray(out)


def activated(fsdi: int = 8, fsci: int = 8) -> tuple[IsoDepCard, bytes]:
    card = IsoDepCard(fsci=fsci)
    return card, card.answer_rats(bytes([0xE0, fsdi << 4]))


def test_ats_announces_frame_size_and_waiting_time():
    card, ats = activated()
    assert ats == bytes.fromhex("0578808000")
    assert card.fsc == 256 and abs(card.fwt - fwt_seconds(8)) < 1e-9 and 0.07 < card.fwt < 0.08


def test_a_response_longer_than_fsd_is_chained_and_acknowledged_part_by_part():
    card, _ = activated(fsdi=5)  # FSD 64: 61 bytes of INF per block
    response = bytes(range(200)) + b"\x90\x00"
    assert card.receive(bytes([0x02]) + b"\x00\xa4\x04\x00") == Apdu(b"\x00\xa4\x04\x00")
    block = card.respond(response)
    got, pni, parts = bytearray(), 0, 0
    while True:
        assert block[0] & 0x01 == pni and len(block) <= 64
        got += block[1:]
        parts += 1
        pni ^= 1
        if not block[0] & 0x10:
            break
        nxt = card.receive(bytes([0xA2 | pni]))  # R(ACK) for the next part
        assert isinstance(nxt, bytes)
        block = nxt
    assert bytes(got) == response and parts == 4


def test_a_nak_for_the_last_block_resends_it_and_a_presence_check_gets_an_ack():
    card, _ = activated()
    card.receive(bytes([0x02]) + b"\x00\xcb\x3f\xff")
    first = card.respond(b"\x6a\x82")
    assert card.receive(bytes([0xB2])) == first  # R(NAK) with our number: resend
    assert card.receive(bytes([0xB3])) == bytes([0xA2])  # another number: R(ACK), presence


def test_a_chained_command_is_acknowledged_and_reassembled():
    card, _ = activated()
    assert card.receive(bytes([0x12]) + b"\x00\x87") == bytes([0xA2])
    assert card.receive(bytes([0xB2])) == bytes([0xA2])  # our R(ACK) was lost: resent
    assert card.receive(bytes([0x03]) + b"\x11\x9e") == Apdu(b"\x00\x87\x11\x9e")


def test_deselect_is_answered_and_ends_the_session():
    card, _ = activated()
    assert card.receive(bytes([0xC2])) == bytes([0xC2]) and card.deselected


def test_blocks_with_cid_or_garbage_are_not_answered():
    card, _ = activated()
    assert card.receive(bytes([0x0A, 0x00]) + b"\x00\xa4") is None
    assert card.receive(b"") is None and card.receive(bytes([0xA3])) is None


@pytest.mark.parametrize("lose", [(), (1,), (2,), (3,), (1, 2, 3)])
def test_nfcpys_initiator_reads_a_chained_response_despite_lost_frames(demo_pki, lose):
    applet = PivApplet(read_card(demo_pki.cards["carol"]))
    card, ats = activated()
    link = Link(card, applet.process, lose)
    dep = IsoDepInitiator(link, fsc=card.fsc, fwt=card.fwt)
    assert dep.exchange(bytearray(b"\x00\xa4\x04\x00" + bytes([len(MOBILE_AID)]) + MOBILE_AID
                                  + b"\x00"))[-2:] == b"\x90\x00"
    response = bytes(dep.exchange(bytearray(bytes.fromhex("00cb3fff055c035fc10100"))))
    assert len(response) == 258 and response[0] == 0x53 and response[-2] == 0x61  # 256 + 61xx
    assert any(b[0] & 0x10 for b in link.received)  # the response came chained
    assert dep.exchange(None) is None  # presence check answered


def test_nfcpys_initiator_chains_a_long_command_into_the_phone(demo_pki):
    card, _ = activated(fsci=2)  # FSC 32
    seen: list[bytes] = []

    def process(apdu: bytes) -> bytes:
        seen.append(apdu)
        return b"\x90\x00"

    link = Link(card, process)
    dep = IsoDepInitiator(link, fsc=card.fsc, fwt=card.fwt)
    command = bytes([0x00, 0x87, 0x11, 0x9E, 100]) + bytes(range(100))
    assert dep.exchange(bytearray(command)) == b"\x90\x00"
    assert seen == [command] and sum(1 for b in link.sent if b[0] & 0x10) == 3
