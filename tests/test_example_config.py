"""config/example.toml documents every key of [print], [[printers]], [mqtt] and [mqtt.crl]: each
key the parsers know appears in its section, set or as a commented-out `# key =` line, so the
documentation cannot drift from the code. Its values are the parsers' defaults where the file
does not need a site-specific one."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.sync.config import CRL_KEYS, MQTT_KEYS, parse_sync_config
from printer_drivers.config import FEEDBACK_KEYS, PRINT_KEYS, PRINTER_KEYS, parse_print_config
from tests.conftest import repo_root

EXAMPLE = repo_root() / "config" / "example.toml"
_HEADER = re.compile(r"^\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", re.MULTILINE)
_COMMENTED_KEY = re.compile(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)


def _sections(text: str) -> dict[str, str]:
    """Each table header's name -> the text up to the next header (repeated headers joined)."""
    out: dict[str, str] = {}
    heads = list(_HEADER.finditer(text))
    for h, nxt in zip(heads, [*heads[1:], None], strict=True):
        body = text[h.end():nxt.start() if nxt is not None else len(text)]
        out[h.group(1)] = out.get(h.group(1), "") + body
    return out


def _documented(section: str, active: set[str]) -> set[str]:
    return active | set(_COMMENTED_KEY.findall(_sections(EXAMPLE.read_text()).get(section, "")))


def _raw() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_example_parses_with_print_release_and_mqtt():
    cfg = load_config(EXAMPLE)
    assert cfg.print is not None and cfg.print.printers
    assert cfg.mqtt is not None
    door_readers = {(d.reader or d.nfc, d.slot) for d in cfg.doors}
    door_coils = {n for d in cfg.doors for n in (d.relay, d.feedback.green, d.feedback.red,
                                                 d.feedback.buzzer) if n is not None}
    for p in cfg.print.printers:
        assert (p.reader or p.nfc, p.slot) not in door_readers
        assert p.reader not in {d.reader for d in cfg.doors}
        assert p.feedback is not None
        assert {p.feedback.green, p.feedback.red}.isdisjoint(door_coils)


@pytest.mark.parametrize(("section", "known"), [
    ("print", PRINT_KEYS),
    ("printers", PRINTER_KEYS),
    ("printers.feedback", FEEDBACK_KEYS),
    ("mqtt", MQTT_KEYS - {"crl"}),
    ("mqtt.crl", CRL_KEYS),
])
def test_every_key_is_documented_in_its_section(section: str, known: frozenset[str] | set[str]):
    raw = _raw()
    if section == "printers":
        active = {k for p in raw["printers"] for k in p}
    elif section == "printers.feedback":
        active = {k for p in raw["printers"] for k in p.get("feedback", {})}
        section = "printers"  # an inline table: its keys are documented in [[printers]]
    elif section == "mqtt.crl":
        active = set(raw["mqtt"]["crl"])
    else:
        active = set(raw[section])
    missing = sorted(set(known) - _documented(section, active))
    assert not missing, f"config/example.toml [{section}] does not document {missing}"
    assert "crl" in raw["mqtt"]  # [mqtt.crl] is the `crl` key of MQTT_KEYS


def test_no_password_is_written_in_the_example():
    assert "password" not in _raw()["mqtt"]
    assert not re.search(r"^\s*#?\s*password\s*=", EXAMPLE.read_text(), re.MULTILINE)


def test_the_values_shown_are_the_parsers_defaults():
    raw = _raw()

    def resolve(p: str) -> Path:
        return Path("/state") / p

    shown = parse_print_config({"print": raw["print"]}, "example", resolve)
    default = parse_print_config({}, "example", resolve)
    assert shown == default

    required = {k: raw["mqtt"][k] for k in ("host", "ca_file", "username", "password_file")}
    mq = parse_sync_config(raw["mqtt"], "example", resolve)
    base = parse_sync_config(required, "example", resolve)
    assert mq == dataclasses.replace(base, manifest_keys=mq.manifest_keys,
                                     command_keys=mq.command_keys,
                                     crl=dataclasses.replace(base.crl, urls=mq.crl.urls))
