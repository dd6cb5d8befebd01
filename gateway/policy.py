"""Access policy: who may use which door or printer, when. A model, its loader, and `decide`.

Everything here is pure: frozen dataclasses and functions over them, no I/O, no clock. The policy
document is a plain dict (the content of the future signed bundle); `Policy.from_dict` validates it
once and builds the indexes `decide` needs (identity -> holder, holder -> resource -> schedules), so
a decision costs a few dict look-ups whatever the size of the site.

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

A window with `to` at or before `from` spans midnight: it opens on the listed day and closes the next
morning. "24:00" is accepted as `to`. The schedule name "always" is built in. A holiday replaces
every schedule but "always" by its own (or closes) for windows opening on that date, except for
people flagged `extended_access`. Schedules are read on the site's wall clock (zoneinfo), so a
window in the hour skipped in spring never opens and one in the hour repeated in autumn opens twice.
Credential windows are half-open: valid from `valid_from` (inclusive) until `valid_until` (exclusive).
"""

from __future__ import annotations

import enum
import gc
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.domain import Decision
from gateway.errors import InputError

__all__ = [
    "REASONS", "Decision", "DecisionState", "Holder", "Mode", "Pending", "Policy", "PolicyError",
    "Schedule", "Window", "decide", "normalise_identity",
]

REASONS = frozenset({
    "granted", "unknown-person", "no-access", "outside-schedule", "holiday",
    "credential-not-yet-valid", "credential-expired", "card-suspended", "lockdown", "door-faulted",
    "two-person-pending", "two-person-same-person",
    "invalid-time",  # a naive or unrepresentable instant: never guessed, always denied
})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALWAYS = "always"
EXTENDED_ACCESS = "extended_access"
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

    @property
    def resources(self) -> frozenset[str]:
        return self.doors | self.printers

    @classmethod
    def from_dict(cls, doc: Any, today: date | None = None) -> Policy:
        """Validate a policy document and index it. `today` is the reference date for 2-digit-year
        personal identity numbers (default: the current date). Raises PolicyError naming the path
        of the first bad field, e.g. `people[3].identities[0]`."""
        # The load allocates a few objects per person and frees nothing cyclic: pausing the
        # collector's repeated full passes over them cuts a 100,000-person load by a quarter.
        paused = gc.isenabled()
        gc.disable()
        try:
            return _Loader(today or date.today()).load(doc)
        finally:
            if paused:
                gc.enable()


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


# --- loading -------------------------------------------------------------------------------------

_TOP = {"time_zone", "doors", "printers", "schedules", "holidays", "access_levels", "groups", "people",
        "temporary_cards", "substitute_cards", "two_person", "version"}
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2}))?")


def _fail(path: str, expected: str, got: object) -> PolicyError:
    return PolicyError(f"{path}: expected {expected}, got {got!r}")


