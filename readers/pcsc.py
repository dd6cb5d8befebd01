"""PC/SC transport (pyscard over pcscd): one worker thread per reader, one hop to asyncio per card.

Readers are matched by a stable identity: the PC/SC name without its enumeration index
(`"Door0 00 01"` is reader "Door0", slot 1), because the index can change after a replug. A
mapping that matches more than one reader is refused: the wrong door must never open.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from smartcard import scard

from gateway.domain import CardFailure, CardRead, ReaderStatus
from gateway.errors import CardError, CardRemoved, ReaderError
from readers.profile import CardProfile

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^(?P<base>.*) (?P<index>[0-9A-F]{2}) (?P<slot>[0-9A-F]{2})$")
PNP = "\\\\?PnP?\\Notification"
POLL_MS = 1000


def _check(hresult: int, what: str) -> None:
    if hresult != scard.SCARD_S_SUCCESS:
        raise ReaderError(f"{what}: {scard.SCardGetErrorMessage(hresult)} ({hresult & 0xFFFFFFFF:08X})")


def split_name(name: str) -> tuple[str, int]:
    """("Door0", 1) for "Door0 00 01"; a name without indexes is its own base, slot 0."""
    m = NAME_RE.match(name)
    if not m:
        return name, 0
    return m["base"], int(m["slot"], 16)


def resolve_reader(names: list[str], base: str, slot: int) -> str | None:
    """The one PC/SC reader name for (base, slot); ReaderError if several match."""
    found = [n for n in names if split_name(n) == (base, slot)]
    if len(found) > 1:
        raise ReaderError(f"reader {base!r} slot {slot} is ambiguous: {', '.join(found)}")
    return found[0] if found else None


def list_readers(context: int | None = None) -> list[str]:
    own = context is None
    if own:
        hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _check(hr, "connecting to pcscd")
    try:
        hr, names = scard.SCardListReaders(context, [])
        if hr in (scard.SCARD_E_NO_READERS_AVAILABLE,):
            return []
        _check(hr, "listing readers")
        return list(names)
    finally:
        if own:
            scard.SCardReleaseContext(context)


class PcscConnection:
    """An exclusive PC/SC card connection as a `SmartCardConnection`."""

    extended_length = False

    def __init__(self, hcard: int, protocol: int) -> None:
        self.hcard = hcard
        self.protocol = protocol

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        hr, resp = scard.SCardTransmit(self.hcard, self.protocol, list(apdu))
        if hr != scard.SCARD_S_SUCCESS:
            if hr in (scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD,
                      scard.SCARD_W_RESET_CARD):
                raise CardRemoved("card removed during the transaction")
            raise ReaderError(f"transmit: {scard.SCardGetErrorMessage(hr)}")
        if len(resp) < 2:
            # Every ISO 7816 answer ends in a status word; none means the link to the card
            # broke (vpcd reports a card pulled away this way, before pcscd sees it absent).
            raise CardRemoved("the card stopped answering mid-transaction (no status word)")
        return bytes(resp[:-2]), (resp[-2] << 8) | resp[-1]


Result = CardRead | CardFailure | ReaderStatus


@dataclass(frozen=True, slots=True)
class _Started:
    """Posted by the worker when a card transaction begins (for the timeout)."""

    detected_at: float


class PcscReader:
    """Watches one reader slot and runs `profile` once per card insertion."""

    transport = "pcsc"

    def __init__(self, name: str, base: str, slot: int, profile: CardProfile, *,
                 timeout: float = 3.0) -> None:
        self.name = name  # the door/printer-side name used in events
        self.base = base
        self.slot = slot
        self.profile = profile
        self.timeout = timeout  # seconds a card may take for one whole transaction
        self._stop = threading.Event()
        self._context: int | None = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[Result | _Started] | None = None

    async def __aenter__(self) -> PcscReader:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Result | _Started] = asyncio.Queue()
        self._queue = q

        def post(item: Result | _Started) -> None:
            loop.call_soon_threadsafe(q.put_nowait, item)

        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _check(hr, "connecting to pcscd")
        self._context = ctx
        self._thread = threading.Thread(target=self._run, args=(post,),
                                        name=f"pcsc-{self.name}", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        ctx = self._context
        if ctx is not None:
            scard.SCardCancel(ctx)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self._context is not None:
            scard.SCardReleaseContext(self._context)
            self._context = None

    async def presentations(self) -> AsyncIterator[Result]:
        """Reader status changes and one result per card presented, in order.

        A card that has not finished its transaction within `timeout` seconds is reported as
        CardFailure "card-timeout" at that moment; its late result, if any, is dropped."""
        q = self._queue
        assert q is not None, "use `async with reader`"
        late = 0
        while True:
            item = await q.get()
            if isinstance(item, _Started):
                try:
                    result = await asyncio.wait_for(q.get(), self.timeout)
                except TimeoutError:
                    late += 1
                    yield CardFailure(self.name, "card-timeout", f"the card did not complete "
                                      f"its transaction within {self.timeout:g} s",
                                      self.transport, item.detected_at)
                    continue
                assert not isinstance(result, _Started)
                yield result
            elif late and isinstance(item, CardRead | CardFailure):
                late -= 1  # the answer of a card already reported as timed out
            else:
                yield item

    # --- worker thread -------------------------------------------------------------------
    def _offline_wait(self) -> bool:
        """After losing pcscd: drop the context, wait a little; True when asked to stop."""
        ctx, self._context = self._context, None
        if ctx is not None:
            scard.SCardReleaseContext(ctx)
        return self._stop.wait(POLL_MS / 1000)

    def _run(self, post: Callable[[Result | _Started], None]) -> None:
        online: bool | None = None
        while not self._stop.is_set():
            ctx = self._context
            try:
                if ctx is None:
                    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
                    _check(hr, "connecting to pcscd")
                    self._context = ctx
                pcsc_name = resolve_reader(list_readers(ctx), self.base, self.slot)
            except ReaderError as e:
                if online is not False:
                    post(ReaderStatus(self.name, False, None, str(e)))
                    online = False
                if self._offline_wait():
                    return
                continue
            if pcsc_name is None:
                if online is not False:
                    post(ReaderStatus(self.name, False, None, "reader not connected"))
                    online = False
                if self._wait_pnp(ctx):
                    return
                continue
            if online is not True:
                post(ReaderStatus(self.name, True, pcsc_name))
                online = True
            if self._watch(ctx, pcsc_name, post):
                return
            online = None

    def _wait_pnp(self, ctx: int) -> bool:
        """Wait for a reader to be added or removed; True when asked to stop."""
        hr, _ = scard.SCardGetStatusChange(ctx, POLL_MS, [(PNP, scard.SCARD_STATE_UNAWARE)])
        if hr == scard.SCARD_E_CANCELLED or self._stop.is_set():
            return True
        if hr in (scard.SCARD_E_NO_SERVICE, scard.SCARD_E_INVALID_HANDLE):
            return self._offline_wait()
        if hr not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT):
            self._stop.wait(POLL_MS / 1000)  # no PnP support: poll
        return self._stop.is_set()

    def _watch(self, ctx: int, pcsc_name: str, post: Callable[[Result | _Started], None]) -> bool:
        """Follow card insertions on `pcsc_name` until it goes away; True when asked to stop."""
        state = scard.SCARD_STATE_UNAWARE
        present = False
        inserted: int | None = None  # pcsc-lite's insertion counter (upper 16 bits of the state)
        while not self._stop.is_set():
            hr, states = scard.SCardGetStatusChange(ctx, POLL_MS, [(pcsc_name, state)])
            if hr == scard.SCARD_E_CANCELLED:
                return True
            if hr == scard.SCARD_E_TIMEOUT:
                continue
            if hr != scard.SCARD_S_SUCCESS:
                if hr in (scard.SCARD_E_NO_SERVICE, scard.SCARD_E_INVALID_HANDLE):
                    return self._offline_wait()
                return False
            event = states[0][1]
            if event & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
                return False
            state = event & ~scard.SCARD_STATE_CHANGED
            now_present = bool(event & scard.SCARD_STATE_PRESENT)
            count = (event >> 16) & 0xFFFF
            # A new card: present now and absent before, or a swap faster than we looked
            # (the insertion counter moved while the slot stayed occupied).
            new_card = now_present and (not present or count != inserted)
            if new_card and not event & scard.SCARD_STATE_MUTE:
                detected = time.monotonic()
                post(_Started(detected))
                post(self._transaction(ctx, pcsc_name, detected))
            present = now_present
            inserted = count
        return True

    def _transaction(self, ctx: int, pcsc_name: str, detected: float) -> CardRead | CardFailure:
        hr, hcard, proto = scard.SCardConnect(ctx, pcsc_name, scard.SCARD_SHARE_EXCLUSIVE,
                                              scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr != scard.SCARD_S_SUCCESS:
            return CardFailure(self.name, "card-unreadable",
                               f"connect: {scard.SCardGetErrorMessage(hr)}", self.transport,
                               detected)
        disposition = scard.SCARD_RESET_CARD  # log the card out of whatever it did
        try:
            result = self.profile.run(PcscConnection(hcard, proto))
        except CardError as e:
            if isinstance(e, CardRemoved):
                # Resetting a card that is gone left vpcd's slot unable to see the next card
                # (pcscd: "Error resetting card"); there is nothing to reset anyway.
                disposition = scard.SCARD_LEAVE_CARD
            return CardFailure(self.name, e.reason, str(e), self.transport, detected)
        except ReaderError as e:
            disposition = scard.SCARD_LEAVE_CARD
            return CardFailure(self.name, "reader-error", str(e), self.transport, detected)
        except Exception as e:  # no card may take the reader down with it
            log.exception("reader %s: unexpected error in a card transaction", self.name)
            return CardFailure(self.name, "reader-error", f"unexpected: {e}", self.transport,
                               detected)
        finally:
            scard.SCardDisconnect(hcard, disposition)
        return CardRead(self.name, result.certificates, result.challenge, result.signature,
                        result.scheme, self.transport, result.aid, detected)
