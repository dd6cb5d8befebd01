"""Async driver for one Modbus relay board (TCP, or RTU on a serial line), over pymodbus 3.11.

    board = ModbusRelayBoard(BoardParams.tcp("10.0.0.7", 502, unit=1))
    await board.connect()
    await board.write_coil(0, True)
    inputs = await board.read_inputs(0, 8)
    await board.pulse_coil(0, 3.0)      # the board turns coil 0 off by itself after 3 s
    await board.set_watchdog(10)        # the board drops every coil after 10 s of silence

Every failure leaves here as `BoardUnreachable` (no connection, no answer in time) or
`DoorDriverError` (the board answered with a Modbus exception, or something else went wrong),
with a message naming the board ("board 10.0.0.7:502 unit 1"). No pymodbus type escapes, not even
as `__cause__` (the pymodbus detail is in the message and logged at DEBUG).

How the bus is used:
- One `ModbusBus` per connection: a TCP host:port, or a serial device. Boards on the same bus
  (several RTU units on one RS-485 line, or units behind one TCP gateway) share it and its
  `asyncio.Lock`, so exactly one request is on the wire at a time (RTU is half-duplex). Build such
  boards with `open_boards()`, which groups them.
- Each request runs to completion in a task of its own, even if its caller is cancelled: a request
  cut off between sending and reading the answer would leave the answer to be read as the answer
  to the next request (RTU frames carry no transaction id). The lock is held by that task, so the
  next request (a relock after a cancelled unlock, say) is sent after it.
- Reconnects are ours, not pymodbus': `reconnect_delay=0` turns pymodbus' background reconnect
  off (with it on, a dead board is retried silently, forever). When a request finds the bus
  disconnected it makes one connect attempt, bounded by `timeout`, and reports failure at once.
  After a request fails, the connection is dropped, so a late answer can never be taken for the
  answer to a later request; the next request connects afresh.
- RTU frames are kept apart by the 3.5-character silence the standard requires (`frame_gap()`,
  counted from the end of the previous answer): the async pymodbus client does not do it (only
  its sync client does), and a fast gateway would otherwise send the next request ~0.3 ms after
  an answer, which a strict board reads as the tail of the previous frame.
- `retries=0`: one attempt per request, so a dead board is reported after `timeout`, not after
  (retries + 1) * timeout. Retrying is the caller's decision (RelayDoor retries a relock).

Board timers, as Waveshare or Eletechsup relay boards have them in firmware (vendors' addresses
differ: this is the map Portvakt speaks and `door_drivers.simulator` implements; whether a board
has them is configuration):
- `PULSE_BASE + n` (0x0100 + n, coils 0..255): timed pulse ("flash on"). Writing v (1..65535, in
  units of 0.1 s) turns coil n on at once and the board turns it off after v * 0.1 s; a later pulse
  restarts the timer, a plain coil write cancels it, writing 0 cancels it and turns the coil off.
  Reading gives the time left (0.1 s units, 0 when none).
- `WATCHDOG` (0x0200): communication-loss watchdog, in seconds (0 = off). When no request for the
  unit arrived for that long, the board de-energises every coil. It stays armed.
A board without them answers Modbus exception 1 or 2: `DoorDriverError` saying so.

pymodbus 3.11 pitfalls met here:
- `execute()` turns the caller's `CancelledError` into `ModbusIOException("Request cancelled
  outside pymodbus.")`: cancellation would otherwise look like a board fault. The shielded
  request task avoids the case.
- `AsyncModbus*Client.connect()` always sleeps 0.1 s after connecting (successful or not), so a
  connect costs at least 0.1 s.
- The client must be built inside a running event loop (it calls `asyncio.get_running_loop()`).
- A lost TCP connection does not fail the pending request: it waits for its timeout (so does a
  request sent before the event loop has seen the peer's reset).
- Read responses carry bits padded to a multiple of 8; the unit id keyword is `device_id`.
- pymodbus logs each failed connect at WARNING and each timeout at ERROR on the "pymodbus" logger,
  and appends hex dumps of the last 20 frames to every ERROR. The entry point should set that
  logger to CRITICAL (frame dumps belong at TRACE), as these errors are reported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway.errors import BoardUnreachable, DoorDriverError

log = logging.getLogger(__name__)

T = TypeVar("T")

PULSE_BASE = 0x0100
"""Holding register of coil 0's timed pulse; coil n's is PULSE_BASE + n (value: 0.1 s units)."""
PULSE_COILS = 256
"""Coils 0..255 have a pulse register (the next register, 0x0200, is the watchdog's)."""
MAX_PULSE_SECONDS = 0xFFFF / 10
"""The longest timed pulse a board can run: 6553.5 s."""
WATCHDOG = 0x0200
"""Holding register of the communication-loss watchdog (value: seconds, 0 = off)."""

# Answers in which a gateway says the unit behind it did not answer: the board is unreachable.
_GATEWAY_CODES = frozenset({ExcCodes.GATEWAY_PATH_UNAVIABLE, ExcCodes.GATEWAY_NO_RESPONSE})
_MAX_BITS = 2000  # Modbus limit for one read of coils or discrete inputs
_MAX_REGISTERS = 125  # Modbus limit for one read of holding registers
# Answers of a board that lacks a function or register: illegal function, illegal address.
_UNSUPPORTED_CODES = frozenset({ExcCodes.ILLEGAL_FUNCTION, ExcCodes.ILLEGAL_ADDRESS})


@dataclass(frozen=True)
class BoardParams:
    """Where a relay board is and how to talk to it. Build with `tcp()` or `rtu()`.

    `timeout` (seconds) bounds a connect and the wait for each answer. `unit` is the Modbus unit
    (slave) id, 1..247.
    """

    unit: int = 1
    host: str | None = None
    port: int = 502
    device: str | None = None
    baud: int = 9600
    timeout: float = 0.5

    def __post_init__(self) -> None:
        if (self.host is None) == (self.device is None):
            raise ValueError("a board has either host (Modbus TCP) or device (Modbus RTU)")
        if not 1 <= self.unit <= 247:
            raise ValueError(f"unit: expected 1..247, got {self.unit}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: expected 1..65535, got {self.port}")
        if self.baud <= 0:
            raise ValueError(f"baud: expected a positive number, got {self.baud}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout: expected seconds > 0, got {self.timeout}")

    @classmethod
    def tcp(cls, host: str, port: int = 502, *, unit: int = 1, timeout: float = 0.5) -> BoardParams:
        """A board (or a TCP gateway in front of it) at host:port."""
        return cls(unit=unit, host=host, port=port, timeout=timeout)

    @classmethod
    def rtu(cls, device: str, *, baud: int = 9600, unit: int = 1,
            timeout: float = 0.5) -> BoardParams:
        """A board on the serial line `device` (8N1 at `baud` bits per second)."""
        return cls(unit=unit, device=device, baud=baud, timeout=timeout)

    @property
    def bus(self) -> str:
        """The bus as people name it: "host:port" or the serial device."""
        return f"{self.host}:{self.port}" if self.host is not None else str(self.device)

    @property
    def name(self) -> str:
        """The board as error messages name it: "board 10.0.0.7:502 unit 1"."""
        return f"board {self.bus} unit {self.unit}"


class ModbusBus:
    """One Modbus connection (TCP socket or serial port) and the lock that serialises it.

    Connects on demand; `close()` drops the connection (a later request connects again).
    """

    def __init__(self, params: BoardParams) -> None:
        self.params = params
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._gap = frame_gap(params.baud) if params.device is not None else 0.0
        self._quiet_until = 0.0  # event-loop time from which the next RTU frame may start

    @property
    def name(self) -> str:
        return self.params.bus

    def accepts(self, params: BoardParams) -> bool:
        """True if a board with `params` may share this bus (same line, same settings)."""
        mine = self.params
        return (params.bus, params.baud, params.timeout) == (mine.bus, mine.baud, mine.timeout)

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        p = self.params
        common: dict[str, Any] = {"timeout": p.timeout, "retries": 0, "reconnect_delay": 0,
                                  "reconnect_delay_max": 0, "name": p.bus}
        if p.host is not None:
            return AsyncModbusTcpClient(p.host, port=p.port, **common)
        assert p.device is not None
        return AsyncModbusSerialClient(p.device, baudrate=p.baud, bytesize=8, parity="N",
                                       stopbits=1, **common)

    def _drop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                client.close()

    async def _ensure_connected(self, who: str) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """With the lock held: the connected client, or BoardUnreachable naming `who`."""
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = self._new_client()
        try:
            ok = await client.connect()
        except (ModbusException, OSError) as exc:
            log.debug("%s: connect failed: %r", who, exc)
            ok = False
        if not ok or not client.connected:
            with contextlib.suppress(Exception):
                client.close()
            raise BoardUnreachable(f"{who}: cannot connect "
                                   f"(refused, or no answer within {self.params.timeout} s)")
        self._client = client
        return client

    async def connect(self, who: str) -> None:
        """Connect now if not connected. Raises BoardUnreachable naming `who`."""
        await self._run(who, self._connect_locked)

    async def _connect_locked(self, who: str) -> None:
        await self._ensure_connected(who)

    async def close(self) -> None:
        """Wait for the request on the wire (if any), then drop the connection."""
        async with self._lock:
            self._drop()

    async def request(self, who: str, what: str,
                      call: Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient],
                                     Awaitable[Any]],
                      *, unsupported: str | None = None) -> Any:
        """Send one request and return its (non-error) response.

        `who` names the board and `what` the operation in error messages; `unsupported`, if
        given, is added to the message when the board answers "illegal function" or "illegal
        address" (it lacks the feature). Raises BoardUnreachable (no connection, no answer in
        `timeout` seconds, or a gateway reporting the unit silent) or DoorDriverError (a Modbus
        exception answer, anything else).
        """
        return await self._run(who, lambda w: self._request_locked(w, what, call, unsupported))

    async def _run(self, who: str, body: Callable[[str], Awaitable[T]]) -> T:
        async def locked() -> T:
            async with self._lock:
                return await body(who)

        task = asyncio.ensure_future(locked())
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        # The request finishes even if our caller is cancelled (see the module docstring).
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an abandoned request (caller cancelled) does not log
            # "Task exception was never retrieved"; an awaiting caller still gets it.
            log.debug("%s: %s", self.name, task.exception())

    async def _request_locked(self, who: str, what: str,
                              call: Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient],
                                             Awaitable[Any]],
                              unsupported: str | None) -> Any:
        client = await self._ensure_connected(who)
        loop = asyncio.get_running_loop()
        if (wait := self._quiet_until - loop.time()) > 0:
            await asyncio.sleep(wait)
        try:
            response = await call(client)
        except (ConnectionException, ModbusIOException, OSError) as exc:
            self._drop()
            log.debug("%s: %s failed: %r", who, what, exc)
            raise BoardUnreachable(f"{who}: {what}: no answer within {self.params.timeout} s "
                                   f"or connection lost ({exc})") from None
        except ModbusException as exc:
            self._drop()
            log.debug("%s: %s failed: %r", who, what, exc)
            raise DoorDriverError(f"{who}: {what} failed: {exc}") from None
        finally:
            # Counted from when we saw the answer end (or gave up), which is no earlier than
            # its end on the wire: a conservative gap.
            self._quiet_until = loop.time() + self._gap
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            try:
                label = ExcCodes(code).name.lower().replace("_", " ")
            except ValueError:
                label = "unknown"
            error = BoardUnreachable if code in _GATEWAY_CODES else DoorDriverError
            hint = f": {unsupported}" if unsupported and code in _UNSUPPORTED_CODES else ""
            raise error(f"{who}: {what} refused with Modbus exception {code:#04x} ({label}){hint}")
        return response


