"""The door driver for one door wired to a Modbus relay board: a strike relay, and optionally a door
contact and an exit button on the board's discrete inputs.

Polarity: a fail-secure strike unlocks when energised (`energise_to_unlock=True`); a fail-safe
strike or maglock unlocks when de-energised (`energise_to_unlock=False`, the coil is held on to
keep the door locked). Inputs: the door contact is active (True) while the door is shut (a
normally-closed reed contact, so a cut wire reads "open"), the exit button is active while pressed.

Overlapping pulses on one door are not coordinated here: one caller (the door state machine)
drives a door.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from door_drivers.modbus import ModbusRelayBoard
from gateway.errors import BoardUnreachable, DoorDriverError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoorInputs:
    """A door's inputs at one moment; None where nothing is wired."""

    contact_open: bool | None
    exit_pressed: bool | None


class RelayDoor:
    """One door: its strike relay (a coil) and optional inputs on a `ModbusRelayBoard`.

    `relock_attempts` writes are tried (`relock_backoff` seconds apart) before a relock is
    reported as failed.
    """

    def __init__(self, board: ModbusRelayBoard, strike_coil: int, *, energise_to_unlock: bool,
                 contact_input: int | None = None, exit_button_input: int | None = None,
                 name: str | None = None, relock_attempts: int = 3,
                 relock_backoff: float = 0.05) -> None:
        if strike_coil < 0:
            raise ValueError(f"strike_coil: expected 0 or more, got {strike_coil}")
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

    def coil_value(self, locked: bool) -> bool:
        """The strike coil's value for `locked` under this door's polarity."""
        return self.energise_to_unlock != locked

    async def set_locked(self, locked: bool) -> None:
        """Lock or unlock until told otherwise. Returns once the board confirmed the write.

        Raises BoardUnreachable or DoorDriverError (one attempt; see `force_safe` for retries).
        """
        await self.board.write_coil(self.strike_coil, self.coil_value(locked))

    async def pulse(self, seconds: float) -> None:
        """Unlock, wait `seconds`, relock. The relock runs even if this call is cancelled or
        the unlock fails (the board may have applied it without the answer arriving); it is
        retried, and a second cancellation does not cut it short either.

        Raises ValueError for a negative or non-finite `seconds`; BoardUnreachable or
        DoorDriverError if the unlock or the relock fails (the relock's error wins, naming the
        door: then the door may be left unlocked). Cancellation propagates after the relock.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"pulse seconds: expected a finite number >= 0, got {seconds}")
        try:
            await self.set_locked(False)
            await asyncio.sleep(seconds)
        finally:
            await self._relock_uncancellable()

    async def force_safe(self) -> None:
        """Lock, retrying like a pulse's relock; for daemon start and shutdown.

        Raises BoardUnreachable or DoorDriverError if the door could not be locked.
        """
        await self._relock_uncancellable()

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
        task = asyncio.ensure_future(self._relock_with_retries())
        cancelled = False
        while True:
            try:
                await asyncio.shield(task)  # returns, or raises the relock's error
                break
            except asyncio.CancelledError:
                if task.cancelled():  # the relock itself was cancelled (event loop shutdown)
                    raise
                # We were asked to stop while relocking: finish the relock first, then stop.
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

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
