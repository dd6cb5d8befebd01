"""Print release against a real cupsd and real printers (ippeveprinter): a person badges at a
printer and their held jobs print there, and only there; everyone else's stay held. Each result
is checked three ways: the document bytes in the printer's spool folder, `lpstat` (cupsd's own
view, through an independent client) and the journal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InputError, PrinterError
from gateway.journal import Event, Journal
from gateway.policy import DecisionState, Policy, decide
from gateway.rig.cups import PrintRig
from printer_drivers.ipp import SpoolerUnreachable
from printer_drivers.release import PrintRelease
from tests.fixtures_cups import SITE_FINDME, lpstat_jobs, pdf, site_config

TIMEOUT = 30  # seconds; a safety net only, every wait polls with a deadline


@pytest.fixture
async def engine(print_site: PrintRig, journal: Journal) -> AsyncIterator[PrintRelease]:
    async with PrintRelease(site_config(print_site), journal) as e:
        yield e


def events(journal: Journal, kind: str) -> list[Event]:
    assert journal.flush(5)
    return journal.events(kind)


def submit(rig: PrintRig, tmp_path: Path, user: str, seed: int, queue: str = SITE_FINDME,
           **kw: Any) -> tuple[int, bytes]:
    """A PDF from `user` to `queue` (the find-me queue), held by the queue's default."""
    data = pdf(tmp_path / f"{user.replace(chr(92), '_')}-{seed}.pdf", seed)
    return rig.submit(user, tmp_path / f"{user.replace(chr(92), '_')}-{seed}.pdf", hold=False,
                      queue=queue, **kw), data


async def test_alices_jobs_arrive_byte_identical_at_the_printer_she_badged_at_bobs_stay_held(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path) -> None:
    a1, doc1 = submit(print_site, tmp_path, "alice", 3)
    b1, _ = submit(print_site, tmp_path, "bob", 5)
    a2, doc2 = submit(print_site, tmp_path, "CORP\\Alice", 7)  # the same print user, Windows-style
    before = lpstat_jobs(print_site)
    assert {j: (x.queue, x.held) for j, x in before.items()} == {
        a1: (SITE_FINDME, True), b1: (SITE_FINDME, True), a2: (SITE_FINDME, True)}

    outcome = await engine.release_for("p-alice", frozenset({"alice@EXAMPLE.SE"}), "p2")

    assert outcome.result == "released"
    assert [(r.job_id, r.owner, r.from_queue) for r in outcome.released] == [
        (a1, "alice", SITE_FINDME), (a2, "alice", SITE_FINDME)]
    docs = print_site.wait_printed(2, TIMEOUT, printer="printer2")
    assert [d.read_bytes() for d in docs] == [doc1, doc2]
    ends = await engine.follow([a1, a2], within=TIMEOUT)
    assert {j: e.state for j, e in ends.items()} == {a1: "completed", a2: "completed"}
    assert print_site.printed("printer1") == []
    # cupsd's own view: both of Alice's jobs completed at printer2, Bob's still held in find-me.
    done = lpstat_jobs(print_site, "completed")
    assert {done[a1].queue, done[a2].queue} == {"printer2"}
    assert lpstat_jobs(print_site) == {b1: before[b1]}
    released = events(journal, "print.released")
    assert [(e.person, e.data["printer"], e.data["owner"], e.data["job"]) for e in released] == [
        ("p-alice", "p2", "alice", a1), ("p-alice", "p2", "alice", a2)]
    assert all(e.data["size_kb"] == 9 and "name" not in e.data for e in released)
    assert [e.data["job"] for e in events(journal, "print.completed")] == [a1, a2]


async def test_bob_cannot_release_alices_jobs(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path) -> None:
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    outcome = await engine.release_for("p-bob", frozenset({"bob"}), "p1")
    assert outcome.result == "nothing-to-print"
    assert lpstat_jobs(print_site)[a1].held
    assert print_site.printed("printer1") == []
    [ev] = events(journal, "print.nothing-to-print")
    assert (ev.person, ev.reason, ev.data["printer"]) == ("p-bob", "nothing-to-print", "p1")


