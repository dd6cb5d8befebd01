"""The dashboard (`portvakt tui`) driven with Textual's Pilot against a real daemon: a real pcscd
reader and a simulated Modbus relay board, checked on the board's own write log and in the
daemon's journal. The pure rendering (tui/view.py) is checked on its own first."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from gateway.cli import build_parser, main
from gateway.cli_tui import control_socket
from gateway.rig.proc import wait_until
from tests.fixtures_daemon import CONTACT, STRIKE, UNLOCK_SECONDS, Daemon, start_daemon
from tui.app import Dashboard
from tui.confirm import ConfirmScreen
from tui.view import EventFilter, event_line, printers_panel, sync_panel, top_bar

SIZE = (80, 24)


# --- helpers ----------------------------------------------------------------------------------
async def until(pilot: Pilot[None], predicate: Callable[[], bool], what: str,
                timeout: float = 15.0) -> None:
    """Let the app run until `predicate` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


def door_row(app: Dashboard, name: str = "front") -> dict[str, str]:
    table = app.query_one("#doors", DataTable)
    if name not in {key.value for key in table.rows}:
        return {}
    cells = table.get_row(name)
    keys = [str(c.key.value) for c in table.ordered_columns]
    return {k: str(c) for k, c in zip(keys, cells, strict=True)}


def log_lines(app: Dashboard) -> list[str]:
    return [strip.text for strip in app.query_one("#events", RichLog).lines]


def top_text(app: Dashboard) -> str:
    return str(app.query_one("#topbar", Static).render())


def strike_on(d: Daemon) -> list[dict[str, Any]]:
    return [w for w in d.board.writes() if w["coil"] == STRIKE and w["value"]]


def relock_after(d: Daemon, on: dict[str, Any]) -> dict[str, Any] | None:
    return next((w for w in d.board.writes()
                 if w["coil"] == STRIKE and not w["value"] and w["t"] > on["t"]), None)


def journal(d: Daemon, kind: str) -> list[dict[str, Any]]:
    return d.events(kind)


async def connected(pilot: Pilot[None], app: Dashboard, timeout: float = 15.0) -> None:
    await until(pilot, lambda: app.disconnected is None and door_row(app).get("state") == "locked"
                and app.stream_connected, "the dashboard to show door front locked", timeout)


async def confirm_dialog(pilot: Pilot[None], app: Dashboard, key: str) -> ConfirmScreen:
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), f"a confirmation for {key}")
    assert isinstance(app.screen, ConfirmScreen)
    return app.screen


def sock(d: Daemon) -> Path:
    return d.state / "control.sock"


# --- rendering, no daemon ---------------------------------------------------------------------
def test_panels_show_a_dash_for_what_the_daemon_does_not_report():
    status = {"gateway": "gw", "site": "s", "site_mode": "normal", "doors": [],
              "policy": {"version": None, "rejected": None}}
    sync = str(sync_panel(status))
    assert "Head office not configured" in sync
    assert "Policy none loaded" in sync and "CRLs —" in sync
    assert str(printers_panel(status)) == "—"
    assert str(sync_panel(None)) == "—"


