"""pytest fixtures for the print path, per test (each starts in well under a second, so function
scope keeps job ids and spools isolated at no real cost):

- `print_rig`: dbus-daemon + ippeveprinter + cupsd with one raw queue, every operation open.
- `print_site`: the Portvakt layout: two driverless PDF printer queues ("printer1",
  "printer2", one ippeveprinter each), the stopped find-me queue "findme", every queue holding
  new jobs, and the cupsd policy shipped in config/cups/cupsd.conf (DefaultAuthType Basic, as
  shipped) with the OS user running the tests as the gateway's account (peer credentials over
  cupsd's domain socket; administration goes there too: `rig.admin_server`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.rig.cups import PrintRig, shipped_policy
from printer_drivers.config import PrintConfig, parse_print_config

SITE_PRINTERS = ("printer1", "printer2")
SITE_FINDME = "findme"


@pytest.fixture
def print_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrintRig]:
    rig = PrintRig.start(tmp_path_factory.mktemp("print_rig"))
    try:
        yield rig
    finally:
        rig.stop()
        # Shown by pytest only when the test failed.
        print(rig.error_log_tail(50))


@pytest.fixture
def print_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrintRig]:
    rig = PrintRig.start(tmp_path_factory.mktemp("print_site"), printers=SITE_PRINTERS,
                         findme=SITE_FINDME, driverless=True, held=True, policy=shipped_policy(),
                         default_auth="Basic")
    try:
        yield rig
    finally:
        rig.stop()
        print(rig.error_log_tail(50))


# --- helpers for the print tests ------------------------------------------------------------------

def pdf(path: Path, seed: int, size: int = 8192) -> bytes:
    """A file cupsd types as application/pdf (magic %PDF) with every byte value in its body;
    a driverless PDF queue passes it to the printer unchanged."""
    data = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes((i * seed + seed) % 256 for i in range(size))
    path.write_bytes(data)
    return data


def site_config(rig: PrintRig, **print_keys: Any) -> PrintConfig:
    """The [print]/[[printers]] configuration for `print_site`: printer "p1" is queue printer1
    (reader "Printer1"), "p2" is printer2 (reader "Printer2"), peer credentials as this OS user."""
    raw = {"print": {"server": str(rig.socket_path), "findme_queue": SITE_FINDME, **print_keys},
           "printers": [{"name": f"p{i + 1}", "queue": q, "reader": q.capitalize()}
                        for i, q in enumerate(rig.printers)]}
    return parse_print_config(raw, "test.toml", Path)


@dataclass(frozen=True)
class LpJob:
    """One job as `lpstat -o -l` shows it: the independent view of cupsd's state."""

    job_id: int
    queue: str
    owner: str
    held: bool  # "job-hold-until-specified" among its alerts


def lpstat_jobs(rig: PrintRig, *which: str) -> dict[int, LpJob]:
    """`lpstat -W WHICH -o -l` (default not-completed) parsed: job id -> LpJob."""
    out = rig.lpstat("-l", "-W", which[0] if which else "not-completed", "-o")
    jobs: dict[int, LpJob] = {}
    current: list[str] = []
    blocks: list[list[str]] = []
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = [line]
            blocks.append(current)
        elif current:
            current.append(line)
    for block in blocks:
        ident, owner = block[0].split()[:2]
        queue, _, num = ident.rpartition("-")
        jobs[int(num)] = LpJob(int(num), queue, owner,
                               any("job-hold-until-specified" in x for x in block[1:]))
    return jobs