async def test_a_job_sent_straight_to_a_printer_is_held_and_released_only_there(
        print_site: PrintRig, engine: PrintRelease, tmp_path: Path) -> None:
    direct1, doc = submit(print_site, tmp_path, "alice", 3, queue="printer1")
    direct2, _ = submit(print_site, tmp_path, "alice", 5, queue="printer2")
    assert lpstat_jobs(print_site)[direct1].held  # the queue's job-hold-until-default

    outcome = await engine.release_for("p-alice", frozenset({"alice"}), "p1")

    assert [(r.job_id, r.from_queue) for r in outcome.released] == [(direct1, "printer1")]
    assert [d.read_bytes() for d in print_site.wait_printed(1, TIMEOUT, "printer1")] == [doc]
    left = lpstat_jobs(print_site)
    assert (left[direct2].queue, left[direct2].held) == ("printer2", True)


@pytest.mark.parametrize(("tool", "reason"), [("cupsdisable", "printer-stopped"),
                                              ("cupsreject", "printer-not-accepting")])
async def test_a_stopped_or_rejecting_printer_refuses_and_the_jobs_stay_held(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path,
        tool: str, reason: str) -> None:
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    print_site._run([tool, "-h", print_site.admin_server, "printer1"])

    outcome = await engine.release_for("p-alice", frozenset({"alice"}), "p1")

    assert (outcome.result, outcome.reason) == ("refused", reason)
    jobs = lpstat_jobs(print_site)
    assert (jobs[a1].queue, jobs[a1].held) == (SITE_FINDME, True)
    [ev] = events(journal, "print.refused")
    assert (ev.person, ev.reason, ev.data["printer"]) == ("p-alice", reason, "p1")
    # The same jobs print at another printer that is fine.
    other = await engine.release_for("p-alice", frozenset({"alice"}), "p2")
    assert [r.job_id for r in other.released] == [a1]


async def test_delegated_release_prints_the_delegators_jobs_too(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path) -> None:
    policy = Policy.from_dict({
        "time_zone": "Europe/Stockholm", "printers": ["p1", "p2"],
        "access_levels": {"print": {"resources": ["p1", "p2"], "schedule": "always"}},
        "groups": {"staff": {"access_levels": ["print"]}},
        "people": [
            {"id": "p-alice", "identities": ["upn:alice@example.se"], "groups": ["staff"],
             "print_user": "alice"},
            {"id": "p-bob", "identities": ["upn:bob@example.se"], "groups": ["staff"],
             "print_user": "CORP\\bob"},
            {"id": "p-carol", "identities": ["upn:carol@example.se"], "groups": ["staff"],
             "print_user": "carol"},
        ],
        "delegations": [{"from": "p-bob", "to": "p-alice",
                         "valid_until": "2100-01-01T00:00:00+00:00"}],
    })
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    b1, _ = submit(print_site, tmp_path, "bob@CORP.EXAMPLE", 5)
    c1, _ = submit(print_site, tmp_path, "carol", 7)
    now = datetime.now(UTC)
    decision = decide(policy, "upn:Alice@Example.SE", "p1", now, DecisionState())
    assert decision.granted and decision.actions == ("release",)
    assert decision.person is not None

    outcome = await engine.release_for(decision.person,
                                       policy.releasable_owners(decision.person, now), "p1")

    assert sorted((r.job_id, r.owner) for r in outcome.released) == [(a1, "alice"), (b1, "bob")]
    assert len(print_site.wait_printed(2, TIMEOUT, "printer1")) == 2
    assert lpstat_jobs(print_site)[c1].held
    assert {(e.person, e.data["owner"]) for e in events(journal, "print.released")} == {
        ("p-alice", "alice"), ("p-alice", "bob")}
    # Delegation is one way: Bob does not get Alice's (she has none left anyway) nor Carol's.
    assert policy.releasable_owners("p-bob", now) == {"CORP\\bob"}


