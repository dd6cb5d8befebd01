"""A Modbus relay board in its own process: coils are relays, discrete inputs are terminals.

    python -m door_drivers.simulator --port P [--host 127.0.0.1] [--unit 1] [--coils 16]
        [--inputs 16] [--write-log FILE] [--control PATH] [--no-timers] [--show-writes]
    python -m door_drivers.simulator --serial DEVICE [--baud 9600] ...   (Modbus RTU)
    portvakt board serve ...   (the same options; --show-writes on by default)

Once it serves, the board prints one line on stdout ("relay board ready: ..."); with
--show-writes one more per coil write ("12:00:01 coil 0 on").

Addresses are 0-based as on a real board: coil 0 is the first relay, input 0 the first terminal.
Requests for another unit id get exception 0x0B over TCP and no answer over RTU (the other boards
on an RS-485 line stay silent too).

Holding registers (functions 3 read, 6 write one, 16 write several): the board's own timers, like
those of Waveshare or Eletechsup relay boards, at the addresses the driver speaks
(`door_drivers.modbus`; `--no-timers`: a board without them, whose every register request gets
exception 1, illegal function):
- `PULSE_BASE + n` (0x0100 + n) for each coil n < 256: timed pulse ("flash on"). Writing v
  (1..65535, 0.1 s units) turns coil n on at once and off after v * 0.1 s, by the board's timer.
  A later pulse write restarts the timer, a coil write (functions 5, 15) cancels it, writing 0
  cancels it and turns the coil off. Reads give the time left (0.1 s units rounded up, 0 if none).
- `WATCHDOG` (0x0200): communication-loss watchdog, seconds (0 = off, the default). Once no
  request for this unit has reached the board's data (a read or write of coils, inputs or
  registers, answered or refused) for that long, the board writes every coil off and cancels
  every pulse. It fires once per silence and stays armed: the next request starts it again.
Any other register address, or a range straddling two registers' blocks, gets exception 2 (illegal
address). Timers are the event loop's (`call_at`), in the server's loop; nothing is persisted: a
restarted board has no timers running and its watchdog off, as after a power cycle.

Write log (`--write-log`): one JSON line per coil write as the board applies it,
`{"t": <time.time() seconds>, "coil": n, "value": bool}`, flushed per line, so a test can measure
a pulse from the board's side. A write of the value a coil already has is logged too. Writes the
board makes on its own carry `"by"`: `"pulse-timer"` (a pulse ended) or `"watchdog"`; writes a
Modbus request made (a coil write, a pulse starting, a pulse cancelled by 0) have no `"by"`, so
the log of a board driven only over Modbus reads as before.

Control channel (`--control`, a Unix socket, newline-delimited JSON, one answer line per request)
drives what Modbus cannot write:
    {"set_input": n, "value": true} -> {"ok": true}
    {"get": "coils"}                -> {"coils": [false, ...]}
    {"get": "inputs"}               -> {"inputs": [false, ...]}
A bad request gets {"ok": false, "error": "..."}. The control socket is created only after the
Modbus side listens (or has opened the serial port), so its existence means "ready".

Pitfalls (pymodbus 3.11): `ModbusDeviceContext` adds 1 to every address before it reaches the
data block (a sequential block starting at 0 makes coil 0 the block's second value), and the
datastore classes change between minors. The board therefore implements the small
`ModbusBaseDeviceContext` interface itself, 0-based, with no data block at all.
The server awaits the context's `async_getValues`/`async_setValues` (the watchdog listens there);
a write-single-register answer echoes what `getValues(6, ...)` reads back, not the request, so a
pulse register reads back as written the instant after the write (rounded up, see above).
The 3.11 server answers only the first request in a TCP segment: a second, pipelined request is
dropped without an answer. Clients must wait for each answer before sending (the driver does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusBaseDeviceContext, ModbusServerContext

from door_drivers.modbus import PULSE_BASE, PULSE_COILS, WATCHDOG

if TYPE_CHECKING:
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

_COIL_CODES = frozenset({1, 5, 15})  # read coils, write single coil, write multiple coils
_INPUT_CODES = frozenset({2})  # read discrete inputs
_REGISTER_CODES = frozenset({3, 6, 16})  # read holding, write single, write multiple registers
_MAX_UNIX_PATH = 107  # bytes in sockaddr_un.sun_path, without the terminating NUL


class SimulatedBoard:
    """The board's state: relays (coils), input terminals, the timed pulses and the watchdog,
    plus the write log. Its timers need a running event loop (the server's)."""

    def __init__(self, coils: int, inputs: int, write_log: IO[str] | None, *,
                 timers: bool = True, show_writes: bool = False) -> None:
        self.coils = [False] * coils
        self.show_writes = show_writes
        self.inputs = [False] * inputs
        self.timers = timers
        self.pulse_coils = min(coils, PULSE_COILS)
        self.watchdog_seconds = 0
        self._write_log = write_log
        self._pulses: dict[int, asyncio.TimerHandle] = {}  # coil -> its pulse's end
        self._last_request = 0.0  # event-loop time
        self._watchdog: asyncio.TimerHandle | None = None

    def write_coils(self, first: int, values: list[bool]) -> None:
        """A Modbus coil write: applied and logged; it cancels those coils' pulses."""
        for offset, value in enumerate(values):
            self._cancel_pulse(first + offset)
            self._apply(first + offset, bool(value))

    def _apply(self, n: int, value: bool, by: str | None = None) -> None:
        self.coils[n] = value
        if self._write_log is not None:
            line: dict[str, Any] = {"t": time.time(), "coil": n, "value": value}
            if by is not None:
                line["by"] = by
            self._write_log.write(json.dumps(line) + "\n")
            self._write_log.flush()
        if self.show_writes:
            print(f"{time.strftime('%H:%M:%S')} coil {n} {'on' if value else 'off'}"
                  f"{f' ({by})' if by else ''}", flush=True)

    # --- holding registers -------------------------------------------------------------------

    def _registers_exist(self, address: int, count: int) -> bool:
        """Whether [address, address+count) lies within one implemented block of registers."""
        blocks = (range(PULSE_BASE, PULSE_BASE + self.pulse_coils), range(WATCHDOG, WATCHDOG + 1))
        return count >= 1 and any(address in b and address + count - 1 in b for b in blocks)

    def read_registers(self, address: int, count: int) -> list[int] | None:
        """Register values, or None if the range is not implemented."""
        if not self._registers_exist(address, count):
            return None
        return [self.watchdog_seconds if a == WATCHDOG else self._pulse_left(a - PULSE_BASE)
                for a in range(address, address + count)]

    def write_registers(self, address: int, values: list[int]) -> bool:
        """Apply register writes (0..65535 each, as Modbus carries them) in order; False, with
        nothing applied, if the range is not implemented."""
        if not self._registers_exist(address, len(values)):
            return False
        for a, v in enumerate(values, start=address):
            if a == WATCHDOG:
                self._set_watchdog(v)
            else:
                self._start_pulse(a - PULSE_BASE, v)
        return True

    def _start_pulse(self, n: int, units: int) -> None:
        self._cancel_pulse(n)
        if units == 0:
            self._apply(n, False)
            return
        loop = asyncio.get_running_loop()
        self._pulses[n] = loop.call_at(loop.time() + units / 10, self._pulse_ends, n)
        self._apply(n, True)

    def _pulse_ends(self, n: int) -> None:
        del self._pulses[n]
        self._apply(n, False, by="pulse-timer")

    def _cancel_pulse(self, n: int) -> None:
        handle = self._pulses.pop(n, None)
        if handle is not None:
            handle.cancel()

    def _pulse_left(self, n: int) -> int:
        handle = self._pulses.get(n)
        if handle is None:
            return 0
        left = handle.when() - asyncio.get_running_loop().time()
        # Rounded up, so a pulse just written reads back as written (the write's echo).
        return max(0, min(0xFFFF, math.ceil(left * 10 - 1e-6)))

    # --- watchdog ----------------------------------------------------------------------------

    def heard_request(self) -> None:
        """A request for this unit reached the board: the watchdog starts counting again."""
        loop = asyncio.get_running_loop()
        self._last_request = loop.time()
        if self.watchdog_seconds and self._watchdog is None:
            self._watchdog = loop.call_at(self._last_request + self.watchdog_seconds,
                                          self._watchdog_check)

    def _set_watchdog(self, seconds: int) -> None:
        self.watchdog_seconds = seconds
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.heard_request()  # this write is a request: count from now

    def _watchdog_check(self) -> None:
        # One timer per silence, pushed back to the latest request's deadline when it fires
        # early, rather than one timer rescheduled on every request.
        self._watchdog = None
        if not self.watchdog_seconds:
            return
        loop = asyncio.get_running_loop()
        due = self._last_request + self.watchdog_seconds
        if loop.time() < due - 0.0005:
            self._watchdog = loop.call_at(due, self._watchdog_check)
            return
        for n in range(len(self.coils)):
            self._cancel_pulse(n)
            self._apply(n, False, by="watchdog")


class _BoardContext(ModbusBaseDeviceContext):
    """pymodbus' view of the board: 0-based coils, discrete inputs and holding registers.

    Every request for this unit passes through `async_getValues` or `async_setValues` (pymodbus
    calls the async pair), which is where the watchdog hears it.
    """

    def __init__(self, board: SimulatedBoard) -> None:
        self.board = board

    async def async_getValues(self, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        self.board.heard_request()
        return self.getValues(func_code, address, count)

    async def async_setValues(self, func_code: int, address: int,
                              values: list[int] | list[bool]) -> ExcCodes | None:
        self.board.heard_request()
        return self.setValues(func_code, address, values)

    def _table(self, func_code: int) -> list[bool] | None:
        if func_code in _COIL_CODES:
            return self.board.coils
        if func_code in _INPUT_CODES:
            return self.board.inputs
        return None

    def reset(self) -> None:
        """Nothing to reset: a board keeps its relays across Modbus connections."""

    def getValues(self, func_code: int, address: int,
                  count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if func_code in _REGISTER_CODES:  # 6 reads back its register for the echo
            if not self.board.timers:
                return ExcCodes.ILLEGAL_FUNCTION
            registers = self.board.read_registers(address, count)
            return ExcCodes.ILLEGAL_ADDRESS if registers is None else registers
        table = self._table(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or count < 1 or address + count > len(table):
            return ExcCodes.ILLEGAL_ADDRESS
        return table[address : address + count]

    def setValues(self, func_code: int, address: int,
                  values: list[int] | list[bool]) -> ExcCodes | None:
        if not isinstance(values, list):
            values = [values]
        if func_code in _REGISTER_CODES:
            if not self.board.timers:
                return ExcCodes.ILLEGAL_FUNCTION
            ok = self.board.write_registers(address, [int(v) for v in values])
            return None if ok else ExcCodes.ILLEGAL_ADDRESS
        if func_code not in _COIL_CODES:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or address + len(values) > len(self.board.coils):
            return ExcCodes.ILLEGAL_ADDRESS
        self.board.write_coils(address, [bool(v) for v in values])
        return None


async def _handle_control(board: SimulatedBoard, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write((json.dumps(_control_answer(board, line)) + "\n").encode())
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _control_answer(board: SimulatedBoard, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "expected a JSON object"}
    if "set_input" in request:
        n, value = request["set_input"], request.get("value")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < len(board.inputs):
            return {"ok": False, "error": f"set_input: expected 0..{len(board.inputs) - 1}"}
        if not isinstance(value, bool):
            return {"ok": False, "error": "value: expected true or false"}
        board.inputs[n] = value
        return {"ok": True}
    what = request.get("get")
    if what == "coils":
        return {"coils": list(board.coils)}
    if what == "inputs":
        return {"inputs": list(board.inputs)}
    return {"ok": False, "error": 'expected {"set_input": n, "value": bool} or '
                                  '{"get": "coils" | "inputs"}'}


async def _serve(args: argparse.Namespace, board: SimulatedBoard) -> None:
    # Imported here, not at the top: see the __main__ block.
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    context = ModbusServerContext(  # type: ignore[no-untyped-call]
        devices={args.unit: _BoardContext(board)}, single=False)
    server: ModbusTcpServer | ModbusSerialServer
    if args.serial:
        # A real RTU slave does not answer for another unit id on its line.
        server = ModbusSerialServer(context, port=args.serial, baudrate=args.baud,
                                    ignore_missing_devices=True)
    else:
        server = ModbusTcpServer(context, address=(args.host, args.port))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    control_server: asyncio.Server | None = None
    try:
        await server.serve_forever(background=True)
        if args.control:
            control_server = await asyncio.start_unix_server(
                lambda r, w: _handle_control(board, r, w), path=args.control)
        where = (f"Modbus RTU on {args.serial} ({args.baud} bit/s 8N1)" if args.serial
                 else f"Modbus TCP on {args.host}:{args.port}")
        print(f"relay board ready: {where}, unit {args.unit}, {len(board.coils)} coils, "
              f"{len(board.inputs)} inputs"
              + (f", write log {args.write_log}" if args.write_log else "")
              + (f", control socket {args.control}" if args.control else ""), flush=True)
        await stop.wait()
    finally:
        if control_server is not None:
            control_server.close()
            with contextlib.suppress(OSError):
                os.unlink(args.control)
        await server.shutdown()  # type: ignore[no-untyped-call]


def _bounded(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in low..high, else an error naming the expected form."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} {low}..{high}, got {text!r}")
        return value
    return parse


def _socket_path(text: str) -> str:
    if len(os.fsencode(text)) > _MAX_UNIX_PATH:
        raise argparse.ArgumentTypeError(
            f"expected a Unix socket path of at most {_MAX_UNIX_PATH} bytes, got {text!r}")
    return text


def add_arguments(p: argparse.ArgumentParser, *, show_writes: bool = False) -> None:
    """The board's options, shared by `python -m door_drivers.simulator` and `portvakt board
    serve`. Every value is checked here: a bad one is an argparse error naming its option.
    `show_writes`: the default of --show-writes (print each coil write on stdout)."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=_bounded("a TCP port", 1, 65535),
                       help="serve Modbus TCP on this port (502 is the standard one, below "
                            "1024 needs root)")
    where.add_argument("--serial", metavar="DEVICE", help="serve Modbus RTU on this serial port")
    p.add_argument("--host", default="127.0.0.1",
                   help="TCP address to listen on (default %(default)s; 0.0.0.0: every interface)")
    p.add_argument("--baud", type=_bounded("a speed in bits per second", 50, 4_000_000),
                   default=9600, help="serial speed, 8N1 (default %(default)s)")
    p.add_argument("--unit", type=_bounded("a Modbus unit id", 1, 247), default=1,
                   help="Modbus unit (slave) id the board answers, 1..247 (default %(default)s)")
    p.add_argument("--coils", type=_bounded("a number of relays", 1, 2000), default=16,
                   help="number of relays (coils 0..N-1; default %(default)s)")
    p.add_argument("--inputs", type=_bounded("a number of inputs", 1, 2000), default=16,
                   help="number of discrete inputs (0..N-1; default %(default)s)")
    p.add_argument("--write-log", metavar="FILE",
                   help="append one JSON line per coil write the board applies: "
                        '{"t": seconds, "coil": n, "value": bool}')
    p.add_argument("--control", metavar="PATH", type=_socket_path,
                   help="Unix socket for driving the inputs (newline-delimited JSON, see "
                        "door_drivers/simulator.py); created once the board serves")
    p.add_argument("--no-timers", action="store_true",
                   help="a board without timed pulse and watchdog registers")
    p.add_argument("--show-writes", action=argparse.BooleanOptionalAction, default=show_writes,
                   help="print a line on stdout for every coil write" +
                        (" (default: on)" if show_writes else " (default: off)"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m door_drivers.simulator",
                                description="A simulated Modbus relay board.")
    add_arguments(p)
    return p


def run(args: argparse.Namespace, prog: str = "relay board simulator") -> int:
    """Run the board described by `args` (see `add_arguments`) until SIGTERM or SIGINT.

    Prints one line on stdout once Modbus is served (and the control socket, if any, exists).
    Returns 0 when stopped, 1 when it cannot serve (port taken, serial device missing), 2 when
    the write log cannot be opened; the error is one line on stderr naming what failed."""
    # pymodbus logs every refused request at ERROR; a board does not talk.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.control:
        Path(args.control).unlink(missing_ok=True)  # left behind by a killed board
    try:
        write_log = (open(args.write_log, "a", encoding="utf-8")  # noqa: SIM115 - closed below
                     if args.write_log else None)
    except OSError as exc:
        print(f"{prog}: --write-log: cannot open {args.write_log}: {exc.strerror}",
              file=sys.stderr)
        return 2
    board = SimulatedBoard(args.coils, args.inputs, write_log, timers=not args.no_timers,
                           show_writes=args.show_writes)
    try:
        asyncio.run(_serve(args, board))
    except (OSError, RuntimeError) as exc:  # port taken, serial device missing
        where = args.serial or f"{args.host}:{args.port}"
        hint = "" if args.serial else " (is another program listening on that port?)"
        print(f"{prog}: cannot serve on {where}: {exc}{hint}", file=sys.stderr)
        return 1
    finally:
        if write_log is not None:
            write_log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the board until SIGTERM or SIGINT. Returns 0, 1 when it cannot serve, or 2 on bad
    arguments."""
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    # pymodbus.server imports aiohttp, when it can, for its HTTP simulator, which this board never
    # uses: that is 0.35 s of a 0.55 s start. Only in a process of our own: elsewhere (a CLI that
    # calls main()) aiohttp may be needed.
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
    sys.exit(main())
