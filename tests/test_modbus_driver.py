"""The Modbus relay-board driver and the relay door, against the simulated board (TCP and RTU),
checked from the board's side (its write log, its state) and with mbpoll."""

from __future__ import annotations

import asyncio
import math
import time
import traceback

import pytest

from door_drivers.modbus import (
    PULSE_BASE,
    WATCHDOG,
    BoardParams,
    ModbusRelayBoard,
    frame_gap,
    open_boards,
)
from door_drivers.relay_door import DoorInputs, FeedbackOutput, RelayDoor
from gateway.errors import BoardUnreachable, DoorDriverError
from gateway.rig.proc import free_port
from tests.fixtures_board import async_wait_for, mbpoll_read, mbpoll_read_registers

STRIKE = 2



def strike_writes(rig):
    return [w for w in rig.writes() if w["coil"] == STRIKE]


def coil_writes(rig, coil):
    """(value, by) of each write of `coil`; by is None for a write a Modbus request made."""
    return [(w["value"], w.get("by")) for w in rig.writes() if w["coil"] == coil]


def assert_ours(exc: BaseException, board_name: str) -> None:
    """A project error naming the board, with no pymodbus exception in what a traceback shows."""
    assert type(exc).__module__ == "gateway.errors"
    assert board_name in str(exc)
    assert exc.__cause__ is None
    assert "pymodbus" not in "".join(traceback.format_exception(exc))


# --- the board driver ---------------------------------------------------------------------------

async def test_coil_written_by_the_driver_is_read_by_mbpoll(relay_board, board):
    await board.write_coil(7, True)

    assert mbpoll_read(relay_board.port, "coils")[7] == 1
    assert await board.read_coils(0, 16) == tuple(i == 7 for i in range(16))


async def test_input_set_through_the_control_channel_is_read_by_the_driver(relay_board, board):
    relay_board.set_input(0, True)
    relay_board.set_input(15, True)

    assert await board.read_inputs(0, 16) == tuple(i in (0, 15) for i in range(16))
    assert await board.read_inputs(15, 1) == (True,)


async def test_nothing_listening_is_reported_unreachable_quickly_naming_the_board():
    port = free_port()
    b = ModbusRelayBoard(BoardParams.tcp("127.0.0.1", port, unit=3))
    t0 = time.monotonic()

    with pytest.raises(BoardUnreachable) as connect_error:
        await b.connect()
    with pytest.raises(BoardUnreachable) as write_error:
        await b.write_coil(0, True)

    assert time.monotonic() - t0 < 2.0
    for error in (connect_error.value, write_error.value):
        assert_ours(error, f"board 127.0.0.1:{port} unit 3")
    await b.close()


async def test_a_modbus_exception_answer_is_a_door_driver_error_naming_the_board(
        relay_board, board):
    with pytest.raises(DoorDriverError, match="illegal address") as error:
        await board.read_coils(10, 10)

    assert not isinstance(error.value, BoardUnreachable)
    assert_ours(error.value, f"board 127.0.0.1:{relay_board.port} unit 1")
    assert await board.read_coils(0, 1) == (False,)  # the board is still usable


async def test_a_unit_the_board_does_not_have_is_unreachable(relay_board):
    b = ModbusRelayBoard(BoardParams.tcp("127.0.0.1", relay_board.port, unit=9))

    with pytest.raises(BoardUnreachable, match=r"unit 9: .* 0x0b \(gateway no response\)"):
        await b.read_coils(0, 1)
    await b.close()


async def test_bad_addresses_and_parameters_are_refused_before_the_wire(board):
    with pytest.raises(ValueError):
        await board.read_inputs(0, 0)
    with pytest.raises(ValueError):
        await board.write_coil(-1, True)
    with pytest.raises(ValueError):
        BoardParams(unit=1)  # neither host nor device
    with pytest.raises(ValueError):
        BoardParams.tcp("127.0.0.1", 502, unit=0)
    with pytest.raises(ValueError):
        BoardParams.rtu("/dev/ttyUSB0", timeout=0)


def test_boards_on_one_line_share_one_bus_and_other_lines_do_not():
    a, b, c = open_boards([BoardParams.rtu("/dev/ttyS0", unit=1),
                           BoardParams.rtu("/dev/ttyS0", unit=2),
                           BoardParams.tcp("127.0.0.1", 502, unit=1)])

    assert a.bus is b.bus
    assert c.bus is not a.bus
    with pytest.raises(ValueError, match="listed twice"):
        open_boards([BoardParams.rtu("/dev/ttyS0"), BoardParams.rtu("/dev/ttyS0")])
    with pytest.raises(ValueError, match="cannot share"):
        ModbusRelayBoard(BoardParams.rtu("/dev/ttyS0", unit=2, baud=19200), bus=a.bus)


