"""The simulated relay board, checked with mbpoll (an independent Modbus client)."""

from __future__ import annotations

import os
import signal

import pytest

from door_drivers.modbus import PULSE_BASE, WATCHDOG
from gateway.rig.board import RelayBoardRig
from gateway.rig.proc import free_port
from tests.fixtures_board import (
    mbpoll_fails,
    mbpoll_read,
    mbpoll_read_registers,
    mbpoll_write_coil,
    mbpoll_write_registers,
    wait_for,
)


def test_a_new_board_has_every_relay_and_input_off(relay_board):
    assert mbpoll_read(relay_board.port, "coils") == [0] * 16
    assert mbpoll_read(relay_board.port, "inputs") == [0] * 16
    assert relay_board.coils() == [False] * 16
    assert relay_board.inputs() == [False] * 16
    assert relay_board.writes() == []


def test_board_starts_within_two_seconds(relay_board):
    assert 0 < relay_board.start_seconds < 2.0


def test_coil_addresses_are_zero_based(relay_board):
    mbpoll_write_coil(relay_board.port, 0, True)

    assert relay_board.coils()[0] is True
    assert mbpoll_read(relay_board.port, "coils")[:2] == [1, 0]


def test_every_coil_write_is_logged_with_wall_clock_time(relay_board):
    mbpoll_write_coil(relay_board.port, 3, True)
    mbpoll_write_coil(relay_board.port, 3, False)
    mbpoll_write_coil(relay_board.port, 3, False)  # no change, still a write the board applied

    writes = relay_board.writes()
    assert [(w["coil"], w["value"]) for w in writes] == [(3, True), (3, False), (3, False)]
    assert all(isinstance(w["t"], float) for w in writes)
    assert writes[0]["t"] <= writes[1]["t"] <= writes[2]["t"]


def test_input_set_through_the_control_channel_is_read_by_mbpoll(relay_board):
    relay_board.set_input(5, True)

    assert mbpoll_read(relay_board.port, "inputs")[5] == 1
    assert relay_board.inputs()[5] is True
    relay_board.set_input(5, False)
    assert mbpoll_read(relay_board.port, "inputs")[5] == 0


def test_control_channel_refuses_a_bad_request(relay_board):
    with pytest.raises(ValueError, match="set_input"):
        relay_board.set_input(16, True)
    with pytest.raises(ValueError, match="expected"):
        relay_board._ask({"get": "registers"})


def test_board_refuses_addresses_it_does_not_have_and_other_units(relay_board):
    assert "Illegal data address" in mbpoll_fails(relay_board.port, "-t", "0", "-r", "15", "-c", "2")
    mbpoll_fails(relay_board.port, "-t", "0", "-r", "0", "-c", "1", unit=2)


def test_sigterm_stops_the_board_cleanly(relay_board):
    process = relay_board.process
    os.killpg(process.pid, signal.SIGTERM)

    assert process.popen.wait(5) == 0
    assert not relay_board.control.exists()
    assert "Traceback" not in relay_board.log_file.read_text()


def test_killed_board_restarts_on_the_same_port_de_energised_keeping_its_write_log(relay_board):
    port = relay_board.port
    mbpoll_write_coil(port, 2, True)
    relay_board.kill()
    assert not relay_board.alive()

    relay_board.restart()

    assert relay_board.port == port
    assert mbpoll_read(port, "coils")[2] == 0
    assert [(w["coil"], w["value"]) for w in relay_board.writes()] == [(2, True)]


def test_stop_leaves_no_process_behind(tmp_path):
    board = RelayBoardRig.start(tmp_path / "b")
    pid = board.pid
    assert pid is not None
    with board:
        pass

    wait_for(lambda: not _exists(pid), 5, f"pid {pid} gone")
    board.stop()  # idempotent


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_board_can_be_started_on_a_given_port(tmp_path):
    port = free_port()
    with RelayBoardRig.start(tmp_path / "b", port=port) as board:
        assert board.port == port
        assert mbpoll_read(port, "coils", 1) == [0]


# --- the board's own timers: timed pulse and watchdog (holding registers) -----------------------

def board_writes(rig, coil=None, by=None):
    """The board's writes, optionally of one coil, or made by "pulse-timer" / "watchdog"."""
    return [w for w in rig.writes()
            if (coil is None or w["coil"] == coil) and (by is None or w.get("by") == by)]


