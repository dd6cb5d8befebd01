"""Door supervision: the state machine for one door, pure and clock-injected.

Every input is a method that takes the time `at` (seconds on a monotonic clock) and returns a new
immutable `Door` and a tuple of effects (`SetStrike`, `Event`) for the caller to carry out and
journal. Nothing here does I/O, sleeps or reads a clock: the daemon feeds it Modbus input polls,
grants and ticks, and sleeps until `next_deadline()`. Each input first applies the timers that
fell due up to `at`, in order and each at its own deadline, so a late tick or an input that
arrives before the tick gives the same answer as a punctual one.

Safety: this is supervision, not life safety. It decides when the strike is released for a
grant and reports doors that are forced or held open; it never stands between a person and the
way out. Egress (handles, exit buttons wired to the strike supply) and fire release are
hard-wired, and a board's own timers end a pulse even if the gateway dies.

Event kinds: door.unlocked / door.locked (the strike), door.opened / door.closed (the contact),
door.exit-request (the exit button pressed),
alarm.held-open-prealarm, alarm.held-open, alarm.forced-open, alarm.cleared, door.fault,
door.recovered, door.mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

__all__ = [
    "Door",
    "DoorMode",
    "DoorState",
    "DoorTiming",
    "Effect",
    "Event",
    "SetStrike",
    "Step",
]


class DoorState(Enum):
    LOCKED = "locked"  # door closed (or not yet read), strike locked
    UNLOCKED = "unlocked"  # door closed, strike unlocked (access time running, or a free mode)
    OPEN = "open"  # door open on a grant, an exit or a free mode
    HELD_OPEN_PREALARM = "held-open-prealarm"
    HELD_OPEN_ALARM = "held-open-alarm"
    FORCED_OPEN_ALARM = "forced-open-alarm"
    FAULT = "fault"  # the board is unreachable: inputs unseen, strike unknown


class DoorMode(Enum):
    NORMAL = "normal"
    FREE_ACCESS = "free-access"  # scheduled unlocked
    LOCKDOWN = "lockdown"  # held locked; a grant is an override, the exit button does not unlock
    EMERGENCY_OPEN = "emergency-open"


_HELD_UNLOCKED = frozenset({DoorMode.FREE_ACCESS, DoorMode.EMERGENCY_OPEN})
_DOOR_OPEN = frozenset({DoorState.OPEN, DoorState.HELD_OPEN_PREALARM, DoorState.HELD_OPEN_ALARM,
                        DoorState.FORCED_OPEN_ALARM})
_ALARM_KIND = {
    DoorState.HELD_OPEN_PREALARM: "held-open-prealarm",
    DoorState.HELD_OPEN_ALARM: "held-open",
    DoorState.FORCED_OPEN_ALARM: "forced-open",
}


def _seconds(name: str, value: float, *, positive: bool) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        expected = "more than 0" if positive else "0 or more"
        raise ValueError(f"{name}: expected a finite number of seconds, {expected}, got {value!r}")


@dataclass(frozen=True)
class DoorTiming:
    """One door's timers, all in seconds.

    access_time: the strike stays unlocked this long after a grant (or an exit-button pulse).
    extended_access_time: the same for people flagged as needing more time (accessibility).
    open_too_long: the door may stand open this long after a valid opening before HELD_OPEN_ALARM.
    pre_alarm: the held-open pre-alarm starts this long before the alarm (0: no pre-alarm).
    relock_on_close: relock as soon as the door closes after opening, not when access time ends.
    exit_button_unlocks: a press of the exit button also unlocks the strike for access_time.
    exit_shunt: a door opening within this long after an exit-button press is an exit, not forced.

    Raises ValueError naming the field when a value is out of range.
    """

    access_time: float = 5.0
    extended_access_time: float = 15.0
    open_too_long: float = 30.0
    pre_alarm: float = 10.0
    relock_on_close: bool = True
    exit_button_unlocks: bool = False
    exit_shunt: float = 10.0

    def __post_init__(self) -> None:
        _seconds("access_time", self.access_time, positive=True)
        _seconds("extended_access_time", self.extended_access_time, positive=True)
        _seconds("open_too_long", self.open_too_long, positive=True)
        _seconds("pre_alarm", self.pre_alarm, positive=False)
        _seconds("exit_shunt", self.exit_shunt, positive=False)
        if self.extended_access_time < self.access_time:
            raise ValueError(f"extended_access_time: expected at least access_time ({self.access_time}), "
                             f"got {self.extended_access_time}")
        if self.pre_alarm >= self.open_too_long:
            raise ValueError(f"pre_alarm: expected less than open_too_long ({self.open_too_long}), "
                             f"got {self.pre_alarm}")


@dataclass(frozen=True)
class SetStrike:
    """Drive the strike: unlocked=True releases the door, False locks it."""

    unlocked: bool


@dataclass(frozen=True)
class Event:
    """Something to journal; `at` is when it happened (a timer's deadline, not the late tick)."""

    kind: str
    detail: str
    at: float


Effect = SetStrike | Event
Step = tuple["Door", tuple[Effect, ...]]


@dataclass(frozen=True)
class Door:
    """The supervised state of one door. Build with `Door.start`; never mutate.

    strike_unlocked is what the machine last commanded; contact_open is None until the first
    contact reading after start or recovery; access_until ends the running access time;
    opened_at starts the held-open timers; exit_at is an exit-button press not yet used as a shunt.
    """

    timing: DoorTiming
    mode: DoorMode
    state: DoorState
    now: float
    strike_unlocked: bool
    contact_open: bool | None = None
    exit_pressed: bool = False
    access_until: float | None = None
    opened_at: float | None = None
    exit_at: float | None = None
    fault: str | None = None

    # -- inputs ---------------------------------------------------------------------------------

    @classmethod
    def start(cls, timing: DoorTiming, mode: DoorMode, at: float) -> Step:
        """A door at gateway start: strike asserted for `mode`, contact unknown until read.

        Raises ValueError for a non-finite `at`.
        """
        _check_finite(at)
        unlocked = mode in _HELD_UNLOCKED
        door = cls(timing, mode, DoorState.UNLOCKED if unlocked else DoorState.LOCKED, at, unlocked)
        kind = "door.unlocked" if unlocked else "door.locked"
        return door, (SetStrike(unlocked), Event(kind, f"start in {mode.value} mode", at))

    def on_tick(self, at: float) -> Step:
        """Apply the timers due by `at`. Raises ValueError if `at` is before `now` or not finite."""
        fx: list[Effect] = []
        return self._advance(at, fx), tuple(fx)

    def on_grant(self, at: float, extended: bool = False) -> Step:
        """A granted presentation: unlock for access_time (extended_access_time if `extended`).

        A running access time is extended, never shortened. In LOCKDOWN the grant is an override
        (the caller decided it may be). Ignored in a free mode (already unlocked) and in FAULT (the
        strike cannot be driven; the caller journals its decision). Raises ValueError as on_tick.
        """
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is DoorState.FAULT or door.mode in _HELD_UNLOCKED:
            return door, tuple(fx)
        seconds = door.timing.extended_access_time if extended else door.timing.access_time
        why = "extended grant" if extended else "grant"
        if door.mode is DoorMode.LOCKDOWN:
            why += " (override in lockdown)"
        return door._unlock_for(at, seconds, why, fx), tuple(fx)

    def on_unlock(self, seconds: float, why: str, at: float) -> Step:
        """A technician's unlock (e.g. for a delivery): like a grant, for `seconds`.

        Ignored, like a grant, in a free mode and in FAULT. Raises ValueError for seconds that
        are not finite and positive, and as on_tick.
        """
        _seconds("seconds", seconds, positive=True)
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is DoorState.FAULT or door.mode in _HELD_UNLOCKED:
            return door, tuple(fx)
        return door._unlock_for(at, seconds, why, fx), tuple(fx)

    def on_lock(self, why: str, at: float) -> Step:
        """A technician's lock: ends a running access time now. No effect in a free mode (change
        the mode for that) or in FAULT. Raises ValueError as on_tick."""
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is DoorState.FAULT or door.mode in _HELD_UNLOCKED or not door.strike_unlocked:
            return door, tuple(fx)
        door = door._lock(at, why, fx)
        if door.state is DoorState.UNLOCKED:
            door = replace(door, state=DoorState.LOCKED)
        return door, tuple(fx)

    def on_contact(self, open: bool, at: float) -> Step:
        """A door contact reading (repeated readings are no-ops; ignored in FAULT).

        Raises ValueError as on_tick.
        """
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is DoorState.FAULT or door.contact_open is open:
            return door, tuple(fx)
        door = door._opened(at, fx) if open else door._closed(at, "door closed", fx)
        return door, tuple(fx)

    def on_exit_button(self, pressed: bool, at: float) -> Step:
        """An exit-button reading. A press (the edge, not holding it) shunts the forced-open alarm
        for exit_shunt seconds and, with exit_button_unlocks in NORMAL mode, unlocks the strike for
        access_time. Ignored in FAULT. Raises ValueError as on_tick.
        """
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is DoorState.FAULT or door.exit_pressed is pressed:
            return door, tuple(fx)
        door = replace(door, exit_pressed=pressed)
        if pressed:
            fx.append(Event("door.exit-request", "exit button pressed", at))
            door = replace(door, exit_at=at)
            if door.timing.exit_button_unlocks and door.mode is DoorMode.NORMAL:
                door = door._unlock_for(at, door.timing.access_time, "exit button", fx)
        return door, tuple(fx)

    def on_fault(self, reason: str, at: float) -> Step:
        """The board is unreachable: timers stop, inputs are unknown. Repeats are no-ops.

        Raises ValueError as on_tick.
        """
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is DoorState.FAULT:
            return door, tuple(fx)
        fx.append(Event("door.fault", reason, at))
        door = replace(door, state=DoorState.FAULT, fault=reason, contact_open=None, exit_pressed=False,
                       exit_at=None, access_until=None, opened_at=None)
        return door, tuple(fx)

    def on_recovered(self, at: float) -> Step:
        """The board answers again: the strike is asserted for the mode and the state is
        re-derived from the next contact reading (until then the door is taken as closed).
        A no-op unless in FAULT. Raises ValueError as on_tick.
        """
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if door.state is not DoorState.FAULT:
            return door, tuple(fx)
        unlocked = door.mode in _HELD_UNLOCKED
        fx.append(SetStrike(unlocked))
        fx.append(Event("door.recovered", f"was: {door.fault}", at))
        door = replace(door, state=DoorState.UNLOCKED if unlocked else DoorState.LOCKED, fault=None,
                       strike_unlocked=unlocked)
        return door, tuple(fx)

    def set_mode(self, mode: DoorMode, at: float) -> Step:
        """Change the door's mode. Entering FREE_ACCESS or EMERGENCY_OPEN unlocks and clears alarms;
        leaving them locks, and a door still open starts its held-open timers now; entering
        LOCKDOWN ends any running access time. Raises ValueError as on_tick.
        """
        fx: list[Effect] = []
        door = self._advance(at, fx)
        if mode is door.mode:
            return door, tuple(fx)
        fx.append(Event("door.mode", f"{door.mode.value} -> {mode.value}", at))
        old, door = door.mode, replace(door, mode=mode)
        if door.state is DoorState.FAULT:
            return door, tuple(fx)  # on_recovered asserts the strike for the mode
        why = f"mode {mode.value}"
        if mode in _HELD_UNLOCKED:
            if door.state in _ALARM_KIND:
                fx.append(Event("alarm.cleared", f"{_ALARM_KIND[door.state]}: {why}", at))
            if not door.strike_unlocked:
                fx.append(SetStrike(True))
                fx.append(Event("door.unlocked", why, at))
            state = DoorState.OPEN if door.contact_open else DoorState.UNLOCKED
            return replace(door, state=state, strike_unlocked=True, access_until=None,
                           opened_at=None), tuple(fx)
        if old in _HELD_UNLOCKED:
            door = door._lock(at, why, fx)
            if door.contact_open:
                return replace(door, state=DoorState.OPEN, opened_at=at), tuple(fx)
            return replace(door, state=DoorState.LOCKED), tuple(fx)
        if mode is DoorMode.LOCKDOWN and door.strike_unlocked:
            door = door._lock(at, why, fx)
            if door.state is DoorState.UNLOCKED:
                door = replace(door, state=DoorState.LOCKED)
        return door, tuple(fx)

    # -- timers ---------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `on_tick` must next be called (seconds, same clock as `at`), or None if no timer runs."""
        if self.state is DoorState.FAULT:
            return None
        due: list[float] = []
        if self.strike_unlocked and self.access_until is not None:
            due.append(self.access_until)
        if self.opened_at is not None:
            t = self.timing
            if self.state is DoorState.OPEN and t.pre_alarm > 0:
                due.append(self.opened_at + (t.open_too_long - t.pre_alarm))
            elif self.state in (DoorState.OPEN, DoorState.HELD_OPEN_PREALARM):
                due.append(self.opened_at + t.open_too_long)
        return min(due, default=None)

    def _advance(self, at: float, fx: list[Effect]) -> Door:
        _check_finite(at)
        if at < self.now:
            raise ValueError(f"at: expected {self.now} or later (a monotonic clock), got {at}")
        door = self
        while (due := door.next_deadline()) is not None and due <= at:
            door = door._expire(due, fx)
        return replace(door, now=at)

    def _expire(self, due: float, fx: list[Effect]) -> Door:
        """Apply every timer that falls due at exactly `due` (each call ends at least one)."""
        door = self
        if door.strike_unlocked and door.access_until is not None and door.access_until <= due:
            door = door._lock(due, "access time over", fx)
            if door.state is DoorState.UNLOCKED:
                door = replace(door, state=DoorState.LOCKED)
        opened, t = door.opened_at, door.timing
        if opened is not None:
            if (door.state is DoorState.OPEN and t.pre_alarm > 0
                    and opened + (t.open_too_long - t.pre_alarm) <= due):
                fx.append(Event("alarm.held-open-prealarm", f"open {t.open_too_long - t.pre_alarm:g} s", due))
                door = replace(door, state=DoorState.HELD_OPEN_PREALARM)
            elif (door.state in (DoorState.OPEN, DoorState.HELD_OPEN_PREALARM)
                    and opened + t.open_too_long <= due):
                fx.append(Event("alarm.held-open", f"open {t.open_too_long:g} s", due))
                door = replace(door, state=DoorState.HELD_OPEN_ALARM)
        return door

    # -- transitions ----------------------------------------------------------------------------

    def _unlock_for(self, at: float, seconds: float, why: str, fx: list[Effect]) -> Door:
        until = at + seconds
        if self.access_until is not None:
            until = max(until, self.access_until)
        door = replace(self, access_until=until)
        if not door.strike_unlocked:
            fx.append(SetStrike(True))
            fx.append(Event("door.unlocked", why, at))
            door = replace(door, strike_unlocked=True)
            if door.state is DoorState.LOCKED:
                door = replace(door, state=DoorState.UNLOCKED)
        return door

    def _lock(self, at: float, why: str, fx: list[Effect]) -> Door:
        if self.strike_unlocked:
            fx.append(SetStrike(False))
            fx.append(Event("door.locked", why, at))
        return replace(self, strike_unlocked=False, access_until=None)

    def _opened(self, at: float, fx: list[Effect]) -> Door:
        # An opening seen as the first reading (after start or recovery) has no known cause.
        unseen = self.contact_open is None
        door = replace(self, contact_open=True)
        if door.mode in _HELD_UNLOCKED:
            fx.append(Event("door.opened", door.mode.value, at))
            return replace(door, state=DoorState.OPEN)
        if door.strike_unlocked:
            fx.append(Event("door.opened", "found open" if unseen else "access", at))
            return replace(door, state=DoorState.OPEN, opened_at=at)
        if door.exit_at is not None and at - door.exit_at <= door.timing.exit_shunt:
            fx.append(Event("door.opened", "exit", at))
            return replace(door, state=DoorState.OPEN, opened_at=at, exit_at=None)
        cause = "found open when supervision resumed" if unseen else "opened without a grant or exit"
        fx.append(Event("door.opened", cause, at))
        fx.append(Event("alarm.forced-open", cause, at))
        return replace(door, state=DoorState.FORCED_OPEN_ALARM, opened_at=None)

    def _closed(self, at: float, why: str, fx: list[Effect]) -> Door:
        door = replace(self, contact_open=False, opened_at=None)
        if self.state in _DOOR_OPEN:
            fx.append(Event("door.closed", "", at))
        if self.state in _ALARM_KIND:
            fx.append(Event("alarm.cleared", f"{_ALARM_KIND[self.state]}: {why}", at))
        if door.mode in _HELD_UNLOCKED:
            return replace(door, state=DoorState.UNLOCKED)
        if door.strike_unlocked and not (door.timing.relock_on_close and self.state in _DOOR_OPEN):
            return replace(door, state=DoorState.UNLOCKED)
        return replace(door._lock(at, "door closed", fx), state=DoorState.LOCKED)


def _check_finite(at: float) -> None:
    if not math.isfinite(at):
        raise ValueError(f"at: expected a finite time in seconds, got {at!r}")