async def test_retention_purge_cancels_jobs_held_too_long_and_journals_them(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path) -> None:
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    d1, _ = submit(print_site, tmp_path, "bob", 5, queue="printer2")
    assert await engine.purge(time.time()) == []  # nothing is 4 h old yet
    assert set(lpstat_jobs(print_site)) == {a1, d1}

    purged = await engine.purge(time.time() + 4 * 3600 + 60)

    assert sorted(j.job_id for j in purged) == [a1, d1]
    assert lpstat_jobs(print_site) == {}
    # purge-job: not even the job history (owner, title) stays in cupsd.
    assert lpstat_jobs(print_site, "all") == {}
    evs = events(journal, "print.purged")
    assert sorted((e.data["job"], e.data["owner"], e.data["queue"], e.reason) for e in evs) == [
        (a1, "alice", SITE_FINDME, "retention"), (d1, "bob", "printer2", "retention")]
    assert all(e.data["age_seconds"] >= 4 * 3600 for e in evs)
    assert await engine.held_jobs() == []


async def test_a_job_submitted_just_before_the_badge_is_found_and_one_cancelled_is_skipped(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path) -> None:
    early, _ = submit(print_site, tmp_path, "alice", 3)
    assert [j.job_id for j in await engine.held_jobs("alice")] == [early]  # indexed now
    # cancelled by an administrator (the shipped policy lets no claimed name cancel)
    print_site._run(["cancel", "-h", print_site.admin_server, str(early)])
    late, doc = submit(print_site, tmp_path, "alice", 5)  # after the index was built

    outcome = await engine.release_for("p-alice", frozenset({"alice"}), "p1")

    assert [r.job_id for r in outcome.released] == [late]
    assert outcome.failed == ()
    assert [d.read_bytes() for d in print_site.wait_printed(1, TIMEOUT, "printer1")] == [doc]
    assert events(journal, "print.failed") == []


async def test_held_jobs_lists_owners_queues_and_sizes_and_names_only_when_configured(
        print_site: PrintRig, journal: Journal, tmp_path: Path) -> None:
    submit(print_site, tmp_path, "alice", 3, title="payslip march")
    submit(print_site, tmp_path, "bob", 5, queue="printer2", title="medical letter")
    async with PrintRelease(site_config(print_site), journal) as plain:
        jobs = await plain.held_jobs()
        assert [(j.owner, j.queue, j.size_kb, j.name) for j in jobs] == [
            ("alice", SITE_FINDME, 9, None), ("bob", "printer2", 9, None)]
        assert [j.owner for j in await plain.held_jobs("ALICE@corp")] == ["alice"]
    async with PrintRelease(site_config(print_site, journal_job_names=True), journal) as named:
        assert [j.name for j in await named.held_jobs()] == ["payslip march", "medical letter"]
        await named.release_for("p-alice", frozenset({"alice"}), "p1")
    [ev] = events(journal, "print.released")
    assert ev.data["name"] == "payslip march"


async def test_a_document_the_printer_rejects_is_reported_as_not_completed(
        print_site: PrintRig, engine: PrintRelease, journal: Journal, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)  # raw bytes the printer cannot identify
    bad = print_site.submit("alice", junk, hold=False, queue=SITE_FINDME, options=["-o", "raw"])

    outcome = await engine.release_for("p-alice", frozenset({"alice"}), "p2")
    ends = await engine.follow([r.job_id for r in outcome.released], within=TIMEOUT)

    assert ends[bad].state in ("aborted", "canceled")
    [ev] = events(journal, f"print.{ends[bad].state}")
    assert (ev.person, ev.data["printer"], ev.data["owner"], ev.data["job"]) == (
        "p-alice", "p2", "alice", bad)