# --- the board's timers, as the driver offers them ------------------------------------------------

async def test_pulse_coil_is_confirmed_and_the_board_reports_its_time_left(relay_board, board):
    await board.pulse_coil(3, 30.0)

    assert relay_board.coils()[3] is True
    assert 295 <= (await board.read_registers(PULSE_BASE + 3, 1))[0] <= 300  # 0.1 s units
    assert mbpoll_read_registers(relay_board.port, PULSE_BASE + 3)[0] <= 300
    await board.write_coil(3, False)  # a plain write cancels the board's timer
    assert await board.read_registers(PULSE_BASE + 3, 1) == (0,)


async def test_pulse_seconds_are_rounded_to_the_board_step_and_clamped(relay_board, board):
    await board.pulse_coil(0, 0.01)  # shorter than a step: one step
    await board.pulse_coil(1, 1e308)  # longer than the register holds: 6553.5 s
    await board.pulse_coil(2, 12.34)

    left = await board.read_registers(PULSE_BASE, 3)
    assert left[0] <= 1 and left[1] in (65534, 65535) and left[2] in (122, 123)


async def test_set_watchdog_is_read_back(relay_board, board):
    await board.set_watchdog(30)

    assert await board.read_registers(WATCHDOG, 1) == (30,)
    assert mbpoll_read_registers(relay_board.port, WATCHDOG) == [30]
    await board.set_watchdog(0)
    assert await board.read_registers(WATCHDOG, 1) == (0,)


async def test_bad_timer_arguments_are_refused_before_the_wire(relay_board, board):
    for seconds in (-1.0, 0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="seconds"):
            await board.pulse_coil(0, seconds)
    for coil in (-1, 256):
        with pytest.raises(ValueError, match="coil"):
            await board.pulse_coil(coil, 1.0)
    for value in (-1, 65536, True, 1.5):
        with pytest.raises(ValueError, match="watchdog"):
            await board.set_watchdog(value)
    with pytest.raises(ValueError):
        await board.read_registers(0, 126)

    assert relay_board.writes() == []


async def test_a_board_without_timers_is_a_door_driver_error_that_says_so(plain_relay_board):
    b = ModbusRelayBoard(BoardParams.tcp("127.0.0.1", plain_relay_board.port))
    try:
        with pytest.raises(DoorDriverError,
                           match=r"illegal function\): the board has no timed pulse") as pulse:
            await b.pulse_coil(0, 1.0)
        with pytest.raises(DoorDriverError,
                           match=r"illegal function.*no communication watchdog") as watchdog:
            await b.set_watchdog(5)
        for error in (pulse.value, watchdog.value):
            assert not isinstance(error, BoardUnreachable)
            assert_ours(error, f"board 127.0.0.1:{plain_relay_board.port} unit 1")
        assert plain_relay_board.coils()[0] is False
        await b.write_coil(0, True)  # the board is still usable
    finally:
        await b.close()


async def test_a_coil_without_a_pulse_register_is_a_door_driver_error_that_says_so(
        relay_board, board):
    with pytest.raises(DoorDriverError,
                       match=r"coil 20 .*illegal address\): the board has no timed pulse") as e:
        await board.pulse_coil(20, 1.0)  # a 16-relay board

    assert_ours(e.value, f"board 127.0.0.1:{relay_board.port} unit 1")
    with pytest.raises(DoorDriverError, match="illegal address"):
        await board.read_registers(WATCHDOG + 1, 1)


# --- the relay door -----------------------------------------------------------------------------

async def test_pulse_energises_then_de_energises_the_strike_once_each_seconds_apart(
        relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True)

    await door.pulse(0.3)

    on, off = strike_writes(relay_board)  # exactly two writes
    assert (on["value"], off["value"]) == (True, False)
    assert off["t"] - on["t"] == pytest.approx(0.3, abs=0.05)
    assert relay_board.coils()[STRIKE] is False


async def test_fail_safe_polarity_inverts_the_coil_values(relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=False)

    await door.force_safe()
    await door.pulse(0.05)

    assert [w["value"] for w in strike_writes(relay_board)] == [True, False, True]
    assert mbpoll_read(relay_board.port, "coils")[STRIKE] == 1  # held on = locked


async def test_set_locked_follows_the_polarity(relay_board, board):
    secure = RelayDoor(board, 0, energise_to_unlock=True)
    safe = RelayDoor(board, 1, energise_to_unlock=False)

    await secure.set_locked(False)
    await safe.set_locked(False)
    assert relay_board.coils()[:2] == [True, False]
    await secure.set_locked(True)
    await safe.set_locked(True)
    assert relay_board.coils()[:2] == [False, True]


