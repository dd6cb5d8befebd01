"""Door and site modes: what technicians set (persisted, so a lockdown survives a restart), the
policy's free-access schedules with their first-person-in latch, and the mode that applies.

The stricter mode wins: emergency-open > lockdown > free-access > normal. So a site lockdown
holds a door locked even inside its free-access schedule, and emergency-open opens everything.
A manual "normal" clears the manual mode of that door (or the site): schedules apply again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from door_drivers.supervision import DoorMode
from gateway.policy import Policy, scheduled_free

log = logging.getLogger(__name__)

RANK = {DoorMode.NORMAL: 0, DoorMode.FREE_ACCESS: 1, DoorMode.LOCKDOWN: 2,
        DoorMode.EMERGENCY_OPEN: 3}


def stricter(*modes: DoorMode) -> DoorMode:
    return max(modes, key=RANK.__getitem__)


class ModeBook:
    """Manual modes (site-wide and per door), kept in a small JSON file written atomically."""

    def __init__(self, path: Path, doors: Iterable[str]) -> None:
        self.path = path
        self.known = frozenset(doors)
        self.site = DoorMode.NORMAL
        self.doors: dict[str, DoorMode] = {}
        self.first_in: set[str] = set()  # doors whose first authorised person has badged
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("%s: cannot read (%s); starting with every door in normal mode",
                      self.path, e.strerror)
            return
        try:
            raw = json.loads(text)
            site = DoorMode(raw["site"])
            doors = {str(k): DoorMode(v) for k, v in raw["doors"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Kept aside, not deleted: a technician can see what it said.
            bad = self.path.with_suffix(".json.bad")
            log.error("%s: unreadable (%s); starting with every door in normal mode, the file "
                      "kept as %s", self.path, e, bad)
            try:
                os.replace(self.path, bad)
            except OSError as err:
                log.error("%s: cannot set it aside: %s", self.path, err.strerror)
            return
        self.site = site
        self.doors = {k: v for k, v in doors.items() if k in self.known}

    def door_mode(self, door: str) -> DoorMode:
        return self.doors.get(door, DoorMode.NORMAL)

    def set(self, door: str | None, mode: DoorMode) -> DoorMode:
        """Set the site's (door None) or a door's manual mode; returns the one it replaces.
        Written to disk first: on an OSError nothing changed."""
        site, doors = self.site, dict(self.doors)
        before = site if door is None else doors.get(door, DoorMode.NORMAL)
        if door is None:
            site = mode
        elif mode is DoorMode.NORMAL:
            doors.pop(door, None)
        else:
            doors[door] = mode
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"site": site.value,
                                     "doors": {k: v.value for k, v in doors.items()}}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self.site, self.doors = site, doors
        return before

    def effective(self, door: str, policy: Policy | None, at: datetime) -> DoorMode:
        """The mode `door` is in at `at`: manual modes, then its free-access schedule."""
        mode = stricter(self.site, self.doors.get(door, DoorMode.NORMAL))
        rule = policy.free_access.get(door) if policy is not None else None
        if rule is not None:
            if scheduled_free(policy, door, at):  # type: ignore[arg-type]  # rule implies policy
                if not rule.first_person_in or door in self.first_in:
                    mode = stricter(mode, DoorMode.FREE_ACCESS)
            else:
                self.first_in.discard(door)
        return mode

    def first_person_in(self, door: str, policy: Policy | None, at: datetime) -> bool:
        """Record an authorised grant at `door`; True if it opens a first-person-in schedule."""
        rule = policy.free_access.get(door) if policy is not None else None
        if rule is None or not rule.first_person_in or door in self.first_in:
            return False
        if not scheduled_free(policy, door, at):  # type: ignore[arg-type]
            return False
        self.first_in.add(door)
        return True
