"""A virtual card attached to a vpcd reader slot (vsmartcard): inserting is connecting.

vpcd frames are a 2-byte big-endian length and a payload. A 1-byte payload is a control message
(0 power off, 1 power on, 2 reset, 4 send ATR); anything longer is a command APDU.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import InputError
from readers.virtual.applet import Leave, PivApplet, Stall
from readers.virtual.cardfile import read_card

log = logging.getLogger(__name__)

# T=1, no historical bytes: 3B 80 80 01 01 (TCK = 01).
ATR = bytes.fromhex("3B80800101")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(2, "big") + payload)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to vpcd, retrying until it listens (pcscd loads the driver lazily)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2)
        except OSError as e:
            if time.monotonic() > deadline:
                raise InputError(f"no vpcd reader listening on {host}:{port}: {e}") from e
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def serve(applet: PivApplet, sock: socket.socket, stop: threading.Event,
          on_power_on: Callable[[], None] | None = None) -> None:
    """Answer vpcd until it closes the connection or `stop` is set. `on_power_on` is called
    once, when the reader first powers the card on (pcscd does so when it sees the card)."""
    while not stop.is_set():
        header = _recv_exact(sock, 2)
        if header is None:
            return
        msg = _recv_exact(sock, int.from_bytes(header, "big"))
        if msg is None:
            return
        if len(msg) == 1:
            if msg[0] == 4:
                _send(sock, ATR)
            elif msg[0] in (0, 1, 2):
                applet.reset()
                if msg[0] == 1 and on_power_on is not None:
                    on_power_on()
                    on_power_on = None
            continue
        try:
            _send(sock, applet.process(msg))
        except Stall:
            log.info("card stalls (test behaviour): no answer")
            stop.wait()
            return
        except Leave:
            # A card torn away mid-transaction: the reader gets an answer without a status
            # word, then the card is gone.
            log.info("card leaves mid-transaction (test behaviour)")
            _send(sock, b"")
            return


def run(port: int, card_path: Path, host: str = "127.0.0.1", connect_timeout: float = 10.0) -> int:
    """Insert the card into the vpcd slot at host:port until SIGTERM/SIGINT (removal).

    Prints a line on stdout once the reader has powered the card on ("card NAME inserted ..."),
    and one when the reader closes the connection (pcscd stopped). Raises InputError when no
    reader listens there within `connect_timeout` seconds."""
    card = read_card(card_path)
    applet = PivApplet(card)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sock = connect(host, port, connect_timeout)

    def inserted() -> None:
        print(f"card {card.name} inserted: in the vpcd reader slot at {host}:{port}, powered on "
              "by pcscd (Ctrl-C removes it)", flush=True)

    try:
        serve(applet, sock, stop, on_power_on=inserted)
        if not stop.is_set():
            print(f"card {card.name}: the reader at {host}:{port} closed the connection "
                  "(pcscd stopped?)", flush=True)
    finally:
        sock.close()
    return 0
