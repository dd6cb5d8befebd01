"""What the dashboard shows, as pure functions from the control API's JSON to Rich text.

Everything here reads the daemon's documents defensively: a key the daemon does not send (yet)
shows as "—", never as an error. People appear by their pseudonymous policy id only; free-text
details of access decisions (which can quote a certificate's subject) are never shown.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

from rich.text import Text

NONE = "—"

# Door table: (column key, label, width). At 80 columns every column fits without scrolling.
DOOR_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("door", "Door", 8), ("state", "State", 17), ("mode", "Mode", 14), ("alarm", "Alarm", 5),
    ("board", "Board", 5), ("reader", "Reader", 6), ("last", "Last card", 9))

STYLE_ALARM = "bold white on red"
STYLE_ALARM_ACKED = "bold red"
STYLE_FAULT = "bold magenta"
STYLE_OPEN = "green"
STYLE_LOCKDOWN = "bold yellow"
STYLE_DIM = "dim"

# Events whose `detail` may quote a certificate (a person's name): their detail is not shown.
_PRIVATE_DETAIL = ("access.", "card.")
# Extra fields shown after an event's door, person and reason, in this order.
_EVENT_FIELDS = ("user", "mode", "scope", "before", "seconds", "alarm", "state", "board",
                 "owner", "job", "size_kb", "issuer", "outcome", "transport", "decision_ms",
                 "detail", "error")


def fmt_age(seconds: float | None) -> str:
    """A duration for people: 42s, 5m, 3h, 2d (the unit that keeps it short)."""
    if seconds is None:
        return NONE
    s = abs(float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size * 2 or (unit == "m" and s >= size):
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def fmt_clock(at: float | None) -> str:
    """A wall-clock time (seconds since the epoch) as local HH:MM:SS; "—" if unknown."""
    if not isinstance(at, int | float) or isinstance(at, bool):
        return NONE
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")


# --- doors ------------------------------------------------------------------------------------
def door_style(door: dict[str, Any]) -> str:
    """The colour of a door's row: alarm red, fault magenta, open or held open green,
    lockdown yellow, locked in normal mode plain."""
    state, mode = door.get("state"), door.get("mode")
    if door.get("alarm"):
        return STYLE_ALARM_ACKED if door.get("alarm_acknowledged") else STYLE_ALARM
    if state == "fault" or door.get("faulted"):
        return STYLE_FAULT
    if state in ("unlocked", "open") or mode in ("free-access", "emergency-open"):
        return STYLE_OPEN
    if mode == "lockdown":
        return STYLE_LOCKDOWN
    return ""


def _online(value: Any, yes: str, no: str) -> Text:
    if value is True:
        return Text(yes, style="green")
    if value is False:
        return Text(no, style=STYLE_FAULT)
    return Text("?", style=STYLE_DIM)


def door_cells(door: dict[str, Any]) -> list[Text]:
    """One door's row, in DOOR_COLUMNS order."""
    style = door_style(door)
    mode = str(door.get("mode") or NONE)
    mode_style = (STYLE_LOCKDOWN if mode == "lockdown"
                  else STYLE_OPEN if mode in ("free-access", "emergency-open") else "")
    if door.get("manual_mode") not in (None, "normal"):
        mode_style += " underline"  # set by a technician, not by a schedule
    alarm = door.get("alarm")
    if alarm:
        acked = bool(door.get("alarm_acknowledged"))
        alarm_cell = Text("ack'd" if acked else "ALARM",
                          style=STYLE_ALARM_ACKED if acked else STYLE_ALARM)
    else:
        alarm_cell = Text(NONE, style=STYLE_DIM)
    return [Text(str(door.get("name", "?")), style=style),
            Text(str(door.get("state") or NONE), style=style),
            Text(mode, style=mode_style.strip()),
            alarm_cell,
            _online(door.get("board_online"), "ok", "FAULT"),
            _online(door.get("reader_online"), "ok", "OFF"),
            Text(fmt_clock(door.get("last_presentation")),
                 style="" if door.get("last_presentation") else STYLE_DIM)]


