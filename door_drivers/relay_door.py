"""The door driver for one door wired to a Modbus relay board: a strike relay, and optionally a door
contact and an exit button on the board's discrete inputs.

Polarity: a fail-secure strike unlocks when energised (`energise_to_unlock=True`); a fail-safe
strike or maglock unlocks when de-energised (`energise_to_unlock=False`, the coil is held on to
keep the door locked). Inputs: the door contact is active (True) while the door is shut (a
normally-closed reed contact, so a cut wire reads "open"), the exit button is active while pressed.

Board timers (`timed_pulse=True`, for boards with timed pulse registers): a fail-secure door's
unlock is sent as a timed pulse, so the board relocks by itself after the unlock time even if the
gateway is killed or the link dies. That is the backstop: the caller still relocks explicitly at
the deadline (`set_locked(True)`, `force_safe`), and a relock, being a plain coil write, cancels
the board's timer. A fail-safe door unlocks by de-energising, which a "flash on" pulse cannot
time: it is unlocked with a plain write either way. The board's watchdog (armed by whoever polls
the board, `ModbusRelayBoard.set_watchdog`) de-energises every coil when the gateway goes silent:
that relocks fail-secure doors and feedback outputs, and UNLOCKS fail-safe doors, as a power cut
does.

Overlapping pulses on one door are not coordinated here: one caller (the door state machine)
drives a door.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from door_drivers.modbus import PULSE_COILS, ModbusRelayBoard
from gateway.errors import BoardUnreachable, DoorDriverError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DoorInputs:
    """A door's inputs at one moment; None where nothing is wired."""

    contact_open: bool | None
    exit_pressed: bool | None


