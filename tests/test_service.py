"""The systemd unit and running as the gateway's own unprivileged user.

The unit is checked with systemd's own tools (syntax, and the exposure score of its hardening).
Then the daemon runs end to end under a non-root uid (nobody) with a pcscd of its own whose
socket that user can reach: a card at the reader pulses the relay, the control socket belongs to
that user with mode 0660, the journal and policy store are its files."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.pki_demo import DemoPki
from gateway.rig.board import RelayBoardRig
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, wait_until
from tests.conftest import repo_root
from tests.fixtures_daemon import POLICY, STRIKE, Daemon, HeadOffice, write_config

NOBODY = 65534


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    text = (repo_root() / "config" / "systemd" / "portvakt.service").read_text()
    # verify checks that ExecStart exists; the real path is the install location.
    path = tmp_path / "portvakt.service"
    path.write_text(text.replace("/opt/portvakt/venv/bin/portvakt", shutil.which("true") or "/bin/true"))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_is_valid_and_hardened(unit: Path):
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "portvakt.service" not in r.stderr, r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for portvakt.service: ([\d.]+)", r.stdout)
    assert m is not None, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0  # "OK" on systemd's scale (0 best .. 10 worst)
    text = unit.read_text()
    for line in ("User=portvakt", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                 "ProtectSystem=strict", "StateDirectory=portvakt", "ExecReload=/bin/kill -HUP"):
        assert line in text


@pytest.fixture
def world(demo_pki: DemoPki) -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's own tmp is root-only)."""
    top = Path(tempfile.mkdtemp(prefix="portvakt-nonroot-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def checkout_reachable() -> Iterator[None]:
    """The daemon runs from this checkout's .venv; a checkout in a private folder (mktemp -d:
    0700) is not reachable by another uid. For the length of the test give others read and
    search on the checkout itself (Python lists it to import from it) and search only (x) on the
    folders above it that lack it; then put the modes back."""
    changed: list[tuple[Path, int]] = []
    try:
        for folder, need in ((repo_root(), stat.S_IROTH | stat.S_IXOTH),
                             *((p, stat.S_IXOTH) for p in repo_root().parents)):
            mode = stat.S_IMODE(folder.stat().st_mode)
            if mode & need != need:
                folder.chmod(mode | need)
                changed.append((folder, mode))
        yield
    finally:
        for folder, mode in changed:
            folder.chmod(mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
@pytest.mark.usefixtures("checkout_reachable")
def test_the_daemon_runs_as_an_unprivileged_user(world: Path, demo_pki: DemoPki):
    pki = world / "pki"
    shutil.copytree(demo_pki.root.parent, pki)
    pcsc = PcscRig.start(world / "pcsc", ["Door0"])
    board = RelayBoardRig.start(world / "board")
    proc = None
    try:
        for p in (world / "pcsc", pcsc.socket.parent):
            p.chmod(0o755)
        office = HeadOffice(world / "office")
        bundle = world / "office" / "site.bundle"
        office.publish(bundle, POLICY, 1)
        cfg = world / "portvakt.toml"
        moved = DemoPki(pki / "root.pem", pki / "issuing.pem", pki / demo_pki.crl.name,
                        {k: pki / "cards" / v.name for k, v in demo_pki.cards.items()})
        write_config(cfg, moved, board.port, pcsc.socket, bundle=bundle, key=office.public)
        state = world / "state"
        state.mkdir(mode=0o750)
        os.chown(state, NOBODY, NOBODY)
        for path in world.rglob("*"):  # readable, not writable, by the daemon's user
            if path.is_dir():
                path.chmod(path.stat().st_mode | 0o055)
            elif path != pcsc.socket:
                path.chmod(path.stat().st_mode | 0o044)
        proc = RigProcess("portvakt-nobody", [
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg),
            "--state-dir", str(state)], world / "daemon.log")
        d = Daemon(proc, state / "portvakt.db", board, state, cfg, bundle, office)
        d.wait_event("reader.online")
        d.wait_event("board.online")
        sock = state / "control.sock"
        assert sock.stat().st_uid == NOBODY and stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert (state / "portvakt.db").stat().st_uid == NOBODY
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        # setpriv execs the daemon: the process we started is the daemon, as nobody.
        assert uids == [str(NOBODY)] * 4
        pcsc.insert("Door0", moved.cards["alice"])
        assert d.wait_event("access.granted")["person"] == "p-alice"
        wait_until(lambda: any(w["coil"] == STRIKE and w["value"] for w in board.writes()), 5,
                   "the relay pulsed by the unprivileged daemon")
    finally:
        if proc is not None:
            proc.stop()
        board.stop()
        pcsc.stop()
