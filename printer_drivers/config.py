"""Print release configuration: the `[print]` table and `[[printers]]` tables of the gateway's
TOML file, validated once into frozen objects. `parse_print_config` is called by the gateway's
configuration loader (and by `portvakt print` until then); every error is a ConfigError naming
the file, the dotted key and the expected form, as in gateway/config.py.

    [print]
    server = "/run/cups/cups.sock"   # cupsd's domain socket (peer credentials) or ipp://host:port
    auth = "peer-credentials"        # "peer-credentials" (socket only) | "none" (lab cupsd only)
    user = "portvakt"                # the account cupsd sees; default: the daemon's own OS user
    findme_queue = "findme"          # the stopped site-wide hold queue
    retention_hours = 4              # held jobs older than this are cancelled (journaled)
    journal_job_names = false        # job titles are personal data: off unless asked for
    timeout_seconds = 5              # per IPP request
    follow_seconds = 600             # how long a released job is followed to completion
    purge_interval_seconds = 300     # how often the daemon should run the retention purge

    [[printers]]
    name = "floor2"                  # the printer's name in the access policy
    queue = "floor2"                 # its CUPS queue (default: name)
    reader = "ACS ACR1252 Dual Reader PICC"   # PC/SC reader at the printer ... (or nfc = "...")
    slot = 0
    feedback = { board = "board1", green = 8, red = 9, seconds = 1.0 }   # optional
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError

__all__ = ["AUTH_METHODS", "DEFAULT_SOCKET", "FeedbackOutputs", "PrintConfig", "PrinterConfig",
           "parse_print_config"]

DEFAULT_SOCKET = "/run/cups/cups.sock"
AUTH_METHODS = ("peer-credentials", "none")
PRINT_KEYS = frozenset({"server", "auth", "user", "findme_queue", "retention_hours",
                        "journal_job_names", "timeout_seconds", "follow_seconds",
                        "purge_interval_seconds"})
PRINTER_KEYS = frozenset({"name", "queue", "reader", "nfc", "slot", "feedback"})
FEEDBACK_KEYS = frozenset({"board", "green", "red", "seconds"})
# CUPS queue names: printable, no space, '/', '#' or '\\', at most 127 characters.
_QUEUE = re.compile(r"[!-~]{1,127}", re.ASCII)
_QUEUE_FORBIDDEN = set("/#\\")
_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", re.ASCII)


@dataclass(frozen=True)
class FeedbackOutputs:
    """Coils on a relay board next to the printer's reader: green for "released", red for
    "nothing to print" or a refusal. `board` names a [[boards]] entry."""

    board: str
    green: int | None
    red: int | None
    seconds: float


@dataclass(frozen=True)
class PrinterConfig:
    name: str  # the printer's name in the access policy (`printers` there)
    queue: str  # its CUPS queue
    reader: str  # PC/SC reader name without its index ("" when read over nfc)
    nfc: str  # nfcpy device ("" when PC/SC)
    slot: int
    feedback: FeedbackOutputs | None = None


@dataclass(frozen=True)
class PrintConfig:
    """Where cupsd is and how the gateway authenticates to it, the find-me queue, retention,
    and the printers. `socket` is set for a domain-socket server, else `host`/`port`."""

    server: str  # as configured: a socket path or ipp://host:port
    socket: Path | None
    host: str
    port: int
    auth: str  # "peer-credentials" | "none"
    user: str | None  # the account cupsd sees; None: the daemon's own OS user, found at start
    findme_queue: str
    retention_hours: float
    journal_job_names: bool
    timeout_seconds: float
    follow_seconds: float
    purge_interval_seconds: float
    printers: tuple[PrinterConfig, ...] = ()

    @property
    def retention_seconds(self) -> float:
        return self.retention_hours * 3600.0

    def printer(self, name: str) -> PrinterConfig | None:
        """The printer called `name` (its policy name), or None."""
        for p in self.printers:
            if p.name == name:
                return p
        return None


class _Tbl:
    """A TOML table with typed getters whose errors name the file and the dotted key."""

    def __init__(self, file: str, prefix: str, data: Mapping[str, Any]) -> None:
        self.file, self.prefix, self.data = file, prefix, data

    def fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}{key}", expected)

    def reject_unknown(self, known: frozenset[str]) -> None:
        for k in self.data:
            if k not in known:
                raise self.fail(k, f"unknown key; expected one of {', '.join(sorted(known))}")

    def text(self, key: str, default: str | None = None) -> str:
        if key not in self.data:
            if default is None:
                raise self.fail(key, "missing; expected a non-empty string")
            return default
        v = self.data[key]
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"expected a non-empty string, got {v!r}")
        return v

    def number(self, key: str, lo: float, hi: float, default: float) -> float:
        v = self.data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise self.fail(key, f"expected a number {lo:g}..{hi:g}, got {v!r}")
        return float(v)

    def integer(self, key: str, lo: int, hi: int, default: int | None) -> int | None:
        if key not in self.data:
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer {lo}..{hi}, got {v!r}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v


def _queue(t: _Tbl, key: str, default: str | None = None) -> str:
    v = t.text(key, default)
    if not _QUEUE.fullmatch(v) or _QUEUE_FORBIDDEN & set(v):
        raise t.fail(key, f"expected a CUPS queue name (printable, no space, '/', '#' or '\\', "
                          f"at most 127 characters), got {v!r}")
    return v


def _server(t: _Tbl, resolve: Callable[[str], Path]) -> tuple[str, Path | None, str, int]:
    v = t.text("server", DEFAULT_SOCKET)
    if "://" not in v:
        return v, resolve(v), "", 0
    try:
        u = urlsplit(v)
        port = u.port or 631
    except ValueError:
        u, port = None, 0
    if u is None or u.scheme != "ipp" or not u.hostname or u.path not in ("", "/") \
            or u.query or u.username:
        raise t.fail("server", f"expected cupsd's domain socket path (e.g. {DEFAULT_SOCKET}) or "
                               f"ipp://host[:port], got {v!r}")
    return v, None, u.hostname, port


def parse_print_config(raw: Mapping[str, Any], file: str,
                       resolve: Callable[[str], Path]) -> PrintConfig:
    """Validate the `print` table and `printers` array of the TOML document `raw` (other keys
    are left to their own parsers). `file` names the file in errors; `resolve` turns a relative
    path into an absolute one (the gateway resolves against its state directory).

    Without a `[print]` table the defaults apply; without `[[printers]]` print release is off.
    Raises ConfigError(file, key, expected), e.g. key `printers[1].queue`."""
    pv = raw.get("print", {})
    if not isinstance(pv, dict):
        raise ConfigError(file, "print", "expected a table ([print])")
    t = _Tbl(file, "print.", pv)
    t.reject_unknown(PRINT_KEYS)
    server, sock, host, port = _server(t, resolve)
    auth = t.text("auth", "peer-credentials")
    if auth not in AUTH_METHODS:
        raise t.fail("auth", f"expected one of {', '.join(AUTH_METHODS)}, got {auth!r}")
    if auth == "peer-credentials" and sock is None:
        raise t.fail("auth", "peer-credentials works only over cupsd's domain socket: set server "
                             f"to its path (e.g. {DEFAULT_SOCKET}) or auth = \"none\" for a lab "
                             "cupsd whose policy lets anyone release")
    user: str | None = None
    if "user" in pv:
        user = t.text("user")
        if not _ACCOUNT.fullmatch(user):
            raise t.fail("user", f"expected an OS account name, got {user!r}")
    findme = _queue(t, "findme_queue", "findme")
    retention = t.number("retention_hours", 0.01, 24 * 30, 4.0)
    names = t.boolean("journal_job_names", False)
    timeout = t.number("timeout_seconds", 0.1, 120, 5.0)
    follow = t.number("follow_seconds", 1, 86400, 600.0)
    purge_every = t.number("purge_interval_seconds", 10, 86400, 300.0)

    pr = raw.get("printers", [])
    if not isinstance(pr, list) or not all(isinstance(x, dict) for x in pr):
        raise ConfigError(file, "printers", "expected an array of tables ([[printers]])")
    printers: list[PrinterConfig] = []
    seen: dict[str, dict[str, str]] = {"name": {}, "queue": {}, "reader": {}}
    used_names: set[str] = set()
    for i, d in enumerate(pr):
        p = _Tbl(file, f"printers[{i}].", d)
        p.reject_unknown(PRINTER_KEYS)
        name = p.text("name")
        queue = _queue(p, "queue", name)
        if queue.casefold() == findme.casefold():
            raise p.fail("queue", f"expected a queue other than the find-me queue {findme!r}")
        reader, nfc = p.text("reader", "-"), p.text("nfc", "-")
        reader, nfc = ("" if reader == "-" else reader), ("" if nfc == "-" else nfc)
        if bool(reader) == bool(nfc):
            raise p.fail("reader", "expected exactly one of reader (a PC/SC reader name) or nfc "
                                   "(an nfcpy device such as usb:072f:2200)")
        slot = p.integer("slot", 0, 15, 0)
        assert slot is not None
        for key, value, what in (("name", name, "printer name"),
                                 ("queue", queue.casefold(), "CUPS queue"),
                                 ("reader" if reader else "nfc", f"{reader or nfc}#{slot}",
                                  f"reader {reader or nfc!r} slot {slot}")):
            other = seen[key if key != "nfc" else "reader"].setdefault(value, name)
            if other != name or (key == "name" and value in used_names):
                raise p.fail(key, f"duplicate {what}: already used by printer {other!r}")
        used_names.add(name)
        feedback = None
        if "feedback" in d:
            fv = d["feedback"]
            if not isinstance(fv, dict):
                raise p.fail("feedback", "expected a table {board, green, red, seconds}")
            f = _Tbl(file, f"printers[{i}].feedback.", fv)
            f.reject_unknown(FEEDBACK_KEYS)
            green, red = f.integer("green", 0, 65535, None), f.integer("red", 0, 65535, None)
            if green is None and red is None:
                raise f.fail("green", "expected at least one of green or red (a coil number)")
            if green is not None and green == red:
                raise f.fail("red", f"expected a coil other than green ({green})")
            feedback = FeedbackOutputs(f.text("board"), green, red, f.number("seconds", 0.1, 10, 1.0))
        printers.append(PrinterConfig(name, queue, reader, nfc, slot, feedback))
    return PrintConfig(server, sock, host, port, auth, user, findme, retention, names, timeout,
                       follow, purge_every, tuple(printers))
