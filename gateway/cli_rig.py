"""`portvakt rig readers NAME...`: virtual PC/SC readers for a bench site without hardware.

A private pcscd (in its own mount namespace, see gateway/rig/pcsc.py) with one vpcd reader per
NAME, in the foreground until Ctrl-C or SIGTERM; then pcscd is stopped and nothing is left
running. `portvakt card serve --reader-port PORT` inserts a card into a reader's slot.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from gateway.rig.pcsc import VPCD_DRIVER, PcscRig

_READER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,47}")
_MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path


def _reader_name(text: str) -> str:
    if not _READER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a reader name of 1-48 letters, digits, spaces, '.', '_' or '-' "
            f"(starting with a letter or digit), got {text!r}")
    return text


def _base_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1024 <= port <= 65534:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1024..65534, got {text!r}")
    return port


def cmd_rig_readers(args: argparse.Namespace) -> int:
    names: list[str] = args.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        return _usage(f"reader {dupes[0]!r} named twice: give each reader its own name")
    if args.port is not None and args.port + 2 * len(names) - 1 > 65535:
        return _usage(f"--port: {args.port} leaves no room for {len(names)} readers "
                      "(two ports each) below 65536")
    if os.geteuid() != 0:
        print("portvakt rig readers: needs root (pcscd runs in a private mount namespace, "
              "unshare -m)", file=sys.stderr)
        return 1
    if not VPCD_DRIVER.exists():
        print(f"portvakt rig readers: {VPCD_DRIVER} missing: install the Debian packages "
              "pcscd and vsmartcard-vpcd", file=sys.stderr)
        return 1
    temporary = args.dir is None
    workdir = Path(tempfile.mkdtemp(prefix="portvakt-readers-")) if temporary else args.dir
    workdir = workdir.resolve()
    if len(os.fsencode(workdir / "run" / "pcscd.comm")) > _MAX_SOCKET_PATH:
        return _usage(f"--dir: {workdir} is too long a path for pcscd's socket (Unix sockets "
                      f"take {_MAX_SOCKET_PATH} bytes)")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    # Set before pcscd starts, so a Ctrl-C during start-up still stops what was started.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        rig = PcscRig.start(workdir, names, base_port=args.port)
    except (RuntimeError, TimeoutError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"portvakt rig readers: cannot start pcscd: {first} (log: {workdir / 'pcscd.log'})",
              file=sys.stderr)
        return 1
    try:
        _tell(rig, workdir)
        while not stop.is_set() and rig.pcscd.alive():
            stop.wait(0.5)
        if not stop.is_set():
            print(f"portvakt rig readers: pcscd exited on its own (code "
                  f"{rig.pcscd.popen.returncode}); log: {rig.pcscd.log}", file=sys.stderr)
            return 1
    finally:
        rig.stop()
        if temporary:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print("readers stopped: pcscd and its readers are gone", flush=True)
    return 0


def _tell(rig: PcscRig, workdir: Path) -> None:
    width = max(len(n) for n in rig.readers)
    lines = [f"pcscd running (pid {rig.pcscd.pid}), its files in {workdir}",
             f'socket: {rig.socket}   ([readers] pcsc_socket = "{rig.socket}"; other PC/SC '
             f"clients: PCSCLITE_CSOCK_NAME={rig.socket})"]
    for name, port in rig.readers.items():
        lines.append(f"reader {name:<{width}}  vpcd slot 0 on port {port}, slot 1 on port "
                     f"{port + 1}   (portvakt card serve --reader-port {port} --card FILE)")
    lines.append("readers ready; Ctrl-C or SIGTERM stops pcscd and its readers")
    print("\n".join(lines), flush=True)


def _usage(message: str) -> int:
    print(f"portvakt rig readers: error: {message}", file=sys.stderr)
    return 2


def register(sub: Any) -> None:
    from gateway.cli import OneLineErrors

    r = sub.add_parser("rig", help="a bench without hardware: virtual readers")
    rs = r.add_subparsers(dest="sub", required=True, parser_class=OneLineErrors)
    rd = rs.add_parser(
        "readers", help="a private pcscd with one virtual (vpcd) reader per NAME",
        description="Start a private pcscd (its own mount namespace and socket; the system's "
                    "pcscd, if any, is untouched) with one vpcd virtual reader per NAME, and "
                    "keep it running in the foreground. It prints the socket to put in "
                    "[readers] pcsc_socket and each reader's vpcd ports for `portvakt card "
                    "serve`; Ctrl-C or SIGTERM stops pcscd and leaves nothing running. Needs "
                    "root. vpcd listens on every network interface: anyone who can reach those "
                    "ports can insert a virtual card, so keep a bench on a trusted network.")
    rd.add_argument("names", nargs="+", metavar="NAME", type=_reader_name,
                    help="a reader's name, as a door's `reader` names it in the configuration")
    rd.add_argument("--dir", type=Path,
                    help="folder for pcscd's configuration, socket (DIR/run/pcscd.comm) and log "
                         "(created; kept afterwards). Default: a temporary folder, removed at "
                         "the end")
    rd.add_argument("--port", type=_base_port, metavar="N",
                    help="vpcd ports: the first reader's slots on N and N+1, the second's on "
                         "N+2 and N+3, ... (default: free ports)")
    rd.set_defaults(func=cmd_rig_readers)
