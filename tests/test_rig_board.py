"""The simulated relay board, checked with mbpoll (an independent Modbus client)."""

from __future__ import annotations

import os
import signal

import pytest

from gateway.rig.board import RelayBoardRig
from gateway.rig.proc import free_port
from tests.fixtures_board import mbpoll_fails, mbpoll_read, mbpoll_write_coil, wait_for


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
