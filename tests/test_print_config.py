"""`parse_print_config`: the [print] and [[printers]] tables, validated once; every error names
the file, the dotted key and the expected form."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from printer_drivers.config import DEFAULT_SOCKET, FeedbackOutputs, parse_print_config

STATE = Path("/var/lib/portvakt")

EXAMPLE = """
[gateway]
id = "gw-1"

[print]
server = "/run/cups/cups.sock"
user = "portvakt"
findme_queue = "findme"
retention_hours = 8
journal_job_names = true

[[printers]]
name = "floor2"
queue = "Floor2-MFP"
reader = "ACS ACR1252 Dual Reader PICC"
slot = 1
feedback = { board = "board1", green = 8, red = 9 }

[[printers]]
name = "lobby"
nfc = "usb:072f:2200"
"""


def parse(raw: dict[str, Any]) -> Any:
    return parse_print_config(raw, "gw.toml", lambda p: STATE / p)


def test_a_full_example_parses_into_typed_values() -> None:
    c = parse(tomllib.loads(EXAMPLE))
    assert (c.socket, c.auth, c.user, c.findme_queue) == (
        Path("/run/cups/cups.sock"), "peer-credentials", "portvakt", "findme")
    assert (c.retention_hours, c.retention_seconds, c.journal_job_names) == (8.0, 28800.0, True)
    floor2, lobby = c.printers
    assert (floor2.name, floor2.queue, floor2.reader, floor2.nfc, floor2.slot) == (
        "floor2", "Floor2-MFP", "ACS ACR1252 Dual Reader PICC", "", 1)
    assert floor2.feedback == FeedbackOutputs("board1", 8, 9, 1.0)
    assert (lobby.queue, lobby.nfc, lobby.reader, lobby.feedback) == ("lobby", "usb:072f:2200",
                                                                     "", None)
    assert c.printer("lobby") is lobby and c.printer("nope") is None


def test_defaults_without_a_print_table() -> None:
    c = parse({"gateway": {"id": "x"}})
    assert (c.server, c.socket, c.auth, c.user) == (DEFAULT_SOCKET, Path(DEFAULT_SOCKET),
                                                    "peer-credentials", None)
    assert (c.findme_queue, c.retention_hours, c.journal_job_names, c.timeout_seconds,
            c.follow_seconds, c.purge_interval_seconds, c.printers) == (
        "findme", 4.0, False, 5.0, 600.0, 300.0, ())


def test_a_relative_socket_path_resolves_against_the_state_directory() -> None:
    assert parse({"print": {"server": "cups/cups.sock"}}).socket == STATE / "cups/cups.sock"


def test_a_tcp_server_needs_auth_none_and_gives_host_and_port() -> None:
    c = parse({"print": {"server": "ipp://cups.example:8631", "auth": "none"}})
    assert (c.socket, c.host, c.port, c.auth) == (None, "cups.example", 8631, "none")
    assert parse({"print": {"server": "ipp://cups.example", "auth": "none"}}).port == 631


@pytest.mark.parametrize(("raw", "key", "expected"), [
    ({"print": []}, "print", "expected a table"),
    ({"print": {"colour": True}}, "print.colour", "unknown key; expected one of auth, "),
    ({"print": {"server": ""}}, "print.server", "non-empty string"),
    ({"print": {"server": "http://cups:631"}}, "print.server", "domain socket path"),
    ({"print": {"server": "ipp://cups/printers/x", "auth": "none"}}, "print.server", "ipp://host"),
    ({"print": {"server": "ipp://cups:631"}}, "print.auth", "peer-credentials works only over"),
    ({"print": {"auth": "basic"}}, "print.auth", "expected one of peer-credentials, none"),
    ({"print": {"user": "no body"}}, "print.user", "an OS account name"),
    ({"print": {"retention_hours": 0}}, "print.retention_hours", "a number 0.01..720"),
    ({"print": {"retention_hours": True}}, "print.retention_hours", "a number"),
    ({"print": {"journal_job_names": "yes"}}, "print.journal_job_names", "true or false"),
    ({"print": {"findme_queue": "find me"}}, "print.findme_queue", "a CUPS queue name"),
    ({"print": {"timeout_seconds": 0}}, "print.timeout_seconds", "a number 0.1..120"),
    ({"printers": {"name": "x"}}, "printers", "an array of tables"),
    ({"printers": [{"queue": "q", "reader": "R"}]}, "printers[0].name", "missing"),
    ({"printers": [{"name": "p", "reader": "R", "queue": "a/b"}]}, "printers[0].queue",
     "a CUPS queue name"),
    ({"printers": [{"name": "p"}]}, "printers[0].reader", "exactly one of reader"),
    ({"printers": [{"name": "p", "reader": "R", "nfc": "usb"}]}, "printers[0].reader",
     "exactly one of reader"),
    ({"printers": [{"name": "findme", "reader": "R"}]}, "printers[0].queue",
     "other than the find-me queue"),
    ({"printers": [{"name": "p", "reader": "R", "slot": 16}]}, "printers[0].slot",
     "an integer 0..15"),
    ({"printers": [{"name": "p", "reader": "R", "tray": 2}]}, "printers[0].tray", "unknown key"),
    ({"printers": [{"name": "p", "reader": "R"}, {"name": "p", "reader": "S"}]},
     "printers[1].name", "duplicate printer name"),
    ({"printers": [{"name": "p", "reader": "R"}, {"name": "q", "queue": "P", "reader": "S"}]},
     "printers[1].queue", "duplicate CUPS queue"),  # CUPS queue names ignore case
    ({"printers": [{"name": "p", "reader": "R"}, {"name": "q", "reader": "R"}]},
     "printers[1].reader", "duplicate reader 'R' slot 0"),
    ({"printers": [{"name": "p", "reader": "R", "feedback": {"green": 1}}]},
     "printers[0].feedback.board", "missing"),
    ({"printers": [{"name": "p", "reader": "R", "feedback": {"board": "b"}}]},
     "printers[0].feedback.green", "at least one of green or red"),
    ({"printers": [{"name": "p", "reader": "R", "feedback": {"board": "b", "green": 2,
                                                             "red": 2}}]},
     "printers[0].feedback.red", "other than green"),
    ({"printers": [{"name": "p", "reader": "R", "feedback": 3}]}, "printers[0].feedback",
     "expected a table"),
])
def test_errors_name_file_key_and_expected_form(raw: dict[str, Any], key: str,
                                                expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(raw)
    assert (e.value.file, e.value.key) == ("gw.toml", key)
    assert expected in e.value.expected
    assert str(e.value).startswith(f"gw.toml: {key}: ")
