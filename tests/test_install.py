"""`make install`: a site's gateway without the test rig, laid out in a temporary root (DESTDIR).

One install for the module (a wheel built and installed from pip's cache, ~30 s); the tests then
look at what it laid out, at what is in its venv, run its launcher, and install again on top."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.pki_demo import DemoPki
from tests.conftest import repo_root

PREFIX = "/opt/portvakt"
PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(not Path(PYTHON).exists() or shutil.which("dpkg-query") is None,
                                reason="make install is for Debian: needs /usr/bin/python3 and dpkg")


@dataclass(frozen=True)
class Installed:
    root: Path  # DESTDIR
    stderr: str  # what `make install` said

    @property
    def venv(self) -> Path:
        return self.root / PREFIX.lstrip("/") / "venv"

    @property
    def launcher(self) -> Path:
        return self.root / "usr/local/bin/portvakt"

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def make_install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(["make", "-s", "-C", str(repo_root()), "install", f"DESTDIR={root}"],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("destdir")
    r = make_install(root)
    assert r.returncode == 0, r.stderr
    yield Installed(root, r.stderr)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_install_lays_out_folders_configuration_and_service_files(installed: Installed):
    etc, state = installed.path("/etc/portvakt"), installed.path("/var/lib/portvakt")
    assert mode(etc) == 0o750 and mode(state) == 0o750 and mode(state / "trust") == 0o750
    for name in ("portvakt.toml", "example.toml", "demo.toml"):
        assert mode(etc / name) == 0o640, name
    example = (repo_root() / "config" / "example.toml").read_text()
    assert (etc / "portvakt.toml").read_text() == example
    assert (etc / "example.toml").read_text() == example
    # Owned by root, group portvakt where that group exists (not on a test machine, as a rule).
    try:
        import grp

        group = grp.getgrnam("portvakt").gr_gid
    except KeyError:
        group = 0
    if os.geteuid() == 0:
        assert (etc.stat().st_uid, etc.stat().st_gid) == (0, group)
        assert ((state / "trust").stat().st_uid, (state / "trust").stat().st_gid) == (0, group)

    unit = installed.path("/etc/systemd/system/portvakt.service").read_text()
    assert f"\nExecStart={PREFIX}/venv/bin/portvakt run --config /etc/portvakt/portvakt.toml\n" in unit
    assert "User=portvakt" in unit and "/.venv/" not in unit
    assert installed.path("/usr/lib/sysusers.d/portvakt.conf").read_text() == \
        (repo_root() / "config/systemd/portvakt.sysusers").read_text()
    assert installed.path("/etc/polkit-1/rules.d/60-portvakt-pcscd.rules").read_text() == \
        (repo_root() / "config/polkit/60-portvakt-pcscd.rules").read_text()
    for f in ("/etc/systemd/system/portvakt.service", "/usr/lib/sysusers.d/portvakt.conf",
              "/etc/polkit-1/rules.d/60-portvakt-pcscd.rules"):
        assert mode(installed.path(f)) == 0o644, f

    assert mode(installed.launcher) == 0o755
    assert f'exec "{installed.venv}/bin/portvakt" "$@"' in installed.launcher.read_text()


def test_install_never_enables_the_service_and_says_what_comes_first(installed: Installed):
    steps = [line.split(". ", 1)[1] for line in installed.stderr.splitlines()
             if line.startswith("install:   ")]
    assert steps[0].startswith("trust files: the CA certificates (and CRLs) into /var/lib/portvakt/trust/")
    assert steps[1].startswith("configuration: edit /etc/portvakt/portvakt.toml")
    assert steps[2] == "portvakt doctor"
    assert steps[3] == "systemctl enable --now portvakt"
    assert "nothing was enabled or started" in installed.stderr
    (needs,) = [line for line in installed.stderr.splitlines() if "a site needs" in line]
    assert "pcscd libpcsclite1" in needs
    for rig in ("mosquitto", "cups", "mbpoll", "socat", "swig", "vsmartcard-vpcd", "opensc"):
        assert rig not in needs
    assert not installed.path("/etc/systemd/system/multi-user.target.wants").exists()


def test_the_installed_venv_holds_the_gateway_as_a_wheel_and_no_development_tools(installed: Installed):
    py = installed.venv / "bin" / "python"
    cfg = (installed.venv / "pyvenv.cfg").read_text()
    assert f"home = {Path(PYTHON).parent}\n" in cfg  # Debian's Python, readable by the service user
    r = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True,
                       text=True, timeout=120, check=True)
    names = {p["name"].lower() for p in json.loads(r.stdout)}
    assert {"portvakt", "pyscard", "cryptography", "aiomqtt", "pymodbus"} <= names
    assert not names & {"pytest", "pytest-asyncio", "hypothesis", "ruff", "mypy", "hatchling"}
    # Not editable: the project's files are in site-packages and its record points at a wheel.
    (info,) = installed.venv.glob("lib/python3*/site-packages/portvakt-*.dist-info")
    direct = json.loads((info / "direct_url.json").read_text())
    assert "archive_info" in direct and "dir_info" not in direct
    assert direct["url"].endswith(".whl")
    site = info.parent
    assert (site / "gateway" / "_templates" / "example.toml").is_file()
    for pth in site.glob("*.pth"):
        assert str(repo_root()) not in pth.read_text(), pth


def test_the_launcher_runs_doctor_from_the_installed_venv_not_the_checkout(installed: Installed,
                                                                         demo_pki: DemoPki,
                                                                         tmp_path: Path):
    state = installed.path("/var/lib/portvakt")
    for f in (demo_pki.root, demo_pki.issuing):
        shutil.copy(f, state / "trust" / f.name)
    cfg = tmp_path / "portvakt.toml"
    text = installed.path("/etc/portvakt/portvakt.toml").read_text()
    cfg.write_text(text.replace('state_dir = "/var/lib/portvakt"', f'state_dir = "{state}"', 1))

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONVERBOSE"] = "1"  # every module file the process loads, named on stderr
    t0 = time.monotonic()
    r = subprocess.run([str(installed.launcher), "doctor", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, env=env, cwd=tmp_path)
    # No readers, boards, daemon or NTP on a test machine: failed checks are exit 1, not a crash.
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert time.monotonic() - t0 < 30
    assert "Traceback" not in r.stderr
    assert f"ok    configuration  {cfg}: 1 door(s), 1 board(s)" in r.stdout
    assert "ok    trust store    1 anchor(s), profiles: piv-card-auth" in r.stdout
    for check in ("CRLs", "policy", "clock", "readers", "relay boards", "daemon"):
        assert any(line[6:].startswith(check) for line in r.stdout.splitlines()), check
    site = next(installed.venv.glob("lib/python3*/site-packages"))
    assert f"{site}/gateway/doctor.py" in r.stderr
    assert str(repo_root()) not in r.stderr


def test_installing_again_keeps_the_sites_configuration_and_venv(installed: Installed):
    site = installed.path("/etc/portvakt/portvakt.toml")
    site.write_text(site.read_text() + "# the site's own\n")
    python = (installed.venv / "bin" / "python").resolve()
    venv_inode = installed.venv.stat().st_ino
    r = make_install(installed.root)
    assert r.returncode == 0, r.stderr
    assert site.read_text().endswith("# the site's own\n")
    assert "portvakt.toml: kept" in r.stderr
    assert "creating" not in r.stderr and "making it again" not in r.stderr
    assert installed.venv.stat().st_ino == venv_inode
    assert (installed.venv / "bin" / "python").resolve() == python


def test_install_into_the_real_root_needs_root(tmp_path: Path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake / "id").chmod(0o755)
    r = subprocess.run(["bash", str(repo_root() / "scripts" / "install.sh")], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
                                                   "DESTDIR": ""})
    assert r.returncode == 1
    assert "installing into / needs root: sudo make install (or DESTDIR=DIR for a test root)" in r.stderr
