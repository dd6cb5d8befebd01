"""Access policy: who may use which door or printer, when. The model, `decide` and `scheduled_free`.

Everything here is pure: frozen dataclasses and functions over them, no I/O, no clock. The policy
document is a plain dict (the `content` of a signed bundle, `gateway.bundle`); `Policy.from_dict`
validates it once (the loader is `gateway.policy_load`) and builds the indexes `decide` needs
(identity -> holder, holder -> resource -> schedules), so a decision costs a few dict look-ups
whatever the size of the site. docs/policy.md describes every key.

Document shape (every list index and key is named in errors, e.g. `people[3].identities[0]`)::

    time_zone: "Europe/Stockholm"
    doors: [name, ...]            printers: [name, ...]
    schedules: {name: [{days: ["mon", ...], from: "HH:MM", to: "HH:MM"}, ...]}
    holidays: [{date: "YYYY-MM-DD", schedule: name | null}]      # null: closed all day
    access_levels: {name: {resources: [door or printer, ...], schedule: name}}
    groups: {name: {access_levels: [name, ...]}}
    people: [{id, identities: [key, ...], groups: [name, ...], flags: [...], print_user?}]
    temporary_cards: [{identity, person, valid_from, valid_until, suspends_regular?}]
    substitute_cards: [{id, identity, role | person, valid_from, valid_until}]
    two_person: [{door, within_seconds}]
    door_modes: {door: {free_access: schedule name, first_person_in?: bool}}
    lockdown_override: group name
    delegations: [{from: person id, to: person id, valid_from?, valid_until?}]

A window with `to` at or before `from` spans midnight: it opens on the listed day and closes the next
morning. "24:00" is accepted as `to`. The schedule name "always" is built in. A holiday replaces
every schedule but "always" by its own (or closes) for windows opening on that date, except for
people flagged `holiday_exempt`; people flagged `extended_access` get a door's extended access time
(accessibility: `Policy.extended_time`). Schedules are read on the site's wall clock (zoneinfo), so a
window in the hour skipped in spring never opens and one in the hour repeated in autumn opens twice.
Credential windows are half-open: valid from `valid_from` (inclusive) until `valid_until` (exclusive).
A delegation lets `to` release the held print jobs of `from` (a stand-in, an assistant) inside its
window, each end optional and half-open like a credential's (`Policy.releasable_owners`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from gateway.domain import Decision
from gateway.errors import InputError

__all__ = [
    "REASONS", "Decision", "DecisionState", "Delegation", "FreeAccess", "Holder", "Mode", "Pending",
    "Policy", "PolicyError", "Schedule", "Window", "decide", "normalise_identity", "scheduled_free",
]

REASONS = frozenset({
    "granted", "unknown-person", "no-access", "outside-schedule", "holiday",
    "credential-not-yet-valid", "credential-expired", "card-suspended", "lockdown", "door-faulted",
    "two-person-pending", "two-person-same-person",
    "invalid-time",  # a naive or unrepresentable instant: never guessed, always denied
})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALWAYS = "always"
HOLIDAY_EXEMPT = "holiday_exempt"  # flag: holidays do not apply to this person
EXTENDED_ACCESS = "extended_access"  # flag: the door's extended access time (accessibility)
VERBATIM_TYPES = ("serial", "cn", "oid")


class PolicyError(InputError):
    """A policy document or identity key is invalid; the message names the path of the bad field."""


# --- identity keys -------------------------------------------------------------------------------

_PNR = re.compile(r"(\d{6}|\d{8})([-+]?)(\d{4})", re.ASCII)
_SPACE = re.compile(r"\s")


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # digit * 2, digits summed


def _luhn_ok(digits: str) -> bool:
    total = sum(_DOUBLED[int(c)] for c in digits[0::2]) + sum(map(int, digits[1::2]))
    return total % 10 == 0


def _pnr(value: str, today: date) -> str:
    m = _PNR.fullmatch(value)
    if m is None:
        raise PolicyError(f"pnr:{value}: expected YYYYMMDD-NNNN, YYYYMMDDNNNN or YYMMDD-NNNN")
    head, sep, tail = m.groups()
    if len(head) == 8:
        if sep == "+":
            raise PolicyError(f"pnr:{value}: '+' only goes with a 2-digit year (YYMMDD+NNNN)")
        full = head
    else:
        # The latest century that puts the birth date not after today; '+' marks 100 years or more.
        yy = int(head[:2])
        year = today.year - (today.year - yy) % 100
        if f"{year:04d}{head[2:]}" > today.strftime("%Y%m%d"):
            year -= 100
        if sep == "+":
            year -= 100
        full = f"{year:04d}{head[2:]}"
    day = int(full[6:8])
    try:
        date(int(full[:4]), int(full[4:6]), day - 60 if day > 60 else day)  # >60: coordination number
    except ValueError:
        raise PolicyError(f"pnr:{value}: {full[:8]} is not a date") from None
    if not _luhn_ok(full[2:] + tail):
        raise PolicyError(f"pnr:{value}: check digit {tail[-1]} is wrong (Luhn)")
    return f"pnr:{full}{tail}"


def normalise_identity(key: str, today: date | None = None) -> str:
    """The canonical `type:value` form of an identity key.

    upn and email are case-folded, hsa upper-cased, pnr written as 12 digits (a 2-digit year gets
    the latest century not after `today`, default the current date; the Luhn digit is checked),
    serial, cn and `oid:<dotted>:value` kept as given. Raises PolicyError naming the fault.
    """
    if not isinstance(key, str):
        raise PolicyError(f"expected an identity key 'type:value', got {key!r}")
    kind, sep, value = key.strip().partition(":")
    value = value.strip()
    if not sep or not value:
        raise PolicyError(f"{key!r}: expected an identity key 'type:value'")
    kind = kind.casefold()
    if kind in ("upn", "email"):
        if "@" not in value or _SPACE.search(value):
            raise PolicyError(f"{key!r}: expected {kind}:name@domain")
        return f"{kind}:{value.casefold()}"
    if kind == "pnr":
        return _pnr(value, today or date.today())
    if kind == "hsa":
        return f"hsa:{value.upper()}"
    if kind in VERBATIM_TYPES:
        return f"{kind}:{value}"
    raise PolicyError(f"{key!r}: unknown identity type {kind!r}; expected one of "
                      f"upn, email, pnr, hsa, {', '.join(VERBATIM_TYPES)}")


# --- model ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    """A weekly window: opens on `day` (0 = Monday) at `start` s after local midnight, stays open
    for `start <= t < end`; an `end` beyond 86,400 runs into the next day."""

    day: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    windows: tuple[Window, ...]
    by_day: tuple[tuple[Window, ...], ...] = field(repr=False, compare=False, default=())

    @classmethod
    def of(cls, name: str, windows: tuple[Window, ...]) -> Schedule:
        return cls(name, windows, tuple(tuple(w for w in windows if w.day == d) for d in range(7)))

    def opened_in(self, weekday: int, seconds: int) -> bool:
        """Does a window that opened on `weekday` cover `seconds` after that day's midnight?"""
        return any(w.start <= seconds < w.end for w in self.by_day[weekday])


