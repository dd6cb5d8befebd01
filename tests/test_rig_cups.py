"""The print rig holds jobs in a real cupsd and releases them to ippeveprinter byte for byte,
checked with the CUPS command-line tools and with pyipp (what the gateway uses)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyipp import IPP
from pyipp.enums import IppOperation

from gateway.errors import PrinterError
from gateway.rig.cups import PrintRig
from gateway.rig.proc import wait_until
from printer_drivers.ipp import NATURAL_LANGUAGE, natural_language

TIMEOUT = 10  # seconds; a safety net only, every wait below polls with a deadline


def _op(**attrs: object) -> dict[str, object]:
    """pyipp's operation attributes with a natural language cupsd accepts: pyipp's own default
    "en-US" is refused (client-error-bad-request) since Debian's cups 2.4.2-3+deb12u10."""
    return {"operation-attributes-tag": {"attributes-natural-language": "en", **attrs}}


def _pdf(path: Path, seed: int) -> bytes:
    """A file cupsd types as application/pdf (magic %PDF) with every byte value in its body."""
    data = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes((i * seed) % 256 for i in range(8192))
    path.write_bytes(data)
    return data


def _job_line(rig: PrintRig, job: int, *args: str) -> str:
    """The `lpstat -o` paragraph of one job (with -l: its detail lines too)."""
    out = rig.lpstat(*args, "-o", rig.queue)
    blocks: list[list[str]] = []
    for line in out.splitlines():
        if line and not line[0].isspace():
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    for block in blocks:
        if block[0].split()[0] == f"{rig.queue}-{job}":
            return "\n".join(block)
    return ""


def _completed(rig: PrintRig, job: int) -> bool:
    return bool(_job_line(rig, job, "-W", "completed"))


def test_held_job_listed_then_released_with_lp_arrives_identical(
        print_rig: PrintRig, tmp_path: Path) -> None:
    data = _pdf(tmp_path / "payslip.pdf", 7)
    job = print_rig.submit("alice", tmp_path / "payslip.pdf")

    line = _job_line(print_rig, job, "-l")
    assert line.split()[1] == "alice", line
    assert "job-hold-until-specified" in line, line  # held, not merely not yet printed
    assert print_rig.printed() == []

    print_rig.release(job, "alice")  # lp -i JOB -H resume
    docs = print_rig.wait_printed(1, timeout=TIMEOUT)
    assert len(docs) == 1
    assert docs[0].read_bytes() == data
    wait_until(lambda: _completed(print_rig, job), TIMEOUT, f"job {job} completed in cupsd")


async def test_release_over_ipp_only_releases_that_job(
        print_rig: PrintRig, tmp_path: Path) -> None:
    first = _pdf(tmp_path / "a.pdf", 3)
    (tmp_path / "b.txt").write_text("bob's memo\n")
    job_a = print_rig.submit("alice", tmp_path / "a.pdf")
    job_b = print_rig.submit("bob", tmp_path / "b.txt")

    async with IPP(host=print_rig.host, port=print_rig.cups_port,
                   base_path=f"/printers/{print_rig.queue}") as ipp:
        # CUPS answers Get-Jobs with job-id and job-uri only unless asked for more.
        wanted = ["job-id", "job-state", "job-originating-user-name"]
        jobs = await ipp.execute(IppOperation.GET_JOBS, _op(
            **{"requesting-user-name": "gateway", "which-jobs": "not-completed",
               "requested-attributes": wanted}))
        held = {j["job-id"]: j for j in jobs["jobs"]}
        assert set(held) == {job_a, job_b}
        assert all(j["job-state"] == 4 for j in held.values())  # 4 = pending-held
        # Stock JobPrivateValues: the owner is hidden from other (unauthenticated) users...
        assert all("job-originating-user-name" not in j for j in held.values())
        # ...but shown to the owner (and to anyone claiming to be root: @SYSTEM).
        mine = await ipp.execute(IppOperation.GET_JOBS, _op(
            **{"requesting-user-name": "alice", "which-jobs": "not-completed",
               "my-jobs": True, "requested-attributes": wanted}))
        assert [(j["job-id"], j["job-originating-user-name"]) for j in mine["jobs"]] == [
            (job_a, "alice")]

        await ipp.execute(IppOperation.RELEASE_JOB, _op(
            **{"requesting-user-name": "gateway", "job-id": job_a}))

    docs = print_rig.wait_printed(1, timeout=TIMEOUT)
    assert [d.read_bytes() for d in docs] == [first]
    wait_until(lambda: _completed(print_rig, job_a), TIMEOUT, f"job {job_a} completed")
    # Bob's job is still held (state, not timing, is the assertion).
    assert "job-hold-until-specified" in _job_line(print_rig, job_b, "-l")
    assert not _completed(print_rig, job_b)
    assert len(print_rig.printed()) == 1


def test_unheld_job_prints_without_release(print_rig: PrintRig, tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_bytes(b"plain text line\n" * 100)
    print_rig.submit("carol", tmp_path / "note.txt", hold=False)
    docs = print_rig.wait_printed(1, timeout=TIMEOUT)
    assert docs[0].read_bytes() == (tmp_path / "note.txt").read_bytes()


LANGUAGES = ["en", "en-us", "sv-se", "sv", "en-US", "sv-SE", "EN", "en_us", "e n", "-en",
             "en-", "x" * 9]


def test_the_installed_cupsd_accepts_exactly_the_natural_languages_the_client_allows(
        print_rig: PrintRig, tmp_path: Path) -> None:
    """ipptool (CUPS' own client) asks the installed cupsd with each language; the gateway's
    check (`natural_language`) must agree with cupsd on every one, and the gateway's own
    language must be accepted. A security update that tightens cupsd again fails here, naming
    the language, instead of as timeouts across the print tests."""
    uri = f"ipp://{print_rig.server}/printers/{print_rig.queue}"
    answers = {}
    for lang in LANGUAGES:
        test = tmp_path / "lang.test"
        test.write_text(
            '{ NAME "lang" OPERATION Get-Printer-Attributes GROUP operation-attributes-tag '
            "ATTR charset attributes-charset utf-8 "
            f'ATTR naturalLanguage attributes-natural-language "{lang}" '
            "ATTR uri printer-uri $uri STATUS successful-ok }")
        r = subprocess.run(["ipptool", "-t", uri, str(test)], capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)
        answers[lang] = r.returncode == 0
    assert answers[NATURAL_LANGUAGE]
    ours = {}
    for lang in LANGUAGES:
        try:
            natural_language(lang)
            ours[lang] = True
        except PrinterError:
            ours[lang] = False
    assert ours == answers
