"""scripts/bootstrap.sh refuses clearly: an unsupported OS, missing packages without root; and it
makes .venv again when the one it finds was made elsewhere (a copied checkout)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

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


# --- a .venv made elsewhere ---------------------------------------------------------------------
PYTHON = "/usr/bin/python3"


def mismatch(venv: Path, python: str = PYTHON) -> subprocess.CompletedProcess[str]:
    """scripts/venv.sh's check, as bootstrap and install run it."""
    return subprocess.run(["bash", "-c", '. "$0"; venv_mismatch "$1" "$2"',
                           str(repo_root() / "scripts" / "venv.sh"), str(venv), python],
                          capture_output=True, text=True, timeout=30)


def copy_checkout(dest: Path) -> None:
    """This checkout's files as they are now (committed or not), without .venv or .git."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=repo_root(), capture_output=True, check=True, timeout=30)
    for name in filter(None, r.stdout.decode().split("\0")):
        src = repo_root() / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.skipif(not Path(PYTHON).exists(), reason="needs Debian's python3")
def test_a_venv_copied_to_another_folder_is_told_apart_from_one_made_there(tmp_path: Path):
    made = tmp_path / "made" / ".venv"
    subprocess.run([PYTHON, "-m", "venv", str(made)], check=True, timeout=120)
    assert mismatch(made).returncode == 0 and mismatch(made).stdout == ""

    copied = tmp_path / "copied" / ".venv"
    shutil.copytree(made, copied, symlinks=True)
    r = mismatch(copied)
    assert r.returncode == 1 and r.stdout.strip() == f"its pyvenv.cfg says it was made as {made}"

    # Older Pythons write no `command =` line: the scripts' shebangs still tell.
    cfg = copied / "pyvenv.cfg"
    cfg.write_text("".join(line for line in cfg.read_text().splitlines(True)
                           if not line.startswith("command =")))
    r = mismatch(copied)
    assert r.returncode == 1 and f"runs {made}/bin/python" in r.stdout

    # Made here, but from a Python the service user may not read (pyenv under /root).
    cfg = made / "pyvenv.cfg"
    pyenv = "/root/.pyenv/versions/3.11.7/bin"
    cfg.write_text(cfg.read_text().replace("home = /usr/bin", f"home = {pyenv}"))
    r = mismatch(made)
    assert r.returncode == 1
    assert r.stdout.strip() == f"it was made from the Python in {pyenv}, not {PYTHON}"


@pytest.mark.skipif(not Path(PYTHON).exists(), reason="needs Debian's python3")
def test_bootstrap_remakes_a_venv_copied_with_the_checkout_then_leaves_it_alone(tmp_path: Path):
    """`cp -r . /opt/portvakt && make bootstrap`: the copy's .venv ran the original's code."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(original / ".venv")], check=True,
                   timeout=60)
    copy_checkout(copy)
    shutil.copytree(original / ".venv", copy / ".venv", symlinks=True)
    # Up to date as far as the old bootstrap could tell: the stamp matches pyproject.toml.
    stamp = hashlib.sha256((copy / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (copy / ".venv" / ".portvakt-installed").write_text(stamp + "\n")

    r = subprocess.run(["bash", str(copy / "scripts" / "bootstrap.sh")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (f"bootstrap: .venv was not made here with {PYTHON} (its pyvenv.cfg says it was made "
            f"as {original / '.venv'}): removing it and making it again") in r.stderr
    assert f"bootstrap: creating .venv with {PYTHON}" in r.stderr
    venv = copy / ".venv"
    assert (venv / "bin" / "portvakt").read_text().splitlines()[0] == f"#!{venv}/bin/python"
    assert f"home = {Path(PYTHON).parent}\n" in (venv / "pyvenv.cfg").read_text()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
                           capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert where.stdout.strip() == str(copy / "gateway" / "__init__.py")

    t0 = time.monotonic()
    again = subprocess.run(["bash", str(copy / "scripts" / "bootstrap.sh")], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and again.stderr == ""  # nothing to do, nothing said
    assert time.monotonic() - t0 < 10