ALWAYS_SCHEDULE = Schedule.of(ALWAYS, tuple(Window(d, 0, 86_400) for d in range(7)))
CLOSED = Schedule.of("closed", ())


@dataclass(frozen=True, slots=True)
class Holder:
    """What an identity key resolves to: a person's regular or temporary card, or a substitute card.

    `person` is the id decisions report (the substitute card's own id for a substitute card);
    `grants` holds one map per group (shared by every member) from resource to the schedules that
    open it, so a load never multiplies people by doors; `valid` is a half-open credential window
    in POSIX seconds, None when the credential does not expire."""

    person: str
    kind: str  # "regular" | "temporary" | "substitute"
    groups: frozenset[str]
    grants: tuple[Mapping[str, tuple[Schedule, ...]], ...]
    holiday_exempt: bool = False
    valid: tuple[float, float] | None = None
    flags: frozenset[str] = frozenset()
    print_user: str | None = None

    def schedules(self, resource: str) -> tuple[Schedule, ...] | None:
        """The schedules under which `resource` opens for this holder, None if it never does."""
        if len(self.grants) == 1:
            return self.grants[0].get(resource)
        found: tuple[Schedule, ...] | None = None
        for g in self.grants:
            s = g.get(resource)
            if s is not None:
                found = s if found is None else found + s
        return found


@dataclass(frozen=True, slots=True)
class Suspension:
    """A temporary card that suspends its person's regular cards within [start, end)."""

    start: float
    end: float


class Mode(enum.StrEnum):
    NORMAL = "normal"
    FREE_ACCESS = "free-access"
    LOCKDOWN = "lockdown"
    EMERGENCY_OPEN = "emergency-open"


_MODE_RANK = {Mode.NORMAL: 0, Mode.FREE_ACCESS: 1, Mode.LOCKDOWN: 2, Mode.EMERGENCY_OPEN: 3}


@dataclass(frozen=True, slots=True)
class Pending:
    """A first presentation at a two-person door, waiting for a second, different person."""

    door: str
    person: str
    at: float  # POSIX seconds


