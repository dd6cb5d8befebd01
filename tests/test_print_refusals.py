"""When cupsd refuses the gateway's requests as malformed (as Debian's cups security update did
with pyipp's "en-US"), every place a technician looks carries cupsd's own words: the journaled
print.failed, the printer's error in the status and the dashboard, and an alarm that lasts
until cupsd accepts a request there again. Against the real cupsd of `print_site`; the
gateway's language is made wrong on purpose to get the refusal the update gave."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Stance
from gateway.journal import Journal
from gateway.printing import BAD_REQUEST_ALARM, PrinterRuntime, Printing
from gateway.rig.cups import PrintRig
from printer_drivers.ipp import IppStatusError
from printer_drivers.release import PrintRelease
from tests.fixtures_cups import SITE_FINDME, pdf, site_config
from tui.view import printers_panel, top_bar


@pytest.fixture
async def printing(print_site: PrintRig, journal: Journal) -> AsyncIterator[Printing]:
    pc = site_config(print_site)
    p = Printing(pc, PrintRelease(pc, journal), journal, trust=None,  # type: ignore[arg-type]
                 stance=Stance(), printers={c.name: PrinterRuntime(c) for c in pc.printers})
    try:
        yield p
    finally:
        await p.close()


def _kinds(journal: Journal, *kinds: str) -> list[tuple[str, dict[str, object]]]:
    assert journal.flush(5)
    return [(e.kind, {"reason": e.reason, **e.data}) for e in journal.events()
            if e.kind in kinds]


async def test_a_request_cupsd_refuses_as_malformed_is_an_alarm_with_cupsds_words_until_it_passes(
        print_site: PrintRig, printing: Printing, journal: Journal, tmp_path: Path) -> None:
    pdf(tmp_path / "a.pdf", 5)
    print_site.submit("alice", tmp_path / "a.pdf", hold=False, queue=SITE_FINDME)
    rt = printing.printers["p1"]
    printing.engine.client.language = "en-US"  # what pyipp sends; cupsd now refuses it
    await printing._release(rt, "p-alice", frozenset({"alice"}))

    said = "Bad \"attributes-natural-language\" value 'en-US'."
    assert rt.last_result == "failed"
    assert rt.alarm == BAD_REQUEST_ALARM
    assert rt.error is not None and said in rt.error
    events = _kinds(journal, "print.failed", f"alarm.{BAD_REQUEST_ALARM}", "alarm.cleared")
    assert [k for k, _ in events] == ["print.failed", f"alarm.{BAD_REQUEST_ALARM}"]
    assert events[0][1]["reason"] == "client-error-bad-request"
    assert said in str(events[0][1]["detail"]) and said in str(events[1][1]["detail"])
    assert events[1][1]["printer"] == "p1"
    # The status the daemon serves, and what the dashboard draws from it.
    status = {p["name"]: p for p in printing.status()}
    assert status["p1"]["alarm"] == BAD_REQUEST_ALARM and said in status["p1"]["error"]
    assert "ALARM spooler-bad-request" in printers_panel({"printers": list(status.values())}).plain
    assert "1 alarm" in top_bar({"printers": list(status.values())}, None, now=0).plain
    assert print_site.cupsd_died() is None

    # A second refusal does not raise it again; an accepted request clears it.
    await printing._release(rt, "p-alice", frozenset({"alice"}))
    printing.engine.client.language = "en"
    await printing._release(rt, "p-alice", frozenset({"alice"}))
    assert rt.last_result == "released" and rt.alarm is None
    kinds = [k for k, _ in _kinds(journal, "print.released", f"alarm.{BAD_REQUEST_ALARM}",
                                  "alarm.cleared")]
    assert kinds == [f"alarm.{BAD_REQUEST_ALARM}", "print.released", "alarm.cleared"]
    assert print_site.wait_printed(1, printer="printer1")


async def test_an_ipp_refusal_names_the_status_and_cupsds_message(
        print_site: PrintRig, printing: Printing) -> None:
    printing.engine.client.language = "sv-SE"
    with pytest.raises(IppStatusError) as e:
        await printing.engine.printer_state("p1")
    assert e.value.status_name == "client-error-bad-request"
    assert "sv-SE" in e.value.message and e.value.message in str(e.value)
