"""The shipped cupsd policy (config/cups/cupsd.conf) against a real cupsd: only the gateway's
account, proved by peer credentials over the domain socket, may release, move, hold, restart or
change jobs or cancel them; whatever name an unauthenticated client claims, it cannot; and no
request from a name without a local account crashes cupsd (no `Require user @OWNER`: Debian's
cups 2.4.2-3+deb12u10 dies on it, OpenPrinting/cups#1555)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyipp.enums import IppOperation as Op
from pyipp.enums import IppTag

from gateway.errors import PrinterError
from gateway.rig.cups import PrintRig, shipped_cupsd_conf
from printer_drivers.ipp import (
    CupsClient,
    IppStatusError,
    NotAuthorised,
    encode_request,
    os_account,
)
from printer_drivers.release import NoJournal, PrintRelease
from tests.fixtures_cups import SITE_FINDME, lpstat_jobs, pdf, site_config

GATEWAY = os_account()  # the account the shipped policy names, in the test rig


def _held_job(rig: PrintRig, tmp_path: Path, owner: str = "alice") -> int:
    pdf(tmp_path / "doc.pdf", 3)
    return rig.submit(owner, tmp_path / "doc.pdf", hold=False, queue=SITE_FINDME)


# Each: the operation, the resource it goes to, its job attributes.
ATTACKS: list[tuple[Op, dict[str, Any]]] = [
    (Op.RELEASE_JOB, {}),
    (Op.SET_JOB_ATTRIBUTES, {"job-hold-until": "no-hold"}),
    (Op.CUPS_MOVE_JOB, {"job-printer-uri": "ipp://localhost/printers/printer1"}),
    (Op.HOLD_JOB, {}),
    (Op.CUPS_AUTHENTICATE_JOB, {}),
]


CLAIMS = sorted({"alice", GATEWAY, "root", "portvakt"})  # the owner, the gateway, admins


@pytest.mark.parametrize("claimed", CLAIMS)
@pytest.mark.parametrize(("operation", "job_attrs"), ATTACKS, ids=[a[0].name for a in ATTACKS])
async def test_an_unauthenticated_client_cannot_release_or_alter_a_job_whoever_it_claims_to_be(
        print_site: PrintRig, tmp_path: Path, claimed: str, operation: Op,
        job_attrs: dict[str, Any]) -> None:
    job = _held_job(print_site, tmp_path)
    async with CupsClient(host=print_site.host, port=print_site.cups_port, account=claimed,
                          peer_credentials=False) as spoofer:
        with pytest.raises(NotAuthorised):
            await spoofer.request(operation, f"/printers/{SITE_FINDME}", {
                "printer-uri": spoofer.printer_uri(SITE_FINDME), "job-id": job}, job_attrs)
    after = lpstat_jobs(print_site)[job]
    assert (after.queue, after.held) == (SITE_FINDME, True)
    assert print_site.printed("printer1") == print_site.printed("printer2") == []


class _Events:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def append(self, kind: str, **data: Any) -> None:
        self.kinds.append(kind)


async def test_a_printed_job_cannot_be_restarted_to_print_again_by_a_spoofer(
        print_site: PrintRig, tmp_path: Path) -> None:
    # cupsd checks that a job kept its documents before it asks the policy: with
    # PreserveJobFiles No (shipped, and in the rig) a printed job has none left to print again.
    # Restart-Job is in the gateway-only <Limit> as well, for a site that keeps documents.
    job = _held_job(print_site, tmp_path)
    async with PrintRelease(site_config(print_site), _Events()) as engine:
        await engine.release_for("p-alice", frozenset({"alice"}), "p1")
        assert (await engine.follow([job], within=10))[job].state == "completed"
    for claimed in CLAIMS:
        async with CupsClient(host=print_site.host, port=print_site.cups_port, account=claimed,
                              peer_credentials=False) as spoofer:
            with pytest.raises((NotAuthorised, IppStatusError), match=r"not-authori|no files"):
                await spoofer.request(Op.RESTART_JOB, "/jobs", {
                    "printer-uri": spoofer.printer_uri(), "job-id": job})
    assert len(print_site.printed("printer1")) == 1
    assert lpstat_jobs(print_site) == {}


async def test_the_socket_without_peer_credentials_is_no_better_than_tcp(
        print_site: PrintRig, tmp_path: Path) -> None:
    job = _held_job(print_site, tmp_path)
    async with CupsClient(socket=print_site.socket_path, account=GATEWAY,
                          peer_credentials=False) as anonymous:
        with pytest.raises(NotAuthorised, match="HTTP 401"):
            await anonymous.request(Op.RELEASE_JOB, f"/printers/{SITE_FINDME}", {
                "printer-uri": anonymous.printer_uri(SITE_FINDME), "job-id": job})
    assert lpstat_jobs(print_site)[job].held


_AS_OTHER_USER = r"""
import socket, sys
payload = sys.stdin.buffer.read()
head = ("POST /printers/findme HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/ipp\r\n"
        "Authorization: PeerCred " + sys.argv[2] + "\r\nContent-Length: %d\r\n"
        "Connection: close\r\n\r\n" % len(payload)).encode()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(head + payload)
