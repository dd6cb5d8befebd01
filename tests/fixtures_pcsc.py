"""pcscd + vpcd virtual readers, isolated from any system pcscd.

libpcsclite reads PCSCLITE_CSOCK_NAME once per process, so one pcscd serves the whole test
session (readers Door0..Door3); each test gets it with no card inserted and leaves none behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gateway.rig.pcsc import PcscRig


@pytest.fixture(scope="session")
def pcsc_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscRig]:
    rig = PcscRig.start(tmp_path_factory.mktemp("pcsc"), ["Door0", "Door1", "Door2", "Door3"])
    previous = os.environ.get("PCSCLITE_CSOCK_NAME")
    os.environ["PCSCLITE_CSOCK_NAME"] = str(rig.socket)
    try:
        yield rig
    finally:
        rig.stop()
        if previous is None:
            os.environ.pop("PCSCLITE_CSOCK_NAME", None)
        else:
            os.environ["PCSCLITE_CSOCK_NAME"] = previous


@pytest.fixture
def pcsc_rig(pcsc_service: PcscRig) -> Iterator[PcscRig]:
    """The session's pcscd, with every card removed after the test."""
    assert pcsc_service.pcscd.alive(), pcsc_service.pcscd.log_tail()
    try:
        yield pcsc_service
    finally:
        for key in list(pcsc_service.cards):
            reader, _, slot = key.partition("/")
            pcsc_service.remove(reader, slot=int(slot), wait=True)
