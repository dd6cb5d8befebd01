"""The wheel carries the configuration templates (a wheel has no config/ folder)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import repo_root


def test_wheel_contains_packages_templates_and_entry_point(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(repo_root())],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("portvakt-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "portvakt = gateway.cli:main" in z.read(entry).decode()
    assert {"gateway/_templates/example.toml", "gateway/_templates/demo.toml"} <= names
    for pkg in ("gateway", "readers", "door_drivers", "printer_drivers", "tui"):
        assert f"{pkg}/__init__.py" in names
