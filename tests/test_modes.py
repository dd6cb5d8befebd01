"""Door and site modes: precedence, persistence, the first-person-in latch, bad files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from door_drivers.supervision import DoorMode
from gateway.modes import ModeBook, stricter
from gateway.policy import Policy

STHLM = ZoneInfo("Europe/Stockholm")
POLICY = Policy.from_dict({
    "time_zone": "Europe/Stockholm",
    "doors": ["front", "lab"],
    "schedules": {"mornings": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "07:00",
                                "to": "09:00"}]},
    "door_modes": {"front": {"free_access": "mornings", "first_person_in": True},
                   "lab": {"free_access": "mornings"}},
})
MONDAY_8 = datetime(2026, 11, 30, 8, 0, tzinfo=STHLM)
MONDAY_10 = datetime(2026, 11, 30, 10, 0, tzinfo=STHLM)


def book(tmp_path: Path) -> ModeBook:
    return ModeBook(tmp_path / "modes.json", ("front", "lab"))


def test_the_stricter_mode_wins():
    assert stricter(DoorMode.NORMAL, DoorMode.FREE_ACCESS) is DoorMode.FREE_ACCESS
    assert stricter(DoorMode.FREE_ACCESS, DoorMode.LOCKDOWN) is DoorMode.LOCKDOWN
    assert stricter(DoorMode.LOCKDOWN, DoorMode.EMERGENCY_OPEN) is DoorMode.EMERGENCY_OPEN


def test_manual_modes_persist_and_normal_clears_a_door(tmp_path):
    b = book(tmp_path)
    assert b.set(None, DoorMode.LOCKDOWN) is DoorMode.NORMAL
    assert b.set("lab", DoorMode.EMERGENCY_OPEN) is DoorMode.NORMAL
    again = book(tmp_path)
    assert again.site is DoorMode.LOCKDOWN and again.door_mode("lab") is DoorMode.EMERGENCY_OPEN
    assert again.effective("lab", None, MONDAY_10) is DoorMode.EMERGENCY_OPEN
    assert again.effective("front", None, MONDAY_10) is DoorMode.LOCKDOWN
    assert again.set("lab", DoorMode.NORMAL) is DoorMode.EMERGENCY_OPEN
    assert book(tmp_path).doors == {}
    assert (tmp_path / "modes.json").stat().st_mode & 0o777 == 0o600


def test_a_failed_write_changes_nothing(tmp_path):
    (tmp_path / "file").write_text("")
    b = ModeBook(tmp_path / "file" / "modes.json", ("front",))  # its folder is a file
    with pytest.raises(OSError):
        b.set(None, DoorMode.LOCKDOWN)
    assert b.site is DoorMode.NORMAL


@pytest.mark.parametrize("content", ["{", "[]", '{"site": "party", "doors": {}}',
                                     '{"site": "normal", "doors": {"front": 3}}', "\xff"])
def test_an_unreadable_file_is_set_aside_and_doors_start_normal(tmp_path, content):
    (tmp_path / "modes.json").write_text(content, errors="surrogateescape")
    b = book(tmp_path)
    assert b.site is DoorMode.NORMAL and b.doors == {}
    assert (tmp_path / "modes.json.bad").exists() and not (tmp_path / "modes.json").exists()


def test_doors_no_longer_configured_are_dropped(tmp_path):
    (tmp_path / "modes.json").write_text('{"site": "normal", "doors": {"gone": "lockdown"}}')
    assert book(tmp_path).doors == {}


def test_scheduled_free_access_and_the_first_person_in_latch(tmp_path):
    b = book(tmp_path)
    assert b.effective("lab", POLICY, MONDAY_8) is DoorMode.FREE_ACCESS
    assert b.effective("lab", POLICY, MONDAY_10) is DoorMode.NORMAL
    # front waits for its first authorised person inside the window.
    assert b.effective("front", POLICY, MONDAY_8) is DoorMode.NORMAL
    assert not b.first_person_in("front", POLICY, MONDAY_10)  # outside the window: no latch
    assert b.first_person_in("front", POLICY, MONDAY_8)
    assert not b.first_person_in("front", POLICY, MONDAY_8)  # only the first one opens it
    assert b.effective("front", POLICY, MONDAY_8) is DoorMode.FREE_ACCESS
    # The window closes: the latch resets for the next morning.
    assert b.effective("front", POLICY, MONDAY_10) is DoorMode.NORMAL
    assert b.effective("front", POLICY, MONDAY_8) is DoorMode.NORMAL
    # A site lockdown beats a free-access schedule.
    b.set(None, DoorMode.LOCKDOWN)
    assert b.effective("lab", POLICY, MONDAY_8) is DoorMode.LOCKDOWN
