"""pytest fixture `print_rig`: dbus-daemon + ippeveprinter + cupsd with one raw queue, per test
(all three start in ~50 ms, so function scope keeps job ids and spools isolated at no real cost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.rig.cups import PrintRig


@pytest.fixture
def print_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrintRig]:
    rig = PrintRig.start(tmp_path_factory.mktemp("print_rig"))
    try:
        yield rig
    finally:
        rig.stop()
        # Shown by pytest only when the test failed.
        print(rig.error_log_tail(50))
