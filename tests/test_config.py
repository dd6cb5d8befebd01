from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import DEFAULT_CONFIG, load_config
from gateway.errors import ConfigError
from tests.conftest import repo_root

GOOD = (repo_root() / "config" / "demo.toml").read_text()


def test_shipped_configs_are_valid():
    for name in ("demo.toml", "example.toml"):
        cfg = load_config(repo_root() / "config" / name)
        assert cfg.doors and cfg.trust.profiles
    demo = load_config(repo_root() / "config" / "demo.toml", Path("/state"))
    assert demo.print is not None and [p.name for p in demo.print.printers] == ["floor1"]
    assert demo.print.socket == Path("/state/cups.sock")
    assert demo.mqtt is not None and demo.mqtt.password_file == Path("/state/mqtt/password")


def test_a_config_without_printers_or_mqtt_leaves_them_off(tmp_path: Path):
    plain = tmp_path / "plain.toml"
    plain.write_text(GOOD.split("\n# Print release:")[0])
    cfg = load_config(plain)
    assert cfg.print is None and cfg.mqtt is None


@pytest.mark.parametrize(("edit", "key", "expected"), [
    (("port = 15020", "port = 70000"), "boards[0].port", "an integer 1..65535"),
    (("relay = 0", 'relay = "zero"'), "doors[0].relay", "expected an integer"),
    (('board = "board1"\nrelay = 0', 'board = "nope"\nrelay = 0'), "doors[0].board",
     "the name of a [[boards]] entry"),
    (('nfc = "udp:127.0.0.1:15030"', 'reader = "Door0"'), "doors[1].reader",
     "already door 'front'"),
    (('nfc = "udp:127.0.0.1:15030"', 'nfc = "udp:127.0.0.1:15030"\nreader = "Door1"'),
     "doors[1].reader", "exactly one of reader"),
    (('nfc = "udp:127.0.0.1:15030"', ""), "doors[1].reader", "exactly one of reader"),
    (("relay = 0\n", 'relay = 0\nstrike = "sometimes"\n'), "doors[0].strike",
     "one of fail-secure, fail-safe"),
    (("pre_alarm_seconds = 2", "pre_alarm_seconds = 7"), "doors[0].pre_alarm_seconds",
     "a number 0..6"),
    (("contact_input = 2", "contact_input = 0"), "doors[1].contact_input",
     "input 0 of board 'board1' is already used by door 'front'"),
    (("green = 6", "green = 0"), "doors[1].feedback", "coil 0 of board 'board1' is already used"),
    (("green = 4", "green = 0"), "doors[0].feedback", "coils other than the strike relay"),
    (('keys = ["policy/head-office.pem"]', ""), "policy.keys", "at least one pinned"),
    (("port = 15020", 'port = 15020\ndevice = "/dev/ttyUSB0"'), "boards[0].host",
     "exactly one of host"),
    (("watchdog_seconds = 5", "watchdog_seconds = 5\npoll_ms = 5"), "boards[0].poll_ms",
     "an integer 10..10000"),
    (("unlock_seconds = 2\n", "unlock_seconds = 2\ncolour = 1\n"), "doors[0].colour",
     "unknown key"),
    (('site = "demo"', ""), "gateway.site", "missing"),
    (('[trust]', '[trust]\nrevocation_unknown = "maybe"'), "trust.revocation_unknown",
     "one of deny, allow"),
    (('nfc = "udp:127.0.0.1:15031"', 'nfc = "udp:127.0.0.1:15030"'), "printers[0].nfc",
     "door 'lab'"),
    (('board = "board1", green = 8', 'board = "board9", green = 8'),
     "printers[0].feedback.board", "the name of a [[boards]] entry"),
    (("green = 8, red = 9", "green = 8, red = 5"), "printers[0].feedback.red",
     "coil 5 of board 'board1' is already used by door 'front'"),
    (("green = 8, red = 9", "green = 300, red = 9"), "printers[0].feedback.green",
     "a coil below 256"),
    (('queue = "floor1"', 'queue = "findme"'), "printers[0].queue", "other than the find-me"),
    (('server = "cups.sock"', 'server = "cups.sock"\ncolour = 1'), "print.colour", "unknown key"),
    (('[mqtt]\nhost = "127.0.0.1"', '[mqtt]\npassword = "hunter2"\nhost = "127.0.0.1"'),
     "mqtt.password", "put the password in a file"),
    (('ca_file = "mqtt/ca.pem"\n', ""), "mqtt.ca_file", "TLS is required"),
    (("port = 15883", "port = 0"), "mqtt.port", "an integer 1..65535"),
])
def test_bad_config_names_file_key_and_expected_form(tmp_path: Path, edit, key, expected):
    old, new = edit
    assert old in GOOD
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert e.value.file == str(bad)
    assert e.value.key == key
    assert expected in e.value.expected


