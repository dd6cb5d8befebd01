"""Print release through the daemon: a card at the printer's PC/SC reader, the real trust and
policy path, cupsd + ippeveprinter printing the held jobs, the reader's feedback coils on the
relay board, the control API's print commands and status. cupsd going away never stops a door."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path
from typing import Any

from gateway.pki_demo import DemoPki
from gateway.rig.cups import PrintRig
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import wait_until
from tests.fixtures_cups import SITE_FINDME, lpstat_jobs, pdf
from tests.fixtures_daemon import POLICY, STRIKE, Daemon

PGREEN, PRED = 10, 11  # the printer reader's feedback coils on board b1
TIMEOUT = 15.0


def print_policy() -> dict[str, Any]:
    p = copy.deepcopy(POLICY)
    p["printers"] = ["p1", "p2"]
    p["access_levels"]["print"] = {"resources": ["p1", "p2"], "schedule": "always"}
    for g in p["groups"].values():
        g["access_levels"].append("print")
    for person in p["people"]:
        person["print_user"] = person["id"].removeprefix("p-")
    # Carol stands in for Bob: she may release his jobs.
    p["delegations"] = [{"from": "p-bob", "to": "p-carol"}]
    return p


def print_toml(rig: PrintRig) -> str:
    return f"""
[print]
server = "{rig.socket_path}"
findme_queue = "{SITE_FINDME}"
follow_seconds = 30

[[printers]]
name = "p1"
queue = "printer1"
reader = "Door1"
feedback = {{ board = "b1", green = {PGREEN}, red = {PRED}, seconds = 0.3 }}

