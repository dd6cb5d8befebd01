"""The door supervision state machine, specified with exact times (seconds on an injected clock)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from door_drivers.supervision import Door, DoorMode, DoorState, DoorTiming, Effect, Event, SetStrike

# Pre-alarm 20 s after opening, alarm 30 s after opening.
TIMING = DoorTiming(access_time=5.0, extended_access_time=20.0, open_too_long=30.0, pre_alarm=10.0,
                    relock_on_close=True, exit_button_unlocks=False, exit_shunt=10.0)
T0 = 1000.0


EXIT_REQUEST = Event("door.exit-request", "exit button pressed", 1001.0)

def start(timing: DoorTiming = TIMING, mode: DoorMode = DoorMode.NORMAL, contact_open: bool = False) -> Door:
    door, _ = Door.start(timing, mode, T0)
    door, _ = door.on_contact(contact_open, T0)
    return door


def kinds(fx: tuple[Effect, ...]) -> list[str]:
    return [e.kind for e in fx if isinstance(e, Event)]


def strikes(fx: tuple[Effect, ...]) -> list[bool]:
    return [e.unlocked for e in fx if isinstance(e, SetStrike)]


def opened_on_grant(timing: DoorTiming = TIMING, opened: float = 1002.5) -> Door:
    door, _ = start(timing).on_grant(T0)
    door, _ = door.on_contact(True, opened)
    return door


# -- start and configuration ---------------------------------------------------------------------

def test_start_in_normal_mode_asserts_the_strike_locked() -> None:
    door, fx = Door.start(TIMING, DoorMode.NORMAL, T0)
    assert fx == (SetStrike(False), Event("door.locked", "start in normal mode", T0))
    assert door.state is DoorState.LOCKED
    assert door.contact_open is None
    assert door.next_deadline() is None


def test_a_closed_reading_after_start_changes_nothing_visible() -> None:
    door, _ = Door.start(TIMING, DoorMode.NORMAL, T0)
    door, fx = door.on_contact(False, T0 + 1)
    assert fx == ()
    assert door.state is DoorState.LOCKED and door.contact_open is False


def test_a_door_found_open_at_start_is_a_forced_opening() -> None:
    door, _ = Door.start(TIMING, DoorMode.NORMAL, T0)
    door, fx = door.on_contact(True, T0)
    assert door.state is DoorState.FORCED_OPEN_ALARM
    assert Event("alarm.forced-open", "found open when supervision resumed", T0) in fx


@pytest.mark.parametrize(("field", "value"), [
    ("access_time", 0.0), ("access_time", float("nan")), ("open_too_long", -1.0),
    ("pre_alarm", 30.0), ("pre_alarm", -0.001), ("extended_access_time", 4.0),
    ("exit_shunt", float("inf")),
])
def test_timing_out_of_range_is_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        changes: dict[str, Any] = {field: value}
        dataclasses.replace(TIMING, **changes)


def test_time_going_backwards_is_refused() -> None:
    door = start()
    with pytest.raises(ValueError, match="monotonic"):
        door.on_tick(T0 - 0.001)
    with pytest.raises(ValueError, match="finite"):
        door.on_tick(float("nan"))


def test_repeated_readings_are_no_ops() -> None:
    door = start()
    again, fx = door.on_contact(False, T0 + 1)
    assert fx == () and again.state is DoorState.LOCKED
    again, fx = door.on_exit_button(False, T0 + 1)
    assert fx == ()


# -- grants and access time ----------------------------------------------------------------------

def test_a_grant_unlocks_for_exactly_access_time() -> None:
    door, fx = start().on_grant(T0)
    assert fx == (SetStrike(True), Event("door.unlocked", "grant", T0))
    assert door.state is DoorState.UNLOCKED
    assert door.next_deadline() == T0 + 5.0

    door, fx = door.on_tick(1004.999)
    assert fx == () and door.state is DoorState.UNLOCKED

    door, fx = door.on_tick(1005.0)
    assert fx == (SetStrike(False), Event("door.locked", "access time over", 1005.0))
    assert door.state is DoorState.LOCKED
    assert door.next_deadline() is None


def test_an_extended_grant_unlocks_for_extended_access_time() -> None:
    door, fx = start().on_grant(T0, extended=True)
    assert fx == (SetStrike(True), Event("door.unlocked", "extended grant", T0))
    assert door.next_deadline() == T0 + 20.0
    door, fx = door.on_tick(1019.999)
    assert door.state is DoorState.UNLOCKED
    door, fx = door.on_tick(1020.0)
    assert strikes(fx) == [False] and door.state is DoorState.LOCKED


def test_a_second_grant_extends_access_time_and_never_shortens_it() -> None:
    door, _ = start().on_grant(T0, extended=True)
    door, fx = door.on_grant(T0 + 1)
    assert fx == ()  # already unlocked
    assert door.next_deadline() == T0 + 20.0
    door, _ = start().on_grant(T0)
    door, fx = door.on_grant(T0 + 4)
    assert fx == () and door.next_deadline() == T0 + 9.0


def test_opening_within_access_time_is_a_valid_opening() -> None:
    door, _ = start().on_grant(T0)
    door, fx = door.on_contact(True, 1004.999)
    assert fx == (Event("door.opened", "access", 1004.999),)
    assert door.state is DoorState.OPEN


def test_opening_at_the_end_of_access_time_is_forced_even_before_the_tick() -> None:
    door, _ = start().on_grant(T0)
    door, fx = door.on_contact(True, 1005.0)  # the relock timer is applied first
    assert fx == (SetStrike(False), Event("door.locked", "access time over", 1005.0),
                  Event("door.opened", "opened without a grant or exit", 1005.0),
                  Event("alarm.forced-open", "opened without a grant or exit", 1005.0))
    assert door.state is DoorState.FORCED_OPEN_ALARM


def test_access_time_ending_while_open_relocks_the_strike_but_keeps_the_door_open() -> None:
    door = opened_on_grant()
    door, fx = door.on_tick(1005.0)
    assert fx == (SetStrike(False), Event("door.locked", "access time over", 1005.0))
    assert door.state is DoorState.OPEN
    assert door.next_deadline() == 1022.5


def test_a_grant_while_open_unlocks_again_without_changing_state() -> None:
    door = opened_on_grant()
    door, _ = door.on_tick(1005.0)
    door, fx = door.on_grant(1006.0)
    assert fx == (SetStrike(True), Event("door.unlocked", "grant", 1006.0))
    assert door.state is DoorState.OPEN


# -- held open -----------------------------------------------------------------------------------

def test_the_pre_alarm_fires_at_exactly_open_too_long_minus_pre_alarm_after_opening() -> None:
    door = opened_on_grant(opened=1002.5)
    door, _ = door.on_tick(1005.0)
    assert door.next_deadline() == 1022.5
    door, fx = door.on_tick(1022.499)
    assert fx == () and door.state is DoorState.OPEN
    door, fx = door.on_tick(1022.5)
    assert fx == (Event("alarm.held-open-prealarm", "open 20 s", 1022.5),)
    assert door.state is DoorState.HELD_OPEN_PREALARM
    assert door.next_deadline() == 1032.5


def test_the_held_open_alarm_fires_at_exactly_open_too_long_after_opening() -> None:
    door = opened_on_grant(opened=1002.5)
    door, _ = door.on_tick(1022.5)
    door, fx = door.on_tick(1032.499)
    assert fx == () and door.state is DoorState.HELD_OPEN_PREALARM
    door, fx = door.on_tick(1032.5)
    assert fx == (Event("alarm.held-open", "open 30 s", 1032.5),)
    assert door.state is DoorState.HELD_OPEN_ALARM
    assert door.next_deadline() is None


def test_a_late_tick_reports_every_timer_at_its_own_deadline_in_order() -> None:
    door = opened_on_grant(opened=1002.5)
    door, fx = door.on_tick(2000.0)
    assert fx == (SetStrike(False), Event("door.locked", "access time over", 1005.0),
                  Event("alarm.held-open-prealarm", "open 20 s", 1022.5),
                  Event("alarm.held-open", "open 30 s", 1032.5))
    assert door.state is DoorState.HELD_OPEN_ALARM


def test_without_pre_alarm_the_door_goes_straight_to_the_held_open_alarm() -> None:
    door = opened_on_grant(dataclasses.replace(TIMING, pre_alarm=0.0), opened=1002.5)
    door, fx = door.on_tick(1032.499)
    assert kinds(fx) == ["door.locked"]
    door, fx = door.on_tick(1032.5)
    assert kinds(fx) == ["alarm.held-open"]


@pytest.mark.parametrize(("closed", "alarm"), [(1032.499, "held-open-prealarm"), (1032.5, "held-open")])
def test_closing_clears_a_held_open_alarm_and_relocks(closed: float, alarm: str) -> None:
    door = opened_on_grant(opened=1002.5)
    door, fx = door.on_contact(False, closed)
    assert fx[-2:] == (Event("door.closed", "", closed),
                       Event("alarm.cleared", f"{alarm}: door closed", closed))
    assert door.state is DoorState.LOCKED and not door.strike_unlocked
    assert door.next_deadline() is None


def test_relock_on_close_locks_at_once_when_the_door_closes_within_access_time() -> None:
    door = opened_on_grant(opened=1001.0)
    door, fx = door.on_contact(False, 1002.0)
    assert fx == (Event("door.closed", "", 1002.0), SetStrike(False),
                  Event("door.locked", "door closed", 1002.0))
    assert door.state is DoorState.LOCKED
    assert door.next_deadline() is None


def test_without_relock_on_close_the_strike_stays_unlocked_until_access_time_ends() -> None:
    door = opened_on_grant(dataclasses.replace(TIMING, relock_on_close=False), opened=1001.0)
    door, fx = door.on_contact(False, 1002.0)
    assert fx == (Event("door.closed", "", 1002.0),)
    assert door.state is DoorState.UNLOCKED
    door, _ = door.on_contact(True, 1003.0)  # a second opening in the same access time is valid
    assert door.state is DoorState.OPEN
    door, _ = door.on_contact(False, 1004.0)
    door, fx = door.on_tick(1005.0)
    assert fx == (SetStrike(False), Event("door.locked", "access time over", 1005.0))
    assert door.state is DoorState.LOCKED


def test_closing_after_access_time_ended_locks_without_a_second_strike_command() -> None:
    door = opened_on_grant(dataclasses.replace(TIMING, relock_on_close=False), opened=1001.0)
    door, _ = door.on_tick(1010.0)
    door, fx = door.on_contact(False, 1011.0)
    assert fx == (Event("door.closed", "", 1011.0),)
    assert door.state is DoorState.LOCKED


def test_reopening_after_relock_on_close_is_forced() -> None:
    door = opened_on_grant(opened=1001.0)
    door, _ = door.on_contact(False, 1002.0)
    door, fx = door.on_contact(True, 1003.0)
    assert door.state is DoorState.FORCED_OPEN_ALARM


# -- forced open and the exit button -------------------------------------------------------------

def test_opening_while_locked_is_forced_and_closing_clears_and_relocks() -> None:
    door, fx = start().on_contact(True, 1001.0)
    assert fx == (Event("door.opened", "opened without a grant or exit", 1001.0),
                  Event("alarm.forced-open", "opened without a grant or exit", 1001.0))
    assert door.state is DoorState.FORCED_OPEN_ALARM
    assert door.next_deadline() is None  # forced is already an alarm; no held-open escalation
    door, fx = door.on_contact(False, 1050.0)
    assert fx == (Event("door.closed", "", 1050.0),
                  Event("alarm.cleared", "forced-open: door closed", 1050.0))
    assert door.state is DoorState.LOCKED and not door.strike_unlocked


def test_the_exit_button_shunts_a_forced_opening_up_to_the_end_of_the_window() -> None:
    door, fx = start().on_exit_button(True, 1001.0)
    assert fx == (EXIT_REQUEST,)  # journaled; no strike pulse unless exit_button_unlocks
    door, _ = door.on_exit_button(False, 1001.5)
    opened, fx = door.on_contact(True, 1011.0)
    assert fx == (Event("door.opened", "exit", 1011.0),)
    assert opened.state is DoorState.OPEN
    assert opened.next_deadline() == 1031.0  # an exit is held-open supervised too


def test_the_exit_button_does_not_shunt_an_opening_after_the_window() -> None:
    door, _ = start().on_exit_button(True, 1001.0)
    door, _ = door.on_contact(True, 1011.001)
    assert door.state is DoorState.FORCED_OPEN_ALARM


def test_holding_the_exit_button_does_not_extend_the_shunt() -> None:
    door, _ = start().on_exit_button(True, 1001.0)
    door, _ = door.on_exit_button(True, 1020.0)  # still held: the same press
    door, _ = door.on_contact(True, 1020.0)
    assert door.state is DoorState.FORCED_OPEN_ALARM


def test_one_exit_press_shunts_one_opening() -> None:
    door, _ = start().on_exit_button(True, 1001.0)
    door, _ = door.on_contact(True, 1002.0)
    door, _ = door.on_contact(False, 1003.0)
    door, _ = door.on_contact(True, 1004.0)
    assert door.state is DoorState.FORCED_OPEN_ALARM


def test_the_shunt_window_is_configurable() -> None:
    door, _ = start(dataclasses.replace(TIMING, exit_shunt=2.0)).on_exit_button(True, 1001.0)
    shunted, _ = door.on_contact(True, 1003.0)
    forced, _ = door.on_contact(True, 1003.001)
    assert shunted.state is DoorState.OPEN and forced.state is DoorState.FORCED_OPEN_ALARM


def test_with_exit_button_unlocks_a_press_pulses_the_strike_for_access_time() -> None:
    door, fx = start(dataclasses.replace(TIMING, exit_button_unlocks=True)).on_exit_button(True, 1001.0)
    assert fx == (EXIT_REQUEST, SetStrike(True), Event("door.unlocked", "exit button", 1001.0))
    assert door.state is DoorState.UNLOCKED and door.next_deadline() == 1006.0
    door, fx = door.on_tick(1006.0)
    assert strikes(fx) == [False] and door.state is DoorState.LOCKED


# -- modes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [DoorMode.FREE_ACCESS, DoorMode.EMERGENCY_OPEN])
def test_free_modes_hold_the_strike_unlocked_and_never_alarm(mode: DoorMode) -> None:
    door, fx = Door.start(TIMING, mode, T0)
    assert fx == (SetStrike(True), Event("door.unlocked", f"start in {mode.value} mode", T0))
    door, fx = door.on_contact(True, 1001.0)
    assert fx == (Event("door.opened", mode.value, 1001.0),)
    assert door.state is DoorState.OPEN and door.next_deadline() is None
    door, fx = door.on_tick(5000.0)
    assert fx == ()
    door, fx = door.on_contact(False, 5001.0)
    assert fx == (Event("door.closed", "", 5001.0),)
    assert door.state is DoorState.UNLOCKED and door.strike_unlocked
    door, fx = door.on_grant(5002.0)
    assert fx == () and door.next_deadline() is None


@pytest.mark.parametrize("mode", [DoorMode.FREE_ACCESS, DoorMode.EMERGENCY_OPEN])
def test_entering_a_free_mode_unlocks_and_clears_a_forced_alarm(mode: DoorMode) -> None:
    door, _ = start().on_contact(True, 1001.0)
    door, fx = door.set_mode(mode, 1002.0)
    assert fx == (Event("door.mode", f"normal -> {mode.value}", 1002.0),
                  Event("alarm.cleared", f"forced-open: mode {mode.value}", 1002.0),
                  SetStrike(True), Event("door.unlocked", f"mode {mode.value}", 1002.0))
    assert door.state is DoorState.OPEN and door.next_deadline() is None


def test_entering_a_free_mode_during_access_time_ends_the_access_timer() -> None:
    door, _ = start().on_grant(T0)
    door, fx = door.set_mode(DoorMode.FREE_ACCESS, 1001.0)
    assert fx == (Event("door.mode", "normal -> free-access", 1001.0),)
    assert door.state is DoorState.UNLOCKED and door.next_deadline() is None


def test_leaving_free_access_with_the_door_closed_locks() -> None:
    door = start(mode=DoorMode.FREE_ACCESS)
    door, fx = door.set_mode(DoorMode.NORMAL, 1001.0)
    assert fx == (Event("door.mode", "free-access -> normal", 1001.0), SetStrike(False),
                  Event("door.locked", "mode normal", 1001.0))
    assert door.state is DoorState.LOCKED


def test_leaving_free_access_with_the_door_open_starts_held_open_timers_then() -> None:
    door = start(mode=DoorMode.FREE_ACCESS, contact_open=True)
    door, _ = door.set_mode(DoorMode.NORMAL, 1010.0)
    assert door.state is DoorState.OPEN and not door.strike_unlocked
    assert door.next_deadline() == 1030.0
    door, fx = door.on_tick(1040.0)
    assert kinds(fx) == ["alarm.held-open-prealarm", "alarm.held-open"]


def test_lockdown_ends_a_running_access_time_at_once() -> None:
    door, _ = start().on_grant(T0)
    door, fx = door.set_mode(DoorMode.LOCKDOWN, 1001.0)
    assert fx == (Event("door.mode", "normal -> lockdown", 1001.0), SetStrike(False),
                  Event("door.locked", "mode lockdown", 1001.0))
    assert door.state is DoorState.LOCKED and door.next_deadline() is None


def test_a_grant_in_lockdown_is_an_override_for_access_time() -> None:
    door, _ = start(mode=DoorMode.LOCKDOWN).on_grant(1001.0)
    assert door.state is DoorState.UNLOCKED
    assert door.next_deadline() == 1006.0
    door, fx = door.on_grant(1002.0, extended=True)
    assert door.next_deadline() == 1022.0
    door, fx = start(mode=DoorMode.LOCKDOWN).on_grant(1001.0)
    assert fx == (SetStrike(True), Event("door.unlocked", "grant (override in lockdown)", 1001.0))


def test_in_lockdown_the_exit_button_does_not_unlock_but_still_shunts_the_exit() -> None:
    timing = dataclasses.replace(TIMING, exit_button_unlocks=True)
    door, fx = start(timing, mode=DoorMode.LOCKDOWN).on_exit_button(True, 1001.0)
    assert fx == (EXIT_REQUEST,) and door.state is DoorState.LOCKED
    door, fx = door.on_contact(True, 1002.0)
    assert door.state is DoorState.OPEN  # egress is free by hardware; an exit is not forced


def test_lockdown_still_supervises_forced_and_held_open() -> None:
    door, _ = start(mode=DoorMode.LOCKDOWN).on_contact(True, 1001.0)
    assert door.state is DoorState.FORCED_OPEN_ALARM
    door, _ = start(mode=DoorMode.LOCKDOWN).on_grant(1001.0)
    door, _ = door.on_contact(True, 1002.0)
    door, fx = door.on_tick(1032.0)
    assert kinds(fx) == ["door.locked", "alarm.held-open-prealarm", "alarm.held-open"]


def test_setting_the_same_mode_is_a_no_op() -> None:
    door, fx = start().set_mode(DoorMode.NORMAL, 1001.0)
    assert fx == ()


# -- fault and recovery --------------------------------------------------------------------------

def test_a_fault_stops_supervision_and_ignores_inputs() -> None:
    door = opened_on_grant(opened=1001.0)
    door, fx = door.on_fault("board unreachable", 1002.0)
    assert fx == (Event("door.fault", "board unreachable", 1002.0),)
    assert door.state is DoorState.FAULT and door.next_deadline() is None
    for step in (lambda d: d.on_contact(False, 1003.0), lambda d: d.on_exit_button(True, 1003.0),
                 lambda d: d.on_grant(1003.0), lambda d: d.on_tick(9000.0),
                 lambda d: d.on_fault("still unreachable", 1003.0)):
        after, fx = step(door)
        assert fx == () and after.state is DoorState.FAULT


def test_recovery_asserts_the_strike_and_the_next_reading_decides_the_state() -> None:
    door, _ = start().on_fault("board unreachable", 1001.0)
    door, fx = door.on_recovered(1010.0)
    assert fx == (SetStrike(False), Event("door.recovered", "was: board unreachable", 1010.0))
    assert door.state is DoorState.LOCKED and door.contact_open is None
    closed, fx = door.on_contact(False, 1010.5)
    assert fx == () and closed.state is DoorState.LOCKED
    found_open, fx = door.on_contact(True, 1010.5)
    assert found_open.state is DoorState.FORCED_OPEN_ALARM
    assert Event("alarm.forced-open", "found open when supervision resumed", 1010.5) in fx


def test_after_recovery_a_grant_makes_an_opening_valid() -> None:
    door, _ = start().on_fault("board unreachable", 1001.0)
    door, _ = door.on_recovered(1010.0)
    door, _ = door.on_grant(1010.0)
    door, fx = door.on_contact(True, 1011.0)
    assert door.state is DoorState.OPEN


def test_a_mode_change_during_a_fault_is_applied_on_recovery() -> None:
    door, _ = start().on_fault("board unreachable", 1001.0)
    door, fx = door.set_mode(DoorMode.EMERGENCY_OPEN, 1002.0)
    assert fx == (Event("door.mode", "normal -> emergency-open", 1002.0),)
    door, fx = door.on_recovered(1003.0)
    assert strikes(fx) == [True] and door.state is DoorState.UNLOCKED


def test_recovered_without_a_fault_is_a_no_op() -> None:
    door, fx = start().on_recovered(1001.0)
    assert fx == ()


# -- properties over random input sequences ------------------------------------------------------

@st.composite
def timings(draw: st.DrawFn) -> DoorTiming:
    access = draw(st.integers(1, 10))
    open_too_long = draw(st.integers(1, 60))
    return DoorTiming(
        access_time=float(access), extended_access_time=float(access + draw(st.integers(0, 20))),
        open_too_long=float(open_too_long), pre_alarm=float(draw(st.integers(0, open_too_long - 1))),
        relock_on_close=draw(st.booleans()), exit_button_unlocks=draw(st.booleans()),
        exit_shunt=float(draw(st.integers(0, 15))),
    )


inputs = st.one_of(
    st.tuples(st.just("grant"), st.booleans()),
    st.tuples(st.just("contact"), st.booleans()),
    st.tuples(st.just("exit"), st.booleans()),
    st.tuples(st.just("tick"), st.none()),
    st.tuples(st.just("fault"), st.none()),
    st.tuples(st.just("recovered"), st.none()),
    st.tuples(st.just("mode"), st.sampled_from(DoorMode)),
)
ENTERED_WITH = {
    DoorState.HELD_OPEN_PREALARM: "alarm.held-open-prealarm",
    DoorState.HELD_OPEN_ALARM: "alarm.held-open",
    DoorState.FORCED_OPEN_ALARM: "alarm.forced-open",
    DoorState.FAULT: "door.fault",
}
steps = st.lists(st.tuples(st.integers(0, 40_000), inputs), max_size=40)


def apply(door: Door, name: str, arg: object, at: float) -> tuple[Door, tuple[Effect, ...]]:
    if name == "grant":
        return door.on_grant(at, extended=bool(arg))
    if name == "contact":
        return door.on_contact(bool(arg), at)
    if name == "exit":
        return door.on_exit_button(bool(arg), at)
    if name == "tick":
        return door.on_tick(at)
    if name == "fault":
        return door.on_fault("board unreachable", at)
    if name == "recovered":
        return door.on_recovered(at)
    assert isinstance(arg, DoorMode)
    return door.set_mode(arg, at)


@settings(max_examples=300, deadline=None)
@given(timing=timings(), mode=st.sampled_from(DoorMode), script=steps)
def test_random_inputs_keep_the_machine_consistent(timing: DoorTiming, mode: DoorMode,
                                                   script: list[tuple[int, tuple[str, object]]]) -> None:
    door, fx = Door.start(timing, mode, 0.0)
    history: list[Effect] = list(fx)
    ms = 0
    grant_until = -1.0  # the end of a grant's access time while nothing has cancelled it
    for dt, (name, arg) in script:
        ms += dt
        at = ms / 1000
        before = door
        if name == "grant" and door.state is not DoorState.FAULT and door.mode not in (
                DoorMode.FREE_ACCESS, DoorMode.EMERGENCY_OPEN):
            seconds = timing.extended_access_time if arg else timing.access_time
            grant_until = max(grant_until, at + seconds)
        if name in ("fault", "mode") or (name == "contact" and not arg and timing.relock_on_close):
            grant_until = -1.0
        door, fx = apply(door, name, arg, at)
        history.extend(fx)
        events = [e for e in fx if isinstance(e, Event)]

        # Every state change is accompanied by an event; every event is timed within the step.
        if door.state is not before.state:
            assert events, (before.state, door.state)
            if door.state in ENTERED_WITH:
                assert ENTERED_WITH[door.state] in [e.kind for e in events]
        assert all(before.now <= e.at <= at for e in events)
        # The strike the machine believes in is the one it last commanded (outside a fault).
        if door.state is not DoorState.FAULT:
            last = [e.unlocked for e in history if isinstance(e, SetStrike)][-1]
            assert last is door.strike_unlocked
        # No timer is ever left overdue.
        due = door.next_deadline()
        assert due is None or due > at
        # A grant's access time protects the opening from being reported forced.
        if door.state is DoorState.FORCED_OPEN_ALARM and before.state is not DoorState.FORCED_OPEN_ALARM:
            assert at >= grant_until

    # After enough time with the door closed in NORMAL mode, the strike always ends locked.
    end = ms / 1000
    for name, arg in (("mode", DoorMode.NORMAL), ("recovered", None), ("contact", False),
                      ("exit", False), ("tick", None)):
        door, fx = apply(door, name, arg, end)
        history.extend(fx)
    door, fx = door.on_tick(end + timing.extended_access_time + timing.open_too_long + 1)
    history.extend(fx)
    assert [e.unlocked for e in history if isinstance(e, SetStrike)][-1] is False
    assert door.state is DoorState.LOCKED and not door.strike_unlocked
    assert door.next_deadline() is None


def test_technician_unlock_runs_for_its_own_time_and_is_ignored_in_fault():
    door, fx = Door.start(DoorTiming(access_time=5), DoorMode.NORMAL, 0.0)
    door, fx = door.on_unlock(60, "delivery (by tech)", 1.0)
    assert SetStrike(True) in fx and door.access_until == 61.0
    door, fx = door.on_tick(60.9)
    assert door.strike_unlocked
    door, fx = door.on_tick(61.0)
    assert SetStrike(False) in fx and door.state is DoorState.LOCKED
    faulted, _ = door.on_fault("board gone", 62.0)
    after, fx = faulted.on_unlock(10, "x", 63.0)
    assert fx == () and not after.strike_unlocked
    with pytest.raises(ValueError, match="seconds"):
        door.on_unlock(float("nan"), "x", 70.0)


def test_technician_lock_ends_the_access_time_but_not_a_free_mode():
    door, _ = Door.start(DoorTiming(access_time=5), DoorMode.NORMAL, 0.0)
    door, _ = door.on_grant(1.0)
    door, fx = door.on_lock("technician", 2.0)
    assert fx == (SetStrike(False), Event("door.locked", "technician", 2.0))
    assert door.state is DoorState.LOCKED and door.next_deadline() is None
    assert door.on_lock("again", 3.0)[1] == ()  # already locked
    free, _ = door.set_mode(DoorMode.FREE_ACCESS, 4.0)
    assert free.on_lock("technician", 5.0)[1] == ()
