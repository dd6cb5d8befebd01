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


def test_with_a_terminal_the_demo_shows_the_dashboard_while_the_scenario_plays():
    """In a pseudo-terminal: the dashboard draws (doors, sync, printers), each step arrives as
    a notification, q after "Demo finished" leaves it, then the timeline is printed, exit 0."""
    import fcntl
    import os
    import pty
    import re
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo"], stdin=slave,
                            stdout=slave, stderr=slave, cwd=repo_root(), start_new_session=True,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    out, quit_sent = b"", False
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the demo closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not quit_sent and b"Demo finished" in out:
                os.write(master, b"q")
                quit_sent = True
            if proc.poll() is not None and not ready:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?<>=]*[a-zA-Z]", "", out.decode(errors="replace"))
    assert quit_sent, text[-2000:]
    dashboard, _, timeline = text.partition("] Portvakt demo:")
    assert "Doors" in dashboard and "Head office" in dashboard and "Printers" in dashboard
    assert "granted to p-alice" in timeline and "identical to what she sent" in timeline
    assert timeline.rstrip().endswith("done")