def test_panels_render_sync_crls_clock_and_printers_when_present():
    status = {
        "sync": {"connected": False, "last_error": "connection refused", "backlog": 12,
                 "alarms": ["sync-backlog"], "last_seq": 40},
        "policy": {"version": 7, "age_s": 7200, "stale": False, "rejected": "bad signature",
                   "not_after": datetime.fromtimestamp(time.time() + 3 * 86400 + 60, UTC)
                   .isoformat()},
        "crls": [{"issuer": "CN=Demo Issuing CA,O=Demo", "age_s": 10800,
                  "until_next_update_s": -600, "state": "in-grace"}],
        "clock": {"synchronised": False, "behind_trusted_s": 0},
        "printers": [{"name": "p1", "state": "idle", "held_jobs": 3},
                     {"name": "p2", "state": "idle", "held_jobs": 0, "reader_online": False}],
        "boards": [{"name": "b1", "online": False, "error": "connection refused"}],
    }
    sync = str(sync_panel(status))
    assert "Head office DISCONNECTED · 12 to send\n  connection refused\n  alarms: sync-backlog" \
        in sync
    assert "Policy v7 · issued 2h ago · valid 3d more" in sync and "last rejected: bad signature" in sync
    assert "CRL Demo Issuing CA 3h old, next update 10m overdue · in-grace" in sync
    assert "Clock NOT synchronised" in sync
    printers = str(printers_panel(status))
    assert "p1 idle · held 3" in printers and "Board b1 OFFLINE connection refused" in printers
    assert "p2 idle · held 0 · reader OFF" in printers


def test_event_lines_name_people_by_pseudonym_and_never_quote_a_certificate():
    denied = {"seq": 9, "at": 0.0, "kind": "access.denied", "door": "front", "person": None,
              "reason": "expired", "detail": "CN=Dave Svensson,O=Demo expired", "transport": "pcsc"}
    line = str(event_line(denied))
    assert "#9    access.denied" in line and "expired" in line and "Dave" not in line
    mode = {"seq": 10, "at": 0.0, "kind": "control.mode", "door": None, "user": "tech",
            "mode": "lockdown", "scope": "site"}
    assert "user=tech mode=lockdown scope=site" in str(event_line(mode))


def test_event_filter_by_door_person_type_and_word():
    ev = {"kind": "access.granted", "door": "front", "person": "p-alice"}
    assert EventFilter.parse("").matches(ev) and not EventFilter.parse("")
    assert EventFilter.parse("door:front person:p-alice type:access").matches(ev)
    assert EventFilter.parse("DOOR:FRONT").matches(ev)
    assert not EventFilter.parse("door:lab").matches(ev)
    assert not EventFilter.parse("type:alarm").matches(ev)
    assert EventFilter.parse("alice").matches(ev) and not EventFilter.parse("bob").matches(ev)
    printed = {"kind": "print.released", "door": None, "printer": "floor1", "person": "p-carol",
               "owner": "carol", "job": 7, "size_kb": 17}
    assert EventFilter.parse("door:floor1 type:print").matches(printed)
    assert EventFilter.parse("floor1").matches(printed)
    line = str(event_line(printed))
    assert "print.released     floor1 p-carol owner=carol job=7 size_kb=17" in line


def test_top_bar_says_disconnected_and_shows_unacknowledged_alarms():
    assert "disconnected — retrying (no daemon on /x)" in str(top_bar(None, "no daemon on /x"))
    status = {"gateway": "gw", "site": "s", "site_mode": "lockdown",
              "doors": [{"alarm": "forced-open-alarm", "alarm_acknowledged": False}]}
    bar = top_bar(status, None)
    assert isinstance(bar, Text)
    assert "connected gw · site s · site mode lockdown · 1 alarm" in str(bar)


async def test_without_a_daemon_it_keeps_retrying_and_acts_on_nothing(tmp_path: Path):
    app = Dashboard(tmp_path / "control.sock")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "disconnected — retrying" in top_text(app), "disconnected")
        assert "no daemon on" in top_text(app)
        await pilot.press("u")  # no door: a warning, no dialog
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)


