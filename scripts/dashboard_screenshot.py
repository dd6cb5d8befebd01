"""Make docs/dashboard.png: the dashboard against a running demo gateway.

Starts what `portvakt demo` starts (pcscd with a virtual reader, the relay-board simulator,
cupsd + ippeveprinter, mosquitto + head office's collector, the daemon on config/demo.toml, on
free ports), runs the dashboard headless, plays a short scenario while it watches (badges granted
and refused, a phone at the lab door, a print job held, a lockdown, a door forced open), saves
Textual's SVG screenshot and converts it with rsvg-convert (Debian: librsvg2-bin).
Stops everything it started.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [--size 110x32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.config import load_config  # noqa: E402
from gateway.control import request  # noqa: E402
from gateway.demo import (  # noqa: E402
    JournalWatch,
    Narrator,
    _start_head_office,
    _start_print,
    write_demo_policy,
)
from gateway.pki_demo import make_demo_pki  # noqa: E402
from gateway.rig.board import RelayBoardRig  # noqa: E402
from gateway.rig.pcsc import PcscRig  # noqa: E402
from gateway.rig.proc import RigProcess, free_port, wait_until  # noqa: E402
from tui.app import Dashboard  # noqa: E402


def demo_config(work: Path) -> Path:
    """config/demo.toml on this run's free ports."""
    text = (REPO / "config" / "demo.toml").read_text()
    for fixed in ("port = 15020", "port = 15883"):
        text = text.replace(fixed, f"port = {free_port()}")
    for fixed in ("udp:127.0.0.1:15030", "udp:127.0.0.1:15031"):
        text = text.replace(fixed, f"udp:127.0.0.1:{free_port()}")
    path = work / "demo.toml"
    path.write_text(text)
    return path


async def until(predicate: Callable[[], bool], what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    p.add_argument("--size", default="110x32", help="terminal columns x rows")
    p.add_argument("--width", type=int, default=1400, help="PNG width in pixels")
    args = p.parse_args(argv)
    cols, rows = (int(n) for n in args.size.split("x"))
    if shutil.which("rsvg-convert") is None:
        print("rsvg-convert not found: apt-get install librsvg2-bin", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="portvakt-shot-"))
    stack: list[Callable[[], None]] = []
    try:
        svg = asyncio.run(_shoot(work, stack, (cols, rows)))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["rsvg-convert", "-w", str(args.width), "-o", str(args.out), str(svg)],
                       check=True)
        print(f"{args.out}: written")
        return 0
    finally:
        for stop in reversed(stack):
            with contextlib.suppress(Exception):
                stop()
        shutil.rmtree(work, ignore_errors=True)


async def _shoot(work: Path, stack: list[Callable[[], None]], size: tuple[int, int]) -> Path:
    state = work / "state"
    cfg_file = demo_config(work)
    cfg = load_config(cfg_file, state)
    pki = make_demo_pki(state / "pki")
    write_demo_policy(state / "policy", cfg.site)
    pcsc = PcscRig.start(work / "pcsc", [d.reader for d in cfg.doors if d.reader])
    stack.append(pcsc.stop)
    os.environ["PCSCLITE_CSOCK_NAME"] = str(pcsc.socket)
    board = RelayBoardRig.start(work / "board", port=cfg.boards[0].port, unit=cfg.boards[0].unit)
    stack.append(board.stop)
    for d in cfg.doors:
        if d.contact_input is not None:
            board.set_input(d.contact_input, True)
    quiet = Narrator(quiet=True)
    printing = _start_print(quiet, cfg, work, state, stack)
    _start_head_office(quiet, cfg, cfg_file, work, stack)
    report = work / "bob-report.pdf"
    report.write_bytes(b"%PDF-1.4\n% a held job\n" + bytes(4096))
    assert cfg.print is not None
    printing.submit("bob", report, hold=False, queue=cfg.print.findme_queue)
    daemon = RigProcess("portvakt", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                     str(cfg_file), "--state-dir", str(state)],
                        work / "daemon.log", env={**os.environ}, cwd=REPO)
    stack.append(daemon.stop)
    watch = JournalWatch(state / "portvakt.db", cfg.gateway_id, daemon)
    sock = state / "control.sock"

    def ready() -> bool:
        try:
            doors = request(sock, {"cmd": "door.list"}, 2)["doors"]
        except (ConnectionError, OSError):
            return False
        return all(d["reader_online"] and d["board_online"] and d["state"] == "locked"
                   for d in doors)

    wait_until(ready, 20, "the demo gateway's doors online", daemon)

    front = next(d for d in cfg.doors if d.name == "front")
    lab = next(d for d in cfg.doors if d.name == "lab")
    assert front.reader and front.contact_input is not None and lab.nfc
    contact, lab_nfc = front.contact_input, lab.nfc

    def badge(card: str) -> None:
        pcsc.insert(front.reader, pki.cards[card])
        watch.wait(lambda e: e.kind.startswith("access.") and e.door == "front", "a decision")
        pcsc.remove(front.reader, wait=True)

    def scenario() -> None:
        badge("alice")
        badge("bob")
        phone = RigProcess("phone", [sys.executable, "-m", "gateway.cli", "phone", "serve",
                                     "--udp", lab_nfc.rsplit(":", 1)[1], "--card",
                                     str(pki.cards["carol"]), "--taps", "1"], work / "phone.log")
        try:
            watch.wait(lambda e: e.kind.startswith("access.") and e.door == "lab", "carol")
        finally:
            phone.stop()
        badge("mallory")
        badge("dave")
        request(sock, {"cmd": "door.mode", "door": "lab", "mode": "lockdown"}, 10)
        board.set_input(contact, False)  # the front door is pulled open
        watch.wait(lambda e: e.kind == "alarm.forced-open", "the forced-open alarm")

    app = Dashboard(sock)
    async with app.run_test(size=size) as pilot:
        await until(lambda: app.disconnected is None and app.stream_connected, "the dashboard")
        await asyncio.to_thread(scenario)
        await until(lambda: (app.door("front") or {}).get("alarm") is not None
                    and (app.door("lab") or {}).get("mode") == "lockdown"
                    and any(e.get("kind") == "alarm.forced-open" for e in app.journal_events)
                    and "held 1" in str(app.query_one("#printers").render())
                    and "connected" in str(app.query_one("#sync").render()),
                    "the alarm and the lockdown on screen")
        await pilot.pause(0.3)  # let the last repaint land before the picture is taken
        svg = work / "dashboard.svg"
        # Rich's SVG starts many text runs with no-break spaces; without xml:space="preserve"
        # librsvg drops them and shifts those runs one column left.
        svg.write_text(app.export_screenshot().replace(
            '<svg class="rich-terminal"', '<svg xml:space="preserve" class="rich-terminal"', 1))
        return svg


if __name__ == "__main__":
    sys.exit(main())
