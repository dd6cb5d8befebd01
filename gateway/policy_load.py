"""Loading a policy document: validation with every error naming its path, and the indexes.

`Policy.from_dict` is the public entry; this module is its implementation. Validators raise
PolicyError only, whatever they are given (a list where a name belongs is an error, not a
TypeError), so a bad bundle is always a clear rejection. The shape is documented in
`gateway.policy` and docs/policy.md.

Loading 100,000 people must take well under 2 s (bench/policy.py): the per-person path checks types
with `type(x) is ...` and runs the path-naming validators only to word an error (so paths are
built only then), and shares one group set and one grants tuple among people with the same groups,
which also keeps the number of objects the garbage collector must trace per person small.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.policy import (
    ALWAYS,
    ALWAYS_SCHEDULE,
    CLOSED,
    DAYS,
    HOLIDAY_EXEMPT,
    Delegation,
    FreeAccess,
    Holder,
    Policy,
    PolicyError,
    Schedule,
    Suspension,
    Window,
    normalise_identity,
)

__all__ = ["TOP_KEYS", "load"]

TOP_KEYS = frozenset({
    "time_zone", "doors", "printers", "schedules", "holidays", "access_levels", "groups", "people",
    "temporary_cards", "substitute_cards", "two_person", "door_modes", "lockdown_override",
    "delegations", "version",  # informational: the signed bundle's version is the one that counts
})
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2}))?", re.ASCII)
_NO_FLAGS: frozenset[str] = frozenset()

Grants = tuple[Mapping[str, tuple[Schedule, ...]], ...]


def load(doc: object, today: date) -> Policy:
    """Validate `doc` and build the Policy (see `Policy.from_dict`). Raises PolicyError."""
    return _Loader(today).load(doc)


def _fail(path: str, expected: str, got: object) -> PolicyError:
    return PolicyError(f"{path}: expected {expected}, got {got!r}")


def _obj(v: object, path: str, keys: set[str] | frozenset[str],
         required: tuple[str, ...] = ()) -> dict[str, Any]:
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


def _ref(v: object, known: Mapping[str, object] | frozenset[str], path: str, expected: str) -> str:
    """A name that must be one of `known` (checked as a string first: a list is not hashable)."""
    if not isinstance(v, str) or v not in known:
        raise _fail(path, expected, v)
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


def _bool(v: object, path: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(path, "true or false", v)
    return v


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
        t = None if dt is None or dt.utcoffset() is None else dt.timestamp()
    except (ValueError, OverflowError):
        t = None
    if t is None:
        raise _fail(path, "an ISO 8601 date-time with a UTC offset", v)
    return t


def _window(path: str, v: object) -> tuple[float, float]:
    d = _obj(v, path, {"valid_from", "valid_until"}, ("valid_from", "valid_until"))
    start, end = _instant(d["valid_from"], f"{path}.valid_from"), _instant(d["valid_until"],
                                                                           f"{path}.valid_until")
    if end <= start:
        raise _fail(f"{path}.valid_until", "an instant after valid_from", d["valid_until"])
    return start, end


def _zone(v: object) -> ZoneInfo:
    try:
        return ZoneInfo(_name(v, "time_zone"))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a folder
        raise _fail("time_zone", "an IANA time zone such as Europe/Stockholm", v) from None


class _Loader:
    def __init__(self, today: date) -> None:
        self.today = today
        self.holders: dict[str, Holder] = {}
        self.by_group: dict[str, Mapping[str, tuple[Schedule, ...]]] = {}
        self.levels: dict[str, tuple[frozenset[str], Schedule]] = {}
        self.groups: dict[str, tuple[str, ...]] = {}

    def identity(self, v: object, path: str) -> str:
        try:
            key = normalise_identity(v, self.today)  # type: ignore[arg-type]  # checked inside
        except PolicyError as e:
            raise PolicyError(f"{path}: {e}") from None
        if key in self.holders:
            raise PolicyError(f"{path}: identity {key!r} is already used by "
                              f"{self.holders[key].person}")
        return key

    def load(self, doc: object) -> Policy:
        d = _obj(doc, "policy", TOP_KEYS, ("time_zone",))
        zone = _zone(d["time_zone"])
        doors = frozenset(_names(d.get("doors", []), "doors"))
        printers = frozenset(_names(d.get("printers", []), "printers"))
        for i, n in enumerate(_names(d.get("printers", []), "printers")):
            if n in doors:
                raise _fail(f"printers[{i}]", "a name not already used by a door", n)
        resources = doors | printers
        schedules = self.schedules(d.get("schedules", {}))
        holidays = self.holidays(d.get("holidays", []), schedules)
        for name, lv in _table(d.get("access_levels", {}), "access_levels").items():
            p = f"access_levels.{name}"
            lv = _obj(lv, p, {"resources", "schedule"}, ("resources", "schedule"))
            res = _names(lv["resources"], f"{p}.resources", resources, "a door or printer")
            sched = _ref(lv["schedule"], schedules, f"{p}.schedule", "the name of a schedule")
            self.levels[name] = (frozenset(res), schedules[sched])
        for name, g in _table(d.get("groups", {}), "groups").items():
            p = f"groups.{name}"
            g = _obj(g, p, {"access_levels", "description"}, ())
            self.groups[name] = tuple(_names(g.get("access_levels", []), f"{p}.access_levels",
                                             self.levels, "an access level"))
        self.resolve_groups()
        people = self.people(d.get("people", []))
        suspensions = self.temporary_cards(d.get("temporary_cards", []), people)
        self.substitute_cards(d.get("substitute_cards", []), people)
        two_person: dict[str, float] = {}
        for i, r in enumerate(_list(d.get("two_person", []), "two_person")):
            p = f"two_person[{i}]"
            r = _obj(r, p, {"door", "within_seconds"}, ("door", "within_seconds"))
            door = r["door"]
            if not isinstance(door, str) or door not in doors or door in two_person:
                raise _fail(f"{p}.door", "the name of a door not listed before", door)
            n = r["within_seconds"]
            if isinstance(n, bool) or not isinstance(n, int | float) or not 0 < n <= 3600:
                raise _fail(f"{p}.within_seconds", "seconds, more than 0 and at most 3600", n)
            two_person[door] = float(n)
        free_access: dict[str, FreeAccess] = {}
        for door, m in _table(d.get("door_modes", {}), "door_modes").items():
            p = f"door_modes.{door}"
            if door not in doors:
                raise _fail(p, "the name of a door", door)
            m = _obj(m, p, {"free_access", "first_person_in"}, ("free_access",))
            sched = _ref(m["free_access"], schedules, f"{p}.free_access", "the name of a schedule")
            free_access[door] = FreeAccess(schedules[sched],
                                           _bool(m.get("first_person_in", False),
                                                 f"{p}.first_person_in"))
        override = d.get("lockdown_override")
        if override is not None:
            override = _ref(override, self.groups, "lockdown_override", "the name of a group")
        delegations = self.delegations(d.get("delegations", []), people)
        return Policy(zone, doors, printers, people, self.holders, suspensions, holidays,
                      two_person, frozenset(self.groups), free_access, override, delegations)

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

    @staticmethod
    def holidays(raw: object, schedules: Mapping[str, Schedule]) -> dict[date, Schedule]:
        holidays: dict[date, Schedule] = {}
        for i, h in enumerate(_list(raw, "holidays")):
            p = f"holidays[{i}]"
            h = _obj(h, p, {"date", "schedule", "name"}, ("date",))
            try:
                day = date.fromisoformat(h["date"]) if isinstance(h["date"], str) else None
            except ValueError:
                day = None
            if day is None or day in holidays:
                raise _fail(f"{p}.date", "a date YYYY-MM-DD not listed before", h["date"])
            name = h.get("schedule")
            if name is not None:
                name = _ref(name, schedules, f"{p}.schedule", "the name of a schedule, or null for closed")
            holidays[day] = CLOSED if name is None else schedules[name]
        return holidays

    def grants(self, groups: frozenset[str]) -> Grants:
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
        known_groups, holders, today = self.groups, self.holders, self.today
        # People with the same groups (or flags) share one frozenset and one grants tuple.
        by_groups: dict[tuple[str, ...], tuple[frozenset[str], Grants]] = {}
        by_flags: dict[tuple[str, ...], frozenset[str]] = {}
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
            try:
                keys = [normalise_identity(k, today) for k in ids]
            except PolicyError:
                for j, k in enumerate(ids):  # which one: worded with its path
                    self.identity(k, f"people[{i}].identities[{j}]")
                raise
            for k in keys:
                if k in holders:
                    self.identity(k, f"people[{i}].identities[{keys.index(k)}]")
            raw_groups = pd.get("groups", [])
            if type(raw_groups) is not list:
                _list(raw_groups, f"people[{i}].groups")
            try:
                groups, grants = by_groups[tuple(raw_groups)]
            except (KeyError, TypeError):  # TypeError: an entry is no string (worded just below)
                _names(raw_groups, f"people[{i}].groups", known_groups, "a group")
                groups = frozenset(raw_groups)
                groups, grants = by_groups[tuple(raw_groups)] = (groups, self.grants(groups))
            raw_flags = pd.get("flags", [])
            if type(raw_flags) is not list:
                _list(raw_flags, f"people[{i}].flags")
            if not raw_flags:
                flags = _NO_FLAGS
            else:
                try:
                    flags = by_flags[tuple(raw_flags)]
                except (KeyError, TypeError):  # TypeError: an entry is no string
                    names = _names(raw_flags, f"people[{i}].flags")
                    flags = by_flags[tuple(names)] = frozenset(names)
            print_user = pd.get("print_user")
            if print_user is not None and (type(print_user) is not str or not print_user.strip()):
                _name(print_user, f"people[{i}].print_user")
            holder = people[pid] = Holder(pid, "regular", groups, grants, HOLIDAY_EXEMPT in flags,
                                          None, flags, print_user)
            for k in keys:
                holders[k] = holder
        return people

    def temporary_cards(self, raw: object, people: Mapping[str, Holder]
                        ) -> dict[str, tuple[Suspension, ...]]:
        suspensions: dict[str, list[Suspension]] = {}
        for i, c in enumerate(_list(raw, "temporary_cards")):
            p = f"temporary_cards[{i}]"
            c = _obj(c, p, {"identity", "person", "valid_from", "valid_until", "suspends_regular"},
                     ("identity", "person"))
            key = self.identity(c["identity"], f"{p}.identity")
            who = people[_ref(c["person"], people, f"{p}.person", "the id of a person")]
            valid = _window(p, {k: c.get(k) for k in ("valid_from", "valid_until")})
            suspends = _bool(c.get("suspends_regular", False), f"{p}.suspends_regular")
            # The same person on another card: their groups, holiday exemption and flags.
            self.holders[key] = Holder(who.person, "temporary", who.groups, who.grants,
                                       who.holiday_exempt, valid, who.flags, who.print_user)
            if suspends:
                suspensions.setdefault(who.person, []).append(Suspension(*valid))
        return {k: tuple(v) for k, v in suspensions.items()}

    @staticmethod
    def delegations(raw: object, people: Mapping[str, Holder]
                    ) -> dict[str, tuple[Delegation, ...]]:
        out: dict[str, list[Delegation]] = {}
        for i, r in enumerate(_list(raw, "delegations")):
            p = f"delegations[{i}]"
            r = _obj(r, p, {"from", "to", "valid_from", "valid_until"}, ("from", "to"))
            frm = _ref(r["from"], people, f"{p}.from", "the id of a person")
            to = _ref(r["to"], people, f"{p}.to", "the id of a person")
            if frm == to:
                raise _fail(f"{p}.to", "a person other than 'from'", to)
            start = _instant(r["valid_from"], f"{p}.valid_from") if "valid_from" in r \
                else float("-inf")
            end = _instant(r["valid_until"], f"{p}.valid_until") if "valid_until" in r \
                else float("inf")
            if end <= start:
                raise _fail(f"{p}.valid_until", "an instant after valid_from", r["valid_until"])
            out.setdefault(to, []).append(Delegation(frm, to, start, end))
        return {k: tuple(v) for k, v in out.items()}

    def substitute_cards(self, raw: object, people: Mapping[str, Holder]) -> None:
        seen: set[str] = set()
        for i, c in enumerate(_list(raw, "substitute_cards")):
            p = f"substitute_cards[{i}]"
            c = _obj(c, p, {"id", "identity", "role", "person", "valid_from", "valid_until"},
                     ("id", "identity"))
            sid = _name(c["id"], f"{p}.id")
            if sid in seen or sid in people:
                raise _fail(f"{p}.id", "an id used by no person or other substitute card", sid)
            seen.add(sid)
            key = self.identity(c["identity"], f"{p}.identity")
            if ("role" in c) == ("person" in c):
                raise PolicyError(f"{p}: expected exactly one of role (a group) or person")
            if "role" in c:
                groups = frozenset((_ref(c["role"], self.groups, f"{p}.role", "the name of a group"),))
                grants, exempt = self.grants(groups), False
            else:
                # A stand-in for a person: their access, not their personal flags.
                who = people[_ref(c["person"], people, f"{p}.person", "the id of a person")]
                groups, grants, exempt = who.groups, who.grants, who.holiday_exempt
            valid = _window(p, {k: c.get(k) for k in ("valid_from", "valid_until")})
            self.holders[key] = Holder(sid, "substitute", groups, grants, exempt, valid)