def test_toml_syntax_error_is_a_config_error(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nid=1")
    with pytest.raises(ConfigError, match="expected valid TOML"):
        load_config(bad)


def test_cli_reports_a_bad_config_with_exit_code_2_and_no_traceback(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("port = 15020", "port = -1"))
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"{bad}: boards[0].port: expected an integer 1..65535" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_config_file_is_exit_2(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config",
                        str(tmp_path / "none.toml")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_config_init_writes_the_templates_and_keeps_existing_files(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "init", str(tmp_path)],
                       capture_output=True, text=True, timeout=30, check=True)
    assert (tmp_path / "example.toml").read_text() == (repo_root() / "config" / "example.toml").read_text()
    (tmp_path / "demo.toml").write_text("# mine")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "init", str(tmp_path)],
                       capture_output=True, text=True, timeout=30, check=True)
    assert "exists, kept" in r.stdout and (tmp_path / "demo.toml").read_text() == "# mine"


def test_config_init_writes_portvakt_toml_where_every_command_looks_and_keeps_a_sites_own(tmp_path: Path):
    def init(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "config", "init", str(tmp_path),
                               *extra], capture_output=True, text=True, timeout=30, check=True)

    site = tmp_path / DEFAULT_CONFIG.name
    assert site.name == "portvakt.toml"
    r = init()
    assert f"{site}: written (from example.toml: edit it)" in r.stdout
    assert site.read_text() == (repo_root() / "config" / "example.toml").read_text()
    load_config(site)  # a valid configuration as written

    site.write_text("# the site's own\n")
    r = init()
    assert f"{site}: exists, kept (use --force to overwrite)" in r.stdout
    assert site.read_text() == "# the site's own\n"
    init("--force")
    assert site.read_text() == (repo_root() / "config" / "example.toml").read_text()


def test_crl_distribution_points_in_crl_or_mqtt_crl_but_not_both(tmp_path: Path):
    plain = GOOD.split("\n# Print release:")[0]
    f = tmp_path / "c.toml"
    f.write_text(plain + '\n[crl]\nurls = ["http://pki.example/issuing.crl"]\n')
    cfg = load_config(f)
    assert cfg.mqtt is None and cfg.crl_fetch is not None
    assert cfg.crl_fetch.urls == ("http://pki.example/issuing.crl",)
    f.write_text(GOOD + '\n[crl]\nurls = ["http://pki.example/issuing.crl"]\n')
    cfg = load_config(f)  # with [mqtt], sync runs the fetcher (and wakes it on a notice)
    assert cfg.crl_fetch is None and cfg.mqtt is not None
    assert cfg.mqtt.crl.urls == ("http://pki.example/issuing.crl",)
    f.write_text(GOOD + '\n[mqtt.crl]\nurls = ["http://a/1.crl"]\n[crl]\nurls = ["http://b/2.crl"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == "mqtt.crl" and "not both" in e.value.expected
    f.write_text(plain + '\n[crl]\nurls = ["ftp://pki.example/issuing.crl"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == "crl.urls[0]"
