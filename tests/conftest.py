"""Shared fixtures. Each real service has one fixture module (tests/fixtures_*.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from gateway.pki_demo import DemoPki, make_demo_pki

pytest_plugins = [
    "tests.fixtures_pcsc",
    "tests.fixtures_board",
    "tests.fixtures_mqtt",
    "tests.fixtures_cups",
    "tests.fixtures_daemon",
]


def _children() -> dict[int, str]:
    """This process's child processes (zombies too: not reaped is leaked), pid -> command."""
    me, out = os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == me:
            out[int(entry.name)] = cmd.strip() or stat[stat.index("(") + 1:stat.rindex(")")]
    return out


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    """Fail the run if any process a fixture or test started outlives every fixture (each is
    stopped by PID; a leak here is a rig that forgot to stop or reap one)."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = {pid: cmd for pid, cmd in _children().items() if pid not in before}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"processes left running after the tests: {leaked}"


@pytest.fixture(scope="session")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """The demo PKI (root, issuing CA, CRL, cards for alice, bob, carol, dave, mallory)."""
    return make_demo_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread of its own running (pymodbus' style of guard)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while True:
        leaked = [t for t in threading.enumerate()
                  if t not in before and t.is_alive() and not t.name.startswith("asyncio_")]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