async def test_bad_inputs_are_clear_errors(engine: PrintRelease, journal: Journal) -> None:
    with pytest.raises(InputError, match=r"unknown printer 'p9'; expected one of p1, p2"):
        await engine.release_for("p-alice", frozenset({"alice"}), "p9")
    with pytest.raises(InputError, match="print user names must be non-empty"):
        await engine.release_for("p-alice", frozenset({""}), "p1")
    with pytest.raises(InputError, match="print user names must be non-empty"):
        await engine.release_for("p-alice", frozenset({"CORP\\"}), "p1")
    with pytest.raises(InputError, match="expected a print user name"):
        await engine.held_jobs(" ")
    assert events(journal, "print.released") == []
    # A person without a print account has simply nothing to print.
    outcome = await engine.release_for("p-dan", frozenset(), "p1")
    assert outcome.result == "nothing-to-print"


async def test_cupsd_down_is_a_clear_printer_error_and_journaled(
        print_site: PrintRig, engine: PrintRelease, journal: Journal) -> None:
    print_site.processes["cupsd"].stop()
    t0 = time.monotonic()
    with pytest.raises(SpoolerUnreachable, match=f"cupsd on {print_site.socket_path} is "
                                                 "unreachable") as e:
        await engine.release_for("p-alice", frozenset({"alice"}), "p1")
    assert isinstance(e.value, PrinterError)
    assert time.monotonic() - t0 < 1.0
    [ev] = events(journal, "print.failed")
    assert (ev.person, ev.reason) == ("p-alice", "spooler-unavailable")


async def test_a_hung_cupsd_times_out_while_the_event_loop_keeps_running(
        print_site: PrintRig, journal: Journal) -> None:
    async with PrintRelease(site_config(print_site, timeout_seconds=0.5), journal) as engine:
        await engine.sync()
        print_site.processes["cupsd"].kill(19)  # SIGSTOP: connections accepted, never answered
        gaps: list[float] = []

        async def door_loop() -> None:  # stands for the doors sharing the gateway's event loop
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(door_loop())
        try:
            with pytest.raises(SpoolerUnreachable, match="did not answer in time"):
                await engine.release_for("p-alice", frozenset({"alice"}), "p1")
        finally:
            ticker.cancel()
            print_site.processes["cupsd"].kill(18)  # SIGCONT, so the rig stops it cleanly
        assert len(gaps) > 50
        assert max(gaps) < 0.1


async def test_after_a_cupsd_restart_the_index_and_connection_recover(
        print_site: PrintRig, engine: PrintRelease, tmp_path: Path) -> None:
    a1, _ = submit(print_site, tmp_path, "alice", 3)
    await engine.sync()  # the engine's pooled connection now points at the old cupsd
    print_site.restart_cupsd()
    # The find-me queue is still stopped after the restart (cupsd keeps that state).
    assert "disabled" in print_site.lpstat("-p", SITE_FINDME)
    outcome = await engine.release_for("p-alice", frozenset({"alice"}), "p1")
    assert [r.job_id for r in outcome.released] == [a1]
    assert len(print_site.wait_printed(1, TIMEOUT, "printer1")) == 1


async def test_many_jobs_print_in_the_order_they_were_submitted(
        print_site: PrintRig, engine: PrintRelease, tmp_path: Path) -> None:
    # Moves and releases go out several at a time; the order must still be the owner's.
    submitted = [submit(print_site, tmp_path, "alice", seed,
                        queue="printer1" if seed == 11 else SITE_FINDME)
                 for seed in (3, 5, 7, 11, 13, 17, 19)]
    outcome = await engine.release_for("p-alice", frozenset({"alice"}), "p1")
    assert [r.job_id for r in outcome.released] == [job for job, _ in submitted]
    docs = print_site.wait_printed(len(submitted), TIMEOUT, "printer1")
    assert [d.read_bytes() for d in docs] == [data for _, data in submitted]