def _obj(v: object, path: str, keys: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(path, "a table", v)
    extra = v.keys() - keys
    if extra:
        raise PolicyError(f"{path}.{sorted(map(str, extra))[0]}: unknown key; expected one of "
                          f"{', '.join(sorted(keys))}")
    for k in required:
        if k not in v:
            raise PolicyError(f"{path}.{k}: missing")
    return v


def _join(path: str | tuple[str, int, str, int]) -> str:
    return path if isinstance(path, str) else f"{path[0]}[{path[1]}].{path[2]}[{path[3]}]"


def _table(v: object, path: str) -> dict[str, Any]:
    """A table of named entries (any keys)."""
    if not isinstance(v, dict):
        raise _fail(path, "a table of named entries", v)
    return v


def _list(v: object, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise _fail(path, "a list", v)
    return v


def _name(v: object, path: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _fail(path, "a non-empty string", v)
    return v


def _names(v: object, path: str, known: Mapping[str, object] | frozenset[str] | None = None,
           what: str = "") -> list[str]:
    out = []
    for i, n in enumerate(_list(v, path)):
        n = _name(n, f"{path}[{i}]")
        if known is not None and n not in known:
            raise _fail(f"{path}[{i}]", f"the name of {what}", n)
        out.append(n)
    return out


def _clock(v: object, path: str) -> int:
    m = _TIME.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise _fail(path, "a time 'HH:MM' or 'HH:MM:SS'", v)
    h, mi, s = int(m[1]), int(m[2]), int(m[3] or 0)
    if (h, mi, s) != (24, 0, 0) and (h > 23 or mi > 59 or s > 59):
        raise _fail(path, "a time between 00:00 and 24:00", v)
    return h * 3600 + mi * 60 + s


def _instant(v: object, path: str) -> float:
    try:
        dt = datetime.fromisoformat(v) if isinstance(v, str) else None
    except ValueError:
        dt = None
    if dt is None or dt.utcoffset() is None:
        raise _fail(path, "an ISO 8601 date-time with a UTC offset", v)
    return dt.timestamp()


def _window(path: str, v: object) -> tuple[float, float]:
    d = _obj(v, path, {"valid_from", "valid_until"}, ("valid_from", "valid_until"))
    start, end = _instant(d["valid_from"], f"{path}.valid_from"), _instant(d["valid_until"],
                                                                           f"{path}.valid_until")
    if end <= start:
        raise _fail(f"{path}.valid_until", "an instant after valid_from", d["valid_until"])
    return start, end


class _Loader:
    def __init__(self, today: date) -> None:
        self.today = today
        self.holders: dict[str, Holder] = {}
        self.by_group: dict[str, Mapping[str, tuple[Schedule, ...]]] = {}

    def identity(self, v: object, path: str | tuple[str, int, str, int]) -> str:
        # `path` may come as parts, joined only on error: 100,000 people make f-strings add up.
        try:
            key = normalise_identity(v, self.today)  # type: ignore[arg-type]  # checked inside
        except PolicyError as e:
            raise PolicyError(f"{_join(path)}: {e}") from None
        if key in self.holders:
            raise PolicyError(f"{_join(path)}: identity {key!r} is already used by "
                              f"{self.holders[key].person}")
        return key

    def load(self, doc: object) -> Policy:
        d = _obj(doc, "policy", _TOP, ("time_zone",))
        try:
            zone = ZoneInfo(_name(d["time_zone"], "time_zone"))
        except (ZoneInfoNotFoundError, ValueError):
            raise _fail("time_zone", "an IANA time zone such as Europe/Stockholm", d["time_zone"]) from None
        doors = frozenset(_names(d.get("doors", []), "doors"))
        printers = frozenset(_names(d.get("printers", []), "printers"))
        for i, n in enumerate(_names(d.get("printers", []), "printers")):
            if n in doors:
                raise _fail(f"printers[{i}]", "a name not already used by a door", n)
        resources = doors | printers
        schedules = self.schedules(d.get("schedules", {}))
        holidays: dict[date, Schedule] = {}
        for i, h in enumerate(_list(d.get("holidays", []), "holidays")):
            p = f"holidays[{i}]"
            h = _obj(h, p, {"date", "schedule", "name"}, ("date",))
            try:
                day = date.fromisoformat(h["date"]) if isinstance(h["date"], str) else None
            except ValueError:
                day = None
            if day is None or day in holidays:
                raise _fail(f"{p}.date", "a date YYYY-MM-DD not listed before", h["date"])
            name = h.get("schedule")
            if name is not None and name not in schedules:
                raise _fail(f"{p}.schedule", "the name of a schedule, or null for closed", name)
            holidays[day] = CLOSED if name is None else schedules[name]
        levels: dict[str, tuple[frozenset[str], Schedule]] = {}
        for name, lv in _table(d.get("access_levels", {}), "access_levels").items():
            p = f"access_levels.{name}"
            lv = _obj(lv, p, {"resources", "schedule"}, ("resources", "schedule"))
            res = _names(lv["resources"], f"{p}.resources", resources, "a door or printer")
            sched = lv["schedule"]
            if sched not in schedules:
                raise _fail(f"{p}.schedule", "the name of a schedule", sched)
            levels[name] = (frozenset(res), schedules[sched])
        groups: dict[str, tuple[str, ...]] = {}
        for name, g in _table(d.get("groups", {}), "groups").items():
            p = f"groups.{name}"
            g = _obj(g, p, {"access_levels", "description"}, ())
            groups[name] = tuple(_names(g.get("access_levels", []), f"{p}.access_levels", levels,
                                        "an access level"))
        self.levels, self.groups = levels, groups
        self.resolve_groups()
        people = self.people(d.get("people", []))
        suspensions: dict[str, list[Suspension]] = {}
        for i, c in enumerate(_list(d.get("temporary_cards", []), "temporary_cards")):
            p = f"temporary_cards[{i}]"
            c = _obj(c, p, {"identity", "person", "valid_from", "valid_until", "suspends_regular"},
                     ("identity", "person"))
            key = self.identity(c["identity"], f"{p}.identity")
            who = people.get(c["person"]) if isinstance(c["person"], str) else None
            if who is None:
                raise _fail(f"{p}.person", "the id of a person", c["person"])
            valid = _window(p, {k: c.get(k) for k in ("valid_from", "valid_until")})
            suspends = c.get("suspends_regular", False)
            if not isinstance(suspends, bool):
                raise _fail(f"{p}.suspends_regular", "true or false", suspends)
            self.holders[key] = Holder(who.person, "temporary", who.groups, self.grants(who.groups),
                                       EXTENDED_ACCESS in who.flags, valid)
            if suspends:
                suspensions.setdefault(who.person, []).append(Suspension(*valid))
        seen_subs: set[str] = set()
        for i, c in enumerate(_list(d.get("substitute_cards", []), "substitute_cards")):
            p = f"substitute_cards[{i}]"
            c = _obj(c, p, {"id", "identity", "role", "person", "valid_from", "valid_until"},
                     ("id", "identity"))
            sid = _name(c["id"], f"{p}.id")
            if sid in seen_subs or sid in people:
                raise _fail(f"{p}.id", "an id used by no person or other substitute card", sid)
            seen_subs.add(sid)
            key = self.identity(c["identity"], f"{p}.identity")
            if ("role" in c) == ("person" in c):
                raise PolicyError(f"{p}: expected exactly one of role (a group) or person")
            if "role" in c:
                if c["role"] not in groups:
                    raise _fail(f"{p}.role", "the name of a group", c["role"])
                sub_groups, exempt = frozenset((c["role"],)), False
            else:
                who = people.get(c["person"]) if isinstance(c["person"], str) else None
                if who is None:
                    raise _fail(f"{p}.person", "the id of a person", c["person"])
                sub_groups, exempt = who.groups, EXTENDED_ACCESS in who.flags
            valid = _window(p, {k: c.get(k) for k in ("valid_from", "valid_until")})
            self.holders[key] = Holder(sid, "substitute", sub_groups, self.grants(sub_groups), exempt, valid)
        two_person: dict[str, float] = {}
        for i, r in enumerate(_list(d.get("two_person", []), "two_person")):
            p = f"two_person[{i}]"
            r = _obj(r, p, {"door", "within_seconds"}, ("door", "within_seconds"))
            if r["door"] not in doors or r["door"] in two_person:
                raise _fail(f"{p}.door", "the name of a door not listed before", r["door"])
            n = r["within_seconds"]
            if isinstance(n, bool) or not isinstance(n, int | float) or not 0 < n <= 3600:
                raise _fail(f"{p}.within_seconds", "seconds, more than 0 and at most 3600", n)
            two_person[r["door"]] = float(n)
        return Policy(zone, doors, printers, people, self.holders,
                      {k: tuple(v) for k, v in suspensions.items()}, holidays, two_person)

    def schedules(self, raw: object) -> dict[str, Schedule]:
        out = {ALWAYS: ALWAYS_SCHEDULE}
        for name, windows in _table(raw, "schedules").items():
            if name == ALWAYS:
                raise _fail(f"schedules.{name}", "a name other than the built-in 'always'", name)
            ws: list[Window] = []
            for j, w in enumerate(_list(windows, f"schedules.{name}")):
                p = f"schedules.{name}[{j}]"
                w = _obj(w, p, {"days", "from", "to"}, ("days", "from", "to"))
                days = _names(w["days"], f"{p}.days", frozenset(DAYS), "a day (mon..sun)")
                start, end = _clock(w["from"], f"{p}.from"), _clock(w["to"], f"{p}.to")
                if start == 86_400:
                    raise _fail(f"{p}.from", "a time before 24:00", w["from"])
                if end == start:
                    raise _fail(f"{p}.to", "a time other than 'from' (a window may span midnight)", w["to"])
                if end < start:
                    end += 86_400
                ws.extend(Window(DAYS.index(day), start, end) for day in days)
            out[name] = Schedule.of(name, tuple(ws))
        return out

    def grants(self, groups: frozenset[str]) -> tuple[Mapping[str, tuple[Schedule, ...]], ...]:
        # Resolved once per group and shared by reference: a load never multiplies people by doors.
        by_group = self.by_group
        return tuple([by_group[g] for g in groups])

    def resolve_groups(self) -> None:
        for group, levels in self.groups.items():
            acc: dict[str, list[Schedule]] = {}
            for lv in levels:
                res, sched = self.levels[lv]
                for r in res:
                    lst = acc.setdefault(r, [])
                    if sched not in lst:
                        lst.append(sched)
            self.by_group[group] = {r: tuple(v) for r, v in acc.items()}

    def people(self, raw: object) -> dict[str, Holder]:
        people: dict[str, Holder] = {}
        allowed = {"id", "identities", "groups", "flags", "print_user"}
        known_groups = self.groups
        for i, pd in enumerate(_list(raw, "people")):
            # Fast checks first; the slow, path-naming validators run only to word an error.
            if not (type(pd) is dict and pd.keys() <= allowed and "id" in pd and "identities" in pd):
                _obj(pd, f"people[{i}]", allowed, ("id", "identities"))
            pid, ids = pd["id"], pd["identities"]
            if type(pid) is not str or not pid.strip():
                _name(pid, f"people[{i}].id")
            if pid in people:
                raise _fail(f"people[{i}].id", "an id not used by another person", pid)
            if type(ids) is not list:
                _list(ids, f"people[{i}].identities")
            keys = tuple(self.identity(k, ("people", i, "identities", j)) for j, k in enumerate(ids))
            raw_groups = pd.get("groups", [])
            if type(raw_groups) is not list or not all(type(g) is str and g in known_groups
                                                        for g in raw_groups):
                _names(raw_groups, f"people[{i}].groups", known_groups, "a group")
            raw_flags = pd.get("flags", [])
            if raw_flags:
                _names(raw_flags, f"people[{i}].flags")
            print_user = pd.get("print_user")
            if print_user is not None and (type(print_user) is not str or not print_user.strip()):
                _name(print_user, f"people[{i}].print_user")
            groups, flags = frozenset(raw_groups), frozenset(raw_flags)
            holder = people[pid] = Holder(pid, "regular", groups, self.grants(groups),
                                          EXTENDED_ACCESS in flags, None, flags, print_user)
            for k in keys:
                self.holders[k] = holder
        return people