async def test_the_stream_starts_200_events_back_and_resumes_after_an_overflow(tmp_path: Path):
    # A stand-in daemon on the same protocol: its status says where the journal is, and it
    # drops the follower at once (the real one does so 10,000 events behind).
    follows: list[dict[str, Any]] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg["cmd"] == "status":
                writer.write(json.dumps({"id": msg["id"], "ok": True, "gateway": "gw",
                                         "site": "s", "site_mode": "normal", "doors": [],
                                         "journal": {"last_seq": 250}}).encode() + b"\n")
                await writer.drain()
                continue
            follows.append(msg)
            items: list[dict[str, Any]] = (
                [{"event": {"seq": 51, "kind": "door.opened"}},
                 {"event": {"seq": 52, "kind": "door.closed"}}, {"overflow": True}]
                if len(follows) == 1 else [{"event": {"seq": 53, "kind": "door.locked"}}])
            for item in items:
                writer.write(json.dumps({"id": msg["id"], "ok": True, **item}).encode() + b"\n")
            await writer.drain()
            if len(follows) == 1:
                break  # the daemon ends an overflowed stream
        writer.close()

    path = tmp_path / "control.sock"
    server = await asyncio.start_unix_server(client, path=str(path))
    try:
        app = Dashboard(path)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.last_seq == 53, "the event after the overflow")
            assert [e["seq"] for e in app.journal_events] == [51, 52, 53]
            assert [f.get("after") for f in follows[:2]] == [50, 52]
    finally:
        server.close()
        await server.wait_closed()


# --- against a real daemon --------------------------------------------------------------------
async def test_unlock_confirmed_in_the_dashboard_pulses_the_strike_and_is_journaled(daemon: Daemon):
    app = Dashboard(sock(daemon))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        before = len(strike_on(daemon))
        dialog = await confirm_dialog(pilot, app, "u")
        assert dialog.question == "Unlock door front?"
        await pilot.press("y")
        await until(pilot, lambda: len(strike_on(daemon)) > before, "the strike energised")
        on = strike_on(daemon)[before]
        await until(pilot, lambda: relock_after(daemon, on) is not None, "the strike locked again")
        off = relock_after(daemon, on)
        assert off is not None
        assert abs((off["t"] - on["t"]) - UNLOCK_SECONDS) < 0.1
        await until(pilot, lambda: bool(journal(daemon, "control.door-unlock")), "the audit")
        (audit,) = journal(daemon, "control.door-unlock")
        assert audit["door"] == "front" and audit["user"] == getpass.getuser()
        await until(pilot, lambda: any("control.door-unlock" in x and f"user={getpass.getuser()}"
                                       in x for x in log_lines(app)), "the audit in the log")
        await until(pilot, lambda: any("door.locked" in x for x in log_lines(app)),
                    "door.locked in the log")
        assert [a["ok"] for a in app.answers] == [True]


async def test_cancelled_confirmations_send_nothing_to_the_daemon(daemon: Daemon):
    app = Dashboard(sock(daemon))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        before = len(strike_on(daemon))
        await confirm_dialog(pilot, app, "u")
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dialog closed")
        await confirm_dialog(pilot, app, "D")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dialog closed")
        dialog = await confirm_dialog(pilot, app, "e")
        assert "not a life-safety function" in dialog.detail
        await pilot.press("enter")  # Cancel has the focus: a stray Enter cancels
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dialog closed")
        # A confirmed lock after them, over the same connection, is the barrier: once it is
        # journaled, anything sent before it would have been too.
        await confirm_dialog(pilot, app, "l")
        await pilot.press("y")
        await until(pilot, lambda: bool(journal(daemon, "control.door-lock")), "the lock")
        assert [e["kind"] for e in daemon.events() if e["kind"].startswith("control.")] \
            == ["control.door-lock"]
        assert len(strike_on(daemon)) == before
        assert door_row(app)["mode"] == "normal" and "site mode normal" in top_text(app)
        assert [a.get("state") for a in app.answers] == ["locked"]


