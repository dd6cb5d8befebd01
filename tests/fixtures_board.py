"""Fixtures for the simulated relay board (a pytest plugin: `-p tests.fixtures_board`), and mbpoll
as the independent Modbus client tests check the board with (TCP, or RTU on a serial line).

A board starts in ~0.16 s (most of it importing pymodbus), so each test gets its own.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from door_drivers.modbus import BoardParams, ModbusRelayBoard
from gateway.rig.board import RelayBoardRig, SerialLine

_MBPOLL_VALUE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)\s*$", re.MULTILINE)
# A 16-bit register prints unsigned, and signed in brackets when that differs: "[257]: 65535 (-1)".
_MBPOLL_REGISTER = re.compile(r"^\[(\d+)\]:\s+(\d+)(?:\s+\(-?\d+\))?\s*$", re.MULTILINE)


@pytest.fixture
def relay_board(tmp_path) -> Iterator[RelayBoardRig]:
    """A simulated Modbus TCP relay board (unit 1, 16 coils, 16 inputs), stopped afterwards."""
    board = RelayBoardRig.start(tmp_path / "board")
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def plain_relay_board(tmp_path) -> Iterator[RelayBoardRig]:
    """A TCP relay board without timed pulse and watchdog: register requests get exception 1."""
    board = RelayBoardRig.start(tmp_path / "plain-board", timers=False)
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
async def board(relay_board):
    """A connected driver for `relay_board`."""
    b = ModbusRelayBoard(BoardParams.tcp("127.0.0.1", relay_board.port))
    await b.connect()
    yield b
    await b.close()


@pytest.fixture
def serial_line(tmp_path) -> Iterator[SerialLine]:
    """A socat pty pair: `board_end` for the board, `gateway_end` for the driver."""
    line = SerialLine.start(tmp_path / "line")
    try:
        yield line
    finally:
        line.stop()


@pytest.fixture
def rtu_relay_board(tmp_path, serial_line) -> Iterator[RelayBoardRig]:
    """A simulated relay board serving Modbus RTU on `serial_line.board_end`."""
    board = RelayBoardRig.start(tmp_path / "rtu-board", serial=serial_line.board_end)
    try:
        yield board
    finally:
        board.stop()


def mbpoll_read(where: int | str, table: str, count: int = 16, *, unit: int = 1) -> list[int]:
    """Read `count` coils (table "coils") or discrete inputs ("inputs") from address 0 with mbpoll,
    from the TCP board on port `where` (an int) or the RTU board on serial device `where` (a str).

    mbpoll prints one `[n]: <TAB>value` line per reference; fails the test if it exits non-zero.
    """
    kind = {"coils": "0", "inputs": "1"}[table]
    result = _mbpoll(where, unit, "-t", kind, "-r", "0", "-c", str(count))
    values = {int(n): int(v) for n, v in _MBPOLL_VALUE.findall(result.stdout)}
    assert sorted(values) == list(range(count)), result.stdout
    return [values[n] for n in range(count)]


def mbpoll_write_coil(where: int | str, coil: int, value: bool, *, unit: int = 1) -> None:
    """Write one coil with mbpoll (`-t 0 -r N HOST VALUE`)."""
    _mbpoll(where, unit, "-t", "0", "-r", str(coil), value="1" if value else "0")


def mbpoll_read_registers(where: int | str, first: int, count: int = 1, *,
                          unit: int = 1) -> list[int]:
    """Read holding registers first .. first+count-1 with mbpoll (`-t 4`, function 3)."""
    result = _mbpoll(where, unit, "-t", "4", "-r", str(first), "-c", str(count))
    values = {int(n): int(v) for n, v in _MBPOLL_REGISTER.findall(result.stdout)}
    assert sorted(values) == list(range(first, first + count)), result.stdout
    return [values[n] for n in range(first, first + count)]


def mbpoll_write_registers(where: int | str, first: int, *values: int, unit: int = 1) -> None:
    """Write holding registers from `first` with mbpoll (`-t 4`): one value is a write-single-
    register request (function 6), several a write-multiple-registers request (function 16)."""
    _mbpoll(where, unit, "-t", "4", "-r", str(first), value=" ".join(str(v) for v in values))


def mbpoll_fails(where: int | str, *args: str, unit: int = 1, value: str | None = None) -> str:
    """Run an mbpoll read (or, with `value`, a write) expected to fail; returns its stderr."""
    result = _mbpoll(where, unit, *args, value=value, check=False)
    assert result.returncode != 0, result.stdout
    return result.stderr


def _mbpoll(where: int | str, unit: int, *args: str, value: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    # -0: addresses from 0, -1: one poll and exit, -q: no banner. A serial device is Modbus RTU,
    # 9600 8N1 as the rig's boards (a pty ignores the speed anyway).
    if isinstance(where, int):
        link = ["-m", "tcp", "-p", str(where)]
        target = "127.0.0.1"
    else:
        link = ["-m", "rtu", "-b", "9600", "-P", "none", "-o", "0.5"]
        target = where
    argv = ["mbpoll", *link, "-a", str(unit), "-0", "-1", "-q", *args,
            target] + (value.split() if value is not None else [])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a cheap local condition until true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


async def async_wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_for` for async tests: lets the event loop run between polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)
