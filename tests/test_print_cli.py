"""`portvakt print jobs|release|purge` against the real print rig: technician actions are
journaled with the OS user, directly or through a running daemon's control socket; bad input and
a dead cupsd are one clear line and exit 2, never a traceback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.control import ControlServer, Handler
from gateway.journal import Event, Journal
from gateway.rig.cups import PrintRig
from printer_drivers.commands import print_commands
from printer_drivers.ipp import os_account
from printer_drivers.release import PrintRelease
from tests.fixtures_cups import SITE_FINDME, lpstat_jobs, pdf, site_config

ME = os_account()


def write_config(rig: PrintRig, state: Path, extra: str = "") -> Path:
    state.mkdir(exist_ok=True)
    cfg = state / "portvakt.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-cli"
site = "hq"
state_dir = "{state}"

[print]
server = "{rig.socket_path}"
findme_queue = "{SITE_FINDME}"
{extra}

[[printers]]
name = "p1"
queue = "printer1"
reader = "Printer1"

[[printers]]
name = "p2"
queue = "printer2"
reader = "Printer2"
""")
    return cfg


def journal_events(state: Path, kind: str) -> list[Event]:
    j = Journal(state / "portvakt.db", "gw-cli")
    try:
        return j.events(kind)
    finally:
        j.close()


def held(rig: PrintRig, tmp_path: Path, user: str, seed: int, queue: str = SITE_FINDME) -> int:
    pdf(tmp_path / f"{seed}.pdf", seed)
    return rig.submit(user, tmp_path / f"{seed}.pdf", hold=False, queue=queue)