# --- events -----------------------------------------------------------------------------------
def event_style(kind: str) -> str:
    if kind.startswith("alarm.") and kind != "alarm.acknowledged":
        return "bold red"
    if kind.endswith(".fault") or kind.endswith(".offline") or kind == "alarm.acknowledged":
        return "magenta" if kind != "alarm.acknowledged" else "yellow"
    if kind == "access.granted":
        return "green"
    if kind == "access.denied":
        return "yellow"
    if kind.startswith("control."):
        return "cyan"
    return ""


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_scalar(v) for v in value)
    return str(value)


def event_line(ev: dict[str, Any]) -> Text:
    """One journaled event as a log line: time, sequence, kind, door, person, reason, and the
    few fields a technician needs (never a certificate's text)."""
    kind = str(ev.get("kind", "?"))
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(fmt_clock(ev.get("at")), style=STYLE_DIM)
    line.append(f" {'#' + str(ev.get('seq', '?')):<6}", style=STYLE_DIM)
    line.append(f"{kind:<18}", style=event_style(kind))
    line.append(f" {ev.get('door') or ev.get('printer') or '':<6}")  # where: a door or printer
    for key in ("person", "reason"):
        value = ev.get(key)
        if value:
            line.append(f" {value}", style="bold" if key == "person" else "")
    for key in _EVENT_FIELDS:
        value = ev.get(key)
        if value is None or value == "" or (key == "detail" and kind.startswith(_PRIVATE_DETAIL)):
            continue
        if key == "decision_ms":
            line.append(f" {_scalar(value)} ms", style=STYLE_DIM)
        else:
            line.append(f" {key}={_scalar(value)}", style=STYLE_DIM)
    return line


@dataclass(frozen=True)
class EventFilter:
    """What the filter box asks for: `door:NAME` (a door or a printer), `person:ID`,
    `type:KIND` (also `kind:`), and bare words matched against door, person, kind and user.
    Every term must match (case insensitive, substring)."""

    door: tuple[str, ...] = ()
    person: tuple[str, ...] = ()
    kind: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> EventFilter:
        door: list[str] = []
        person: list[str] = []
        kind: list[str] = []
        words: list[str] = []
        for token in text.lower().split():
            field, sep, value = token.partition(":")
            if sep and value and field == "door":
                door.append(value)
            elif sep and value and field in ("person", "who"):
                person.append(value)
            elif sep and value and field in ("type", "kind"):
                kind.append(value)
            else:
                words.append(token)
        return cls(tuple(door), tuple(person), tuple(kind), tuple(words))

    def __bool__(self) -> bool:
        return bool(self.door or self.person or self.kind or self.words)

    def matches(self, ev: dict[str, Any]) -> bool:
        def text(key: str) -> str:
            value = ev.get(key)
            return str(value).lower() if value is not None else ""

        door, person, kind = text("door") or text("printer"), text("person"), text("kind")
        anything = " ".join((door, person, kind, text("user")))
        return (all(t in door for t in self.door) and all(t in person for t in self.person)
                and all(t in kind for t in self.kind) and all(t in anything for t in self.words))


def journal_top(status: dict[str, Any] | None) -> int | None:
    """The journal's last sequence number, where the daemon's status reports it."""
    for part in ("journal", "sync"):
        doc = (status or {}).get(part)
        if isinstance(doc, dict) and isinstance(doc.get("last_seq"), int) \
                and not isinstance(doc.get("last_seq"), bool):
            return int(doc["last_seq"])
    return None


