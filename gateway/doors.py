"""Door runtime: each door's supervision state machine driven by its relay board.

    BoardLink      one per relay board: polls all of the board's inputs in one read every
                   `poll_ms`, keeps the board's watchdog fed, reports the board faulted (and
                   every door on it) when it stops answering, reconnects with exponential backoff.
    DoorController one per door: feeds grants, input readings, faults and modes into the pure
                   `door_drivers.supervision.Door`, journals every event it returns, and drives
                   the strike to what the machine commands, from one task per door.

Safety: the strike is driven only from the door's own task, whose `finally` locks the door
(retried, uncancellable: `RelayDoor.force_safe`) however the task ends. Where the board has timed
pulses (`timed_pulse = true`), a grant is sent as a pulse the board ends by itself, so a gateway
killed mid-pulse still relocks; the board's watchdog (`watchdog_seconds`) de-energises every relay
when the gateway goes silent. None of this is life safety: egress and fire release are hard-wired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from door_drivers.modbus import ModbusRelayBoard
from door_drivers.relay_door import RelayDoor
from door_drivers.supervision import Door, DoorMode, DoorState, DoorTiming, Event, SetStrike, Step
from gateway.config import BoardConfig, DoorConfig
from gateway.errors import DoorDriverError
from gateway.journal import Journal

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.2, 10.0


def timing_of(config: DoorConfig) -> DoorTiming:
    t = config.timing
    return DoorTiming(access_time=t.access, extended_access_time=t.extended_access,
                      open_too_long=t.open_too_long, pre_alarm=t.pre_alarm,
                      relock_on_close=t.relock_on_close, exit_button_unlocks=t.exit_button_unlocks,
                      exit_shunt=t.exit_shunt)


@dataclass(frozen=True)
class DoorSnapshot:
    name: str
    state: str
    mode: str
    strike_unlocked: bool
    contact_open: bool | None
    fault: str | None
    alarm: str | None


class DoorController:
    """One supervised door. Call `run()` as a task; everything else is synchronous and cheap."""

    def __init__(self, config: DoorConfig, driver: RelayDoor, journal: Journal,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.name = config.name
        self.driver = driver
        self.journal = journal
        self.clock = clock
        self.machine, fx = Door.start(timing_of(config), DoorMode.NORMAL, clock())
        self._applied: bool | None = None  # strike state last confirmed by the board (None: unknown)
        self._applied_until: float | None = None  # the board-timed pulse last sent ends then
        self._wake = asyncio.Event()
        self._fault_at: float | None = None  # when a strike write last failed
        self._retry = BACKOFF_FIRST  # wait before retrying the strike after such a failure
        self._feedback: set[asyncio.Task[None]] = set()
        self.on_change: Callable[[DoorController], None] | None = None
        self._emit(fx)

    # -- inputs ------------------------------------------------------------------------------
    def grant(self, extended: bool = False) -> None:
        self._feed(self.machine.on_grant(self.clock(), extended))

    def unlock(self, seconds: float, why: str) -> None:
        self._feed(self.machine.on_unlock(seconds, why, self.clock()))

    def lock(self, why: str) -> None:
        self._feed(self.machine.on_lock(why, self.clock()))

    def inputs(self, bits: tuple[bool, ...], first: int) -> None:
        """One reading of the board's inputs (`bits[0]` is input `first`)."""
        now = self.clock()
        c = self.config
        if c.contact_input is not None:
            closed = bits[c.contact_input - first] == c.contact_closed_when
            self._feed(self.machine.on_contact(not closed, now))
        if c.exit_input is not None:
            pressed = bits[c.exit_input - first] == c.exit_pressed_when
            self._feed(self.machine.on_exit_button(pressed, now))

    def fault(self, reason: str) -> None:
        self._applied = None
        self._feed(self.machine.on_fault(reason, self.clock()))

    def recovered(self) -> None:
        self._fault_at = None
        self._feed(self.machine.on_recovered(self.clock()))

    def board_answered(self) -> None:
        """The board answered a poll. A door faulted by a failed strike write (while the board
        still answers reads) is retried, with a backoff, so it cannot stay faulted unnoticed
        nor flood the journal."""
        if self._fault_at is not None and self.clock() - self._fault_at >= self._retry:
            self._retry = min(self._retry * 2, BACKOFF_MAX * 6)
            self.recovered()

    def set_mode(self, mode: DoorMode) -> None:
        self._feed(self.machine.set_mode(mode, self.clock()))

    def signal(self, granted: bool) -> None:
        """Pulse the feedback outputs: green on a grant; red and the buzzer on a denial."""
        fb = self.config.feedback
        coils = [fb.green] if granted else [fb.red, fb.buzzer]
        for coil in coils:
            if coil is not None:
                task = asyncio.create_task(self._pulse_output(coil, fb.seconds),
                                           name=f"feedback-{self.name}-{coil}")
                self._feedback.add(task)
                task.add_done_callback(self._feedback.discard)

    @property
    def faulted(self) -> bool:
        return self.machine.state is DoorState.FAULT

    def snapshot(self) -> DoorSnapshot:
        m = self.machine
        alarm = m.state.value if m.state.value.endswith("alarm") else None
        return DoorSnapshot(self.name, m.state.value, m.mode.value, m.strike_unlocked,
                            m.contact_open, m.fault, alarm)

    # -- the door's task ---------------------------------------------------------------------
    async def run(self) -> None:
        """Apply timers and drive the strike until cancelled; always ends with the door locked."""
        try:
            while True:
                await self._sync_strike()
                due = self.machine.next_deadline()
                timeout = None if due is None else max(0.0, due - self.clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                self._feed(self.machine.on_tick(max(self.clock(), self.machine.now)))
        finally:
            for task in list(self._feedback):
                task.cancel()
            try:
                await self.driver.force_safe()
            except DoorDriverError as e:
                log.error("door %s: could not lock at stop: %s", self.name, e)
                self.journal.append("door.fault", door=self.name, reason="relock-failed",
                                    detail=str(e))

    async def _sync_strike(self) -> None:
        m = self.machine
        if m.state is DoorState.FAULT:
            return
        want = m.strike_unlocked
        now = self.clock()
        until = m.access_until if want else None
        if want == self._applied and (until is None or until <= (self._applied_until or 0) + 0.05):
            return
        try:
            if not want:
                await self.driver.set_locked(True)
            elif until is None:
                await self.driver.set_locked(False)  # a free mode: held unlocked
            else:
                await self.driver.unlock_for(max(0.1, until - now))
            self._applied, self._applied_until = want, until
            self._retry = BACKOFF_FIRST
        except DoorDriverError as e:
            log.error("door %s: cannot drive the strike: %s", self.name, e)
            self.fault(f"strike: {e}")
            self._fault_at = self.clock()

    async def _pulse_output(self, coil: int, seconds: float) -> None:
        try:
            await self.driver.feedback(coil, seconds)
        except DoorDriverError as e:
            log.warning("door %s: feedback output %d: %s", self.name, coil, e)

    # -- effects -----------------------------------------------------------------------------
    def _feed(self, step: Step) -> None:
        self.machine, fx = step
        if fx:
            self._emit(fx)
            self._wake.set()
            if self.on_change is not None:
                self.on_change(self)

    def _emit(self, fx: tuple[SetStrike | Event, ...]) -> None:
        now_wall, now_mono = time.time(), self.clock()
        for effect in fx:
            if isinstance(effect, Event):
                self.journal.append(effect.kind, door=self.name, detail=effect.detail,
                                    state=self.machine.state.value,
                                    at=round(now_wall - (now_mono - effect.at), 3))
                level = logging.WARNING if effect.kind.startswith(("alarm.", "door.fault")) \
                    else logging.INFO
                log.log(level, "door %s: %s %s", self.name, effect.kind, effect.detail)


class BoardLink:
    """Polls one relay board for all its doors' inputs; reports faults and recovery."""

    def __init__(self, config: BoardConfig, board: ModbusRelayBoard,
                 doors: list[DoorController], journal: Journal) -> None:
        self.config = config
        self.name = config.name
        self.board = board
        self.doors = doors
        self.journal = journal
        self.online: bool | None = None
        self.last_error: str | None = None
        wired = [n for d in doors for n in (d.config.contact_input, d.config.exit_input)
                 if n is not None]
        self.first = min(wired, default=0)
        self.count = max(wired) - self.first + 1 if wired else 0

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                if self.online is not True and self.config.watchdog_seconds:
                    await self.board.set_watchdog(self.config.watchdog_seconds)
                if self.count:
                    bits = await self.board.read_inputs(self.first, self.count)
                else:  # nothing wired: a read still proves the board is there (and feeds its watchdog)
                    bits = ()
                    await self.board.read_coils(self.doors[0].config.relay if self.doors else 0, 1)
            except DoorDriverError as e:
                self._down(str(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            if self.online is not True:
                self._up()
            for door in self.doors:
                door.board_answered()
                door.inputs(bits, self.first)
            await asyncio.sleep(self.config.poll_seconds)

    def _down(self, error: str) -> None:
        self.last_error = error
        if self.online is False:
            return
        self.online = False
        log.error("relay board %s: %s", self.name, error)
        self.journal.append("alarm.board-fault", reason="unreachable", board=self.name,
                            detail=error)
        for door in self.doors:
            door.fault(f"board {self.name}: {error}")

    def _up(self) -> None:
        was = self.online
        self.online, self.last_error = True, None
        self.journal.append("board.online", board=self.name,
                            detail="recovered" if was is False else "connected")
        for door in self.doors:
            door.recovered()