async def test_a_forced_door_shows_as_an_alarm_and_is_acknowledged(daemon: Daemon):
    app = Dashboard(sock(daemon))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        daemon.board.set_input(CONTACT, False)  # pulled open with the strike locked
        await until(pilot, lambda: door_row(app)["state"] == "forced-open-alarm"
                    and door_row(app)["alarm"] == "ALARM", "the alarm in the doors table")
        assert "1 alarm" in top_text(app)
        await until(pilot, lambda: any("alarm.forced-open" in x for x in log_lines(app)),
                    "the alarm in the events log")
        dialog = await confirm_dialog(pilot, app, "a")
        assert dialog.question == "Acknowledge the forced-open-alarm at door front?"
        await pilot.press("y")
        await until(pilot, lambda: door_row(app)["alarm"] == "ack'd", "acknowledged in the table")
        assert "alarm" not in top_text(app).split("site mode")[1]
        (ack,) = journal(daemon, "alarm.acknowledged")
        assert ack["user"] == getpass.getuser() and ack["alarm"] == "forced-open-alarm"

        # The filter narrows the log to alarms, then to a door that has none.
        await pilot.press("slash", *"type:alarm")
        assert app.query_one("#filter", Input).value == "type:alarm"
        await until(pilot, lambda: bool(log_lines(app)) and all("alarm." in x for x in log_lines(app)),
                    "only alarms in the log")
        assert any("alarm.acknowledged" in x for x in log_lines(app))
        app.query_one("#filter", Input).value = "door:lab"
        await until(pilot, lambda: log_lines(app) == [], "nothing for door lab")
        await pilot.press("enter")  # back to the doors table
        assert app.focused is app.query_one("#doors", DataTable)

        daemon.board.set_input(CONTACT, True)
        await until(pilot, lambda: door_row(app)["state"] == "locked"
                    and door_row(app)["alarm"] == "—", "the alarm cleared")


async def test_site_lockdown_normal_and_policy_reload_from_the_dashboard(daemon: Daemon):
    app = Dashboard(sock(daemon))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await confirm_dialog(pilot, app, "D")
        await pilot.press("y")
        await until(pilot, lambda: "site mode lockdown" in top_text(app)
                    and door_row(app)["mode"] == "lockdown", "site lockdown shown")
        await confirm_dialog(pilot, app, "N")
        await pilot.press("y")
        await until(pilot, lambda: "site mode normal" in top_text(app)
                    and door_row(app)["mode"] == "normal", "back to normal")
        modes = journal(daemon, "control.mode")
        assert [(m["mode"], m["scope"], m["user"]) for m in modes] == [
            ("lockdown", "site", getpass.getuser()), ("normal", "site", getpass.getuser())]
        await confirm_dialog(pilot, app, "r")
        await pilot.press("y")
        await until(pilot, lambda: bool(journal(daemon, "control.policy-reload")), "the reload")
        await until(pilot, lambda: len(app.answers) == 3, "three answers")
        assert all(a["ok"] for a in app.answers)
        assert "Policy v1" in str(app.query_one("#sync", Static).render())


async def test_the_dashboard_survives_a_daemon_restart_without_missing_or_repeating_events(
        daemon: Daemon, tmp_path: Path):
    app = Dashboard(sock(daemon))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        daemon.ask({"cmd": "door.unlock", "door": "front"})  # an event, so the stream has a place
        await until(pilot, lambda: any(e["kind"] == "control.door-unlock"
                                       for e in app.journal_events), "the first unlock")
        first = app.journal_events[0]["seq"]

        daemon.proc.stop()
        await until(pilot, lambda: "disconnected — retrying" in top_text(app), "disconnected")
        assert app.query_one("#doors", DataTable).has_class("-stale")
        restarted = start_daemon(tmp_path, daemon.config, daemon.state, "portvakt-restarted")
        try:
            await until(pilot, lambda: app.disconnected is None and app.stream_connected,
                        "reconnected", timeout=30)
            await until(pilot, lambda: door_row(app).get("state") == "locked", "door shown")
            daemon.ask({"cmd": "door.unlock", "door": "front"})
            await until(pilot, lambda: sum(e["kind"] == "control.door-unlock"
                                           for e in app.journal_events) == 2, "the second unlock")
            last = app.last_seq
            assert last is not None
            seen = [e["seq"] for e in app.journal_events]
            on_disk = [e["seq"] for e in daemon.events() if first <= e["seq"] <= last]
            assert seen[:len(on_disk)] == on_disk  # nothing missed, nothing twice, in order
            kinds = [e["kind"] for e in app.journal_events]
            # The old daemon's last words came after the stream had closed: from the backlog.
            stopped = kinds.index("gateway.stopped")
            assert "gateway.started" in kinds[stopped + 1:]
            assert "disconnected" not in top_text(app)
            assert not app.query_one("#doors", DataTable).has_class("-stale")
        finally:
            restarted.stop()


