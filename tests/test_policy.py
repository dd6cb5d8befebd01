"""The access policy model and `decide`: what a door or printer answers, and why."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InputError
from gateway.policy import (
    REASONS,
    DecisionState,
    FreeAccess,
    Mode,
    Pending,
    Policy,
    PolicyError,
    decide,
    normalise_identity,
    scheduled_free,
)
from tests.pnr import luhn

STHLM = ZoneInfo("Europe/Stockholm")
TODAY = date(2026, 11, 28)


def local(text: str) -> datetime:
    """A wall-clock time in Stockholm, e.g. '2026-06-01 09:00' (a Monday)."""
    return datetime.fromisoformat(text).replace(tzinfo=STHLM)


def doc() -> dict[str, Any]:
    return {
        "time_zone": "Europe/Stockholm",
        "doors": ["main", "lab", "vault", "night", "plant", "lobby", "porch"],
        "printers": ["p1"],
        "schedules": {
            "office": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "07:00", "to": "18:00"}],
            "night": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                       "from": "22:00", "to": "06:00"}],
            "dst-hour": [{"days": ["sun"], "from": "02:00", "to": "03:00"}],
            "holiday-hours": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                               "from": "10:00", "to": "14:00"}],
        },
        "holidays": [{"date": "2026-12-24", "schedule": "holiday-hours"},
                     {"date": "2026-12-25", "schedule": None}],
        "access_levels": {
            "office-doors": {"resources": ["main", "lab", "p1"], "schedule": "office"},
            "night-shift": {"resources": ["night"], "schedule": "night"},
            "plant-dst": {"resources": ["plant"], "schedule": "dst-hour"},
            "vault-any": {"resources": ["vault"], "schedule": "always"},
            "main-any": {"resources": ["main"], "schedule": "always"},
        },
        "groups": {
            "staff": {"access_levels": ["office-doors"]},
            "nightshift": {"access_levels": ["night-shift"]},
            "plant": {"access_levels": ["plant-dst"]},
            "vault": {"access_levels": ["vault-any"]},
            "security": {"access_levels": ["main-any"]},
        },
        "people": [
            {"id": "p-alice", "identities": ["upn:Alice@Example.SE", "pnr:19121212-1212"],
             "groups": ["staff"], "print_user": "alice"},
            {"id": "p-bob", "identities": ["email:bob@example.se"], "groups": ["staff", "vault"]},
            {"id": "p-carol", "identities": ["hsa:se2321000016-abc1"], "groups": ["vault"]},
            {"id": "p-dan", "identities": ["serial:D-1"], "groups": ["nightshift"]},
            {"id": "p-erin", "identities": ["cn:Erin E"], "groups": ["plant"]},
            {"id": "p-sec", "identities": ["upn:sec@example.se"], "groups": ["security", "staff"]},
            {"id": "p-xena", "identities": ["upn:xena@example.se"], "groups": ["staff"],
             "flags": ["holiday_exempt"]},
            {"id": "p-nobody", "identities": ["upn:nobody@example.se"]},
            {"id": "p-yuki", "identities": ["upn:yuki@example.se"], "groups": ["staff"],
             "flags": ["extended_access"]},
        ],
        "temporary_cards": [
            {"identity": "serial:TMP-1", "person": "p-alice", "suspends_regular": True,
             "valid_from": "2026-06-08T08:00:00+02:00", "valid_until": "2026-06-12T17:00:00+02:00"},
        ],
        "substitute_cards": [
            {"id": "sub-1", "identity": "serial:SUB-1", "role": "staff",
             "valid_from": "2026-06-01T09:00:00+02:00", "valid_until": "2026-06-01T12:00:00+02:00"},
            {"id": "sub-2", "identity": "serial:SUB-2", "person": "p-carol",
             "valid_from": "2026-06-01T09:00:00+02:00", "valid_until": "2026-06-01T12:00:00+02:00"},
        ],
        "two_person": [{"door": "vault", "within_seconds": 30}],
        "door_modes": {
            "lobby": {"free_access": "office"},
            "night": {"free_access": "night", "first_person_in": True},
            "plant": {"free_access": "dst-hour", "first_person_in": False},
            "porch": {"free_access": "always"},
        },
        "lockdown_override": "security",
    }


POLICY = Policy.from_dict(doc(), today=TODAY)
NORMAL = DecisionState()
MONDAY_9 = local("2026-06-01 09:00")


def reason(key: str, resource: str, at: datetime, state: DecisionState = NORMAL) -> str:
    return decide(POLICY, key, resource, at, state).reason


# --- identity keys -------------------------------------------------------------------------------

class TestNormaliseIdentity:
    def test_upn_and_email_are_case_folded(self) -> None:
        assert normalise_identity(" upn:Alice@Example.SE ") == "upn:alice@example.se"
        assert normalise_identity("EMAIL:Bob@EXAMPLE.se") == "email:bob@example.se"

    def test_hsa_id_is_upper_cased(self) -> None:
        assert normalise_identity("hsa:se2321000016-abc1") == "hsa:SE2321000016-ABC1"

    @pytest.mark.parametrize("key", ["serial:Ab-12", "cn:Erin E", "oid:2.5.4.5:Xy 1"])
    def test_serial_cn_and_oid_keys_are_kept_as_given(self, key: str) -> None:
        assert normalise_identity(f"  {key} ") == key

    @pytest.mark.parametrize("given_form", ["19121212-1212", "191212121212", "121212+1212"])
    def test_pnr_formats_normalise_to_twelve_digits(self, given_form: str) -> None:
        assert normalise_identity(f"pnr:{given_form}", TODAY) == "pnr:191212121212"

    @pytest.mark.parametrize(("short", "full"), [
        ("991231-1231", "199912311231"),   # 2099 would be in the future
        ("010101-1237", "200101011237"),
        ("271231-1238", "192712311238"),   # 2027 is in the future
        ("121212-1212", "201212121212"),
    ])
    def test_pnr_two_digit_year_takes_the_latest_century_not_in_the_future(
            self, short: str, full: str) -> None:
        assert normalise_identity(f"pnr:{short}", TODAY) == f"pnr:{full}"

    def test_pnr_born_today_is_this_century_and_tomorrow_the_last(self) -> None:
        assert _century("261128", TODAY) == "2026"
        assert _century("261129", TODAY) == "1926"

    def test_pnr_coordination_number_is_accepted(self) -> None:
        # Day + 60: 1912-12-72 is a coordination number for the 12th.
        head = "121272121"
        key = f"pnr:19{head[:6]}-{head[6:]}{luhn(head)}"
        assert normalise_identity(key, TODAY) == f"pnr:19{head}{luhn(head)}"

    def test_pnr_with_a_wrong_check_digit_is_an_error_naming_it(self) -> None:
        with pytest.raises(PolicyError, match="check digit 3 is wrong"):
            normalise_identity("pnr:19121212-1213", TODAY)

    @pytest.mark.parametrize("bad", ["pnr:19121332-1212", "pnr:1912121-1212", "pnr:abc"])
    def test_pnr_that_is_no_date_or_no_number_is_an_error(self, bad: str) -> None:
        with pytest.raises(PolicyError, match="pnr"):
            normalise_identity(bad, TODAY)

    @pytest.mark.parametrize("bad", ["alice", "upn:", "fax:123", "upn:no at sign", ":x"])
    def test_malformed_or_unknown_keys_are_input_errors(self, bad: str) -> None:
        with pytest.raises(InputError):
            normalise_identity(bad)


def _century(yymmdd: str, today: date) -> str:
    tail = "123"
    key = f"pnr:{yymmdd}-{tail}{luhn(yymmdd + tail)}"
    return normalise_identity(key, today)[4:8]


# --- loading -------------------------------------------------------------------------------------

class TestFromDict:
    def test_bad_identity_error_names_its_path(self) -> None:
        d = doc()
        d["people"][3]["identities"] = ["pnr:19121212-1213"]
        with pytest.raises(PolicyError, match=r"^people\[3\]\.identities\[0\]: .*check digit"):
            Policy.from_dict(d, TODAY)

    @pytest.mark.parametrize(("mutate", "path"), [
        (lambda d: d["people"][1]["groups"].append("ghosts"), r"people\[1\]\.groups\[2\]"),
        (lambda d: d["access_levels"]["night-shift"].update(schedule="x"), r"access_levels\.night-shift"),
        (lambda d: d["schedules"]["office"][0].update(to="25:00"), r"schedules\.office\[0\]\.to"),
        (lambda d: d["holidays"].append({"date": "2026-12-24"}), r"holidays\[2\]\.date"),
        (lambda d: d["temporary_cards"][0].update(person="p-zed"), r"temporary_cards\[0\]\.person"),
        (lambda d: d["substitute_cards"][0].update(valid_until="2026-06-01T08:00:00+02:00"),
         r"substitute_cards\[0\]\.valid_until"),
        (lambda d: d["two_person"][0].update(within_seconds=0), r"two_person\[0\]\.within_seconds"),
        (lambda d: d.update(time_zone="Mars/Olympus"), "time_zone"),
        (lambda d: d["people"][2].update(shoe_size=44), r"people\[2\]\.shoe_size"),
    ])
    def test_invalid_fields_are_named_by_path(self, mutate: Any, path: str) -> None:
        d = doc()
        mutate(d)
        with pytest.raises(PolicyError, match=f"^{path}"):
            Policy.from_dict(d, TODAY)

    def test_an_identity_key_may_belong_to_one_holder_only(self) -> None:
        d = doc()
        d["people"][1]["identities"].append("UPN:alice@example.se")
        with pytest.raises(PolicyError, match=r"people\[1\]\.identities\[1\].*p-alice"):
            Policy.from_dict(d, TODAY)

    def test_identities_are_indexed_in_canonical_form(self) -> None:
        assert POLICY.holders["upn:alice@example.se"].person == "p-alice"
        assert POLICY.holders["pnr:191212121212"].person == "p-alice"
        assert POLICY.people["p-alice"].print_user == "alice"


# --- decisions -----------------------------------------------------------------------------------

class TestReasons:
    def test_granted_within_schedule_unlocks(self) -> None:
        d = decide(POLICY, "upn:alice@example.se", "main", MONDAY_9, NORMAL)
        assert (d.granted, d.reason, d.person, d.actions) == (True, "granted", "p-alice", ("unlock",))

    def test_presented_keys_are_normalised_before_look_up(self) -> None:
        assert reason("UPN:ALICE@example.se", "lab", MONDAY_9) == "granted"
        assert reason("pnr:121212-1212", "lab", MONDAY_9) != "granted"  # 2012: someone else
        assert reason("pnr:191212121212", "lab", local("2026-05-29 09:00")) == "granted"

    def test_printer_grant_releases(self) -> None:
        d = decide(POLICY, "email:bob@example.se", "p1", MONDAY_9, NORMAL)
        assert (d.granted, d.actions) == (True, ("release",))

    def test_unknown_person(self) -> None:
        assert reason("upn:mallory@example.se", "main", MONDAY_9) == "unknown-person"
        assert reason("garbage", "main", MONDAY_9) == "unknown-person"

    def test_no_access_for_a_door_outside_the_persons_levels_or_an_unknown_resource(self) -> None:
        assert reason("upn:nobody@example.se", "main", MONDAY_9) == "no-access"
        assert reason("upn:alice@example.se", "vault", MONDAY_9) == "no-access"
        assert reason("upn:alice@example.se", "no-such-door", MONDAY_9) == "no-access"

    def test_outside_schedule(self) -> None:
        assert reason("email:bob@example.se", "main", local("2026-06-01 06:59:59")) == "outside-schedule"
        assert reason("email:bob@example.se", "main", local("2026-06-01 07:00")) == "granted"
        assert reason("email:bob@example.se", "main", local("2026-06-01 18:00")) == "outside-schedule"
        assert reason("email:bob@example.se", "main", local("2026-06-06 09:00")) == "outside-schedule"

    def test_naive_time_is_denied_not_guessed(self) -> None:
        assert reason("email:bob@example.se", "main", datetime(2026, 6, 1, 9)) == "invalid-time"

    def test_every_reason_code_is_declared(self) -> None:
        assert {"granted", "unknown-person", "no-access", "outside-schedule", "holiday",
                "credential-not-yet-valid", "credential-expired", "card-suspended", "lockdown",
                "door-faulted", "two-person-pending", "two-person-same-person"} <= REASONS


class TestMidnight:
    @pytest.mark.parametrize(("when", "granted"), [
        ("2026-06-01 21:59:59", False), ("2026-06-01 22:00", True), ("2026-06-01 23:59:59", True),
        ("2026-06-02 00:00", True), ("2026-06-02 05:59:59", True), ("2026-06-02 06:00", False),
    ])
    def test_a_window_spanning_midnight_holds_on_both_sides(self, when: str, granted: bool) -> None:
        assert decide(POLICY, "serial:D-1", "night", local(when), NORMAL).granted is granted

    def test_the_morning_part_belongs_to_the_previous_evenings_window(self) -> None:
        d = doc()
        d["schedules"]["night"][0]["days"] = ["mon"]
        p = Policy.from_dict(d, TODAY)
        assert decide(p, "serial:D-1", "night", local("2026-06-02 03:00"), NORMAL).granted  # Tue early
        assert not decide(p, "serial:D-1", "night", local("2026-06-01 03:00"), NORMAL).granted  # Mon early


class TestDaylightSaving:
    def test_spring_forward_a_window_in_the_skipped_hour_never_opens(self) -> None:
        # 2026-03-29: 02:00 CET jumps to 03:00 CEST, i.e. at 01:00 UTC.
        start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
        minutes = [start + timedelta(minutes=m) for m in range(120)]
        assert not any(decide(POLICY, "cn:Erin E", "plant", t, NORMAL).granted for t in minutes)
        last_cet = datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC)
        first_cest = datetime(2026, 3, 29, 1, tzinfo=UTC)
        assert (last_cet.astimezone(STHLM).hour, first_cest.astimezone(STHLM).hour) == (1, 3)
        assert reason("cn:Erin E", "plant", last_cet) == "outside-schedule"
        assert reason("cn:Erin E", "plant", first_cest) == "outside-schedule"

    def test_spring_forward_the_window_opens_the_next_sunday(self) -> None:
        assert reason("cn:Erin E", "plant", local("2026-04-05 02:30")) == "granted"

    def test_autumn_back_the_repeated_hour_is_open_both_times(self) -> None:
        # 2026-10-25: 03:00 CEST falls back to 02:00 CET; local 02:00-03:00 is 00:00-02:00 UTC.
        first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)   # 02:30 CEST
        second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
        assert first.astimezone(STHLM).hour == second.astimezone(STHLM).hour == 2
        assert reason("cn:Erin E", "plant", first) == "granted"
        assert reason("cn:Erin E", "plant", second) == "granted"
        assert reason("cn:Erin E", "plant", datetime(2026, 10, 24, 23, 59, 59, tzinfo=UTC)) != "granted"
        assert reason("cn:Erin E", "plant", datetime(2026, 10, 25, 2, 0, tzinfo=UTC)) == "outside-schedule"

    def test_office_hours_follow_the_wall_clock_across_the_change(self) -> None:
        # 07:00 local is 06:00 UTC in winter and 05:00 UTC in summer.
        assert reason("email:bob@example.se", "main", datetime(2026, 3, 27, 6, 0, tzinfo=UTC)) == "granted"
        assert reason("email:bob@example.se", "main", datetime(2026, 3, 30, 5, 0, tzinfo=UTC)) == "granted"
        assert reason("email:bob@example.se", "main",
                      datetime(2026, 3, 30, 4, 59, 59, tzinfo=UTC)) == "outside-schedule"


class TestHolidays:
    def test_a_holiday_overrides_a_weekday_to_its_holiday_schedule(self) -> None:
        assert reason("email:bob@example.se", "main", local("2026-12-24 09:00")) == "holiday"
        assert reason("email:bob@example.se", "main", local("2026-12-24 10:00")) == "granted"
        assert reason("email:bob@example.se", "main", local("2026-12-24 14:00")) == "holiday"

    def test_a_closed_holiday_denies_the_whole_day(self) -> None:
        assert reason("email:bob@example.se", "main", local("2026-12-25 12:00")) == "holiday"

    def test_outside_regular_hours_on_a_holiday_is_still_outside_schedule(self) -> None:
        assert reason("email:bob@example.se", "main", local("2026-12-25 20:00")) == "outside-schedule"

    def test_always_levels_and_holiday_exempt_people_ignore_holidays(self) -> None:
        assert reason("hsa:SE2321000016-ABC1", "vault", local("2026-12-25 03:00"), NORMAL) != "holiday"
        assert reason("upn:xena@example.se", "main", local("2026-12-25 12:00")) == "granted"


class TestTemporaryCards:
    def test_temporary_card_is_valid_to_the_second(self) -> None:
        assert reason("serial:TMP-1", "main", local("2026-06-08 07:59:59")) == "credential-not-yet-valid"
        assert reason("serial:TMP-1", "main", local("2026-06-08 08:00:00")) == "granted"
        assert reason("serial:TMP-1", "main", local("2026-06-12 16:59:59")) == "granted"
        assert reason("serial:TMP-1", "main", local("2026-06-12 17:00:00")) == "credential-expired"

    def test_temporary_card_keeps_the_persons_schedules(self) -> None:
        d = decide(POLICY, "serial:TMP-1", "main", local("2026-06-08 19:00"), NORMAL)
        assert (d.reason, d.person) == ("outside-schedule", "p-alice")

    def test_regular_cards_are_suspended_exactly_while_the_temporary_card_is_valid(self) -> None:
        alice = "upn:alice@example.se"
        assert reason(alice, "main", local("2026-06-08 07:59:59")) == "granted"
        assert reason(alice, "main", local("2026-06-08 08:00:00")) == "card-suspended"
        assert reason("pnr:19121212-1212", "main", local("2026-06-12 16:59:59")) == "card-suspended"
        assert reason(alice, "main", local("2026-06-12 17:00:00")) == "granted"

    def test_a_non_suspending_temporary_card_leaves_regular_cards_working(self) -> None:
        d = doc()
        d["temporary_cards"][0]["suspends_regular"] = False
        p = Policy.from_dict(d, TODAY)
        at = local("2026-06-08 09:00")
        assert decide(p, "upn:alice@example.se", "main", at, NORMAL).granted
        assert decide(p, "serial:TMP-1", "main", at, NORMAL).granted


class TestSubstituteCards:
    def test_role_substitute_works_only_inside_its_window(self) -> None:
        assert reason("serial:SUB-1", "main", local("2026-06-01 08:59:59")) == "credential-not-yet-valid"
        d = decide(POLICY, "serial:SUB-1", "main", MONDAY_9, NORMAL)
        assert (d.granted, d.person) == (True, "sub-1")
        assert reason("serial:SUB-1", "main", local("2026-06-01 12:00")) == "credential-expired"

    def test_role_substitute_gets_only_the_roles_access(self) -> None:
        assert reason("serial:SUB-1", "lab", local("2026-06-01 11:00")) == "granted"
        assert reason("serial:SUB-1", "vault", local("2026-06-01 11:00")) == "no-access"
        assert reason("serial:SUB-1", "night", local("2026-06-01 11:00")) == "no-access"

    def test_person_substitute_gets_that_persons_access(self) -> None:
        assert reason("serial:SUB-2", "vault", MONDAY_9) == "two-person-pending"
        assert reason("serial:SUB-2", "main", MONDAY_9) == "no-access"


class TestTwoPerson:
    def test_first_presentation_is_returned_as_a_pending_action_not_stored(self) -> None:
        d = decide(POLICY, "hsa:SE2321000016-ABC1", "vault", MONDAY_9, NORMAL)
        assert (d.granted, d.reason, d.actions) == (False, "two-person-pending", ("two-person-pending",))
        assert NORMAL.pending == ()
        after = NORMAL.after(d, "vault", MONDAY_9)
        assert after.pending == (Pending("vault", "p-carol", MONDAY_9.timestamp()),)

    @pytest.mark.parametrize(("gap", "outcome"), [(0, "granted"), (30, "granted"),
                                                   (30.5, "two-person-pending"), (31, "two-person-pending")])
    def test_a_second_different_person_within_n_seconds_opens(self, gap: float, outcome: str) -> None:
        state = DecisionState(pending=(Pending("vault", "p-carol", MONDAY_9.timestamp()),))
        d = decide(POLICY, "email:bob@example.se", "vault", MONDAY_9 + timedelta(seconds=gap), state)
        assert d.reason == outcome
        if d.granted:
            assert d.actions == ("unlock", "two-person-complete")
            assert state.after(d, "vault", MONDAY_9).pending == ()

    def test_the_same_person_twice_does_not_count(self) -> None:
        state = DecisionState(pending=(Pending("vault", "p-carol", MONDAY_9.timestamp()),))
        at = MONDAY_9 + timedelta(seconds=5)
        assert reason("hsa:SE2321000016-ABC1", "vault", at, state) == "two-person-same-person"

    def test_pending_at_another_door_does_not_count(self) -> None:
        state = DecisionState(pending=(Pending("main", "p-carol", MONDAY_9.timestamp()),))
        assert reason("email:bob@example.se", "vault", MONDAY_9, state) == "two-person-pending"

    def test_an_unauthorised_person_neither_opens_nor_becomes_pending(self) -> None:
        state = DecisionState(pending=(Pending("vault", "p-carol", MONDAY_9.timestamp()),))
        assert reason("upn:alice@example.se", "vault", MONDAY_9, state) == "no-access"


class TestModes:
    def test_lockdown_denies_everyone_without_an_override_group(self) -> None:
        state = DecisionState(site_mode=Mode.LOCKDOWN)
        assert reason("email:bob@example.se", "main", MONDAY_9, state) == "lockdown"
        assert reason("upn:sec@example.se", "main", MONDAY_9, state) == "lockdown"

    def test_lockdown_lets_the_override_group_through_with_its_own_access(self) -> None:
        state = DecisionState(site_mode=Mode.LOCKDOWN, lockdown_override="security")
        assert reason("upn:sec@example.se", "main", local("2026-06-01 23:00"), state) == "granted"
        assert reason("upn:sec@example.se", "vault", MONDAY_9, state) == "no-access"
        assert reason("email:bob@example.se", "main", MONDAY_9, state) == "lockdown"

    def test_lockdown_of_one_door_leaves_the_others(self) -> None:
        state = DecisionState(door_modes={"lab": Mode.LOCKDOWN})
        assert reason("email:bob@example.se", "lab", MONDAY_9, state) == "lockdown"
        assert reason("email:bob@example.se", "main", MONDAY_9, state) == "granted"

    def test_emergency_open_grants_anyone_and_beats_lockdown_and_faults(self) -> None:
        state = DecisionState(site_mode=Mode.LOCKDOWN, door_modes={"main": Mode.EMERGENCY_OPEN},
                              faulted=frozenset({"main"}))
        d = decide(POLICY, "upn:mallory@example.se", "main", local("2026-06-06 03:00"), state)
        assert (d.granted, d.reason, d.actions) == (True, "granted", ("unlock", "mode:emergency-open"))

    def test_free_access_grants_anyone_at_that_door(self) -> None:
        state = DecisionState(door_modes={"main": Mode.FREE_ACCESS})
        d = decide(POLICY, "upn:mallory@example.se", "main", local("2026-06-06 03:00"), state)
        assert (d.granted, d.actions) == (True, ("unlock", "mode:free-access"))

    def test_a_faulted_door_denies_even_authorised_people(self) -> None:
        state = DecisionState(faulted=frozenset({"main"}))
        d = decide(POLICY, "email:bob@example.se", "main", MONDAY_9, state)
        assert (d.granted, d.reason, d.person) == (False, "door-faulted", "p-bob")

    def test_door_modes_do_not_apply_to_printers(self) -> None:
        state = DecisionState(site_mode=Mode.LOCKDOWN)
        assert reason("email:bob@example.se", "p1", MONDAY_9, state) == "granted"


# --- scheduled free access, lockdown override, flags ----------------------------------------------

def free(door: str, when: str | datetime) -> bool:
    return scheduled_free(POLICY, door, local(when) if isinstance(when, str) else when)


class TestDoorModesInTheDocument:
    def test_free_access_and_lockdown_override_are_exposed_on_the_policy(self) -> None:
        assert set(POLICY.free_access) == {"lobby", "night", "plant", "porch"}
        night = POLICY.free_access["night"]
        assert (night.schedule.name, night.first_person_in) == ("night", True)
        assert POLICY.free_access["lobby"] == FreeAccess(POLICY.free_access["lobby"].schedule, False)
        assert POLICY.lockdown_override == "security"
        assert "staff" in POLICY.groups

    def test_both_are_optional(self) -> None:
        d = doc()
        del d["door_modes"], d["lockdown_override"]
        p = Policy.from_dict(d, TODAY)
        assert (dict(p.free_access), p.lockdown_override) == ({}, None)
        assert not scheduled_free(p, "lobby", MONDAY_9)

    @pytest.mark.parametrize(("mutate", "path"), [
        (lambda d: d["door_modes"].update(attic={"free_access": "office"}), r"door_modes\.attic: .*a door"),
        (lambda d: d["door_modes"].update(p1={"free_access": "office"}), r"door_modes\.p1: .*a door"),
        (lambda d: d["door_modes"]["lobby"].update(free_access="brunch"),
         r"door_modes\.lobby\.free_access: .*a schedule"),
        (lambda d: d["door_modes"]["lobby"].update(free_access=["office"]),
         r"door_modes\.lobby\.free_access: .*a schedule"),
        (lambda d: d["door_modes"]["lobby"].update(first_person_in="yes"),
         r"door_modes\.lobby\.first_person_in: expected true or false"),
        (lambda d: d["door_modes"]["lobby"].update(colour="red"), r"door_modes\.lobby\.colour: unknown key"),
        (lambda d: d["door_modes"].update(lobby={}), r"door_modes\.lobby\.free_access: missing"),
        (lambda d: d["door_modes"].update(lobby="office"), r"door_modes\.lobby: expected a table"),
        (lambda d: d.update(door_modes=[]), r"door_modes: expected a table"),
        (lambda d: d.update(lockdown_override="ghosts"), r"lockdown_override: .*a group, got 'ghosts'"),
        (lambda d: d.update(lockdown_override=["security"]), r"lockdown_override: .*a group"),
    ])
    def test_invalid_door_modes_and_override_are_named_by_path(self, mutate: Any, path: str) -> None:
        d = doc()
        mutate(d)
        with pytest.raises(PolicyError, match=f"^{path}"):
            Policy.from_dict(d, TODAY)


class TestScheduledFree:
    @pytest.mark.parametrize(("when", "expected"), [
        ("2026-06-01 06:59:59", False), ("2026-06-01 07:00", True), ("2026-06-01 17:59:59", True),
        ("2026-06-01 18:00", False), ("2026-06-06 10:00", False),  # a Saturday
    ])
    def test_open_exactly_while_the_schedule_is(self, when: str, expected: bool) -> None:
        assert free("lobby", when) is expected

    @pytest.mark.parametrize(("when", "expected"), [
        ("2026-06-01 21:59:59", False), ("2026-06-01 22:00", True), ("2026-06-01 23:59:59", True),
        ("2026-06-02 00:00", True), ("2026-06-02 05:59:59", True), ("2026-06-02 06:00", False),
    ])
    def test_a_window_spanning_midnight_holds_on_both_sides(self, when: str, expected: bool) -> None:
        assert free("night", when) is expected

    def test_the_morning_part_belongs_to_the_previous_evenings_window(self) -> None:
        d = doc()
        d["schedules"]["night"][0]["days"] = ["mon"]
        p = Policy.from_dict(d, TODAY)
        assert scheduled_free(p, "night", local("2026-06-02 03:00"))      # Tuesday early
        assert not scheduled_free(p, "night", local("2026-06-01 03:00"))  # Monday early
        assert not scheduled_free(p, "night", local("2026-06-02 22:30"))  # Tuesday evening

    def test_spring_forward_a_window_in_the_skipped_hour_never_opens(self) -> None:
        start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01:00 CET; 02:00 CET never comes
        assert not any(free("plant", start + timedelta(minutes=m)) for m in range(180))
        assert free("plant", "2026-04-05 02:30")  # the next Sunday it does

    def test_autumn_back_the_repeated_hour_is_free_both_times(self) -> None:
        assert free("plant", datetime(2026, 10, 25, 0, 30, tzinfo=UTC))      # 02:30 CEST
        assert free("plant", datetime(2026, 10, 25, 1, 30, tzinfo=UTC))      # 02:30 CET
        assert not free("plant", datetime(2026, 10, 25, 2, 0, tzinfo=UTC))   # 03:00 CET
        assert not free("plant", datetime(2026, 10, 24, 23, 59, 59, tzinfo=UTC))

    def test_office_hours_follow_the_wall_clock_across_the_change(self) -> None:
        assert free("lobby", datetime(2026, 3, 27, 6, 0, tzinfo=UTC))          # 07:00 CET
        assert free("lobby", datetime(2026, 3, 30, 5, 0, tzinfo=UTC))          # 07:00 CEST
        assert not free("lobby", datetime(2026, 3, 30, 4, 59, 59, tzinfo=UTC))

    def test_holidays_apply_as_to_a_person_without_exemption(self) -> None:
        assert not free("lobby", "2026-12-24 09:00")   # holiday schedule 10-14 stands in
        assert free("lobby", "2026-12-24 10:00")
        assert not free("lobby", "2026-12-24 14:00")
        assert not free("lobby", "2026-12-25 12:00")   # closed holiday
        assert not free("night", "2026-12-25 23:00")   # the evening window opens on a closed day
        assert free("night", "2026-12-24 23:00") is False  # holiday hours stand in for 22:00-06:00

    def test_an_always_schedule_ignores_holidays(self) -> None:
        assert free("porch", "2026-12-25 03:00")
        assert free("porch", "2026-06-06 23:59:59")

    def test_first_person_in_is_left_to_the_caller(self) -> None:
        assert POLICY.free_access["night"].first_person_in
        assert free("night", "2026-06-01 23:00")

    def test_no_schedule_unknown_door_or_naive_time_is_not_free(self) -> None:
        assert not free("vault", MONDAY_9)
        assert not free("p1", MONDAY_9)
        assert not free("no-such-door", MONDAY_9)
        assert not scheduled_free(POLICY, "lobby", datetime(2026, 6, 1, 9))
        assert not scheduled_free(POLICY, "porch", datetime.max.replace(tzinfo=UTC))

    @settings(max_examples=200, deadline=None)
    @given(at=st.datetimes(timezones=st.one_of(st.none(), st.timezones(), st.just(STHLM))),
           door=st.sampled_from(["lobby", "night", "plant", "porch", "vault", "x"]))
    def test_never_raises(self, at: datetime, door: str) -> None:
        assert isinstance(scheduled_free(POLICY, door, at), bool)

    @settings(max_examples=300, deadline=None)
    @given(at=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1),
                           timezones=st.just(STHLM)) | st.datetimes(timezones=st.just(UTC)))
    def test_a_free_access_door_is_free_exactly_when_its_schedule_would_let_a_person_in(
            self, at: datetime) -> None:
        # lobby is free on "office"; Bob opens main on "office" and is not holiday-exempt.
        bob = decide(POLICY, "email:bob@example.se", "main", at, NORMAL)
        assert free("lobby", at) is bob.granted


class TestFlags:
    def test_extended_access_gives_extended_time_and_nothing_else(self) -> None:
        assert POLICY.extended_time("upn:yuki@example.se")
        assert POLICY.extended_time("UPN:Yuki@Example.SE")  # normalised like a presentation
        assert reason("upn:yuki@example.se", "main", local("2026-12-25 12:00")) == "holiday"

    def test_holiday_exempt_does_not_give_extended_time(self) -> None:
        assert not POLICY.extended_time("upn:xena@example.se")
        assert reason("upn:xena@example.se", "main", local("2026-12-25 12:00")) == "granted"

    def test_unknown_or_garbage_keys_get_no_extended_time(self) -> None:
        assert not POLICY.extended_time("upn:mallory@example.se")
        assert not POLICY.extended_time("garbage")

    def test_a_temporary_card_keeps_its_persons_flags_and_print_user(self) -> None:
        d = doc()
        d["temporary_cards"][0]["person"] = "p-yuki"
        p = Policy.from_dict(d, TODAY)
        assert p.extended_time("serial:TMP-1")
        assert POLICY.holders["serial:TMP-1"].print_user == "alice"

    def test_unknown_flags_are_kept_and_mean_nothing(self) -> None:
        d = doc()
        d["people"][0]["flags"] = ["vip"]
        assert Policy.from_dict(d, TODAY).people["p-alice"].flags == frozenset({"vip"})


# --- robustness ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d["two_person"][0].update(door=["vault"]), r"two_person\[0\]\.door"),
    (lambda d: d["access_levels"]["night-shift"].update(schedule=["night"]),
     r"access_levels\.night-shift\.schedule"),
    (lambda d: d["holidays"][0].update(schedule={"x": 1}), r"holidays\[0\]\.schedule"),
    (lambda d: d["substitute_cards"][0].update(role=["staff"]), r"substitute_cards\[0\]\.role"),
    (lambda d: d["temporary_cards"][0].update(person=["p-alice"]), r"temporary_cards\[0\]\.person"),
    (lambda d: d["people"][0].update(flags=0), r"people\[0\]\.flags"),
    (lambda d: d["people"][0].update(flags=[["x"]]), r"people\[0\]\.flags\[0\]"),
    (lambda d: d["people"][0].update(groups=[["staff"]]), r"people\[0\]\.groups\[0\]"),
    (lambda d: d.update(time_zone="Europe"), "time_zone"),          # a folder of zones
    (lambda d: d.update(time_zone="x" * 5000), "time_zone"),        # too long a file name
    (lambda d: d["schedules"]["office"][0].update(to="١٨:٠٠"), r"schedules\.office\[0\]\.to"),
    (lambda d: d["temporary_cards"][0].update(valid_until="2026-06-31T08:00:00+02:00"),
     r"temporary_cards\[0\]\.valid_until"),
])
def test_values_of_the_wrong_type_are_policy_errors_not_crashes(mutate: Any, path: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(PolicyError, match=f"^{path}"):
        Policy.from_dict(d, TODAY)


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def _paths(v: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    inner = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    out = [at]
    for k, child in inner:
        out += _paths(child, (*at, k))
    return out


_DOC_PATHS = _paths(doc())[1:]


@settings(max_examples=400, deadline=None)
@given(where=st.lists(st.sampled_from(_DOC_PATHS), min_size=1, max_size=3), values=st.data())
def test_a_document_with_any_value_anywhere_loads_or_is_a_policy_error(
        where: list[tuple[Any, ...]], values: st.DataObject) -> None:
    d = doc()
    for path in where:
        parent = d
        try:
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = values.draw(_JSON)
        except (KeyError, IndexError, TypeError):  # an earlier replacement removed the path
            continue
    with contextlib.suppress(PolicyError):
        Policy.from_dict(d, TODAY)


# --- print release delegations -------------------------------------------------------------------

def delegating_doc(*delegations: dict[str, Any]) -> dict[str, Any]:
    d = doc()
    for person, user in (("p-bob", "CORP\\bob"), ("p-carol", "carol@EXAMPLE.SE")):
        next(x for x in d["people"] if x["id"] == person)["print_user"] = user
    d["delegations"] = list(delegations)
    return d


class TestDelegations:
    def test_own_print_user_only_without_delegations(self) -> None:
        assert POLICY.releasable_owners("p-alice", MONDAY_9) == {"alice"}
        assert POLICY.delegations == {}

    def test_a_person_without_print_user_or_unknown_or_substitute_releases_nothing(self) -> None:
        assert POLICY.releasable_owners("p-bob", MONDAY_9) == frozenset()
        assert POLICY.releasable_owners("p-zed", MONDAY_9) == frozenset()
        assert POLICY.releasable_owners("sub-1", MONDAY_9) == frozenset()

    def test_an_open_ended_delegation_adds_the_delegators_print_user_as_written(self) -> None:
        p = Policy.from_dict(delegating_doc({"from": "p-bob", "to": "p-alice"},
                                            {"from": "p-carol", "to": "p-alice"}), TODAY)
        assert p.releasable_owners("p-alice", MONDAY_9) == {"alice", "CORP\\bob",
                                                            "carol@EXAMPLE.SE"}
        # Delegation is one-way.
        assert p.releasable_owners("p-bob", MONDAY_9) == {"CORP\\bob"}

    def test_a_windowed_delegation_holds_from_its_start_until_before_its_end(self) -> None:
        p = Policy.from_dict(delegating_doc(
            {"from": "p-bob", "to": "p-alice", "valid_from": "2026-06-01T09:00:00+02:00",
             "valid_until": "2026-06-01T12:00:00+02:00"}), TODAY)
        before, start = local("2026-06-01 08:59:59"), local("2026-06-01 09:00")
        last, end = local("2026-06-01 11:59:59"), local("2026-06-01 12:00")
        assert p.releasable_owners("p-alice", before) == {"alice"}
        assert p.releasable_owners("p-alice", start) == {"alice", "CORP\\bob"}
        assert p.releasable_owners("p-alice", last) == {"alice", "CORP\\bob"}
        assert p.releasable_owners("p-alice", end) == {"alice"}

    def test_either_end_of_the_window_may_be_open(self) -> None:
        p = Policy.from_dict(delegating_doc(
            {"from": "p-bob", "to": "p-alice", "valid_until": "2026-06-01T12:00:00+02:00"},
            {"from": "p-carol", "to": "p-alice", "valid_from": "2026-06-01T12:00:00+02:00"}),
            TODAY)
        assert p.releasable_owners("p-alice", local("2020-01-01 00:00")) == {"alice", "CORP\\bob"}
        assert p.releasable_owners("p-alice", local("2030-01-01 00:00")) == {
            "alice", "carol@EXAMPLE.SE"}

    def test_a_naive_time_counts_only_delegations_without_a_window(self) -> None:
        p = Policy.from_dict(delegating_doc(
            {"from": "p-bob", "to": "p-alice"},
            {"from": "p-carol", "to": "p-alice", "valid_from": "2026-06-01T09:00:00+02:00"}),
            TODAY)
        assert p.releasable_owners("p-alice", datetime(2026, 6, 2, 9)) == {"alice", "CORP\\bob"}

    def test_a_delegator_without_print_user_adds_nothing(self) -> None:
        p = Policy.from_dict(delegating_doc({"from": "p-dan", "to": "p-alice"}), TODAY)
        assert p.releasable_owners("p-alice", MONDAY_9) == {"alice"}

    def test_a_delegate_without_print_user_releases_only_the_delegators_jobs(self) -> None:
        p = Policy.from_dict(delegating_doc({"from": "p-alice", "to": "p-dan"}), TODAY)
        assert p.releasable_owners("p-dan", MONDAY_9) == {"alice"}

    @pytest.mark.parametrize(("entry", "path"), [
        ({"from": "p-zed", "to": "p-alice"}, r"delegations\[0\]\.from"),
        ({"from": "p-bob", "to": "sub-1"}, r"delegations\[0\]\.to"),
        ({"from": "p-bob", "to": "p-bob"}, r"delegations\[0\]\.to"),
        ({"from": "p-bob"}, r"delegations\[0\]\.to: missing"),
        ({"from": "p-bob", "to": "p-alice", "valid_from": "2026-06-01"},
         r"delegations\[0\]\.valid_from"),
        ({"from": "p-bob", "to": "p-alice", "valid_from": "2026-06-01T09:00:00+02:00",
          "valid_until": "2026-06-01T09:00:00+02:00"}, r"delegations\[0\]\.valid_until"),
        ({"from": "p-bob", "to": "p-alice", "until": "2026-06-01T09:00:00+02:00"},
         r"delegations\[0\]\.until: unknown key"),
        (["p-bob", "p-alice"], r"delegations\[0\]: expected a table"),
    ])
    def test_invalid_delegations_are_named_by_path(self, entry: Any, path: str) -> None:
        with pytest.raises(PolicyError, match=f"^{path}"):
            Policy.from_dict(delegating_doc(entry), TODAY)

    def test_delegations_must_be_a_list(self) -> None:
        d = delegating_doc()
        d["delegations"] = {"from": "p-bob", "to": "p-alice"}
        with pytest.raises(PolicyError, match=r"^delegations: expected a list"):
            Policy.from_dict(d, TODAY)

    @settings(max_examples=200, deadline=None)
    @given(at=st.datetimes(timezones=st.one_of(st.none(), st.timezones(), st.just(STHLM))),
           person=st.sampled_from(["p-alice", "p-bob", "p-dan", "p-zed", "sub-1", ""]))
    def test_never_raises(self, at: datetime, person: str) -> None:
        p = Policy.from_dict(delegating_doc(
            {"from": "p-bob", "to": "p-alice", "valid_from": "2026-06-01T09:00:00+02:00"}), TODAY)
        owners = p.releasable_owners(person, at)
        assert owners <= {"alice", "CORP\\bob", "carol@EXAMPLE.SE"}


_KEYS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["upn:alice@example.se", "serial:TMP-1", "serial:SUB-1", "pnr:121212-1212",
                     "hsa:se2321000016-abc1", "cn:Erin E", "pnr:", "pnr:991231+1231"]),
    st.builds(lambda k, v: f"{k}:{v}", st.sampled_from(["upn", "email", "pnr", "hsa", "serial", "oid"]),
              st.text(max_size=20)),
)
_STATES = st.builds(
    DecisionState,
    site_mode=st.sampled_from(list(Mode)),
    door_modes=st.dictionaries(st.sampled_from(["main", "vault", "p1", "x"]), st.sampled_from(list(Mode))),
    lockdown_override=st.one_of(st.none(), st.sampled_from(["security", "staff", "nope"])),
    faulted=st.frozensets(st.sampled_from(["main", "vault", "lab"])),
    pending=st.lists(st.builds(Pending, st.sampled_from(["vault", "main"]),
                               st.sampled_from(["p-bob", "p-carol", "sub-2"]),
                               st.floats(allow_nan=True, allow_infinity=True)), max_size=3).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(key=_KEYS, resource=st.one_of(st.text(max_size=10), st.sampled_from(sorted(POLICY.resources))),
       at=st.datetimes(timezones=st.one_of(st.none(), st.timezones(), st.just(STHLM))),
       state=_STATES)
def test_decide_never_raises_and_answers_with_a_declared_reason(
        key: str, resource: str, at: datetime, state: DecisionState) -> None:
    d = decide(POLICY, key, resource, at, state)
    assert d.reason in REASONS
    assert d.granted == (d.reason == "granted")