# --- top bar, sync, printers ------------------------------------------------------------------
def top_bar(status: dict[str, Any] | None, connection: str | None, now: float | None = None
            ) -> Text:
    """Gateway, site, site mode, journal health and the connection: `connection` is None when
    connected, else why not (shown as "disconnected — retrying")."""
    bar = Text(no_wrap=True, overflow="ellipsis")
    if connection is None:
        bar.append("● connected ", style="bold green")
    else:
        bar.append("✖ disconnected — retrying ", style=STYLE_ALARM)
        bar.append(f"({connection}) ", style="red")
    if status is not None:
        bar.append(f"{status.get('gateway', '?')} · site {status.get('site', '?')} · ")
        site_mode = str(status.get("site_mode") or NONE)
        bar.append("site mode ")
        bar.append(site_mode, style=(STYLE_LOCKDOWN if site_mode == "lockdown"
                                     else STYLE_OPEN if site_mode != "normal" else "bold"))
        if status.get("journal_fault"):
            bar.append(" · ")
            bar.append(f"JOURNAL FAULT: {status['journal_fault']}", style=STYLE_ALARM)
        alarms = sum(1 for d in status.get("doors") or () if isinstance(d, dict)
                     and d.get("alarm") and not d.get("alarm_acknowledged"))
        alarms += sum(1 for p in status.get("printers") or () if isinstance(p, dict)
                      and p.get("alarm"))
        if alarms:
            bar.append(" · ")
            bar.append(f"{alarms} alarm{'s' if alarms > 1 else ''}", style=STYLE_ALARM)
    bar.append(f" · {fmt_clock(now if now is not None else time.time())}", style=STYLE_DIM)
    return bar


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short_name(issuer: str) -> str:
    """An issuer DN's CN (the readable part), else the DN."""
    for part in issuer.replace("/", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key.upper() == "CN" and value:
            return value
    return issuer


def _seconds_until(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp() - time.time()
    except ValueError:
        return None


def _policy_line(policy: Any) -> Text:
    line = Text("Policy ", style="bold")
    if not isinstance(policy, dict):
        return line.append(NONE, style=STYLE_DIM)
    version = policy.get("version")
    if version is None:
        line.append("none loaded", style=STYLE_ALARM_ACKED)
    else:
        line.append(f"v{version}")
        line.append(f" · issued {fmt_age(policy.get('age_s'))} ago")
        left = _seconds_until(policy.get("not_after"))
        if left is not None:
            line.append(f" · valid {fmt_age(left)} more" if left > 0 else " · EXPIRED",
                        style="" if left > 0 else STYLE_ALARM_ACKED)
        if policy.get("stale"):
            line.append(" · STALE", style=STYLE_ALARM_ACKED)
    if policy.get("rejected"):
        line.append(f"\n  last rejected: {policy['rejected']}", style="yellow")
    return line


def _sync_line(sync: Any) -> Text:
    line = Text("Head office ", style="bold")
    if not sync:
        return line.append("not configured", style=STYLE_DIM)
    if not isinstance(sync, dict):
        return line.append(_scalar(sync))
    connected = sync.get("connected", sync.get("online"))
    if connected is True:
        line.append("connected", style="green")
    elif connected is False:
        line.append("DISCONNECTED", style=STYLE_FAULT)
    else:
        line.append(str(sync.get("state", NONE)))
    broker = sync.get("broker") or sync.get("host")
    if broker:
        line.append(f" {broker}", style=STYLE_DIM)
    backlog = next((sync[k] for k in ("unacked", "outbox", "backlog") if _is_number(sync.get(k))),
                   None)
    if backlog is not None:
        line.append(f" · {backlog} to send")
    if _is_number(sync.get("last_ack_age_s")):
        line.append(f" · acked {fmt_age(sync['last_ack_age_s'])} ago")
    error = sync.get("error") or (sync.get("last_error") if connected is not True else None)
    if error:
        line.append(f"\n  {error}", style="yellow")
    alarms = sync.get("alarms")
    if isinstance(alarms, list) and alarms:
        line.append(f"\n  alarms: {', '.join(str(a) for a in alarms)}", style=STYLE_ALARM_ACKED)
    return line


def _crl_lines(crls: Any) -> list[Text]:
    if not crls:
        return [Text("CRLs ", style="bold").append(NONE, style=STYLE_DIM)]
    if isinstance(crls, dict):
        crls = [{"issuer": k, **v} if isinstance(v, dict) else {"issuer": k, "state": v}
                for k, v in crls.items()]
    lines = []
    for crl in crls if isinstance(crls, list) else ():
        if not isinstance(crl, dict):
            continue
        name = _short_name(str(crl.get("issuer") or crl.get("name") or crl.get("source") or "?"))
        state = str(crl.get("state") or "")
        style = ("" if state in ("", "fresh") else "bold yellow" if state == "in-grace"
                 else STYLE_ALARM_ACKED)
        line = Text("CRL ", style="bold").append(name)
        line.append(f" {fmt_age(crl.get('age_s'))} old")
        until = crl.get("until_next_update_s")
        if _is_number(until):
            line.append(f", next {fmt_age(until)}" if until >= 0
                        else f", next update {fmt_age(-until)} overdue", style=style)
        if state and state != "fresh":
            line.append(f" · {state}", style=style)
        lines.append(line)
    return lines or [Text("CRLs ", style="bold").append(NONE, style=STYLE_DIM)]


def _clock_line(clock: Any) -> Text | None:
    if not isinstance(clock, dict):
        return None
    line = Text("Clock ", style="bold")
    synced = clock.get("synchronised")
    line.append("synchronised" if synced else "NOT synchronised" if synced is False else NONE,
                style="green" if synced else "bold yellow" if synced is False else STYLE_DIM)
    behind = clock.get("behind_trusted_s")
    if _is_number(behind) and behind > 0:
        line.append(f" · {fmt_age(behind)} behind trusted time", style=STYLE_ALARM)
    return line


def sync_panel(status: dict[str, Any] | None) -> Text:
    """Head-office link, policy version and age, each CRL's age against its nextUpdate, and
    the clock: whatever of these the daemon reports; "—" for what it does not."""
    if status is None:
        return Text(NONE, style=STYLE_DIM)
    lines = [_sync_line(status.get("sync")), _policy_line(status.get("policy")),
             *_crl_lines(status.get("crls"))]
    clock = _clock_line(status.get("clock"))
    if clock is not None:
        lines.append(clock)
    return Text("\n").join(lines)


_PRINTER_GOOD = frozenset({"idle", "online", "processing", "ready"})
_PRINTER_BAD = frozenset({"stopped", "offline", "fault", "error", "unreachable"})


def _held(printer: dict[str, Any]) -> str:
    held = printer.get("held_jobs", printer.get("held"))
    if isinstance(held, list | tuple):
        return str(len(held))
    return NONE if held is None else str(held)


def printers_panel(status: dict[str, Any] | None) -> Text:
    """Each printer's state and held jobs (when the daemon reports printers), and any relay
    board that is not online (the doors table shows which doors that stops)."""
    if status is None:
        return Text(NONE, style=STYLE_DIM)
    lines: list[Text] = []
    printers = status.get("printers")
    if isinstance(printers, dict):
        printers = [{"name": k, **v} if isinstance(v, dict) else {"name": k, "state": v}
                    for k, v in printers.items()]
    if isinstance(printers, list) and printers:
        for p in printers:
            if not isinstance(p, dict):
                continue
            state = str(p.get("state") or (("online" if p.get("online") else "OFFLINE")
                                           if "online" in p else NONE))
            style = ("green" if state.lower() in _PRINTER_GOOD
                     else STYLE_FAULT if state.lower() in _PRINTER_BAD else "")
            line = Text(f"{p.get('name', '?')} ", style="bold").append(state, style=style)
            line.append(f" · held {_held(p)}")
            if p.get("reader_online") is False:
                line.append(" · reader OFF", style=STYLE_FAULT)
            if p.get("alarm"):
                line.append(f" · ALARM {p['alarm']}", style=STYLE_ALARM)
            if p.get("error"):
                line.append(f" · {p['error']}", style="yellow")
            lines.append(line)
    else:
        lines.append(Text("none configured" if isinstance(printers, list) else NONE,
                          style=STYLE_DIM))
    for board in _iter_dicts(status.get("boards")):
        if board.get("online") is not True:
            line = Text("Board ", style="bold").append(f"{board.get('name', '?')} ")
            line.append("OFFLINE" if board.get("online") is False else "?", style=STYLE_FAULT)
            if board.get("error"):
                line.append(f" {board['error']}", style=STYLE_DIM)
            lines.append(line)
    return Text("\n").join(lines)


def _iter_dicts(items: Any) -> Iterable[dict[str, Any]]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
