"""NFC transport (nfcpy): phones and contactless cards over ISO-DEP (ISO/IEC 14443-4, Type 4A).

One worker thread per reader owns the nfcpy frontend; one hop to asyncio per presentation. The
worker polls one technology (106A), activates an ISO-DEP target, runs the card profile over it and
then keeps the field on, checking presence, until the target leaves: a phone held to the reader
is read once, never in a loop.

`device` is an nfcpy path: 'usb:VID:PID' or 'usb:BUS:DEV' for a real frontend (nfcpy claims the
USB device itself: never give it one that pcscd drives), 'udp:HOST:PORT' for the simulated
link used by the tests and `portvakt phone serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nfc
import nfc.clf
import nfc.tag
import nfc.tag.tt4

from gateway.domain import CardFailure, CardRead, ReaderStatus
from gateway.errors import CardError, CardRemoved, CardTimeout, ReaderError
from readers.profile import CardProfile

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25  # one sense per interval when idle (a udp sense itself waits 1 s)
PRESENCE_INTERVAL_S = 0.1  # between presence checks while a target stays in the field
RETRY_MIN_S = 0.5  # reopening a frontend that failed: backoff from here ...
RETRY_MAX_S = 10.0  # ... doubling up to here
STOP_WAIT_S = 5.0
HOLD_OFF_S = 1.0  # after a target whose activation failed

Result = CardRead | CardFailure | ReaderStatus


class _Frontend:
    """The frontend as a tag sees it: every frame first checks for a stop request and the
    transaction deadline, so neither a phone repeating S(WTX) nor a stop has to wait for nfcpy."""

    def __init__(self, clf: Any, stop: threading.Event) -> None:
        self._clf = clf
        self._stop = stop
        self.deadline: float | None = None  # time.monotonic() by which the transaction ends

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def exchange(self, data: Any, timeout: float) -> Any:
        if self._stop.is_set():
            raise nfc.clf.BrokenLinkError("reader stopping")
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise nfc.clf.TimeoutError("transaction deadline passed")
            timeout = min(timeout, remaining)
        return self._clf.exchange(data, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clf, name)


class NfcConnection:
    """An activated ISO-DEP target as a `SmartCardConnection` (short APDUs only)."""

    extended_length = False

    def __init__(self, tag: Any, frontend: _Frontend) -> None:
        self._tag = tag
        self._frontend = frontend

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        try:
            resp = self._tag.transceive(bytearray(apdu))
        except nfc.tag.TagCommandError as e:
            raise self._translate(e, e.errno != nfc.tag.PROTOCOL_ERROR) from e
        except (nfc.clf.TimeoutError, nfc.clf.BrokenLinkError) as e:  # from nfcpy's S(WTX) loop
            raise self._translate(e, True) from e
        except nfc.clf.CommunicationError as e:
            raise self._translate(e, False) from e
        except (IndexError, ValueError) as e:  # nfcpy indexing into a short or odd block
            raise CardError(f"ISO-DEP block nfcpy cannot parse: {e!r}") from e
        except OSError as e:
            raise ReaderError(f"NFC frontend: {e}") from e
        if resp is None or len(resp) < 2:
            raise CardError("ISO-DEP response without a status word")
        return bytes(resp[:-2]), (resp[-2] << 8) | resp[-1]

    def _translate(self, e: Exception, gone: bool) -> CardError:
        if self._frontend.expired:
            return CardTimeout("the credential did not finish its transaction in time")
        if gone:
            return CardRemoved(f"the credential left the field mid-transaction ({e})")
        return CardError(f"ISO-DEP protocol error: {e}")


class NfcReader:
    """Polls one nfcpy frontend for ISO-DEP credentials and runs `profile` once per tap."""

    transport = "nfc"

    def __init__(self, name: str, device: str, profile: CardProfile, *, timeout: float = 3.0,
                 poll_interval: float = POLL_INTERVAL_S) -> None:
        """`device` is an nfcpy path; `timeout` (seconds) bounds one transaction from detection
        to result; `poll_interval` (seconds) is the idle sensing period. Nothing is opened
        before `async with`; a frontend that cannot be opened is reported as ReaderStatus
        offline and retried with backoff (0.5 s doubling to 10 s)."""
        self.name = name  # the door/printer-side name used in events
        self.device = device
        self.profile = profile
        self.timeout = timeout  # seconds from detection to the end of one transaction
        self.poll_interval = poll_interval
        # Diagnostics: seconds from the start of the last ISO-DEP activation (RATS) to the end of
        # its profile exchange.
        self.transaction_seconds: float | None = None
        self._stop = threading.Event()
        self._clf: Any = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[Result] | None = None
        self._backoff = RETRY_MIN_S  # seconds before the next attempt to reopen the frontend

    async def __aenter__(self) -> NfcReader:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Result] = asyncio.Queue()
        self._queue = q

        def post(item: Result) -> None:
            loop.call_soon_threadsafe(q.put_nowait, item)

        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(post,), name=f"nfc-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + STOP_WAIT_S
        while thread.is_alive() and time.monotonic() < deadline:
            self._wake()
            await asyncio.to_thread(thread.join, 0.05)
        if thread.is_alive():
            log.warning("reader %s: worker did not stop within %g s", self.name, STOP_WAIT_S)
        self._thread = None

    async def presentations(self) -> AsyncIterator[Result]:
        """Reader status changes and one result per tap, in order. The worker bounds every
        transaction by `timeout` itself (CardFailure "card-timeout")."""
        q = self._queue
        assert q is not None, "use `async with reader`"
        while True:
            yield await q.get()

    def _wake(self) -> None:
        """nfcpy's udp driver waits 1 s for an answer to each sense and cannot be interrupted;
        a datagram "RFOFF" to its socket ends that wait at once (it reads as a broken link)."""
        clf = self._clf
        if not self.device.startswith("udp"):
            return
        sock = getattr(getattr(clf, "device", None), "socket", None)
        if sock is None:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            host, port = sock.getsockname()[:2]
            if port:
                s.sendto(b"RFOFF", ("127.0.0.1" if host == "0.0.0.0" else host, port))  # noqa: S104

    # --- worker thread -------------------------------------------------------------------
    def _run(self, post: Callable[[Result], None]) -> None:
        online: bool | None = None
        self._backoff = RETRY_MIN_S
        while not self._stop.is_set():
            try:
                clf = nfc.ContactlessFrontend(self.device)
            except Exception as e:  # OSError (no device, busy, access), ValueError (bad path)
                if online is not False:
                    post(ReaderStatus(self.name, False, self.device, f"cannot open: {e}"))
                    online = False
                self._back_off()
                continue
            self._clf = clf
            post(ReaderStatus(self.name, True, self.device, str(clf)))
            online = True
            try:
                self._poll(clf, post)
            except Exception as e:  # the frontend failed (unplugged, I/O error): reopen it
                log.warning("reader %s: frontend failed: %s", self.name, e)
                post(ReaderStatus(self.name, False, self.device, f"frontend failed: {e}"))
                online = False
                self._back_off()
            finally:
                self._clf = None
                with contextlib.suppress(Exception):
                    clf.close()

    def _back_off(self) -> None:
        """Wait before reopening the frontend, longer each time it fails in a row."""
        self._stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)

    def _poll(self, clf: Any, post: Callable[[Result], None]) -> None:
        """Sense, read, wait for the target to leave; returns when asked to stop."""
        while not self._stop.is_set():
            started = time.monotonic()
            target = clf.sense(nfc.clf.RemoteTarget("106A"), iterations=1)
            self._backoff = RETRY_MIN_S  # the frontend works
            if target is None or self._stop.is_set():
                self._stop.wait(max(0.0, self.poll_interval - (time.monotonic() - started)))
                continue
            detected = time.monotonic()
            frontend = _Frontend(clf, self._stop)
            result, tag = self._transaction(frontend, target, detected)
            if result is not None and not self._stop.is_set():
                post(result)
            if tag is not None:
                self._wait_absent(tag)
            elif result is not None:
                # A target that failed activation cannot be watched: hold off instead of
                # reporting it again at every poll.
                self._stop.wait(HOLD_OFF_S)

    def _transaction(self, frontend: _Frontend, target: Any, detected: float
                     ) -> tuple[CardRead | CardFailure | None, Any]:
        """Activate and run the profile; (result or None, the tag to watch or None)."""
        frontend.deadline = detected + self.timeout
        started = time.monotonic()
        try:
            tag = nfc.tag.activate(frontend, target)
        except Exception as e:  # a malformed ATS trips nfcpy's parsing (IndexError)
            return self._failure(CardError(f"ISO-DEP activation failed: {e!r}"), detected), None
        if tag is None:  # no ATS in time: gone already, or too slow for nfcpy's 30 ms
            log.debug("reader %s: target %s did not activate", self.name, target)
            return None, None
        if not isinstance(tag, nfc.tag.tt4.Type4ATag):
            frontend.deadline = None
            return self._failure(CardError(f"not an ISO-DEP credential: {tag.type}"), detected,
                                 "not-piv"), tag
        try:
            result = self.profile.run(NfcConnection(tag, frontend))
        except CardError as e:
            return self._failure(e, detected), tag
        except ReaderError as e:
            return self._failure(e, detected, "reader-error"), tag
        except Exception as e:  # no credential may take the reader down with it
            log.exception("reader %s: unexpected error in a transaction", self.name)
            return self._failure(e, detected, "reader-error"), tag
        finally:
            frontend.deadline = None
            self.transaction_seconds = time.monotonic() - started
        log.debug("reader %s: ISO-DEP activation and PKI-CAK in %.1f ms", self.name,
                  self.transaction_seconds * 1000)
        return CardRead(self.name, result.certificates, result.challenge, result.signature,
                        result.scheme, self.transport, result.aid, detected), tag

    def _failure(self, e: Exception, detected: float, reason: str | None = None) -> CardFailure:
        code = reason or (e.reason if isinstance(e, CardError) else "reader-error")
        return CardFailure(self.name, code, str(e), self.transport, detected)

    def _wait_absent(self, tag: Any) -> None:
        """Keep the field on until the target stops answering presence checks (R(NAK))."""
        while not self._stop.is_set():
            try:
                present = bool(tag.is_present)
            except Exception:  # a presence check nfcpy cannot parse: treat as gone
                present = False
            if not present or self._stop.wait(PRESENCE_INTERVAL_S):
                return
