"""`make demo` keeps working: the whole scenario, as a newcomer sees it, exits 0."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import repo_root


def test_the_demo_plays_its_scenario_and_stops_everything():
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "demo"], capture_output=True,
                       text=True, timeout=120, cwd=repo_root())
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "granted to p-alice" in out and "strike relay (coil 0) on, then off" in out
    assert "refused (revoked)" in out and "refused (proof-failed)" in out
    assert "refused (expired)" in out
    assert "granted to p-carol" in out and "lab door's NFC reader" in out
    assert "strike relay (coil 1) on, then off" in out
    assert "ALARM forced-open at door front" in out and "door opened (exit)" in out
    assert "p-carol refused (lockdown)" in out and "p-alice granted: member of the lockdown" in out
    assert "released by p-carol at floor1 and printed" in out and "identical to what she sent" in out
    assert "Alice badges at the front door: granted; doors decide" in out
    assert "head office (its collector's SQLite) has events 1.." in out
    assert "✘ the demo" not in out and "DIFFERENT" not in out
    assert out.rstrip().endswith("done")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "door_drivers.simulator" not in ps and "phone serve" not in ps
    assert "portvakt-demo-" not in ps  # cupsd, ippeveprinter, mosquitto, the collector: all gone
    assert "hq collect" not in ps
