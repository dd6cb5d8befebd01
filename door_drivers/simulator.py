"""A Modbus relay board in its own process: coils are relays, discrete inputs are terminals.

    python -m door_drivers.simulator --port P [--host 127.0.0.1] [--unit 1] [--coils 16]
        [--inputs 16] [--write-log FILE] [--control PATH]
    python -m door_drivers.simulator --serial DEVICE [--baud 9600] ...   (Modbus RTU)

Addresses are 0-based as on a real board: coil 0 is the first relay, input 0 the first terminal.
Requests for another unit id get exception 0x0B over TCP and no answer over RTU (the other boards
on an RS-485 line stay silent too).

Write log (`--write-log`): one JSON line per coil write as the board applies it,
`{"t": <time.time() seconds>, "coil": n, "value": bool}`, flushed per line, so a test can measure
a pulse from the board's side. A write of the value a coil already has is logged too.

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
The 3.11 server answers only the first request in a TCP segment: a second, pipelined request is
dropped without an answer. Clients must wait for each answer before sending (the driver does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusBaseDeviceContext, ModbusServerContext

if TYPE_CHECKING:
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

_COIL_CODES = frozenset({1, 5, 15})  # read coils, write single coil, write multiple coils
_INPUT_CODES = frozenset({2})  # read discrete inputs


class SimulatedBoard:
    """The board's state: relays (coils) and input terminals, plus the write log."""

    def __init__(self, coils: int, inputs: int, write_log: IO[str] | None) -> None:
        self.coils = [False] * coils
        self.inputs = [False] * inputs
        self._write_log = write_log

    def write_coils(self, first: int, values: list[bool]) -> None:
        for offset, value in enumerate(values):
            self.coils[first + offset] = bool(value)
            if self._write_log is not None:
                line = {"t": time.time(), "coil": first + offset, "value": bool(value)}
                self._write_log.write(json.dumps(line) + "\n")
                self._write_log.flush()


class _BoardContext(ModbusBaseDeviceContext):
    """pymodbus' view of the board: 0-based coils and discrete inputs, nothing else."""

    def __init__(self, board: SimulatedBoard) -> None:
        self.board = board

    def _table(self, func_code: int) -> list[bool] | None:
        if func_code in _COIL_CODES:
            return self.board.coils
        if func_code in _INPUT_CODES:
            return self.board.inputs
        return None

    def reset(self) -> None:
        """Nothing to reset: a board keeps its relays across Modbus connections."""

    def getValues(self, func_code: int, address: int, count: int = 1) -> list[bool] | ExcCodes:
        table = self._table(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or count < 1 or address + count > len(table):
            return ExcCodes.ILLEGAL_ADDRESS
        return table[address : address + count]

    def setValues(self, func_code: int, address: int,
                  values: list[int] | list[bool]) -> ExcCodes | None:
        if func_code not in _COIL_CODES:
            return ExcCodes.ILLEGAL_FUNCTION
        if not isinstance(values, list):
            values = [values]
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
        await stop.wait()
    finally:
        if control_server is not None:
            control_server.close()
            with contextlib.suppress(OSError):
                os.unlink(args.control)
        await server.shutdown()  # type: ignore[no-untyped-call]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m door_drivers.simulator",
                                description="A simulated Modbus relay board.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="serve Modbus TCP on this port")
    where.add_argument("--serial", metavar="DEVICE", help="serve Modbus RTU on this serial port")
    p.add_argument("--host", default="127.0.0.1", help="TCP address to listen on")
    p.add_argument("--baud", type=int, default=9600, help="serial speed (bits per second)")
    p.add_argument("--unit", type=int, default=1, help="Modbus unit (slave) id, 1..247")
    p.add_argument("--coils", type=int, default=16, help="number of relays")
    p.add_argument("--inputs", type=int, default=16, help="number of discrete inputs")
    p.add_argument("--write-log", metavar="FILE", help="append one JSON line per coil write")
    p.add_argument("--control", metavar="PATH", help="Unix socket for driving the inputs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the board until SIGTERM or SIGINT. Returns 0, or 2 on bad arguments."""
    args = _parser().parse_args(argv)
    if not 1 <= args.unit <= 247:
        print("--unit: expected 1..247", file=sys.stderr)
        return 2
    if not (1 <= args.coils <= 2000 and 1 <= args.inputs <= 2000):
        print("--coils, --inputs: expected 1..2000", file=sys.stderr)
        return 2
    # pymodbus logs every refused request at ERROR; a board does not talk.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.control:
        Path(args.control).unlink(missing_ok=True)  # left behind by a killed board
    write_log = (open(args.write_log, "a", encoding="utf-8")  # noqa: SIM115 - closed below
                 if args.write_log else None)
    try:
        asyncio.run(_serve(args, SimulatedBoard(args.coils, args.inputs, write_log)))
    except (OSError, RuntimeError) as exc:  # port taken, serial device missing
        where = args.serial or f"{args.host}:{args.port}"
        print(f"relay board simulator: cannot serve on {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        if write_log is not None:
            write_log.close()
    return 0


if __name__ == "__main__":
    # pymodbus.server imports aiohttp, when it can, for its HTTP simulator, which this board never
    # uses: that is 0.35 s of a 0.55 s start. Only in a process of our own: elsewhere (a CLI that
    # calls main()) aiohttp may be needed.
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
    sys.exit(main())
