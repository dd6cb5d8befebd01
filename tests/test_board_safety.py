"""A killed gateway or a dead link never leaves a relay energised: the board's own timed pulse and
communication-loss watchdog, against the simulated board in its own process (TCP, and RTU over a
socat serial line), timed from the board's write log and cross-checked with mbpoll."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from door_drivers.modbus import PULSE_BASE, WATCHDOG, BoardParams, ModbusRelayBoard, open_boards
from gateway.errors import BoardUnreachable
from tests.conftest import repo_root
from tests.fixtures_board import (
    async_wait_for,
    mbpoll_read,
    mbpoll_read_registers,
    mbpoll_write_registers,
    wait_for,
)

COIL = 2
TOLERANCE = 0.05  # seconds: the board's timers, measured in its own write log



def writes(rig, coil=None, by=None):
    """The board's writes, optionally of one coil, or made by "pulse-timer" / "watchdog"."""
    return [w for w in rig.writes()
            if (coil is None or w["coil"] == coil) and (by is None or w.get("by") == by)]


def fired(rig):
    """The watchdog has written every coil off."""
    return len(writes(rig, by="watchdog")) == rig.coil_count


# --- timed pulse ----------------------------------------------------------------------------------

async def test_the_board_ends_a_timed_pulse_by_itself_on_time(relay_board, board):
    await board.pulse_coil(COIL, 0.4)

    await async_wait_for(lambda: writes(relay_board, COIL, "pulse-timer"), 5, "the pulse timer")
    on, off = writes(relay_board, COIL)
    assert (on["value"], off["value"]) == (True, False)
    assert off["t"] - on["t"] == pytest.approx(0.4, abs=TOLERANCE)
    assert mbpoll_read(relay_board.port, "coils")[COIL] == 0


async def test_a_second_pulse_restarts_the_board_timer(relay_board, board):
    await board.pulse_coil(COIL, 0.3)
    await async_wait_for(lambda: relay_board.coils()[COIL], 5, "the first pulse")
    # Half-way through (the board counts 0.1 s steps down), pulse again.
    while (await board.read_registers(PULSE_BASE + COIL, 1))[0] > 2:
        pass
    await board.pulse_coil(COIL, 0.3)

    await async_wait_for(lambda: writes(relay_board, COIL, "pulse-timer"), 5, "the pulse timer")
    first, second, off = writes(relay_board, COIL)
    assert [w["value"] for w in (first, second, off)] == [True, True, False]
    assert off["t"] - second["t"] == pytest.approx(0.3, abs=TOLERANCE)
    assert off["t"] - first["t"] > 0.3 + TOLERANCE
    assert mbpoll_read(relay_board.port, "coils")[COIL] == 0


async def test_zero_cancels_a_pulse_and_a_coil_write_cancels_its_timer(relay_board, board):
    await board.pulse_coil(COIL, 0.3)
    await board.pulse_coil(COIL + 1, 0.3)
    mbpoll_write_registers(relay_board.port, PULSE_BASE + COIL, 0)  # off now, no timer
    await board.write_coil(COIL + 1, True)  # held on, no timer
    await board.pulse_coil(COIL + 2, 0.5)  # a witness that outlives both timers

    await async_wait_for(lambda: writes(relay_board, COIL + 2, "pulse-timer"), 5, "the witness")
    assert len(writes(relay_board, by="pulse-timer")) == 1  # the witness's only
    assert relay_board.coils()[COIL:COIL + 3] == [False, True, False]
    assert mbpoll_read_registers(relay_board.port, PULSE_BASE + COIL, 3) == [0, 0, 0]


# --- communication-loss watchdog ------------------------------------------------------------------

async def test_the_watchdog_de_energises_every_coil_when_the_client_goes_silent(relay_board,
                                                                              board):
    await board.set_watchdog(1)
    await board.write_coil(COIL, True)
    await board.pulse_coil(COIL + 1, 30)
    last = writes(relay_board)[-1]["t"]
    await board.close()  # the gateway goes silent

    await async_wait_for(lambda: fired(relay_board), 5, "the watchdog")
    off = writes(relay_board, by="watchdog")
    assert [(w["coil"], w["value"]) for w in off] == [(n, False) for n in range(16)]
    assert off[0]["t"] - last == pytest.approx(1.0, abs=TOLERANCE)
    assert relay_board.coils() == [False] * 16
    # Still armed, and the pulse it cut short has no timer left.
    assert mbpoll_read_registers(relay_board.port, PULSE_BASE + COIL + 1) == [0]
    assert mbpoll_read_registers(relay_board.port, WATCHDOG) == [1]


async def test_a_client_that_keeps_polling_keeps_the_watchdog_from_firing(relay_board, board):
    await board.set_watchdog(1)
    await board.write_coil(COIL, True)

    end = time.monotonic() + 2.5  # two and a half watchdog periods of polling every 0.25 s
    while time.monotonic() < end:
        sent = time.time()  # the board saw the last poll between these two times
        await board.read_inputs(0, 16)
        answered = time.time()
        await asyncio.sleep(0.25)  # the poll interval under test, not a wait for a condition
    assert writes(relay_board, by="watchdog") == []
    assert relay_board.coils()[COIL] is True

    await board.close()
    await async_wait_for(lambda: fired(relay_board), 5, "the watchdog after polling stopped")
    fired_at = writes(relay_board, by="watchdog")[0]["t"]
    assert sent + 1.0 - TOLERANCE <= fired_at <= answered + 1.0 + TOLERANCE