[[printers]]
name = "p2"
queue = "printer2"
reader = "Door2"
"""


def start(daemon_factory: Any, print_site: PrintRig) -> Daemon:
    d: Daemon = daemon_factory(door_toml=print_toml(print_site), policy=print_policy())
    d.wait_event("reader.online", 3)  # the door's and both printers' readers
    return d


def submit(rig: PrintRig, tmp_path: Path, user: str, seed: int) -> tuple[int, bytes]:
    path = tmp_path / f"{user}-{seed}.pdf"
    data = pdf(path, seed)
    return rig.submit(user, path, hold=False, queue=SITE_FINDME), data


def coil_writes(d: Daemon, coil: int) -> list[bool]:
    return [w["value"] for w in d.board.writes() if w["coil"] == coil]


def test_alice_badges_at_the_printer_and_her_held_jobs_print_there_byte_identical(
        daemon_factory: Any, print_site: PrintRig, pcsc_rig: PcscRig, demo_pki: DemoPki,
        tmp_path: Path) -> None:
    a1, doc1 = submit(print_site, tmp_path, "alice", 3)
    b1, _ = submit(print_site, tmp_path, "bob", 5)
    a2, doc2 = submit(print_site, tmp_path, "alice", 7)
    d = start(daemon_factory, print_site)
    strike_before = coil_writes(d, STRIKE)

    pcsc_rig.insert("Door1", demo_pki.cards["alice"])
    docs = print_site.wait_printed(2, TIMEOUT, printer="printer1")
    assert [doc.read_bytes() for doc in docs] == [doc1, doc2]
    granted = d.wait_event("access.granted")
    assert (granted["person"], granted["printer"], granted["door"]) == ("p-alice", "p1", None)
    d.wait_event("print.released", 2)
    assert [(e["person"], e["owner"], e["job"], e["printer"])
            for e in d.events("print.released")] == [
        ("p-alice", "alice", a1, "p1"), ("p-alice", "alice", a2, "p1")]
    # cupsd's own view (lpstat): Bob's job is still held in the find-me queue.
    assert {j: (x.queue, x.held) for j, x in lpstat_jobs(print_site).items()} == {
        b1: (SITE_FINDME, True)}
    assert print_site.printed("printer2") == []
    wait_until(lambda: coil_writes(d, PGREEN) == [True, False], 5, "green pulse at the printer")
    assert coil_writes(d, PRED) == []
    assert coil_writes(d, STRIKE) == strike_before  # the printer's reader opened no door
    d.wait_event("print.completed", 2)

    # The control API: Bob's job held, the printers' state, the technician's own view.
    jobs = d.ask({"cmd": "print.jobs"})["jobs"]
    assert [(j["job"], j["owner"]) for j in jobs] == [(b1, "bob")]
    status = d.ask({"cmd": "status"})

    def p1_idle() -> bool:
        printers = {p["name"]: p for p in d.ask({"cmd": "status"})["printers"]}
        return printers["p1"]["state"] == "idle"

    wait_until(p1_idle, TIMEOUT, "printer p1 reported idle")
    printers = {p["name"]: p for p in d.ask({"cmd": "status"})["printers"]}
    assert printers["p1"]["last_result"] == "released"
    assert printers[f"{SITE_FINDME} (hold)"]["held_jobs"] == 1
    assert status["journal"]["last_seq"] >= d.events("print.completed")[-1]["seq"]


def test_nothing_to_print_and_a_delegate_and_a_revoked_card_at_the_printer(
        daemon_factory: Any, print_site: PrintRig, pcsc_rig: PcscRig, demo_pki: DemoPki,
        tmp_path: Path) -> None:
    d = start(daemon_factory, print_site)
    pcsc_rig.insert("Door1", demo_pki.cards["alice"])
    ev = d.wait_event("print.nothing-to-print")
    assert (ev["person"], ev["printer"]) == ("p-alice", "p1")
    wait_until(lambda: coil_writes(d, PRED) == [True, False], 5, "red pulse: nothing to print")
    pcsc_rig.remove("Door1", wait=True)

    # Bob's card is revoked: denied at the printer, his job stays held ...
    b1, doc = submit(print_site, tmp_path, "bob", 9)
    pcsc_rig.insert("Door1", demo_pki.cards["bob"])
    denied = d.wait_event("access.denied")
    assert (denied["printer"], denied["reason"]) == ("p1", "revoked")
    pcsc_rig.remove("Door1", wait=True)
    assert lpstat_jobs(print_site)[b1].held
    # ... and Carol, his delegate, releases it at the other printer (which has no lights).
    pcsc_rig.insert("Door2", demo_pki.cards["carol"])
    [printed] = print_site.wait_printed(1, TIMEOUT, printer="printer2")
    assert printed.read_bytes() == doc
    rel = d.wait_event("print.released")
    assert (rel["person"], rel["owner"], rel["printer"]) == ("p-carol", "bob", "p2")


def test_cupsd_down_fails_the_release_clearly_and_the_door_still_opens(
        daemon_factory: Any, print_site: PrintRig, pcsc_rig: PcscRig, demo_pki: DemoPki,
        tmp_path: Path) -> None:
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    d = start(daemon_factory, print_site)
    print_site.processes["cupsd"].stop()

    pcsc_rig.insert("Door1", demo_pki.cards["alice"])
    failed = d.wait_event("print.failed")
    assert (failed["person"], failed["printer"], failed["reason"]) == (
        "p-alice", "p1", "spooler-unavailable")
    wait_until(lambda: coil_writes(d, PRED) == [True, False], 5, "red pulse: spooler down")

    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    door = d.wait_event("access.granted", 2)
    assert (door["door"], door["person"]) == ("front", "p-alice")
    wait_until(lambda: True in coil_writes(d, STRIKE), 5, "the front door's strike pulsed")
    answer = d.ask({"cmd": "print.jobs"})
    assert not answer["ok"] and "cups" in answer["error"].lower()
    assert d.proc.alive()


def test_a_technician_releases_through_the_daemon_audited(
        daemon_factory: Any, print_site: PrintRig, tmp_path: Path) -> None:
    b1, doc = submit(print_site, tmp_path, "bob", 4)
    d = start(daemon_factory, print_site)
    answer = d.ask({"cmd": "print.release", "user": "bob", "printer": "p2"}, timeout=20)
    assert answer["ok"], answer
    assert [j["job"] for j in answer["outcome"]["released"]] == [b1]
    [printed] = print_site.wait_printed(1, TIMEOUT, printer="printer2")
    assert printed.read_bytes() == doc
    audit = d.wait_event("control.print-release")
    assert (audit["owner"], audit["printer"]) == ("bob", "p2") and audit["user"]
    bad = d.ask({"cmd": "print.release", "user": "bob", "printer": "nope"})
    assert not bad["ok"] and "nope" in bad["error"]


def test_doctor_checks_cupsd_and_each_printer_and_names_cupsd_down(
        daemon_factory: Any, print_site: PrintRig) -> None:
    from tests.test_doctor import doctor

    d = start(daemon_factory, print_site)
    r = doctor(d, "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["printers"]["ok"], checks["printers"]
    assert "2 printer(s) ready" in checks["printers"]["detail"]
    print_site.processes["cupsd"].stop()
    r = doctor(d)
    line = next(x for x in r.stdout.splitlines() if "printers" in x)
    assert r.returncode == 1 and line.startswith("FAIL"), r.stdout
    assert "Traceback" not in r.stderr


async def test_the_dashboard_shows_each_printer_and_the_held_jobs(
        daemon_factory: Any, print_site: PrintRig, tmp_path: Path) -> None:
    from textual.widgets import Static

    from tests.test_tui import SIZE, connected, sock, until
    from tui.app import Dashboard

    submit(print_site, tmp_path, "bob", 4)
    submit(print_site, tmp_path, "alice", 5)
    d = start(daemon_factory, print_site)
    app = Dashboard(sock(d))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)

        def panel() -> str:
            return str(app.query_one("#printers", Static).render())

        await until(pilot, lambda: "p1 idle" in panel() and "p2 idle" in panel()
                    and f"{SITE_FINDME} (hold) holding · held 2" in panel(),
                    "printers and the 2 held jobs in the dashboard", timeout=20)
        print_site.processes["cupsd"].stop()
        await until(pilot, lambda: "p1 unreachable" in panel(), "cupsd down shown", timeout=20)


def test_a_card_the_trust_stance_denies_releases_nothing_and_shows_red(
        daemon_factory: Any, print_site: PrintRig, pcsc_rig: PcscRig, demo_pki: DemoPki,
        tmp_path: Path) -> None:
    """No CRL for the issuing CA: revocation unknown, denied by the stance (the default)
    although the policy would grant Alice at p1; her job stays held."""
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    d: Daemon = daemon_factory(door_toml=print_toml(print_site), policy=print_policy(),
                               crls=[demo_pki.root.parent / "root.crl"])
    d.wait_event("reader.online", 3)
    pcsc_rig.insert("Door1", demo_pki.cards["alice"])
    denied = d.wait_event("access.denied")
    assert (denied["printer"], denied["person"], denied["reason"]) == (
        "p1", "p-alice", "revocation-unknown")
    wait_until(lambda: coil_writes(d, PRED) == [True, False], 5, "red pulse")
    assert d.events("print.released") == [] and d.events("print.nothing-to-print") == []
    assert lpstat_jobs(print_site)[a1].held


def test_a_second_tap_during_a_release_is_ignored_and_never_releases_twice(
        daemon_factory: Any, print_site: PrintRig, pcsc_rig: PcscRig, demo_pki: DemoPki,
        tmp_path: Path) -> None:
    jobs = [submit(print_site, tmp_path, "alice", seed)[0] for seed in range(3, 6)]
    d = start(daemon_factory, print_site)
    cupsd = print_site.processes["cupsd"].popen.pid
    os.kill(cupsd, signal.SIGSTOP)  # the release waits on cupsd (well within its 5 s timeout)
    try:
        pcsc_rig.insert("Door1", demo_pki.cards["alice"])
        d.wait_event("access.granted")
        pcsc_rig.remove("Door1", wait=True)
        pcsc_rig.insert("Door1", demo_pki.cards["alice"])  # again, while the release runs
        wait_until(lambda: "a release is running; presentation ignored" in d.proc.log_tail(),
                   5, "the second tap ignored", d.proc)
    finally:
        os.kill(cupsd, signal.SIGCONT)
    print_site.wait_printed(len(jobs), TIMEOUT, printer="printer1")
    d.wait_event("print.completed", len(jobs))
    assert sorted(e["job"] for e in d.events("print.released")) == sorted(jobs)
    assert len(d.events("access.granted")) == 1 and d.events("print.nothing-to-print") == []


async def test_a_technician_releases_from_the_dashboard_with_confirmation(
        daemon_factory: Any, print_site: PrintRig, tmp_path: Path) -> None:
    from tests.test_tui import SIZE, connected, sock, until
    from tui.app import Dashboard
    from tui.confirm import ConfirmScreen, PrintReleaseScreen

    b1, doc = submit(print_site, tmp_path, "bob", 6)
    d = start(daemon_factory, print_site)
    app = Dashboard(sock(d))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: bool((app.status or {}).get("printers")), "printers known")
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PrintReleaseScreen), "the form")
        await pilot.press("escape")  # cancelled: nothing happens
        await until(pilot, lambda: not isinstance(app.screen, PrintReleaseScreen), "closed")
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PrintReleaseScreen), "the form")
        await pilot.press(*"bob", "enter")
        await pilot.press("end", "backspace", "backspace", *"p2", "enter")  # p1 -> p2
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: bool(app.answers), "the daemon's answer", timeout=20)
        assert app.answers[-1]["ok"], app.answers[-1]
    [printed] = print_site.wait_printed(1, TIMEOUT, printer="printer2")
    assert printed.read_bytes() == doc
    audit = d.wait_event("control.print-release")
    assert (audit["owner"], audit["printer"]) == ("bob", "p2")
    assert [e["job"] for e in d.events("print.released")] == [b1]