print(s.recv(200).split(b"\r\n", 1)[0].decode())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="needs root to run a process as nobody, and /usr/bin/python3")
def test_a_local_process_of_another_account_cannot_claim_the_gateways_peer_credentials(
        print_site: PrintRig, tmp_path: Path) -> None:
    job = _held_job(print_site, tmp_path)
    release = encode_request(Op.RELEASE_JOB, [(IppTag.OPERATION, {
        "attributes-charset": "utf-8", "attributes-natural-language": "en",
        "printer-uri": f"ipp://localhost/printers/{SITE_FINDME}",
        "requesting-user-name": GATEWAY, "job-id": job})])
    r = subprocess.run(["/usr/bin/python3", "-c", _AS_OTHER_USER, str(print_site.socket_path),
                        GATEWAY], input=release, capture_output=True, user="nobody",
                       timeout=10, check=True)
    assert r.stdout.decode().strip() == "HTTP/1.1 401 Unauthorized"
    assert "Invalid peer credentials" in print_site.error_log.read_text()
    assert lpstat_jobs(print_site)[job].held


def test_no_claimed_name_resumes_or_cancels_a_held_job_only_the_gateway_cancels(
        print_site: PrintRig, tmp_path: Path) -> None:
    mine = _held_job(print_site, tmp_path, "alice")
    bobs = _held_job(print_site, tmp_path, "bob")
    with pytest.raises(RuntimeError, match=r"lp .*-H resume"):
        print_site.release(mine, "alice")  # lp -i JOB -H resume: Set-Job-Attributes
    for who, job in (("alice", bobs), ("alice", mine), ("bob", bobs), ("root", mine)):
        with pytest.raises(RuntimeError, match="Unauthorized"):
            print_site._run(["cancel", "-h", print_site.server, "-U", who, str(job)])
    assert {j: x.held for j, x in lpstat_jobs(print_site).items()} == {mine: True, bobs: True}
    assert print_site.cupsd_died() is None
    # The gateway (retention, `portvakt print purge`) cancels, authenticated over the socket.
    asyncio.run(_cancel_as_gateway(print_site, mine))
    assert set(lpstat_jobs(print_site)) == {bobs}


async def _cancel_as_gateway(rig: PrintRig, job: int) -> None:
    async with CupsClient(socket=rig.socket_path, account=GATEWAY, peer_credentials=True) as gw:
        await gw.request(Op.CANCEL_JOB, f"/printers/{SITE_FINDME}",
                         {"printer-uri": gw.printer_uri(SITE_FINDME), "job-id": job})


# Every operation a site-network client could send about a job, as a name with no account here.
_JOB_OPERATIONS = [Op.SEND_DOCUMENT, Op.CLOSE_JOB, Op.CANCEL_JOB, Op.CANCEL_MY_JOBS,
                   Op.RELEASE_JOB, Op.HOLD_JOB, Op.RESTART_JOB, Op.SET_JOB_ATTRIBUTES,
                   Op.CUPS_MOVE_JOB, Op.CUPS_GET_DOCUMENT, Op.GET_JOB_ATTRIBUTES, Op.GET_JOBS,
                   Op.CREATE_JOB_SUBSCRIPTIONS]


async def test_no_request_from_a_name_without_a_local_account_stops_cupsd(
        print_site: PrintRig, tmp_path: Path) -> None:
    """Users print from their laptops under names this box has no account for. Debian's cups
    2.4.2-3+deb12u10 (CUPS 2.4.17's fix for CVE-2026-27447) dereferences a missing account
    when a <Limit> says `Require user @OWNER`: one such request kills cupsd for the site."""
    job = _held_job(print_site, tmp_path, "pv-nobody-here")
    for name in ("pv-nobody-here", "pv-someone-else"):
        async with CupsClient(host=print_site.host, port=print_site.cups_port, account=name,
                              peer_credentials=False) as user:
            for op in _JOB_OPERATIONS:
                attrs: dict[str, Any] = {"printer-uri": user.printer_uri(SITE_FINDME),
                                         "job-id": job}
                if op in (Op.SEND_DOCUMENT, Op.CLOSE_JOB):
                    attrs["last-document"] = True
                with contextlib.suppress(PrinterError):  # refused or not: cupsd must live
                    await user.request(op, f"/printers/{SITE_FINDME}", attrs)
                assert print_site.cupsd_died() is None, f"{op.name} as {name}"
    assert lpstat_jobs(print_site)[job].held


