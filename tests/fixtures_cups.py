"""pytest fixtures for the print path, per test (each starts in well under a second, so function
scope keeps job ids and spools isolated at no real cost):

- `print_rig`: dbus-daemon + ippeveprinter + cupsd with one raw queue, every operation open.
- `print_site`: the Portvakt layout: two driverless PDF printer queues ("printer1",
  "printer2", one ippeveprinter each), the stopped find-me queue "findme", every queue holding
  new jobs, and the cupsd policy shipped in config/cups/cupsd.conf (DefaultAuthType Basic, as
  shipped) with the OS user running the tests as the gateway's account (peer credentials over
  cupsd's domain socket; administration goes there too: `rig.admin_server`).

Both first need `installed_cupsd` (once per run): the installed cupsd takes a job from a user
with no local account under the shipped policy, and answers the gateway's own IPP client. When
a package update breaks either, every print test stops at once with cupsd's own words instead of
running into timeouts one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyipp.enums import IppOperation as Op

from gateway.errors import PrinterError
from gateway.journal import Journal
from gateway.rig.cups import PrintRig, shipped_policy
from printer_drivers.config import PrintConfig, parse_print_config
from printer_drivers.ipp import CupsClient, os_account

SITE_PRINTERS = ("printer1", "printer2")
SITE_FINDME = "findme"
NO_ACCOUNT = "pv-no-local-account"  # a print user name this machine has no account for


async def _gateway_view(rig: PrintRig, job: int) -> None:
    """What the print path asks of cupsd, asked by the gateway's own client: list a held job
    with its owner (peer credentials over the socket), survive a cancel from a name without an
    account, cancel it as the gateway."""
    async with CupsClient(socket=rig.socket_path, account=os_account(),
                          peer_credentials=True) as gw:
        uri = gw.printer_uri(rig.queue)
        ans = await gw.request(Op.GET_JOBS, f"/printers/{rig.queue}", {
            "printer-uri": uri, "which-jobs": "not-completed",
            "requested-attributes": ["job-id", "job-originating-user-name"]})
        owners = {j.get("job-id"): j.get("job-originating-user-name") for j in ans["jobs"]}
        if owners.get(job) != NO_ACCOUNT:
            raise PrinterError(f"Get-Jobs shows {owners}, not job {job} of {NO_ACCOUNT}")
        async with CupsClient(host=rig.host, port=rig.cups_port, account=NO_ACCOUNT,
                              peer_credentials=False) as user:
            # Refused, as the shipped policy says: cupsd must only still be running.
            with contextlib.suppress(PrinterError):
                await user.request(Op.CANCEL_JOB, f"/printers/{rig.queue}",
                                   {"printer-uri": uri, "job-id": job})
        await gw.request(Op.CANCEL_JOB, f"/printers/{rig.queue}",
                         {"printer-uri": uri, "job-id": job, "purge-job": True})


@pytest.fixture(scope="session")
def installed_cupsd(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fails (once, cached for the run) unless the installed cupsd serves the print path."""
    with PrintRig.start(tmp_path_factory.mktemp("installed_cupsd"), held=True,
                        policy=shipped_policy(), default_auth="Basic") as rig:
        doc = tmp_path_factory.mktemp("installed_cupsd_doc") / "probe.pdf"
        pdf(doc, 1, 64)
        error = ""
        try:
            job = rig.submit(NO_ACCOUNT, doc)  # lp: Create-Job, then Send-Document
            asyncio.run(_gateway_view(rig, job))
        except (RuntimeError, PrinterError) as e:
            error = f"{e}\n"
        died = rig.cupsd_died()
        if error or died:
            pytest.fail(f"the installed cupsd cannot serve the print path: {error}"
                        + (f"{died}\n" if died else "") + rig.error_log_tail(), pytrace=False)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """The gateway's journal in the test's folder (the print engine journals every job)."""
    j = Journal(tmp_path / "portvakt.db", "gw-test")
    try:
        yield j
    finally:
        j.close()


@pytest.fixture
def print_rig(installed_cupsd: None, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[PrintRig]:
    rig = PrintRig.start(tmp_path_factory.mktemp("print_rig"))
    try:
        yield rig
    finally:
        rig.stop()
        # Shown by pytest only when the test failed.
        print(rig.error_log_tail(50))


@pytest.fixture
def print_site(installed_cupsd: None, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PrintRig]:
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