class RelayDoor:
    """One door: its strike relay (a coil) and optional inputs on a `ModbusRelayBoard`.

    `relock_attempts` writes are tried (`relock_backoff` seconds apart) before a relock is
    reported as failed. `timed_pulse`: the board has timed pulse registers (see the module
    docstring); then the strike coil, and feedback coils, must be below 256.
    """

    def __init__(self, board: ModbusRelayBoard, strike_coil: int, *, energise_to_unlock: bool,
                 contact_input: int | None = None, exit_button_input: int | None = None,
                 name: str | None = None, relock_attempts: int = 3,
                 relock_backoff: float = 0.05, timed_pulse: bool = False) -> None:
        if strike_coil < 0:
            raise ValueError(f"strike_coil: expected 0 or more, got {strike_coil}")
        if timed_pulse and strike_coil >= PULSE_COILS:
            raise ValueError(f"strike_coil: a timed pulse needs a coil 0..{PULSE_COILS - 1}, "
                             f"got {strike_coil}")
        inputs = {"contact_input": contact_input, "exit_button_input": exit_button_input}
        for label, n in inputs.items():
            if n is not None and n < 0:
                raise ValueError(f"{label}: expected 0 or more, got {n}")
        if relock_attempts < 1:
            raise ValueError(f"relock_attempts: expected 1 or more, got {relock_attempts}")
        self.board = board
        self.strike_coil = strike_coil
        self.energise_to_unlock = energise_to_unlock
        self.contact_input = contact_input
        self.exit_button_input = exit_button_input
        self.name = name or f"door on {board.name} coil {strike_coil}"
        self.relock_attempts = relock_attempts
        self.relock_backoff = relock_backoff
        self.timed_pulse = timed_pulse

    def coil_value(self, locked: bool) -> bool:
        """The strike coil's value for `locked` under this door's polarity."""
        return self.energise_to_unlock != locked

    async def set_locked(self, locked: bool) -> None:
        """Lock or unlock until told otherwise. Returns once the board confirmed the write.

        Raises BoardUnreachable or DoorDriverError (one attempt; see `force_safe` for retries).
        """
        await self.board.write_coil(self.strike_coil, self.coil_value(locked))

    async def unlock_for(self, seconds: float) -> None:
        """Unlock now, for `seconds`; returns once the board confirmed the unlock.

        The caller relocks at the deadline (`set_locked(True)` or `force_safe`). On a fail-secure
        door with `timed_pulse`, the unlock is a timed pulse and the board relocks by itself
        after `seconds` (0.1 s steps, at most 6553.5 s: a longer unlock is relocked by the board
        then), the backstop should the gateway die or the link fail before its relock. Otherwise
        it is a plain unlock that only the caller ends. Calling again before the deadline
        restarts the board's timer.

        Raises ValueError if `seconds` is not finite and > 0; BoardUnreachable or DoorDriverError
        (one attempt; the board may have applied an unlock whose answer was lost).
        """
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"unlock seconds: expected a finite number > 0, got {seconds}")
        if self.timed_pulse and self.energise_to_unlock:
            await self.board.pulse_coil(self.strike_coil, seconds)
        else:
            await self.set_locked(False)

    async def pulse(self, seconds: float) -> None:
        """Unlock, wait `seconds`, relock. The relock runs even if this call is cancelled or
        the unlock fails (the board may have applied it without the answer arriving); it is
        retried, and a second cancellation does not cut it short either. The unlock is
        `unlock_for(seconds)` (a board-timed pulse where the door has one) when `seconds` > 0.

        Raises ValueError for a negative or non-finite `seconds`; BoardUnreachable or
        DoorDriverError if the unlock or the relock fails (the relock's error wins, naming the
        door: then the door may be left unlocked). Cancellation propagates after the relock.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"pulse seconds: expected a finite number >= 0, got {seconds}")
        try:
            if seconds > 0:
                await self.unlock_for(seconds)
            else:
                await self.set_locked(False)
            await asyncio.sleep(seconds)
        finally:
            await self._relock_uncancellable()

    async def force_safe(self) -> None:
        """Lock, retrying like a pulse's relock; for daemon start and shutdown.

        Raises BoardUnreachable or DoorDriverError if the door could not be locked.
        """
        await self._relock_uncancellable()

    async def feedback(self, coil: int, seconds: float) -> None:
        """Pulse a feedback output (an LED or a buzzer) on this door's board for `seconds`:
        `FeedbackOutput(board, coil, timed_pulse=...).pulse(seconds)`, which see."""
        await FeedbackOutput(self.board, coil, timed_pulse=self.timed_pulse).pulse(seconds)

    async def inputs(self) -> DoorInputs:
        """The door contact and exit button, read in one request.

        Raises BoardUnreachable or DoorDriverError.
        """
        wired = [n for n in (self.contact_input, self.exit_button_input) if n is not None]
        if not wired:
            return DoorInputs(contact_open=None, exit_pressed=None)
        first = min(wired)
        bits = await self.board.read_inputs(first, max(wired) - first + 1)
        contact = None if self.contact_input is None else not bits[self.contact_input - first]
        button = None if self.exit_button_input is None else bits[self.exit_button_input - first]
        return DoorInputs(contact_open=contact, exit_pressed=button)

    async def _relock_uncancellable(self) -> None:
        await _finish_despite_cancellation(self._relock_with_retries())

    async def _relock_with_retries(self) -> None:
        last: DoorDriverError | None = None
        for attempt in range(1, self.relock_attempts + 1):
            try:
                await self.set_locked(True)
                return
            except DoorDriverError as exc:
                last = exc
                log.warning("%s: relock attempt %d of %d failed: %s",
                            self.name, attempt, self.relock_attempts, exc)
            if attempt < self.relock_attempts:
                await asyncio.sleep(self.relock_backoff * attempt)
        error = BoardUnreachable if isinstance(last, BoardUnreachable) else DoorDriverError
        log.error("%s: could not relock after %d attempts: %s", self.name, self.relock_attempts,
                  last)
        raise error(f"{self.name}: could not relock after {self.relock_attempts} attempts "
                    f"(the door may be unlocked): {last}") from None


class FeedbackOutput:
    """A feedback output on a relay board coil (an LED, a buzzer): energised = on.

    `timed_pulse`: the board has timed pulse registers (then `coil` must be below 256).
    """

    def __init__(self, board: ModbusRelayBoard, coil: int, *, timed_pulse: bool = False,
                 name: str | None = None) -> None:
        if coil < 0:
            raise ValueError(f"feedback coil: expected 0 or more, got {coil}")
        if timed_pulse and coil >= PULSE_COILS:
            raise ValueError(f"feedback coil: a timed pulse needs a coil 0..{PULSE_COILS - 1}, "
                             f"got {coil}")
        self.board = board
        self.coil = coil
        self.timed_pulse = timed_pulse
        self.name = name or f"output on {board.name} coil {coil}"

    async def pulse(self, seconds: float) -> None:
        """On for `seconds`, then off; returns when the time is up.

        With `timed_pulse` the board times it: one request, and the output goes off even if the
        gateway dies. Otherwise on, wait, off, the off-write in a `finally`. Either way, if this
        call is cancelled the output is written off at once (one attempt), and a second
        cancellation does not cut that write short; cancellation propagates after it.

        Raises ValueError if `seconds` is not finite and > 0; BoardUnreachable or DoorDriverError
        (the off-write's error wins over the on-write's).
        """
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"feedback seconds: expected a finite number > 0, got {seconds}")
        if self.timed_pulse:
            try:
                await self.board.pulse_coil(self.coil, seconds)
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                await _finish_despite_cancellation(self.board.write_coil(self.coil, False))
                raise
            return
        try:
            await self.board.write_coil(self.coil, True)
            await asyncio.sleep(seconds)
        finally:
            await _finish_despite_cancellation(self.board.write_coil(self.coil, False))


async def _finish_despite_cancellation(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled meanwhile (more than once, too);
    then return its result or raise its error, or, if the caller was cancelled and `work`
    succeeded, raise CancelledError."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)  # returns, or raises the work's error
            break
        except asyncio.CancelledError:
            if task.cancelled():  # the work itself was cancelled (event loop shutdown)
                raise
            # We were asked to stop meanwhile: finish the work first, then stop.
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