def test_the_shipped_policy_requires_no_owner_in_any_limit() -> None:
    text = shipped_cupsd_conf().read_text()
    requires = [line.strip() for line in text.splitlines()
                if line.strip().lower().startswith("require")]
    assert requires and not [r for r in requires if "@owner" in r.lower()]


def test_the_shipped_cupsd_conf_parses_without_complaint(tmp_path: Path) -> None:
    # A copy: cupsd -t takes the file's folder as ServerRoot and "repairs" it (makes ppd/).
    conf = tmp_path / "cupsd.conf"
    conf.write_text(shipped_cupsd_conf().read_text())
    r = subprocess.run(["cupsd", "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10, check=False)
    assert r.returncode == 0
    assert f'"{conf}" is OK' in r.stdout
    assert r.stderr == ""  # cupsd -t reports a bad operation name or directive only here
    text = conf.read_text()
    assert "MaxJobs 10000" in text and "DefaultAuthType Basic" in text


def test_add_printer_sh_makes_a_driverless_pdf_queue_and_a_stopped_find_me_queue(
        print_site: PrintRig, tmp_path: Path) -> None:
    script = shipped_cupsd_conf().parent / "add-printer.sh"
    env = {**print_site.env, "CUPS_SERVER": print_site.admin_server,
           "PPD_DIR": str(print_site.workdir / "cups" / "etc" / "ppd")}
    uri = f"ipp://localhost:{print_site.printer_ports['printer2']}/ipp/print"
    for argv in (["printer", "scripted", uri], ["findme", "findme2"]):
        r = subprocess.run(["sh", str(script), *argv], env=env, capture_output=True, text=True,
                           timeout=60, check=False)
        assert r.returncode == 0, r.stderr
    ppd = subprocess.run(["curl", "-sf", f"http://{print_site.server}/printers/scripted.ppd"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert '*cupsFilter2: "application/pdf application/pdf 0 -"' in ppd
    assert "application/vnd.cups-pdf application/pdf" not in ppd
    assert "disabled" in print_site.lpstat("-p", "findme2")
    # Both hold what they are sent, and the PDF reaches the printer as it was submitted.
    data = pdf(tmp_path / "doc.pdf", 23)
    for queue in ("scripted", "findme2"):
        job = print_site.submit("alice", tmp_path / "doc.pdf", hold=False, queue=queue)
        assert lpstat_jobs(print_site)[job].held
    print_site._run(["lpadmin", "-h", print_site.admin_server, "-p", "scripted", "-o",
                     "job-hold-until-default=no-hold"])
    print_site.submit("alice", tmp_path / "doc.pdf", hold=False, queue="scripted")
    assert [d.read_bytes() for d in print_site.wait_printed(1, 10, "printer2")] == [data]


async def test_a_findme_only_printer_refuses_direct_jobs_yet_prints_what_the_gateway_moves_in(
        print_site: PrintRig, tmp_path: Path) -> None:
    """add-printer.sh ... findme-only (lpadmin -u allow:<gateway>): nobody can print straight to
    the printer queue, not even asking for no-hold; a find-me job released there prints."""
    from printer_drivers.ipp import os_account

    script = shipped_cupsd_conf().parent / "add-printer.sh"
    env = {**print_site.env, "CUPS_SERVER": print_site.admin_server, "GATEWAY_USER": os_account(),
           "PPD_DIR": str(print_site.workdir / "cups" / "etc" / "ppd")}
    uri = f"ipp://localhost:{print_site.printer_ports['printer1']}/ipp/print"
    r = subprocess.run(["sh", str(script), "printer", "printer1", uri, "findme-only"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "only" in r.stdout, r.stderr
    data = pdf(tmp_path / "doc.pdf", 31)
    with pytest.raises(RuntimeError, match="Not allowed to print"):
        print_site.submit("bob", tmp_path / "doc.pdf", hold=False, queue="printer1",
                          options=["-H", "immediate"])
    job = print_site.submit("bob", tmp_path / "doc.pdf", hold=False, queue=SITE_FINDME)
    async with PrintRelease(site_config(print_site), NoJournal()) as engine:
        outcome = await engine.release_for("p-bob", frozenset({"bob"}), "p1")
    assert outcome.result == "released" and [j.job_id for j in outcome.released] == [job]
    assert [d.read_bytes() for d in print_site.wait_printed(1, 10, "printer1")] == [data]
