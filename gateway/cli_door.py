"""`portvakt door ...`: a technician's door commands, carried out by the running daemon over its
control socket (which journals the caller's OS user with each one)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.config import DEFAULT_CONFIG, add_config_options, load_config
from gateway.control import request
from gateway.errors import InputError

MODES = {"lockdown": "lockdown", "normal": "normal", "emergency": "emergency-open",
         "free": "free-access"}


def _ask(args: argparse.Namespace, doc: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    cfg = load_config(args.config or DEFAULT_CONFIG, args.state_dir)
    sock = cfg.state_dir / "control.sock"
    try:
        answer = request(sock, {"id": 1, **doc}, timeout)
    except PermissionError:
        raise InputError(f"{sock}: permission denied (join the daemon's group to use it)") from None
    except (ConnectionError, OSError) as e:
        raise InputError(f"no running daemon answers on {sock} ({e})") from None
    if not answer.get("ok"):
        raise InputError(f"the daemon refused: {answer.get('error')}")
    return answer


def _print_doors(doors: list[dict[str, Any]], site_mode: str) -> None:
    print(f"site mode: {site_mode}")
    print(f"{'door':<14} {'state':<20} {'mode':<15} {'board':<10} {'reader':<8} alarm")
    for d in doors:
        board = "online" if d["board_online"] else "FAULT" if d["board_online"] is False else "?"
        reader = "online" if d["reader_online"] else "offline" if d["reader_online"] is False \
            else "?"
        print(f"{d['name']:<14} {d['state']:<20} {d['mode']:<15} {board:<10} {reader:<8} "
              f"{d['alarm'] or '-'}")


def cmd_list(args: argparse.Namespace) -> int:
    ans = _ask(args, {"cmd": "door.list"})
    if args.json:
        print(json.dumps({"site_mode": ans["site_mode"], "doors": ans["doors"]}, indent=2))
    else:
        _print_doors(ans["doors"], ans["site_mode"])
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    doc: dict[str, Any] = {"cmd": "door.unlock", "door": args.door}
    if args.seconds is not None:
        doc["seconds"] = args.seconds
    ans = _ask(args, doc)
    print(f"door {ans['door']}: unlocked for {ans['seconds']:g} s")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    ans = _ask(args, {"cmd": "door.lock", "door": args.door})
    print(f"door {ans['door']}: {ans['state']}")
    return 0


def cmd_mode(args: argparse.Namespace) -> int:
    if (args.door is None) == (not args.site):
        raise InputError("name a DOOR or give --site")
    doc: dict[str, Any] = {"cmd": "door.mode", "mode": MODES[args.mode]}
    doc.update({"site": True} if args.site else {"door": args.door})
    ans = _ask(args, doc)
    print(f"{ans['target']}: {ans['before']} -> {ans['mode']}")
    _print_doors(ans["doors"], "(see above)" if not args.site else ans["mode"])
    return 0


def register(sub: Any) -> None:
    d = sub.add_parser("door", help="door commands for technicians (through the running daemon)")
    ds = d.add_subparsers(dest="sub", required=True)

    lst = ds.add_parser("list", help="every door: state, mode, board, reader, alarm")
    add_config_options(lst)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    un = ds.add_parser("unlock", help="unlock a door for a while (a delivery, say)")
    add_config_options(un)
    un.add_argument("door")
    un.add_argument("--seconds", type=float, help="default: the door's unlock_seconds")
    un.set_defaults(func=cmd_unlock)
    lk = ds.add_parser("lock", help="end an unlock now (a free or emergency mode: use normal)")
    add_config_options(lk)
    lk.add_argument("door")
    lk.set_defaults(func=cmd_lock)
    for name, what in (("lockdown", "only the lockdown-override group may pass"),
                       ("normal", "clear a manual mode: credentials and schedules apply"),
                       ("emergency", "unlock (not a life-safety function: see operations.md)"),
                       ("free", "hold unlocked until set back to normal")):
        m = ds.add_parser(name, help=what)
        add_config_options(m)
        m.add_argument("door", nargs="?")
        m.add_argument("--site", action="store_true", help="every door of the site")
        m.set_defaults(func=cmd_mode, mode=name)
