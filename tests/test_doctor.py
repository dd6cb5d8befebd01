"""`portvakt doctor` against a running daemon and its real rig: one line a check, exit 1 if any
fails, and a clear line (never a traceback) for what is missing."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.clock import chrony_uses_nts, clock_status, running_ntp_daemon
from tests.fixtures_daemon import Daemon


def doctor(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "doctor", "--config",
                           str(d.config), "--state-dir", str(d.state), *args],
                          capture_output=True, text=True, timeout=60)


def test_doctor_checks_each_part_of_a_running_gateway(daemon: Daemon):
    r = doctor(daemon, "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    for name in ("configuration", "trust store", "CRLs", "policy", "readers", "relay boards",
                 "daemon"):
        assert checks[name]["ok"], checks[name]
    assert "version 1" in checks["policy"]["detail"]
    assert "1/1 PC/SC door readers present" in checks["readers"]["detail"]
    assert checks["clock"]["ok"] == (clock_status().synchronised is not False)
    assert r.returncode == (0 if all(c["ok"] for c in checks.values()) else 1)
    assert "Traceback" not in r.stderr


def test_doctor_names_what_is_down(daemon: Daemon):
    daemon.board.kill()
    r = doctor(daemon)
    assert r.returncode == 1
    line = next(x for x in r.stdout.splitlines() if "relay boards" in x)
    assert line.startswith("FAIL") and "b1:" in line and "cannot connect" in line
    assert "Traceback" not in r.stderr


def test_doctor_with_a_bad_configuration_says_so(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nid = 1\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "doctor", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout.startswith("FAIL  configuration") and "trust: missing table" in r.stdout


def test_clock_helpers_read_proc_and_chrony_config(tmp_path):
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "comm").write_text("chronyd\n")
    (proc / "self").mkdir()
    assert running_ntp_daemon(proc) == "chronyd"
    conf = tmp_path / "chrony"
    (conf / "sources.d").mkdir(parents=True)
    (conf / "chrony.conf").write_text("pool 2.debian.pool.ntp.org iburst\n# server x nts\n")
    assert not chrony_uses_nts(conf)
    (conf / "sources.d" / "nts.sources").write_text("server time.cloudflare.com iburst nts\n")
    assert chrony_uses_nts(conf)