class ModbusRelayBoard:
    """One relay board: coils (relays) and discrete inputs, 0-based as on the board, and, on
    boards that have them, the timed pulse and watchdog registers (see the module docstring).

    Build one with `ModbusRelayBoard(params)`, or several on shared buses with `open_boards()`.
    Usable as `async with board:` (connect, close).
    """

    def __init__(self, params: BoardParams, *, bus: ModbusBus | None = None) -> None:
        if bus is not None and not bus.accepts(params):
            raise ValueError(f"{params.name}: cannot share bus {bus.name}: other line or settings")
        self.params = params
        self.bus = bus if bus is not None else ModbusBus(params)

    @property
    def name(self) -> str:
        """"board HOST:PORT unit N" or "board DEVICE unit N"."""
        return self.params.name

    async def connect(self) -> None:
        """Connect the board's bus now (requests also connect on demand).

        Raises BoardUnreachable within about `timeout` + 0.1 seconds if the board does not accept.
        """
        await self.bus.connect(self.name)

    async def close(self) -> None:
        """Drop the bus connection (shared with the other boards on it); idempotent."""
        await self.bus.close()

    async def write_coil(self, n: int, value: bool) -> None:
        """Set relay `n` (0-based): True energises it. Returns once the board confirmed.

        Raises BoardUnreachable or DoorDriverError (also if the board echoes another value).
        """
        _check_range("coil", n, 1)
        what = f"write coil {n}={int(value)}"
        unit = self.params.unit
        response = await self.bus.request(
            self.name, what, lambda c: c.write_coil(n, bool(value), device_id=unit))
        echoed = list(getattr(response, "bits", []) or [])[:1]
        if getattr(response, "address", n) != n or echoed != [bool(value)]:
            raise DoorDriverError(f"{self.name}: {what}: board echoed coil "
                                  f"{getattr(response, 'address', '?')}={echoed}")

    async def read_coils(self, first: int, count: int) -> tuple[bool, ...]:
        """States of relays first .. first+count-1 (True: energised).

        Raises BoardUnreachable or DoorDriverError (a range the board does not have, too).
        """
        return await self._read_bits("coil", first, count)

    async def read_inputs(self, first: int, count: int) -> tuple[bool, ...]:
        """States of discrete inputs first .. first+count-1, in one request (True: active).

        Raises BoardUnreachable or DoorDriverError (a range the board does not have, too).
        """
        return await self._read_bits("input", first, count)

    async def pulse_coil(self, n: int, seconds: float) -> None:
        """Energise relay `n` now and let the board de-energise it after `seconds`, by its own
        timer: the relay goes off even if the gateway dies or the link fails meanwhile.

        `seconds` is rounded to the board's 0.1 s step and kept within 0.1 .. 6553.5 s. A later
        pulse restarts the board's timer; `write_coil(n, ...)` cancels it. Returns once the board
        confirmed. Raises ValueError for a coil outside 0..255 or `seconds` not finite and > 0;
        DoorDriverError if the board has no timed pulse (for this coil), or echoes another
        value; BoardUnreachable.
        """
        if not 0 <= n < PULSE_COILS:
            raise ValueError(f"timed pulse coil: expected 0..{PULSE_COILS - 1}, got {n}")
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"timed pulse seconds: expected a finite number > 0, got {seconds}")
        units = 0xFFFF if seconds >= MAX_PULSE_SECONDS else max(round(seconds * 10), 1)
        await self._write_register(
            PULSE_BASE + n, units, f"timed pulse coil {n} for {units / 10:g} s",
            unsupported="the board has no timed pulse for this coil "
                        "(timed_pulse = false is the setting for such a board)")

    async def set_watchdog(self, seconds: int) -> None:
        """Arm the board's communication-loss watchdog: after `seconds` without a request for this
        unit, the board de-energises every relay (0 turns the watchdog off). Returns once the
        board confirmed.

        Only the board's own requests count: the caller must poll the board more often than
        `seconds`. Raises ValueError for `seconds` outside 0..65535; DoorDriverError if the
        board has no watchdog; BoardUnreachable.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= 0xFFFF:
            raise ValueError(f"watchdog seconds: expected a whole number 0..65535, got {seconds!r}")
        await self._write_register(
            WATCHDOG, seconds, f"set watchdog to {seconds} s",
            unsupported="the board has no communication watchdog "
                        "(watchdog_seconds = 0 is the setting for such a board)")

    async def read_registers(self, first: int, count: int) -> tuple[int, ...]:
        """Holding registers first .. first+count-1 (0..65535 each), in one request: for a pulse
        register the time left in 0.1 s units, for `WATCHDOG` its seconds.

        Raises ValueError for a range outside the Modbus limits (at most 125 registers);
        DoorDriverError (a range the board does not have, too); BoardUnreachable.
        """
        if not 0 <= first <= 0xFFFF:
            raise ValueError(f"register: expected 0..65535, got {first}")
        if not 1 <= count <= _MAX_REGISTERS or first + count > 0x10000:
            raise ValueError(f"register count: expected 1..{_MAX_REGISTERS} within the address "
                             f"space, got {count} from {first}")
        unit = self.params.unit
        response = await self.bus.request(
            self.name, f"read registers {first:#06x}..{first + count - 1:#06x}",
            lambda c: c.read_holding_registers(first, count=count, device_id=unit))
        registers = list(getattr(response, "registers", []) or [])
        if len(registers) != count:
            raise DoorDriverError(f"{self.name}: asked for {count} registers, "
                                  f"got {len(registers)}")
        return tuple(int(r) for r in registers)

    async def _write_register(self, address: int, value: int, what: str,
                              *, unsupported: str) -> None:
        """One write-single-register request (function 6), its echo checked."""
        unit = self.params.unit
        response = await self.bus.request(
            self.name, what, lambda c: c.write_register(address, value, device_id=unit),
            unsupported=unsupported)
        echoed = list(getattr(response, "registers", []) or [])[:1]
        if getattr(response, "address", address) != address or echoed != [value]:
            raise DoorDriverError(f"{self.name}: {what}: board echoed register "
                                  f"{getattr(response, 'address', '?')}={echoed}")

    async def _read_bits(self, kind: str, first: int, count: int) -> tuple[bool, ...]:
        """One read of coils (kind "coil") or discrete inputs ("input")."""
        _check_range(kind, first, count)
        unit = self.params.unit
        response = await self.bus.request(
            self.name, f"read {kind}s {first}..{first + count - 1}",
            lambda c: (c.read_coils if kind == "coil" else c.read_discrete_inputs)(
                first, count=count, device_id=unit))
        bits = list(getattr(response, "bits", []) or [])
        if len(bits) < count:  # answers are padded to whole bytes, never short
            raise DoorDriverError(f"{self.name}: asked for {count} {kind}s, got {len(bits)}")
        return tuple(bool(b) for b in bits[:count])

    async def __aenter__(self) -> ModbusRelayBoard:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def frame_gap(baud: int) -> float:
    """Seconds of silence Modbus RTU requires between frames at `baud`: 3.5 characters of 11 bits
    (the standard's character; an 8N1 character is 10 bits, so this errs long), and a fixed
    1.75 ms above 19200 baud."""
    return 0.00175 if baud > 19200 else 3.5 * 11 / baud


def open_boards(params: Iterable[BoardParams]) -> list[ModbusRelayBoard]:
    """Boards for `params`, in order; boards on the same bus (TCP host:port or serial device)
    share one connection and one lock. Nothing is connected yet.

    Raises ValueError if two boards on one bus disagree on baud or timeout, or repeat a unit.
    """
    buses: dict[str, ModbusBus] = {}
    seen: set[tuple[str, int]] = set()
    boards = []
    for p in params:
        if (p.bus, p.unit) in seen:
            raise ValueError(f"{p.name}: listed twice")
        seen.add((p.bus, p.unit))
        bus = buses.setdefault(p.bus, ModbusBus(p))
        boards.append(ModbusRelayBoard(p, bus=bus))
    return boards


def _check_range(what: str, first: int, count: int) -> None:
    if not 0 <= first <= 0xFFFF:
        raise ValueError(f"{what}: expected 0..65535, got {first}")
    if not 1 <= count <= _MAX_BITS or first + count > 0x10000:
        raise ValueError(f"{what} count: expected 1..{_MAX_BITS} within the address space, "
                         f"got {count} from {first}")
