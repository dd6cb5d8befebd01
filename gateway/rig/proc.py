"""Process plumbing shared by every rig component: free ports, readiness waits, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a TCP listener could bind `port` on every interface right now (vpcd binds
    them all). SO_REUSEADDR as servers set it: a closed connection's TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
        return True


def free_port_pair() -> int:
    """A port N such that N and N+1 are both free (vpcd uses one port per slot)."""
    for _ in range(50):
        n = free_port()
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", n))
            b.bind(("127.0.0.1", n + 1))
            return n
    raise RuntimeError("no two adjacent free ports")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, proc: RigProcess | None = None
) -> None:
    """Poll `predicate` (cheap, local) until true; fail naming `what` and the process's log."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not predicate():
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before {what}:\n"
                               f"{proc.log_tail()}")
        if time.monotonic() > deadline:
            tail = proc.log_tail() if proc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class RigProcess:
    """A child process in its own process group, logging to a file, stopped by PID."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv, stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- last lines of {self.log} ---\n" + "\n".join(lines[-n:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_description(self) -> str | None:
        """None while running; else how it ended: "exited with status 1", "killed by SIGSEGV"."""
        rc = self.popen.poll()
        if rc is None:
            return None
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with status {rc}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group (a fault-injection helper)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`; always reaps."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        # Stragglers in the group (a shell's children) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._logf.close()

    def __enter__(self) -> RigProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