def test_a_pulse_register_written_by_mbpoll_is_ended_by_the_board_timer(relay_board):
    mbpoll_write_registers(relay_board.port, PULSE_BASE + 3, 3)  # 0.3 s, function 6

    wait_for(lambda: board_writes(relay_board, 3, "pulse-timer"), 5, "the pulse timer")
    on, off = board_writes(relay_board, 3)
    assert (on["value"], "by" in on) == (True, False)  # a Modbus request turned it on
    assert off == {**off, "value": False, "by": "pulse-timer"}
    assert off["t"] - on["t"] == pytest.approx(0.3, abs=0.05)
    assert mbpoll_read(relay_board.port, "coils")[3] == 0
    assert mbpoll_read_registers(relay_board.port, PULSE_BASE + 3) == [0]


def test_pulse_registers_read_the_time_left_and_zero_cancels(relay_board):
    mbpoll_write_registers(relay_board.port, PULSE_BASE + 4, 3, 600)  # coils 4, 5: function 16

    left_4, left_5 = mbpoll_read_registers(relay_board.port, PULSE_BASE + 4, 2)
    assert 1 <= left_4 <= 3 and 590 <= left_5 <= 600  # 0.1 s units, rounded up
    mbpoll_write_registers(relay_board.port, PULSE_BASE + 5, 0)

    assert mbpoll_read_registers(relay_board.port, PULSE_BASE + 5) == [0]
    assert relay_board.coils()[5] is False
    # Coil 4's pulse ending shows time passed; the cancelled coil 5 never had a timer write.
    wait_for(lambda: board_writes(relay_board, 4, "pulse-timer"), 5, "coil 4's pulse timer")
    assert [(w["value"], w.get("by")) for w in board_writes(relay_board, 5)] == [
        (True, None), (False, None)]
    assert mbpoll_read(relay_board.port, "coils")[4:6] == [0, 0]


def test_the_watchdog_de_energises_every_coil_after_silence_and_stays_armed(relay_board):
    mbpoll_write_registers(relay_board.port, WATCHDOG, 1)
    mbpoll_write_coil(relay_board.port, 0, True)
    mbpoll_write_coil(relay_board.port, 9, True)  # the last request the board hears
    last = board_writes(relay_board, 9)[-1]["t"]

    wait_for(lambda: len(board_writes(relay_board, by="watchdog")) == 16, 5, "the watchdog")
    fired = board_writes(relay_board, by="watchdog")
    assert [(w["coil"], w["value"]) for w in fired] == [(n, False) for n in range(16)]
    assert fired[0]["t"] - last == pytest.approx(1.0, abs=0.05)
    assert relay_board.coils() == [False] * 16
    assert mbpoll_read_registers(relay_board.port, WATCHDOG) == [1]  # still armed


def test_registers_outside_the_map_are_illegal_addresses(relay_board):
    port = relay_board.port
    for first, count in [(PULSE_BASE - 1, 1), (PULSE_BASE + 16, 1),  # 16 coils: 0..15 only
                         (PULSE_BASE + 15, 2), (WATCHDOG - 1, 2), (WATCHDOG + 1, 1), (0, 1)]:
        error = mbpoll_fails(port, "-t", "4", "-r", str(first), "-c", str(count))
        assert "Illegal data address" in error, (first, count)
    assert "Illegal data address" in mbpoll_fails(port, "-t", "4", "-r", str(PULSE_BASE + 16),
                                                  value="5")
    assert "Illegal data address" in mbpoll_fails(port, "-t", "4", "-r", str(PULSE_BASE + 15),
                                                  value="5 5")
    assert relay_board.writes() == []  # a refused multiple write applies nothing


def test_a_board_without_timers_refuses_register_requests_as_illegal_function(
        plain_relay_board):
    port = plain_relay_board.port

    assert "Illegal function" in mbpoll_fails(port, "-t", "4", "-r", str(WATCHDOG))
    assert "Illegal function" in mbpoll_fails(port, "-t", "4", "-r", str(PULSE_BASE), value="5")
    mbpoll_write_coil(port, 1, True)  # its relays work as before
    assert mbpoll_read(port, "coils")[:2] == [0, 1]