async def test_cancelling_a_pulse_mid_way_still_relocks(relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True)
    pulse = asyncio.create_task(door.pulse(30))
    await async_wait_for(lambda: len(strike_writes(relay_board)) == 1, 5, "the unlock write")

    pulse.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pulse

    assert [w["value"] for w in strike_writes(relay_board)] == [True, False]
    assert relay_board.coils()[STRIKE] is False


async def test_cancelling_a_pulse_during_its_unlock_write_still_relocks_after_it(
        relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True)
    pulse = asyncio.create_task(door.pulse(30))
    await asyncio.sleep(0)  # the pulse has queued its unlock request and waits for the answer

    pulse.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pulse

    # The unlock request finished (a request is never cut in half), then the relock followed.
    assert [w["value"] for w in strike_writes(relay_board)] == [True, False]


async def test_a_second_cancel_does_not_cut_the_relock_short(relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True)
    pulse = asyncio.create_task(door.pulse(30))
    await async_wait_for(lambda: len(strike_writes(relay_board)) == 1, 5, "the unlock write")

    pulse.cancel()
    await asyncio.sleep(0)  # the pulse is now in its relock
    pulse.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pulse

    assert [w["value"] for w in strike_writes(relay_board)] == [True, False]


async def test_door_inputs_are_read_with_their_meaning(relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True, contact_input=4,
                     exit_button_input=6)
    relay_board.set_input(4, True)  # contact closed: the door is shut

    assert await door.inputs() == DoorInputs(contact_open=False, exit_pressed=False)
    relay_board.set_input(4, False)
    relay_board.set_input(6, True)
    assert await door.inputs() == DoorInputs(contact_open=True, exit_pressed=True)
    bare = RelayDoor(board, STRIKE, energise_to_unlock=True)
    assert await bare.inputs() == DoorInputs(contact_open=None, exit_pressed=None)


@pytest.mark.parametrize("energise_to_unlock", [True, False], ids=["fail-secure", "fail-safe"])
async def test_board_killed_mid_pulse_fails_the_pulse_and_a_restarted_board_is_made_safe(
        relay_board, board, energise_to_unlock):
    door = RelayDoor(board, STRIKE, energise_to_unlock=energise_to_unlock)
    pulse = asyncio.create_task(door.pulse(0.5))
    await async_wait_for(lambda: len(strike_writes(relay_board)) == 1, 5, "the unlock write")

    relay_board.kill()
    with pytest.raises(DoorDriverError, match="could not relock") as error:
        await pulse
    assert_ours(error.value, f"board 127.0.0.1:{relay_board.port} unit 1")

    relay_board.restart()
    await board.connect()
    await door.force_safe()

    locked = 0 if energise_to_unlock else 1
    assert mbpoll_read(relay_board.port, "coils")[STRIKE] == locked
    assert strike_writes(relay_board)[-1]["value"] == bool(locked)


# --- Modbus RTU over a socat serial line --------------------------------------------------------

async def test_rtu_coil_write_is_read_back(rtu_relay_board, serial_line):
    b = ModbusRelayBoard(BoardParams.rtu(serial_line.gateway_end, baud=9600))
    await b.connect()
    try:
        await b.write_coil(5, True)
        rtu_relay_board.set_input(1, True)

        assert await b.read_coils(0, 8) == tuple(i == 5 for i in range(8))
        assert await b.read_inputs(0, 4) == (False, True, False, False)
        assert rtu_relay_board.coils()[5] is True
    finally:
        await b.close()


async def test_rtu_unit_that_is_not_on_the_line_is_unreachable(rtu_relay_board, serial_line):
    here, absent = open_boards([BoardParams.rtu(serial_line.gateway_end, unit=1, timeout=0.2),
                                BoardParams.rtu(serial_line.gateway_end, unit=2, timeout=0.2)])
    try:
        with pytest.raises(BoardUnreachable) as error:
            await absent.read_coils(0, 1)
        assert_ours(error.value, f"board {serial_line.gateway_end} unit 2")
        assert await here.read_coils(0, 1) == (False,)  # the line is still good for unit 1
    finally:
        await here.close()


# --- timed unlocks and feedback outputs --------------------------------------------------------

async def test_unlock_for_on_a_fail_secure_timed_door_is_relocked_by_the_board(relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True, timed_pulse=True)

    await door.unlock_for(0.3)

    await async_wait_for(lambda: coil_writes(relay_board, STRIKE)[-1:] == [(False, "pulse-timer")],
                         5, "the board's own relock")
    on, off = strike_writes(relay_board)
    assert off["t"] - on["t"] == pytest.approx(0.3, abs=0.05)


