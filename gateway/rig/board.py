"""A simulated Modbus relay board (`door_drivers.simulator`) in its own process, on Modbus TCP or
on one end of a socat serial line (Modbus RTU).

The board is driven over Modbus like a real one; what Modbus cannot do (press a button, open a
door) goes through the simulator's control socket, and what the board did is in its write log.

Pitfalls:
- The simulator is started with `sys.executable -m door_drivers.simulator` and PYTHONPATH set to
  this checkout, so it works whether or not the project is installed in the interpreter.
- `socat -d -d pty,raw,echo=0 pty,raw,echo=0` names its two ptys on stderr ("N PTY is
  /dev/pts/3"), then logs "starting data transfer loop" once it forwards: that line is the
  readiness signal. The ptys ignore the baud rate: an RTU round trip takes ~1 ms at any speed.
- `kill()` is a SIGKILL: the board dies with its TCP connections reset and no cleanup, as a
  board losing power does; its control socket file stays behind and `restart()` replaces it.
- The board's own timers (timed pulse, watchdog; see `door_drivers.simulator`) run in the
  simulator process: a test measures them from the write log's `"by"` entries, and a test
  process that dies does not stop them. `start(timers=False)` gives a board without them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.rig.proc import RigProcess, free_port, port_open, wait_until

HOST = "127.0.0.1"
_REPO = Path(__file__).resolve().parents[2]


class RelayBoardRig:
    """A running simulated relay board; build it with `RelayBoardRig.start(workdir)`.

    Attributes: `host` ("127.0.0.1"), `port` (Modbus TCP; 0 for an RTU board), `serial` (the
    serial device of an RTU board, else None), `unit`, `coil_count`, `input_count`,
    `write_log` (JSON lines, see `writes()`), `control` (the control socket), `log_file` (the
    simulator's stdout and stderr), `process` (the RigProcess, None when stopped),
    `start_seconds` (time of the last start until the port accepted), `timers` (whether the
    board has the timed pulse and watchdog registers).
    """

    def __init__(self, workdir: Path, *, port: int, unit: int, coils: int, inputs: int,
                 serial: str | None = None, timers: bool = True) -> None:
        self.host = HOST
        self.workdir = workdir
        self.port = port
        self.serial = serial
        self.unit = unit
        self.coil_count = coils
        self.input_count = inputs
        self.timers = timers
        self.write_log = workdir / "writes.jsonl"
        # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can come close.
        self.control = workdir / "control.sock"
        self.log_file = workdir / "simulator.log"
        self.process: RigProcess | None = None
        self.start_seconds = 0.0

    @classmethod
    def start(cls, workdir: Path, *, unit: int = 1, coils: int = 16, inputs: int = 16,
              port: int | None = None, serial: str | None = None, timers: bool = True,
              timeout: float = 10.0) -> RelayBoardRig:
        """Start a board with its files in `workdir` (created if needed): on TCP `port` (default:
        a free one), or with `serial` (a device, e.g. `SerialLine.board_end`) as an RTU board.
        `timers=False`: a board without timed pulse and watchdog (register requests refused).

        Returns when the board serves Modbus and its control socket exists. Raises TimeoutError
        or RuntimeError (with the simulator's log) if it does not come up.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        if serial is not None and port is not None:
            raise ValueError("a board serves either a TCP port or a serial device, not both")
        if serial is not None:
            port = 0
        elif port is None:
            port = free_port()
        board = cls(workdir, port=port, unit=unit, coils=coils, inputs=inputs, serial=serial,
                    timers=timers)
        if len(os.fsencode(board.control)) > 100:
            raise ValueError(f"control socket path too long for AF_UNIX: {board.control}")
        board._launch(timeout)
        return board

    def _launch(self, timeout: float) -> None:
        t0 = time.monotonic()
        self.control.unlink(missing_ok=True)  # left behind by a SIGKILLed board
        where = (["--serial", self.serial] if self.serial is not None
                 else ["--host", self.host, "--port", str(self.port)])
        argv = [sys.executable, "-m", "door_drivers.simulator", *where, "--unit", str(self.unit),
                "--coils", str(self.coil_count), "--inputs", str(self.input_count),
                "--write-log", str(self.write_log), "--control", str(self.control),
                *([] if self.timers else ["--no-timers"])]
        pythonpath = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": pythonpath}
        proc = RigProcess("relay board", argv, self.log_file, env=env, cwd=self.workdir)
        self.process = proc
        try:
            # The simulator creates its control socket once Modbus is served.
            wait_until(self._ready, timeout, f"relay board on {self.serial or self.port}", proc)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def _ready(self) -> bool:
        return self.control.exists() and (self.serial is not None or port_open(self.port))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    # --- control channel -------------------------------------------------------------------

    def _ask(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.control))
            s.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"relay board closed the control socket on {request}")
                answer += chunk
        reply: dict[str, Any] = json.loads(answer)
        if reply.get("ok") is False:
            raise ValueError(f"relay board refused {request}: {reply.get('error')}")
        return reply

    def set_input(self, n: int, value: bool) -> None:
        """Drive discrete input `n` (0-based), as a door contact or an exit button would."""
        self._ask({"set_input": n, "value": value})

    def coils(self) -> list[bool]:
        """The relays' states as the board holds them (0-based)."""
        return [bool(v) for v in self._ask({"get": "coils"})["coils"]]

    def inputs(self) -> list[bool]:
        """The discrete inputs' states (0-based)."""
        return [bool(v) for v in self._ask({"get": "inputs"})["inputs"]]

    def writes(self) -> list[dict[str, Any]]:
        """Every coil write the board applied, oldest first: {"t": wall-clock seconds,
        "coil": n, "value": bool}, plus "by": "pulse-timer" | "watchdog" on writes the board made
        by itself (none on writes a Modbus request made). Survives restarts (the log is
        appended to)."""
        try:
            text = self.write_log.read_text()
        except FileNotFoundError:
            return []
        # Only newline-terminated lines: a SIGKILL can cut the last one short.
        return [json.loads(line) for line in text.split("\n")[:-1] if line]

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 5 s; idempotent."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        """SIGKILL the board (a power cut): connections reset, no cleanup. Revive: `restart()`."""
        if self.process is not None:
            self.process.kill(signal.SIGKILL)
            self.process.stop()  # reaps and closes the log file; nothing left to signal
            self.process = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same port or serial device. The relays
        start de-energised with no timer running and the watchdog off, as a real board's after
        a power cycle; the write log is kept."""
        self.stop()
        self._launch(timeout)

    def __enter__(self) -> RelayBoardRig:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class SerialLine:
    """Two linked pseudo-terminals from socat: a serial cable between a board and the gateway.

    Build with `SerialLine.start(workdir)`. Attributes: `board_end` and `gateway_end` (device
    paths), `process`, `start_seconds`.
    """

    def __init__(self, process: RigProcess, board_end: str, gateway_end: str,
                 start_seconds: float) -> None:
        self.process: RigProcess | None = process
        self.board_end = board_end
        self.gateway_end = gateway_end
        self.start_seconds = start_seconds

    @classmethod
    def start(cls, workdir: Path, timeout: float = 10.0) -> SerialLine:
        """Start socat; returns once both ptys exist and socat forwards between them."""
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "socat.log"
        log.unlink(missing_ok=True)
        t0 = time.monotonic()
        proc = RigProcess("socat", ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
                          log, cwd=workdir)
        ptys: list[str] = []

        def ready() -> bool:
            text = log.read_text(errors="replace")
            ptys[:] = [line.rsplit(" ", 1)[1] for line in text.splitlines()
                       if " PTY is " in line]
            return len(ptys) == 2 and "starting data transfer loop" in text

        try:
            wait_until(ready, timeout, "socat pty pair", proc)
        except BaseException:
            proc.stop()
            raise
        return cls(proc, ptys[0], ptys[1], time.monotonic() - t0)

    def stop(self) -> None:
        """SIGTERM socat by PID (the ptys disappear); idempotent."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> SerialLine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
