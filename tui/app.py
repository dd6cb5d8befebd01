"""`portvakt tui`: the technician's dashboard over the daemon's control socket.

Two connections: requests (a `status` every second, sooner when an event arrives, and the
technician's commands) and the `events.follow` stream. Either one that drops is reopened with
backoff while the top bar says "disconnected — retrying"; the stream resumes after the last
sequence number it saw, so no event is missed or shown twice across a daemon restart. The
first connection starts HISTORY events back when the status reports the journal's last sequence
number (`journal.last_seq` or `sync.last_seq`), else live from then on.
Every action asks for confirmation first; the daemon journals it with the technician's OS user.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from tui.client import ControlClient, DaemonUnavailable, EventStream
from tui.confirm import ConfirmScreen, PrintReleaseScreen
from tui.view import (
    DOOR_COLUMNS,
    EventFilter,
    door_cells,
    event_line,
    journal_top,
    printers_panel,
    sync_panel,
    top_bar,
)

BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0  # seconds between reconnection attempts
MIN_POLL_GAP = 0.05  # seconds: a burst of events costs one status request, not one each
HISTORY = 200  # events shown from before the start, when the status says where the journal is


class Dashboard(App[None]):
    """The dashboard for the daemon listening on `socket`. `poll_seconds`: status interval;
    `keep_events`: how many events are kept for the log and its filter."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "Portvakt"
    ENABLE_COMMAND_PALETTE = False  # every action is a key with a confirmation; nothing hidden
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "unlock", "Unlock"),
        Binding("l", "lock", "Lock"),
        Binding("d", "lockdown", "Lockdown"),
        Binding("D", "lockdown_site", "Site lockdown", show=False),
        Binding("n", "normal", "Normal"),
        Binding("N", "normal_site", "Site normal", show=False),
        Binding("e", "emergency", "Emergency"),
        Binding("a", "ack", "Ack"),
        Binding("r", "reload", "Reload"),
        Binding("p", "print_release", "Print"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "focus_doors", "Doors", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, socket: Path, *, poll_seconds: float = 1.0,
                 keep_events: int = 2000) -> None:
        super().__init__()
        self.socket = socket
        self.poll_seconds = poll_seconds
        self.client = ControlClient(socket)
        self.status: dict[str, Any] | None = None
        self.disconnected: str | None = "connecting"  # None while the daemon answers
        self.stream_connected = False
        self.journal_events: deque[dict[str, Any]] = deque(maxlen=keep_events)
        self.last_seq: int | None = None
        self.answers: list[dict[str, Any]] = []  # the daemon's answers to our commands
        self.event_filter = EventFilter()
        self._keep_events = keep_events
        self._doors: dict[str, dict[str, Any]] = {}
        self._door_names: list[str] = []
        self._poke = asyncio.Event()
        self._first_status = asyncio.Event()

    # --- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        yield DataTable(id="doors", cursor_type="row", zebra_stripes=False)
        with Horizontal(id="info"):
            yield Static(id="sync")
            yield Static(id="printers")
        with Vertical(id="events-panel"):
            yield Input(placeholder="filter: door:front person:p-alice type:alarm …",
                        id="filter", compact=True)
            yield RichLog(id="events", max_lines=self._keep_events, wrap=False, markup=False,
                          auto_scroll=True, min_width=40)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#doors", DataTable).border_title = "Doors"
        self.query_one("#sync", Static).border_title = "Sync"
        self.query_one("#printers", Static).border_title = "Printers"
        self.query_one("#events-panel", Vertical).border_title = "Events"
        self._render_status()
        self.query_one("#doors", DataTable).focus()
        self._poll_status()
        self._follow_events()

    # --- the daemon's status ----------------------------------------------------------------
    @work(group="status", exclusive=True)
    async def _poll_status(self) -> None:
        try:
            await self._status_loop()
        except NoMatches:
            pass  # the app is closing: its widgets are gone
        finally:
            await self.client.close()

    async def _status_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while self.is_running:
            try:
                answer = await self.client.ask("status")
            except DaemonUnavailable as e:
                self.disconnected = str(e)
                self._render_status()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            self.disconnected = None
            if answer.get("ok"):
                self.status = answer
                self._first_status.set()
            self._render_status()
            await self._wait_for_poll()

    async def _wait_for_poll(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poke.wait(), self.poll_seconds)
            await asyncio.sleep(MIN_POLL_GAP)
        self._poke.clear()

    def _render_status(self) -> None:
        status = self.status
        self.query_one("#topbar", Static).update(top_bar(status, self.disconnected))
        table = self.query_one("#doors", DataTable)
        table.set_class(self.disconnected is not None, "-stale")
        table.border_title = ("Doors (last known)" if self.disconnected is not None
                              and status is not None else "Doors")
        if status is not None:
            doors = [d for d in status.get("doors") or () if isinstance(d, dict)]
            self._show_doors(doors)
        self.query_one("#sync", Static).update(sync_panel(status))
        self.query_one("#printers", Static).update(printers_panel(status))

    def _show_doors(self, doors: list[dict[str, Any]]) -> None:
        table = self.query_one("#doors", DataTable)
        names = [str(d.get("name")) for d in doors]
        self._doors = dict(zip(names, doors, strict=True))
        if names != self._door_names:
            selected = self.selected_door()
            table.clear(columns=True)
            door_width = max(6, min(16, max((len(n) for n in names), default=6)))
            for key, label, width in DOOR_COLUMNS:
                table.add_column(label, key=key, width=door_width if key == "door" else width)
            for name, door in zip(names, doors, strict=True):
                table.add_row(*door_cells(door), key=name)
            self._door_names = names
            if selected in names:
                table.move_cursor(row=names.index(selected))
            return
        for name, door in zip(names, doors, strict=True):
            for (key, _, _), cell in zip(DOOR_COLUMNS, door_cells(door), strict=True):
                if not _same(table.get_cell(name, key), cell):
                    table.update_cell(name, key, cell)

    def door(self, name: str) -> dict[str, Any] | None:
        """The last status the daemon gave for door `name` (see `door.list`), if any."""
        return self._doors.get(name)

    def selected_door(self) -> str | None:
        """The door under the table's cursor, if any."""
        table = self.query_one("#doors", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0))
        return str(row_key.value)

    # --- live events ------------------------------------------------------------------------
    @work(group="events", exclusive=True)
    async def _follow_events(self) -> None:
        with contextlib.suppress(NoMatches):  # raised only when the app is closing
            await self._events_loop()

    async def _events_loop(self) -> None:
        backoff = BACKOFF_FIRST
        log = self.query_one("#events", RichLog)
        after = await self._history_start()
        while self.is_running:
            overflow = False
            if self.last_seq is not None:
                after = self.last_seq
            try:
                async with await EventStream.open(self.socket, after) as items:
                    self.stream_connected = True
                    self.query_one("#events-panel", Vertical).border_title = "Events"
                    backoff = BACKOFF_FIRST
                    async for item in items:
                        if isinstance(item.get("event"), dict):
                            self._add_event(item["event"])
                        elif item.get("overflow"):
                            overflow = True  # fell behind: follow again from the last seen
                            break
                if not overflow:
                    self._stream_lost(log, "the daemon closed the event stream")
            except DaemonUnavailable as e:
                self._stream_lost(log, str(e))
            if not overflow:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _history_start(self) -> int | None:
        """Where the first stream starts: the last HISTORY events when the daemon's status
        tells the journal's last sequence number, else live from now (None)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_status.wait(), 2.0)
        top = journal_top(self.status)
        return None if top is None else max(0, top - HISTORY)

    def _stream_lost(self, log: RichLog, why: str) -> None:
        self.query_one("#events-panel", Vertical).border_title = "Events (stream lost — retrying)"
        if self.stream_connected:
            self.stream_connected = False
            after = f" after #{self.last_seq}" if self.last_seq is not None else ""
            log.write(f"— event stream lost ({why}); it resumes{after} when the daemon is back —")

    def _add_event(self, ev: dict[str, Any]) -> None:
        seq = ev.get("seq")
        if isinstance(seq, int):
            if self.last_seq is not None and seq <= self.last_seq:
                return  # already shown (the daemon resumes after last_seq; this guards it)
            self.last_seq = seq
        self.journal_events.append(ev)
        if self.event_filter.matches(ev):
            self._write_event(self.query_one("#events", RichLog), ev)
        self._poke.set()  # doors, alarms, modes and policy change with events: refresh now

    @staticmethod
    def _write_event(log: RichLog, ev: dict[str, Any]) -> None:
        # Cut at the log's width (with an ellipsis), not at the console's.
        log.write(event_line(ev), width=log.scrollable_content_region.width or None)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.event_filter = EventFilter.parse(event.value)
        log = self.query_one("#events", RichLog)
        log.clear()
        for ev in self.journal_events:
            if self.event_filter.matches(ev):
                self._write_event(log, ev)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.action_focus_doors()

    # --- actions ----------------------------------------------------------------------------
    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_doors(self) -> None:
        self.query_one("#doors", DataTable).focus()

    def _door_or_warn(self) -> str | None:
        name = self.selected_door()
        if name is None:
            self.notify("no door to act on (is the daemon connected?)", severity="warning")
        return name

    def _confirm(self, question: str, detail: str, request: dict[str, Any],
                 done: Callable[[dict[str, Any]], str], *, confirm: str = "Confirm",
                 danger: bool = False) -> None:
        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self._send(request, done)

        self.push_screen(ConfirmScreen(question, detail, confirm, danger), answered)

    @work(group="commands")
    async def _send(self, request: dict[str, Any], done: Callable[[dict[str, Any]], str]) -> None:
        fields = {k: v for k, v in request.items() if k != "cmd"}
        try:
            answer = await self.client.ask(request["cmd"], **fields)
        except DaemonUnavailable as e:
            self.notify(f"not carried out: {e}", title=request["cmd"], severity="error")
            return
        self.answers.append(answer)
        if answer.get("ok"):
            self.notify(done(answer), title=request["cmd"])
        else:
            self.notify(str(answer.get("error")), title=f"{request['cmd']} refused",
                        severity="error")
        self._poke.set()

    def action_unlock(self) -> None:
        if (door := self._door_or_warn()) is None:
            return
        self._confirm(f"Unlock door {door}?",
                      "The strike opens for the door's access time, then locks again.",
                      {"cmd": "door.unlock", "door": door},
                      lambda a: f"door {a['door']} unlocked for {a['seconds']:g} s",
                      confirm="Unlock")

    def action_lock(self) -> None:
        if (door := self._door_or_warn()) is None:
            return
        self._confirm(f"Lock door {door} now?",
                      "Ends an unlock in progress. A door mode (lockdown, emergency) is "
                      "changed with n: normal.",
                      {"cmd": "door.lock", "door": door},
                      lambda a: f"door {a['door']}: {a['state']}", confirm="Lock")

    def _mode(self, mode: str, door: str | None, question: str, detail: str, *,
              danger: bool = False, confirm: str = "Confirm") -> None:
        target: dict[str, Any] = {"door": door} if door is not None else {"site": True}
        self._confirm(question, detail, {"cmd": "door.mode", "mode": mode, **target},
                      lambda a: f"{a['target']}: {a['before']} -> {a['mode']}",
                      danger=danger, confirm=confirm)

    def action_lockdown(self) -> None:
        if (door := self._door_or_warn()) is not None:
            self._mode("lockdown", door, f"Lock down door {door}?",
                       "Held locked: only the lockdown-override group may pass. "
                       "(D locks down the whole site.)", confirm="Lock down")

    def action_lockdown_site(self) -> None:
        self._mode("lockdown", None, f"Lock down the whole site {self._site()}?",
                   "Every door held locked: only the lockdown-override group may pass.",
                   danger=True, confirm="Lock down site")

    def action_normal(self) -> None:
        if (door := self._door_or_warn()) is not None:
            self._mode("normal", door, f"Set door {door} back to normal?",
                       "Clears the door's manual mode: credentials and schedules apply. "
                       "(N does it for the whole site.)", confirm="Normal")

    def action_normal_site(self) -> None:
        self._mode("normal", None, f"Set the whole site {self._site()} back to normal?",
                   "Clears the site mode: credentials and schedules apply.", confirm="Normal")

    def action_emergency(self) -> None:
        self._mode("emergency-open", None,
                   f"EMERGENCY OPEN: unlock every door of site {self._site()}?",
                   "Every door is unlocked and held unlocked until the site is set back to "
                   "normal (N).\nThis is not a life-safety function: fire release and egress "
                   "are hard-wired and never depend on this gateway.",
                   danger=True, confirm="Unlock every door")

    def action_ack(self) -> None:
        if (door := self._door_or_warn()) is None:
            return
        alarm = (self.door(door) or {}).get("alarm")
        if not alarm:
            self.notify(f"door {door} has no alarm", severity="warning")
            return
        self._confirm(f"Acknowledge the {alarm} at door {door}?",
                      "The alarm stays shown until the door is back to normal; it is marked "
                      "acknowledged by you.",
                      {"cmd": "alarm.ack", "door": door},
                      lambda a: f"door {a['door']}: {a['alarm']} acknowledged",
                      confirm="Acknowledge")

    def action_reload(self) -> None:
        self._confirm("Reload the site policy?",
                      "The daemon reads the policy bundle again and checks its signature; an "
                      "invalid one is refused and the current one kept.",
                      {"cmd": "policy.reload"},
                      lambda a: f"policy reload: {a.get('outcome')}", confirm="Reload")

    def action_print_release(self) -> None:
        printers = [str(p["name"]) for p in (self.status or {}).get("printers") or []
                    if isinstance(p, dict) and p.get("queue") and not p.get("hold")]
        if not printers:
            self.notify("this gateway reports no printers", severity="warning")
            return

        def chosen(answer: tuple[str, str] | None) -> None:
            if answer is None:
                return
            user, printer = answer
            self._confirm(f"Release {user}'s held jobs at printer {printer}?",
                          "Their jobs print there now, without their card; journaled with your "
                          "OS user.",
                          {"cmd": "print.release", "user": user, "printer": printer},
                          lambda a: f"{len(a['outcome']['released'])} job(s) of {user} released "
                                    f"at {printer} ({a['outcome']['result']})",
                          confirm="Release")

        self.push_screen(PrintReleaseScreen(printers), chosen)

    def _site(self) -> str:
        return str((self.status or {}).get("site", "?"))


def _same(old: object, new: Text) -> bool:
    # Text's own == ignores the base style: a cell changing colour only would not be redrawn.
    return isinstance(old, Text) and (old.plain, str(old.style), old.spans) \
        == (new.plain, str(new.style), new.spans)