async def test_the_callers_relock_cancels_the_board_timer(relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True, timed_pulse=True)

    await door.unlock_for(30)
    assert (await board.read_registers(PULSE_BASE + STRIKE, 1))[0] > 0
    await door.set_locked(True)

    assert await board.read_registers(PULSE_BASE + STRIKE, 1) == (0,)
    assert coil_writes(relay_board, STRIKE) == [(True, None), (False, None)]


@pytest.mark.parametrize(("energise_to_unlock", "timed_pulse"),
                         [(True, False), (False, True), (False, False)],
                         ids=["fail-secure-untimed", "fail-safe-timed", "fail-safe-untimed"])
async def test_unlock_for_is_a_plain_unlock_without_a_board_timer(relay_board, board,
                                                                  energise_to_unlock, timed_pulse):
    door = RelayDoor(board, STRIKE, energise_to_unlock=energise_to_unlock, timed_pulse=timed_pulse)

    await door.unlock_for(30)

    assert coil_writes(relay_board, STRIKE) == [(door.coil_value(False), None)]
    assert await board.read_registers(PULSE_BASE + STRIKE, 1) == (0,)


async def test_pulse_on_a_timed_door_arms_the_board_timer_and_still_relocks_itself(
        relay_board, board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True, timed_pulse=True)

    await door.pulse(0.2)  # the board's timer and our relock both end it, whichever first

    assert relay_board.coils()[STRIKE] is False
    assert coil_writes(relay_board, STRIKE)[0] == (True, None)
    assert all(value is False for value, _ in coil_writes(relay_board, STRIKE)[1:])
    assert await board.read_registers(PULSE_BASE + STRIKE, 1) == (0,)


async def test_unlock_for_refuses_bad_seconds(board):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True, timed_pulse=True)
    for seconds in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="seconds"):
            await door.unlock_for(seconds)
    with pytest.raises(ValueError, match="timed pulse"):
        RelayDoor(board, 256, energise_to_unlock=True, timed_pulse=True)


@pytest.mark.parametrize("timed_pulse", [True, False], ids=["board-timed", "gateway-timed"])
async def test_feedback_output_is_on_for_its_time_then_off(relay_board, board, timed_pulse):
    led = FeedbackOutput(board, 11, timed_pulse=timed_pulse)
    t0 = time.monotonic()

    await led.pulse(0.2)

    assert time.monotonic() - t0 >= 0.2
    await async_wait_for(lambda: len(coil_writes(relay_board, 11)) == 2, 5, "the output off")
    on, off = (w for w in relay_board.writes() if w["coil"] == 11)
    assert (on["value"], off["value"]) == (True, False)
    assert off.get("by") == ("pulse-timer" if timed_pulse else None)
    assert off["t"] - on["t"] == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("timed_pulse", [True, False], ids=["board-timed", "gateway-timed"])
async def test_cancelled_feedback_is_switched_off_at_once(relay_board, board, timed_pulse):
    door = RelayDoor(board, STRIKE, energise_to_unlock=True, timed_pulse=timed_pulse)
    buzzer = asyncio.create_task(door.feedback(12, 30))
    await async_wait_for(lambda: coil_writes(relay_board, 12) == [(True, None)], 5, "buzzer on")

    buzzer.cancel()
    await asyncio.sleep(0)  # the output is now being switched off
    buzzer.cancel()  # a second cancel does not skip the off-write
    with pytest.raises(asyncio.CancelledError):
        await buzzer

    assert coil_writes(relay_board, 12) == [(True, None), (False, None)]
    assert await board.read_registers(PULSE_BASE + 12, 1) == (0,)


def test_the_rtu_frame_gap_is_three_and_a_half_characters_or_1_75_ms_above_19200_baud():
    assert frame_gap(9600) == pytest.approx(0.00401, abs=1e-5)  # 3.5 x 11 bits / 9600
    assert frame_gap(19200) == pytest.approx(0.002005, abs=1e-6)
    assert frame_gap(38400) == frame_gap(115200) == 0.00175


async def test_rtu_requests_back_to_back_are_kept_a_frame_gap_apart(rtu_relay_board, serial_line):
    b = ModbusRelayBoard(BoardParams.rtu(serial_line.gateway_end, baud=9600))
    await b.read_inputs(0, 1)  # connected; the next request waits for the gap already
    t0 = time.monotonic()
    for _ in range(20):
        await b.read_inputs(0, 16)
    elapsed = time.monotonic() - t0
    await b.close()

    # A pty carries the bytes at once: without the gap, 20 polls take ~6 ms.
    assert elapsed >= 20 * frame_gap(9600)
