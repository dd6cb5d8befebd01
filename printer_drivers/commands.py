"""Technician print commands, shared by `portvakt print` (when no daemon runs) and the daemon's
control API (`print_commands`, for the daemon to add to its ControlServer's commands).

Control messages (newline-delimited JSON, see gateway.control):
    {"cmd": "print.jobs", "user"?: str}                -> {"jobs": [HeldJob.to_json(), ...]}
    {"cmd": "print.release", "user": str, "printer": str} -> {"outcome": ReleaseOutcome.to_json()}
    {"cmd": "print.purge"}                              -> {"purged": [HeldJob.to_json(), ...]}
Each action is journaled with the caller's OS user: control.print-release / control.print-purge,
then the engine's own print.* events (which carry the same `user`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.control import CommandError
from gateway.errors import InputError, PrinterError
from printer_drivers.model import HeldJob, ReleaseOutcome
from printer_drivers.release import JournalLike, PrintRelease

__all__ = ["print_commands", "technician_purge", "technician_release"]

Handler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


async def technician_release(engine: PrintRelease, journal: JournalLike, os_user: str,
                             print_user: str, printer: str) -> ReleaseOutcome:
    """Release `print_user`'s held jobs at `printer` on a technician's word (no badge), audited
    as control.print-release with `os_user`. Raises InputError (unknown printer, empty user)
    or PrinterError."""
    if not isinstance(print_user, str) or not print_user.strip():
        raise InputError(f"expected a print user name (--user), got {print_user!r}")
    engine.printer_config(printer)  # an unknown printer is refused before anything is journaled
    journal.append("control.print-release", user=os_user, owner=print_user, printer=printer)
    return await engine.release_for(None, frozenset({print_user}), printer, user=os_user)


async def technician_purge(engine: PrintRelease, journal: JournalLike,
                           os_user: str) -> list[HeldJob]:
    """Run the retention purge now, audited as control.print-purge with `os_user`."""
    journal.append("control.print-purge", user=os_user)
    return await engine.purge(user=os_user)


def print_commands(engine: PrintRelease, journal: JournalLike) -> dict[str, Handler]:
    """Control API handlers: print.jobs, print.release, print.purge (see the module docstring).
    Bad input and cupsd failures come back to the client as CommandError text."""

    async def jobs(msg: dict[str, Any], user: str) -> dict[str, Any]:
        try:
            found = await engine.held_jobs(msg.get("user"))
        except (InputError, PrinterError) as e:
            raise CommandError(str(e)) from None
        return {"jobs": [j.to_json() for j in found]}

    async def release(msg: dict[str, Any], user: str) -> dict[str, Any]:
        try:
            outcome = await technician_release(engine, journal, user, msg.get("user", ""),
                                               msg.get("printer", ""))
        except (InputError, PrinterError) as e:
            raise CommandError(str(e)) from None
        return {"outcome": outcome.to_json()}

    async def purge(msg: dict[str, Any], user: str) -> dict[str, Any]:
        try:
            purged = await technician_purge(engine, journal, user)
        except PrinterError as e:
            raise CommandError(str(e)) from None
        return {"purged": [j.to_json() for j in purged]}

    return {"print.jobs": jobs, "print.release": release, "print.purge": purge}
