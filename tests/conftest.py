"""Shared fixtures. Each real service has one fixture module (tests/fixtures_*.py)."""

from __future__ import annotations

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
