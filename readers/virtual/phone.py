"""A phone presenting a mobile credential over NFC: ISO/IEC 14443-4 (ISO-DEP, Type 4A) card
emulation on nfcpy's `udp` driver, answering with the same PIV applet as the virtual cards.

nfcpy emulates only Type 3 tags, so the ISO-DEP block protocol on the card side is here:
`IsoDepCard` is pure (blocks in, blocks out) and `serve()` moves its blocks over
`clf.listen()` / `clf.exchange()`. The specification an app team builds from is
docs/mobile-credential.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import InputError
from readers.virtual.applet import Leave, PivApplet, Stall
from readers.virtual.cardfile import read_card

log = logging.getLogger(__name__)

FSC_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)  # FSCI/FSDI -> frame size, bytes
FSCI = 8  # we accept frames of 256 bytes
# FWT = 256 * 16 / fc * 2^FWI: 8 -> 77 ms. Every answer here takes < 5 ms; a slower key sends
# S(WTX). A short FWT also lets the reader notice a phone pulled away quickly (nfcpy retries a
# silent frame min(1/FWT, 5) times: about 0.5 s in all at FWI 8, 1.2 s at FWI 11).
FWI = 8
FRAME_OVERHEAD = 3  # PCB + CRC_A; no CID, no NAD
LISTEN_S = 1.0  # one clf.listen() round
IDLE_S = 1.0  # a reader silent this long mid-session has gone (or switched its field off)
MAX_COMMAND_BYTES = 64 * 1024
# The commands a test phone can leave after (the reader's next command gets no answer).
COMMANDS = {"select": 0xA4, "get-data": 0xCB, "general-authenticate": 0x87}


def fwt_seconds(fwi: int) -> float:
    """Frame waiting time for a frame waiting time integer (ISO/IEC 14443-4, 7.2)."""
    return 4096 / 13.56e6 * float(2**fwi)


@dataclass(frozen=True, slots=True)
class Apdu:
    """A whole command APDU reassembled from I-blocks: answer it with `IsoDepCard.respond`."""

    data: bytes


class IsoDepCard:
    """ISO/IEC 14443-4 half-duplex block protocol, card (PICC) side; no CID, no NAD.

    `receive(block)` returns the block to send, an `Apdu` to process, or None to stay mute
    (a protocol error: the reader recovers with R(NAK) or gives up).
    """

    def __init__(self, *, fsci: int = FSCI, fwi: int = FWI) -> None:
        if not 0 <= fsci <= 8 or not 0 <= fwi <= 14:
            raise ValueError("FSCI must be 0..8 and FWI 0..14")
        self.fsci = fsci
        self.fwi = fwi
        self.fsd = 256  # the reader's frame size, from RATS
        self.number = 1  # the PICC's block number starts at 1 (rule C)
        self.last: bytes | None = None  # the last I-block or chaining R(ACK) sent, for resending
        self.rx = bytearray()  # a chained command being received
        self.tx = b""  # the rest of a chained response
        self.deselected = False

    @property
    def fsc(self) -> int:
        return FSC_TABLE[self.fsci]

    @property
    def fwt(self) -> float:
        return fwt_seconds(self.fwi)

    def answer_rats(self, rats: bytes) -> bytes:
        """The ATS for RATS (E0, FSDI << 4 | CID): TL, T0, TA, TB, TC; no historical bytes."""
        if len(rats) < 2 or rats[0] != 0xE0:
            raise ValueError("not a RATS")
        self.fsd = FSC_TABLE[min(rats[1] >> 4, 8)]  # FSDI 9..15: beyond nfcpy, keep 256
        self.number, self.last, self.rx, self.tx = 1, None, bytearray(), b""
        self.deselected = False
        # T0: TA, TB, TC follow | FSCI. TA 80: 106 kbit/s only, same in both directions (nfcpy
        # reads FSCI and FWI at fixed offsets, so TA and TB must be present). TB: FWI, SFGI 0.
        # TC 00: no NAD, no CID.
        return bytes([5, 0x70 | self.fsci, 0x80, self.fwi << 4, 0x00])

    def receive(self, block: bytes) -> bytes | Apdu | None:
        if not block:
            return None
        pcb = block[0]
        if pcb & 0xE2 == 0x02:  # I-block
            if pcb & 0x0C:  # CID or NAD following: not announced in our ATS
                return None
            self.number = pcb & 1  # toggle when the reader's number differs (rule D)
            self.tx = b""
            self.rx += block[1:]
            if len(self.rx) > MAX_COMMAND_BYTES:
                self.rx = bytearray()
                return None
            if pcb & 0x10:  # chaining: acknowledge, wait for more
                return self._sent(bytes([0xA2 | self.number]))
            apdu, self.rx = bytes(self.rx), bytearray()
            return Apdu(apdu)
        if pcb & 0xE6 == 0xA2:  # R-block
            if pcb & 0x08:
                return None
            n = pcb & 1
            if pcb & 0x10:  # R(NAK)
                if n == self.number and self.last is not None:
                    return self.last  # our last block was lost (rule 11)
                # A lost command, or a presence check: answer R(ACK) (rule 12).
                return bytes([0xA2 | self.number])
            if n == self.number:
                return self.last  # R(ACK) of our own number: resend (rule 11)
            if self.tx:  # the reader acknowledged a chained block: the next part (rule 13)
                self.number = n
                return self._next_part()
            return None
        if pcb & 0xF7 == 0xC2:  # S(DESELECT)
            self.deselected = True
            return bytes([0xC2])
        return None  # an unsolicited S(WTX) response or an unknown block

    def respond(self, response: bytes) -> bytes:
        """The first block of a response APDU (data + SW); the rest follows on R(ACK)."""
        self.tx = response
        return self._next_part()

    def wtx_request(self, seconds: float) -> bytes:
        """S(WTX) asking for enough frame waiting times to cover `seconds` (WTXM 1..59)."""
        return bytes([0xF2, min(59, max(1, math.ceil(seconds / self.fwt) + 1))])

    def _next_part(self) -> bytes:
        size = self.fsd - FRAME_OVERHEAD
        part, self.tx = self.tx[:size], self.tx[size:]
        return self._sent(bytes([(0x12 if self.tx else 0x02) | self.number]) + part)

    def _sent(self, block: bytes) -> bytes:
        self.last = block
        return block


@dataclass(frozen=True, slots=True)
class PhoneOptions:
    """How the reference phone behaves in the field (seconds)."""

    dwell: float = 0.3  # held to the reader this long after its last answer, then taken away
    away: float = 0.2  # out of the field between taps
    latency: float = 0.0  # the key's signing time (GENERAL AUTHENTICATE), covered by S(WTX)
    fsci: int = FSCI
    fwi: int = FWI
    leave_after: int | None = None  # INS: on the first tap, go silent after answering this


def _local_target() -> Any:
    import nfc.clf

    # A phone's UID is random per activation (08 xx xx xx): it identifies nothing.
    target = nfc.clf.LocalTarget("106A")
    target.sens_res = bytearray.fromhex("0400")  # ATQA: single-size UID, bit-frame anticollision
    target.sdd_res = bytearray(b"\x08" + os.urandom(3))
    target.sel_res = bytearray.fromhex("20")  # SAK: ISO/IEC 14443-4 compliant
    return target


def _session(clf: Any, rats: bytes, applet: PivApplet, options: PhoneOptions,
             leave_after: int | None) -> tuple[str, bool]:
    """One activation, from RATS to leaving the field: (how it ended, whether any command
    APDU arrived)."""
    import nfc.clf

    card = IsoDepCard(fsci=options.fsci, fwi=options.fwi)
    applet.reset()
    out: bytes | None = card.answer_rats(rats)
    leave_at: float | None = None
    leaving = False
    while True:
        used = leave_at is not None or leaving
        timeout = IDLE_S
        if leave_at is not None:
            timeout = min(timeout, leave_at - time.monotonic())
            if timeout <= 0:
                return "taken away", True
        try:
            block = clf.exchange(out, timeout)
        except nfc.clf.TimeoutError:
            return ("taken away" if leave_at is not None else "reader silent"), used
        except nfc.clf.BrokenLinkError:
            return "reader field off", used
        except nfc.clf.CommunicationError:
            out = None  # a garbled datagram: stay mute, the reader recovers
            continue
        got = card.receive(bytes(block or b""))
        if isinstance(got, Apdu):
            if leaving:
                return "left mid-transaction", True
            try:
                response = applet.process(got.data)
            except Leave:
                return "left mid-transaction", True
            except Stall:  # over ISO-DEP silence reads as gone: the reader's NAKs go unanswered
                return "stalled", True
            ins = got.data[1] if len(got.data) > 1 else None
            if ins == leave_after:
                leaving = True
            if options.latency and ins == 0x87 and not _wait_with_wtx(clf, card, options.latency):
                return "reader gone during WTX", True
            got = card.respond(response)
            leave_at = time.monotonic() + options.dwell
        out = got
        if card.deselected:
            clf.exchange(out, 0)  # send the S(DESELECT) response, expect nothing
            return "deselected", used


def _wait_with_wtx(clf: Any, card: IsoDepCard, seconds: float) -> bool:
    """Keep the reader waiting `seconds` (a slow key) with S(WTX); False if it gave up."""
    import nfc.clf

    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        request = card.wtx_request(remaining)
        try:
            reply = clf.exchange(request, IDLE_S)
        except nfc.clf.CommunicationError:
            return False
        if bytes(reply or b"")[:1] != b"\xf2":
            return False
        # The reader now waits WTXM * FWT for our next block. Work until done or nearly out of
        # that time (here the work is waiting); a reader that speaks meanwhile has given up.
        pause = min(deadline - time.monotonic(), (request[1] - 1) * card.fwt)
        if pause > 0:
            try:
                clf.exchange(None, pause)
            except nfc.clf.TimeoutError:
                continue
            except nfc.clf.CommunicationError:
                pass
            return False
    return True


def serve(port: int, card_path: Path, *, host: str = "127.0.0.1", taps: int | None = None,
          leave_after: str | None = None, options: PhoneOptions | None = None) -> int:
    """Present the phone's credential over nfcpy's udp driver on `port` (the reader's device is
    'udp:HOST:PORT'); tap `taps` times (None: until SIGTERM/SIGINT). `leave_after` names a command
    (select, get-data, general-authenticate) after which the first tap leaves the field.
    Raises InputError for a bad card file, `leave_after` or port. Returns the exit code."""
    import nfc

    opts = options or PhoneOptions()
    if leave_after is not None:
        if leave_after not in COMMANDS:
            raise InputError(f"leave_after: expected one of {', '.join(COMMANDS)}")
        opts = dataclasses.replace(opts, leave_after=COMMANDS[leave_after])
    applet = PivApplet(read_card(card_path))

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        clf = nfc.ContactlessFrontend(f"udp:{host}:{port}")
    except (OSError, ValueError) as e:
        # nfcpy turns a port named in /etc/services into its name, then fails on int().
        raise InputError(f"udp:{host}:{port}: cannot open nfcpy's udp frontend: {e}") from e
    log.info("phone %s listening on udp port %d (bound to all interfaces)", applet.card.name, port)
    done = 0
    try:
        while taps is None or done < taps:
            began = time.monotonic()
            target = clf.listen(_local_target(), LISTEN_S)
            rats = bytes(target.tt4_cmd or b"") if target is not None else b""
            if rats[:1] != b"\xe0":
                # Nothing, or a frame of an earlier session: not an activation. nfcpy's listen
                # returns at once while another process holds the port: do not spin.
                if target is None and time.monotonic() - began < LISTEN_S / 2:
                    time.sleep(0.05)
                continue
            ended, used = _session(clf, rats, applet, opts, opts.leave_after if done == 0 else None)
            if not used:
                # The reader dropped us before any command (e.g. our ATS missed nfcpy's 30 ms):
                # still in the field, so wait to be activated again rather than count a tap.
                log.info("session ended before any command (%s)", ended)
                continue
            done += 1
            log.info("tap %d: %s", done, ended)
            if (taps is None or done < taps) and opts.away > 0:
                time.sleep(opts.away)  # out of the field (a person, not a protocol, decides)
    finally:
        clf.close()
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("expected seconds >= 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--udp", type=int, required=True, metavar="PORT",
                   help="the reader's nfcpy device is udp:HOST:PORT")
    p.add_argument("--card", type=Path, required=True, metavar="CARDFILE")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--taps", type=_count, metavar="N", help="present N times, then exit (default: "
                   "until stopped)")
    p.add_argument("--dwell", type=_positive, default=PhoneOptions().dwell,
                   help="seconds held to the reader after the last answer")
    p.add_argument("--away", type=_positive, default=PhoneOptions().away,
                   help="seconds out of the field between taps")
    p.add_argument("--latency", type=_positive, default=0.0,
                   help="seconds the key takes to sign (covered by S(WTX))")
    p.add_argument("--leave-after", choices=sorted(COMMANDS),
                   help="test: on the first tap, leave the field after answering this command")


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected a count >= 1")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    verbose = getattr(args, "verbose", 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    # nfcpy sets its own logger to INFO on import, which bypasses the root level.
    logging.getLogger("nfc").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    return serve(args.udp, args.card, host=args.host, taps=args.taps, leave_after=args.leave_after,
                 options=PhoneOptions(dwell=args.dwell, away=args.away, latency=args.latency))


def add_cli(subparsers: Any) -> None:
    """Register `phone serve` on the CLI's subparsers (`portvakt phone serve --udp PORT ...`)."""
    phone = subparsers.add_parser("phone", help="mobile credentials over NFC")
    ps = phone.add_subparsers(dest="sub", required=True)
    s = ps.add_parser("serve", help="a phone presenting a card file over nfcpy's udp driver")
    add_arguments(s)
    s.set_defaults(func=_cmd_serve)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m readers.virtual.phone", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return _cmd_serve(args)
    except InputError as e:
        print(f"phone: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
