"""`portvakt print jobs|release|purge`: a technician's print commands.

`jobs` asks cupsd directly. `release` and `purge` change things, so they are journaled with the
caller's OS user: through the running daemon's control socket when one answers (it journals,
as it does for `door`), else directly against cupsd with the journal opened here. Opening the
journal while a daemon writes to it would collide on sequence numbers, so a daemon that answers
but has no print commands yet is a clear error, not a reason to write behind its back.

cupsd lets only the gateway's account release or move jobs (config/cups/cupsd.conf), proved by
peer credentials: run the direct form as that account (`sudo -u portvakt portvakt print ...`).
The configuration is the gateway's TOML file ([gateway], [print], [[printers]]).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pwd
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.config import DEFAULT_CONFIG, add_config_options, read_toml
from gateway.control import request
from gateway.errors import ConfigError, InputError

T = TypeVar("T")


def _read(args: argparse.Namespace) -> tuple[dict[str, Any], str, Path, str]:
    """The TOML document, its file name, the state directory and the gateway id."""
    path: Path = args.config or DEFAULT_CONFIG
    file = str(path)
    raw = read_toml(path)
    gw = raw.get("gateway")
    if not isinstance(gw, dict):
        raise ConfigError(file, "gateway", "missing table; expected [gateway] with id")
    gid, sd = gw.get("id"), gw.get("state_dir", "/var/lib/portvakt")
    if not isinstance(gid, str) or not gid.strip():
        raise ConfigError(file, "gateway.id", f"expected a non-empty string, got {gid!r}")
    if not isinstance(sd, str) or not sd.strip():
        raise ConfigError(file, "gateway.state_dir", f"expected a path, got {sd!r}")
    return raw, file, args.state_dir or Path(sd), gid


def _os_user() -> dict[str, str]:
    """Who runs this command, for the journal (and who sudo says asked for it)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid:{uid}"
    sudo = os.environ.get("SUDO_USER")
    return {"user": name, **({"sudo_user": sudo} if sudo and sudo != name else {})}


