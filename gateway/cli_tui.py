"""`portvakt tui`: the technician's dashboard (Textual) on the running daemon's control socket.

The dashboard starts whether or not the daemon is up, and reconnects by itself when it comes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_CONFIG, add_config_options, load_config
from gateway.errors import InputError


def control_socket(args: argparse.Namespace) -> Path:
    """--socket; else <state dir>/control.sock, the state dir from --state-dir or from the
    gateway configuration. Raises ConfigError for a configuration that cannot be read."""
    if args.socket is not None:
        return Path(args.socket)
    if args.state_dir is not None and args.config is None:
        return Path(args.state_dir) / "control.sock"
    return load_config(args.config or DEFAULT_CONFIG, args.state_dir).state_dir / "control.sock"


def cmd_tui(args: argparse.Namespace) -> int:
    sock = control_socket(args)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError("portvakt tui needs a terminal (for scripts: portvakt door list --json)")
    from tui.app import Dashboard

    Dashboard(sock).run()
    return 0


def register(sub: Any) -> None:
    t = sub.add_parser("tui", help="the technician's dashboard: doors, events, sync, printers")
    add_config_options(t)
    t.add_argument("--socket", type=Path, help="the daemon's control socket "
                                               "(default <state_dir>/control.sock)")
    t.set_defaults(func=cmd_tui)