@dataclass(frozen=True, slots=True)
class DecisionState:
    """Door and site state a decision depends on. The stricter of site and door mode applies
    (emergency-open > lockdown > free-access > normal). During lockdown only members of
    `lockdown_override` (a group name) pass, and only with their regular access."""

    site_mode: Mode = Mode.NORMAL
    door_modes: Mapping[str, Mode] = field(default_factory=dict)
    lockdown_override: str | None = None
    faulted: frozenset[str] = frozenset()
    pending: tuple[Pending, ...] = ()

    def mode(self, door: str) -> Mode:
        door_mode = self.door_modes.get(door, Mode.NORMAL)
        return max(self.site_mode, door_mode, key=_MODE_RANK.__getitem__)

    def after(self, decision: Decision, resource: str, at: datetime) -> DecisionState:
        """The state once `decision` (taken for `resource` at `at`) has been acted on: a
        `two-person-pending` action records a first presentation, `two-person-complete` clears
        the door's pending ones."""
        if "two-person-pending" in decision.actions and decision.person is not None:
            kept = tuple(p for p in self.pending if p.door != resource)
            return replace(self, pending=(*kept, Pending(resource, decision.person, at.timestamp())))
        if "two-person-complete" in decision.actions:
            return replace(self, pending=tuple(p for p in self.pending if p.door != resource))
        return self


@dataclass(frozen=True, slots=True)
class Delegation:
    """`delegate` may release `delegator`'s held print jobs within [start, end) (POSIX seconds;
    -inf and +inf for an open end)."""

    delegator: str  # person id ("from" in the document)
    delegate: str  # person id ("to")
    start: float = float("-inf")
    end: float = float("inf")

    @property
    def windowed(self) -> bool:
        return self.start != float("-inf") or self.end != float("inf")


class FreeAccess(NamedTuple):
    """A door's scheduled free access (`door_modes.<door>` in the document): the door is unlocked
    while `schedule` is open; with `first_person_in`, only once an authorised person has badged
    during that window (the caller keeps that latch; see `scheduled_free`)."""

    schedule: Schedule
    first_person_in: bool


@dataclass(frozen=True)
class Policy:
    zone: ZoneInfo
    doors: frozenset[str]
    printers: frozenset[str]
    people: Mapping[str, Holder]  # person id -> the person's regular cards' holder
    holders: Mapping[str, Holder]
    suspensions: Mapping[str, tuple[Suspension, ...]]  # person id -> temporary-card windows
    holidays: Mapping[date, Schedule]
    two_person: Mapping[str, float]  # door -> seconds
    groups: frozenset[str]
    free_access: Mapping[str, FreeAccess]  # door -> its scheduled free access
    lockdown_override: str | None  # the group that passes a lockdown (with its own access)
    # delegate's person id -> the delegations made to them (print release on someone's behalf)
    delegations: Mapping[str, tuple[Delegation, ...]] = field(default_factory=dict)

    @property
    def resources(self) -> frozenset[str]:
        return self.doors | self.printers

    @classmethod
    def from_dict(cls, doc: Any, today: date | None = None) -> Policy:
        """Validate a policy document and index it. `today` is the reference date for 2-digit-year
        personal identity numbers (default: the current date). Raises PolicyError naming the path
        of the first bad field, e.g. `people[3].identities[0]`; nothing else, whatever `doc` is."""
        from gateway.policy_load import load  # the loader builds Policy: imported here, no cycle

        return load(doc, today or date.today())

    def extended_time(self, identity_key: str, today: date | None = None) -> bool:
        """Does the holder of `identity_key` get a door's extended access time (flag
        `extended_access`, for people who need longer to pass)? False for an unknown or
        unparsable key. `today` as for `normalise_identity`."""
        holder = _holder(self, identity_key, today or date.today())
        return holder is not None and EXTENDED_ACCESS in holder.flags

    def releasable_owners(self, person_id: str, at: datetime) -> frozenset[str]:
        """The print user names whose held jobs `person_id` may release at the aware instant
        `at`: the person's own `print_user` and that of everyone who delegated release to them
        with a window covering `at`. People without a print user add nothing; an unknown person
        (or a substitute card's id) gets the empty set. A naive or unrepresentable `at` counts
        only delegations without a window (never guessed). Pure; never raises."""
        me = self.people.get(person_id)
        owners = {me.print_user} if me is not None and me.print_user else set()
        dels = self.delegations.get(person_id, ())
        if not dels:
            return frozenset(owners)
        try:
            t: float | None = at.timestamp() if at.utcoffset() is not None else None
        except (OverflowError, ValueError, TypeError, AttributeError):
            t = None
        for d in dels:
            if t is None and d.windowed:
                continue
            if t is None or d.start <= t < d.end:
                who = self.people.get(d.delegator)
                if who is not None and who.print_user:
                    owners.add(who.print_user)
        return frozenset(owners)


# --- decisions -----------------------------------------------------------------------------------