def _daemon(state_dir: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The running daemon's answer to `doc`, or None when no daemon listens."""
    sock = state_dir / "control.sock"
    try:
        answer = request(sock, {"id": 1, **doc}, 60.0)
    except PermissionError:
        raise InputError(f"{sock}: permission denied (join the daemon's group to use it)") from None
    except (ConnectionError, OSError):
        return None
    if not answer.get("ok"):
        error = str(answer.get("error"))
        if error.startswith("unknown command"):
            raise InputError(f"the running daemon ({sock}) has no {doc['cmd']} command yet; it "
                             f"must carry this out (and journal it): stop it, or upgrade it")
        raise InputError(f"the daemon refused: {error}")
    return answer


def _direct(args: argparse.Namespace, work: Callable[[Any, Any], Awaitable[T]],
            journaled: bool) -> T:
    """Run `work(engine, journal)` against cupsd from here (journal None when not `journaled`)."""
    from gateway.journal import Journal
    from printer_drivers.config import parse_print_config
    from printer_drivers.ipp import os_account
    from printer_drivers.release import NoJournal, PrintRelease

    raw, file, state_dir, gid = _read(args)
    cfg = parse_print_config(raw, file, lambda p: Path(p) if Path(p).is_absolute()
                             else state_dir / p)
    me = os_account()
    if cfg.auth == "peer-credentials" and cfg.user is not None and cfg.user != me:
        raise InputError(f"cupsd accepts release only from the gateway's account {cfg.user!r} "
                         f"(peer credentials); this is {me!r}: run `sudo -u {cfg.user} portvakt "
                         f"print ...`")
    journal = Journal(state_dir / "portvakt.db", gid) if journaled else None

    async def run() -> T:
        async with PrintRelease(cfg, journal or NoJournal()) as engine:
            result = await work(engine, journal)
            if engine.owners_hidden:  # else "no held jobs" / "nothing to print" would mislead
                raise InputError(f"cupsd hides job owners from account {me!r}: run as the "
                                 f"gateway's account, or add {me!r} to JobPrivateAccess")
            return result

    try:
        return asyncio.run(run())
    finally:
        if journal is not None:
            journal.close()



def _size(kb: int) -> str:
    return f"{kb} KB" if kb < 10_240 else f"{kb / 1024:.1f} MB"


def _age(created: float) -> str:
    s = max(0, int(time.time() - created))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def cmd_jobs(args: argparse.Namespace) -> int:
    async def work(engine: Any, journal: Any) -> list[dict[str, Any]]:
        return [j.to_json() for j in await engine.held_jobs(args.user)]

    jobs = _direct(args, work, journaled=False)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print("no held jobs" + (f" for {args.user}" if args.user else ""))
        return 0
    named = any("name" in j for j in jobs)
    print(f"{'job':>6}  {'queue':<14} {'state':<8} {'owner':<22} {'size':>9} {'held':>8}"
          + ("  name" if named else ""))
    for j in jobs:
        print(f"{j['job']:>6}  {j['queue']:<14} {j['state']:<8} {j['owner']:<22} "
              f"{_size(j['size_kb']):>9} {_age(j['created']):>8}"
              + (f"  {j.get('name', '')}" if named else ""))
    return 0


def _print_outcome(o: dict[str, Any], user: str) -> int:
    if o["result"] == "refused":
        print(f"printer {o['printer']}: refused ({o['reason']}"
              + (f": {o['detail']}" if o["detail"] else "") + "); the jobs stay held")
        return 1
    if o["result"] == "nothing-to-print":
        print(f"printer {o['printer']}: nothing to print for {user}")
        return 1
    for j in o["released"]:
        print(f"printer {o['printer']}: released job {j['job']} of {j['owner']} "
              f"({_size(j['size_kb'])}, from {j['from_queue']})")
    for f in o["failed"]:
        print(f"printer {o['printer']}: job {f['job']} of {f['owner']} NOT released "
              f"({f['reason']}); it stays held in {f['queue']}")
    return 0 if o["released"] and not o["failed"] else 1


def cmd_release(args: argparse.Namespace) -> int:
    if not args.user.strip():
        raise InputError("--user: expected a print user name")
    if not args.printer.strip():
        raise InputError("--printer: expected a printer name")
    _, _, state_dir, _ = _read(args)
    ans = _daemon(state_dir, {"cmd": "print.release", "user": args.user, "printer": args.printer})
    if ans is not None:
        return _print_outcome(ans["outcome"], args.user)
    from printer_drivers.commands import technician_release

    who = _os_user()

    async def work(engine: Any, journal: Any) -> dict[str, Any]:
        outcome = await technician_release(engine, _Audit(journal, who), who["user"], args.user,
                                           args.printer)
        return dict(outcome.to_json())

    return _print_outcome(_direct(args, work, journaled=True), args.user)


def cmd_purge(args: argparse.Namespace) -> int:
    _, _, state_dir, _ = _read(args)
    ans = _daemon(state_dir, {"cmd": "print.purge"})
    if ans is not None:
        purged = ans["purged"]
    else:
        from printer_drivers.commands import technician_purge

        who = _os_user()

        async def work(engine: Any, journal: Any) -> list[dict[str, Any]]:
            return [j.to_json() for j in await technician_purge(engine, _Audit(journal, who),
                                                                who["user"])]

        purged = _direct(args, work, journaled=True)
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    print(f"{when}: purged {len(purged)} job(s) held longer than the retention time")
    for j in purged:
        print(f"  job {j['job']} of {j['owner']} in {j['queue']} ({_size(j['size_kb'])})")
    return 0


class _Audit:
    """The journal, with `sudo_user` added to the technician's audit events."""

    def __init__(self, journal: Any, who: dict[str, str]) -> None:
        self.journal, self.who = journal, who

    def append(self, kind: str, **data: Any) -> object:
        if kind.startswith("control.") and "sudo_user" in self.who:
            data.setdefault("sudo_user", self.who["sudo_user"])
        return self.journal.append(kind, **data)


def register(sub: Any) -> None:
    p = sub.add_parser("print", help="print release: held jobs, technician release, purge")
    ps = p.add_subparsers(dest="sub", required=True)

    j = ps.add_parser("jobs", help="jobs waiting for release (owner, queue, size, time held)")
    add_config_options(j)
    j.add_argument("--user", help="only this print user's jobs (DOMAIN\\user, user@realm, user)")
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs)
    r = ps.add_parser("release", help="release a user's held jobs at a printer (audited)")
    add_config_options(r)
    r.add_argument("--user", required=True, help="the print user whose jobs to release")
    r.add_argument("--printer", required=True, help="the printer's name in the configuration")
    r.set_defaults(func=cmd_release)
    g = ps.add_parser("purge", help="cancel jobs held longer than the retention time (audited)")
    add_config_options(g)
    g.set_defaults(func=cmd_purge)