def test_print_jobs_lists_every_held_job_or_one_users(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(print_site, tmp_path / "state")
    a = held(print_site, tmp_path, "alice", 3)
    b = held(print_site, tmp_path, "CORP\\bob", 5, queue="printer2")
    assert main(["print", "jobs", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["job", "queue", "state", "owner", "size", "held"]
    assert [line.split()[:5] for line in out[1:]] == [
        [str(a), SITE_FINDME, "held", "alice", "9"], [str(b), "printer2", "held", "CORP\\bob", "9"]]
    assert main(["print", "jobs", "--config", str(cfg), "--user", "bob@corp"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [str(b)]
    assert main(["print", "jobs", "--config", str(cfg), "--user", "carol"]) == 0
    assert capsys.readouterr().out.strip() == "no held jobs for carol"


def test_print_release_prints_and_journals_the_technician(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cfg = write_config(print_site, state)
    a = held(print_site, tmp_path, "alice", 3)
    b = held(print_site, tmp_path, "bob", 5)

    assert main(["print", "release", "--user", "alice", "--printer", "p2",
                 "--config", str(cfg)]) == 0

    assert capsys.readouterr().out.strip() == (
        f"printer p2: released job {a} of alice (9 KB, from {SITE_FINDME})")
    assert len(print_site.wait_printed(1, 10, "printer2")) == 1
    assert set(lpstat_jobs(print_site)) == {b}
    [audit] = journal_events(state, "control.print-release")
    assert (audit.data["user"], audit.data["owner"], audit.data["printer"]) == (ME, "alice", "p2")
    [ev] = journal_events(state, "print.released")
    assert (ev.person, ev.data["user"], ev.data["owner"], ev.data["job"]) == (None, ME, "alice", a)
    # Nothing left for alice: a negative verdict, exit 1, journaled too.
    assert main(["print", "release", "--user", "alice", "--printer", "p2",
                 "--config", str(cfg)]) == 1
    assert capsys.readouterr().out.strip() == "printer p2: nothing to print for alice"
    assert len(journal_events(state, "print.nothing-to-print")) == 1


def test_print_purge_is_journaled_with_the_os_user(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cfg = write_config(print_site, state)
    held(print_site, tmp_path, "alice", 3)  # fresh: within the retention time
    assert main(["print", "purge", "--config", str(cfg)]) == 0
    assert "purged 0 job(s) held longer than the retention time" in capsys.readouterr().out
    [audit] = journal_events(state, "control.print-purge")
    assert audit.data["user"] == ME
    assert len(lpstat_jobs(print_site)) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["release", "--user", "alice", "--printer", "p9"], "unknown printer 'p9'; expected one of "
                                                        "p1, p2"),
    (["release", "--user", " ", "--printer", "p1"], "--user: expected a print user name"),
    (["jobs", "--user", ""], "expected a print user name"),
])
def test_bad_input_is_one_clear_line_and_exit_2(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    cfg = write_config(print_site, tmp_path / "state")
    assert main(["print", *argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert journal_events(tmp_path / "state", "control.print-release") == []


def test_a_bad_configuration_names_file_and_key(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(print_site, tmp_path / "state", extra="retention_hours = -1")
    assert main(["print", "jobs", "--config", str(cfg)]) == 2
    assert f"configuration error: {cfg}: print.retention_hours: expected a number" in \
        capsys.readouterr().err
    assert main(["print", "jobs", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cupsd_down_is_one_clear_line_and_exit_2(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(print_site, tmp_path / "state")
    print_site.processes["cupsd"].stop()
    for argv in (["jobs"], ["release", "--user", "alice", "--printer", "p1"], ["purge"]):
        assert main(["print", *argv, "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"portvakt: error: cupsd on {print_site.socket_path} is "
                              "unreachable"), err
        assert "Traceback" not in err


@contextmanager
def daemon(socket: Path, make: Any) -> Iterator[None]:
    """A control server on `socket` in a loop of its own thread, with the commands
    `make(release_engine)` returns (what the gateway's daemon would host)."""
    ready = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    failure: list[BaseException] = []

    def run() -> None:
        async def serve() -> None:
            commands: dict[str, Handler] = await make()
            server = ControlServer(socket, commands)
            await server.start()
            stop.append((asyncio.get_running_loop(), asyncio.Event()))
            ready.set()
            await stop[0][1].wait()
            await server.close()
            close = getattr(commands, "aclose", None)
            if close is not None:
                await close()

        try:
            asyncio.run(serve())
        except BaseException as e:
            failure.append(e)
            ready.set()

    loop_thread = threading.Thread(target=run, name="fake-daemon")
    loop_thread.start()
    assert ready.wait(10) and not failure, failure
    try:
        yield
    finally:
        loop, event = stop[0]
        loop.call_soon_threadsafe(event.set)
        loop_thread.join(10)


class _Commands(dict[str, Handler]):
    """The daemon's print commands, with the engine and journal they need closed afterwards."""

    def __init__(self, engine: PrintRelease, journal: Journal) -> None:
        super().__init__(print_commands(engine, journal))
        self.engine, self.journal = engine, journal

    async def aclose(self) -> None:
        await self.engine.close()
        self.journal.close()


def test_with_a_daemon_running_release_goes_through_it_and_it_journals_the_caller(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cfg = write_config(print_site, state)
    a = held(print_site, tmp_path, "alice", 3)

    async def make() -> _Commands:
        journal = Journal(state / "portvakt.db", "gw-cli")
        return _Commands(PrintRelease(site_config(print_site), journal), journal)

    with daemon(state / "control.sock", make):
        assert main(["print", "release", "--user", "alice", "--printer", "p1",
                     "--config", str(cfg)]) == 0
    assert f"released job {a} of alice" in capsys.readouterr().out
    [audit] = journal_events(state, "control.print-release")
    assert audit.data["user"] == ME  # from the control socket's peer credentials
    assert [e.data["job"] for e in journal_events(state, "print.released")] == [a]


def test_a_daemon_without_print_commands_is_refused_rather_than_journaled_behind_its_back(
        print_site: PrintRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    cfg = write_config(print_site, state)
    held(print_site, tmp_path, "alice", 3)

    async def make() -> dict[str, Handler]:
        async def status(msg: dict[str, Any], user: str) -> dict[str, Any]:
            return {}
        return {"status": status}

    with daemon(state / "control.sock", make):
        assert main(["print", "release", "--user", "alice", "--printer", "p1",
                     "--config", str(cfg)]) == 2
    assert "has no print.release command yet" in capsys.readouterr().err
    assert lpstat_jobs(print_site)  # still held
    assert not (state / "portvakt.db").exists()
