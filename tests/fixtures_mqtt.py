"""pytest fixture `mosquitto`: a private broker per test (it starts in ~50 ms, so function scope
keeps tests isolated — a test may restart or kill it — at no real cost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.rig.mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto.start(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()
        # Shown by pytest only when the test failed.
        print(f"--- {broker.log_file} ---\n{broker.log_tail(50)}")