# --- the gateway SIGKILLed ------------------------------------------------------------------------

# A gateway at work: it drives the board, reports "started", then idles until it is killed.
_GATEWAY = """
import asyncio, sys
from door_drivers.modbus import BoardParams, ModbusRelayBoard

async def main(port, mode, coil):
    board = ModbusRelayBoard(BoardParams.tcp("127.0.0.1", port))
    if mode == "pulse":
        await board.pulse_coil(coil, 0.6)
    else:
        await board.set_watchdog(1)
        await board.write_coil(coil, True)
    print("started", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
"""


def run_gateway_until_the_coil_is_on(rig, mode, log):
    """Start the gateway script; return its Popen once the board has energised COIL."""
    env = {**os.environ, "PYTHONPATH": str(repo_root())}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _GATEWAY, str(rig.port), mode, str(COIL)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    try:
        wait_for(lambda: writes(rig, COIL) or proc.poll() is not None, 15, "the gateway's write")
        assert proc.poll() is None, log.read_text()
    except BaseException:
        kill(proc)
        raise
    return proc


def kill(proc):
    """SIGKILL the gateway by PID and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)


@pytest.mark.parametrize("mode", ["pulse", "watchdog"])
def test_a_gateway_killed_with_a_relay_on_leaves_it_to_the_board_to_switch_off(
        relay_board, tmp_path, mode):
    gateway = run_gateway_until_the_coil_is_on(relay_board, mode, tmp_path / "gateway.log")
    kill(gateway)
    killed_at = time.time()
    assert gateway.returncode == -signal.SIGKILL

    by, seconds = ("pulse-timer", 0.6) if mode == "pulse" else ("watchdog", 1.0)
    wait_for(lambda: writes(relay_board, COIL, by), 5, f"the board's {by}")
    on, off = writes(relay_board, COIL)
    assert killed_at < off["t"]  # the gateway was dead before the board switched the relay off
    assert (on["value"], off["value"]) == (True, False)
    assert off["t"] - on["t"] == pytest.approx(seconds, abs=TOLERANCE)
    assert mbpoll_read(relay_board.port, "coils")[COIL] == 0


# --- Modbus RTU on a serial line ------------------------------------------------------------------

async def test_rtu_coils_inputs_and_a_timed_pulse_cross_checked_with_mbpoll(rtu_relay_board,
                                                                            serial_line):
    b = ModbusRelayBoard(BoardParams.rtu(serial_line.gateway_end, baud=9600))
    try:
        await b.write_coil(5, True)
        rtu_relay_board.set_input(3, True)
        assert await b.read_coils(0, 8) == tuple(i == 5 for i in range(8))
        assert await b.read_inputs(0, 4) == (False, False, False, True)
        await b.pulse_coil(COIL, 0.3)
        assert (await b.read_registers(PULSE_BASE + COIL, 1))[0] in (2, 3)
    finally:
        await b.close()  # mbpoll opens the same end of the line next

    await async_wait_for(lambda: writes(rtu_relay_board, COIL, "pulse-timer"), 5, "the timer")
    on, off = writes(rtu_relay_board, COIL)
    assert off["t"] - on["t"] == pytest.approx(0.3, abs=TOLERANCE)
    line = serial_line.gateway_end
    assert mbpoll_read(line, "coils", 8) == [0, 0, 0, 0, 0, 1, 0, 0]
    assert mbpoll_read(line, "inputs", 4) == [0, 0, 0, 1]
    assert mbpoll_read_registers(line, PULSE_BASE + COIL) == [0]


async def test_rtu_requests_for_another_unit_are_unanswered_and_do_not_feed_the_watchdog(
        rtu_relay_board, serial_line):
    here, absent = open_boards([BoardParams.rtu(serial_line.gateway_end, unit=1, timeout=0.2),
                                BoardParams.rtu(serial_line.gateway_end, unit=2, timeout=0.2)])
    try:
        await here.set_watchdog(1)
        await here.write_coil(COIL, True)
        last = writes(rtu_relay_board)[-1]["t"]

        unanswered = 0
        deadline = time.monotonic() + 5
        while not fired(rtu_relay_board) and time.monotonic() < deadline:
            with pytest.raises(BoardUnreachable, match=f"{serial_line.gateway_end} unit 2"):
                await absent.pulse_coil(COIL, 1.0)  # the line is busy, but not with unit 1
            unanswered += 1

        assert fired(rtu_relay_board)
        assert unanswered >= 2
        assert writes(rtu_relay_board, by="watchdog")[0]["t"] - last == pytest.approx(
            1.0, abs=TOLERANCE)
        assert await here.read_coils(0, 16) == (False,) * 16
    finally:
        await here.close()
