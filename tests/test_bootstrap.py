"""scripts/bootstrap.sh refuses clearly: an unsupported OS, missing packages without root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import repo_root

SCRIPT = repo_root() / "scripts" / "bootstrap.sh"


def run(env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60, **kw)


def test_unsupported_os_is_named_not_a_stack_trace(tmp_path: Path):
    rel = tmp_path / "os-release"
    rel.write_text('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    r = run({"PORTVAKT_OS_RELEASE": str(rel)})
    assert r.returncode == 1
    assert "unsupported operating system 'Fedora Linux 40'" in r.stderr
    assert "supports Debian and Ubuntu" in r.stderr


def test_missing_os_release_is_explained(tmp_path: Path):
    r = run({"PORTVAKT_OS_RELEASE": str(tmp_path / "nothing")})
    assert r.returncode == 1 and "cannot tell the operating system" in r.stderr


def test_missing_packages_are_named_when_not_root(tmp_path: Path):
    fake = tmp_path / "bin"
    fake.mkdir()
    # dpkg-query that knows no package, id that says we are not root.
    (fake / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    r = run({"PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.returncode == 1
    assert "missing Debian packages: pcscd vsmartcard-vpcd" in r.stderr
    assert "sudo apt-get install pcscd" in r.stderr