async def test_the_layout_fits_an_80x24_terminal(daemon: Daemon):
    app = Dashboard(sock(daemon))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        daemon.ask({"cmd": "door.unlock", "door": "front"})
        await until(pilot, lambda: len(log_lines(app)) >= 2, "events in the log")
        screen = app.screen.region
        assert (screen.width, screen.height) == SIZE
        for selector in ("#topbar", "#doors", "#sync", "#printers", "#filter", "#events", Footer):
            widget = app.query_one(selector)
            region = widget.region
            assert region.height > 0 and region.width > 0, selector
            assert screen.contains_region(region), (selector, region)
        table = app.query_one("#doors", DataTable)
        assert table.virtual_size.width <= table.scrollable_content_region.width  # no h-scroll
        assert app.query_one("#events", RichLog).scrollable_content_region.height >= 5
        app.export_screenshot()  # renders without error
        await confirm_dialog(pilot, app, "e")
        assert screen.contains_region(app.screen.query_one("#yes").region)
        assert screen.contains_region(app.screen.query_one("#no").region)
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dialog closed")


# --- the command ------------------------------------------------------------------------------
def test_portvakt_tui_finds_the_socket_and_refuses_to_run_without_a_terminal(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["tui", "--socket", str(tmp_path / "s.sock")])
    assert control_socket(args) == tmp_path / "s.sock"
    args = parser.parse_args(["tui", "--state-dir", str(tmp_path)])
    assert control_socket(args) == tmp_path / "control.sock"
    assert main(["tui", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert main(["tui", "--state-dir", str(tmp_path)]) == 2  # pytest's stdin is no terminal
    assert "needs a terminal" in capsys.readouterr().err


def test_portvakt_tui_in_a_real_terminal_shows_the_doors_asks_before_acting_and_quits(
        daemon: Daemon, tmp_path):
    server = f"portvakt-tui-{os.getpid()}"
    tmux = ["tmux", "-L", server, "-f", "/dev/null"]
    cmd = shlex.join([sys.executable, "-m", "gateway.cli", "tui", "--config", str(daemon.config),
                      "--state-dir", str(daemon.state)])
    subprocess.run([*tmux, "new-session", "-d", "-x", "100", "-y", "30", "-c",
                    str(Path(__file__).resolve().parent.parent), cmd], check=True, timeout=10)
    try:
        def screen() -> str:
            r = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                               timeout=10)
            return r.stdout

        wait_until(lambda: "connected" in screen() and "front" in screen()
                   and "locked" in screen(), 20, "the dashboard in tmux")
        assert "disconnected" not in screen()
        subprocess.run([*tmux, "send-keys", "D"], check=True, timeout=10)  # shift+d: the site
        wait_until(lambda: "Lock down the whole site test?" in screen(), 10, "the dialog")
        subprocess.run([*tmux, "send-keys", "n"], check=True, timeout=10)
        wait_until(lambda: "Lock down the whole site" not in screen(), 10, "the dialog closed")
        subprocess.run([*tmux, "send-keys", "q"], check=True, timeout=10)
        wait_until(lambda: subprocess.run([*tmux, "has-session"], capture_output=True,
                                          timeout=10).returncode != 0, 10, "the dashboard to quit")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