def _schedule_open(policy: Policy, schedules: tuple[Schedule, ...], local: datetime,
                   exempt: bool) -> tuple[bool, bool]:
    """(open now, open if holidays were ignored) for a local wall-clock time."""
    seconds = local.hour * 3600 + local.minute * 60 + local.second
    today, yesterday = local.date(), local.date() - timedelta(days=1)
    regular = effective = False
    for start_day, t in ((today, seconds), (yesterday, seconds + 86_400)):
        wd = start_day.weekday()
        holiday = None if exempt else policy.holidays.get(start_day)
        for s in schedules:
            if s.opened_in(wd, t):
                regular = True
                if holiday is None or s is ALWAYS_SCHEDULE:
                    effective = True
        if holiday is not None and holiday.opened_in(wd, t):
            effective = True
    return effective, regular


def _holder(policy: Policy, identity_key: str, today: date) -> Holder | None:
    holder = policy.holders.get(identity_key)
    if holder is None:
        try:
            holder = policy.holders.get(normalise_identity(identity_key, today))
        except PolicyError:
            return None
    return holder


def decide(policy: Policy, identity_key: str, resource: str, at: datetime,
           state: DecisionState) -> Decision:
    """Grant or deny `identity_key` the door or printer `resource` at the aware instant `at`.

    Pure: a first presentation at a two-person door comes back as the `two-person-pending` action
    (see `DecisionState.after`) rather than changing `state`. Never raises: a naive or
    unrepresentable `at` is denied with `invalid-time`, an unparsable key is an unknown person.
    Granted doors carry `unlock`, granted printers `release`.
    """
    try:
        if at.utcoffset() is None:
            return Decision(False, "invalid-time")
        t = at.timestamp()
        local = at.astimezone(policy.zone)
    except (OverflowError, ValueError, TypeError, AttributeError):
        return Decision(False, "invalid-time")
    holder = _holder(policy, identity_key, local.date())
    person = holder.person if holder is not None else None
    is_door = resource in policy.doors
    if not is_door and resource not in policy.printers:
        return Decision(False, "no-access", person)
    if is_door:
        mode = state.mode(resource)
        if mode is Mode.EMERGENCY_OPEN:
            return Decision(True, "granted", person, ("unlock", "mode:emergency-open"))
        if resource in state.faulted:
            return Decision(False, "door-faulted", person)
        if mode is Mode.FREE_ACCESS:
            return Decision(True, "granted", person, ("unlock", "mode:free-access"))
    else:
        mode = Mode.NORMAL
    if holder is None or person is None:
        return Decision(False, "unknown-person")
    if holder.valid is not None:
        if t < holder.valid[0]:
            return Decision(False, "credential-not-yet-valid", person)
        if t >= holder.valid[1]:
            return Decision(False, "credential-expired", person)
    if holder.kind == "regular":
        for s in policy.suspensions.get(person, ()):
            if s.start <= t < s.end:
                return Decision(False, "card-suspended", person)
    if mode is Mode.LOCKDOWN and (state.lockdown_override is None
                                  or state.lockdown_override not in holder.groups):
        return Decision(False, "lockdown", person)
    schedules = holder.schedules(resource)
    if schedules is None:
        return Decision(False, "no-access", person)
    open_now, open_regularly = _schedule_open(policy, schedules, local, holder.holiday_exempt)
    if not open_now:
        return Decision(False, "holiday" if open_regularly else "outside-schedule", person)
    if not is_door:
        return Decision(True, "granted", person, ("release",))
    within = policy.two_person.get(resource)
    if within is not None:
        recent = [p for p in state.pending if p.door == resource and t - within <= p.at <= t]
        if any(p.person != person for p in recent):
            return Decision(True, "granted", person, ("unlock", "two-person-complete"))
        if recent:
            return Decision(False, "two-person-same-person", person)
        return Decision(False, "two-person-pending", person, ("two-person-pending",))
    return Decision(True, "granted", person, ("unlock",))


def scheduled_free(policy: Policy, door: str, at: datetime) -> bool:
    """Is `door`'s free-access schedule (`door_modes.<door>.free_access`) open at the aware
    instant `at`?

    Read on the site's wall clock with the holiday rules `decide` applies to a person without
    `holiday_exempt`: on a holiday the holiday's schedule replaces it (closed all day for a closed
    holiday) unless it is "always". False for a door without scheduled free access and for a naive
    or unrepresentable `at` (never guessed: the door stays locked). First-person-in is the
    caller's to apply: it alone knows who badged since the window opened. Never raises.
    """
    rule = policy.free_access.get(door)
    if rule is None:
        return False
    try:
        if at.utcoffset() is None:
            return False
        local = at.astimezone(policy.zone)
    except (OverflowError, ValueError, TypeError, AttributeError):
        return False
    return _schedule_open(policy, (rule.schedule,), local, False)[0]


