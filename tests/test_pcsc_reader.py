"""The PC/SC transport against a real pcscd with vpcd virtual readers and virtual cards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from gateway.domain import CardFailure, CardRead, ReaderStatus
from gateway.errors import ReaderError
from gateway.pki_demo import MOBILE_AID, DemoPki
from gateway.rig.pcsc import PcscRig
from readers.pcsc import PcscReader, list_readers, resolve_reader, split_name
from readers.piv import PIV_AID
from readers.profile import PivCakProfile

PROFILE = PivCakProfile((PIV_AID, MOBILE_AID))


def test_pyscard_lists_one_reader_per_door(pcsc_rig: PcscRig):
    bases = {split_name(n) for n in list_readers()}
    assert {("Door0", 0), ("Door0", 1), ("Door1", 0), ("Door1", 1)} <= bases


def test_reader_identity_ignores_the_enumeration_index():
    assert resolve_reader(["Door0 03 00", "Door1 00 00"], "Door0", 0) == "Door0 03 00"
    assert resolve_reader(["Door1 00 00"], "Door0", 0) is None


def test_ambiguous_reader_mapping_is_refused():
    with pytest.raises(ReaderError, match="ambiguous"):
        resolve_reader(["Door0 00 00", "Door0 01 00"], "Door0", 0)


async def next_card(it) -> CardRead | CardFailure:
    while True:
        item = await asyncio.wait_for(it.__anext__(), 15)
        if not isinstance(item, ReaderStatus):
            return item


async def test_inserted_card_yields_one_pki_cak_read(pcsc_rig: PcscRig, demo_pki: DemoPki):
    async with PcscReader("front", "Door0", 0, PROFILE) as reader:
        it = reader.presentations()
        status = await asyncio.wait_for(it.__anext__(), 10)
        assert status == ReaderStatus("front", True, "Door0 00 00")
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        read = await next_card(it)
        assert isinstance(read, CardRead)
        assert read.reader == "front" and read.transport == "pcsc" and read.aid == PIV_AID
        cert = x509.load_der_x509_certificate(read.certificates[0])
        assert "alice" in str(cert.extensions)


async def test_phone_credential_over_a_contactless_pcsc_reader(pcsc_rig, demo_pki):
    async with PcscReader("front", "Door1", 0, PROFILE) as reader:
        it = reader.presentations()
        pcsc_rig.insert("Door1", demo_pki.cards["carol"])
        read = await next_card(it)
        assert isinstance(read, CardRead) and read.aid == MOBILE_AID


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("not-piv", "not-piv"), ("truncated-tlv", "malformed-card-data"),
    ("absurd-length", "malformed-card-data"),
])
async def test_misbehaving_card_is_refused_and_the_reader_keeps_working(
        pcsc_rig, demo_pki, tmp_path: Path, behaviour, reason):
    bad = tmp_path / "bad.card.json"
    doc = json.loads(demo_pki.cards["alice"].read_text())
    bad.write_text(json.dumps({**doc, "behaviour": behaviour}))
    async with PcscReader("front", "Door0", 0, PROFILE) as reader:
        it = reader.presentations()
        pcsc_rig.insert("Door0", bad)
        failure = await next_card(it)
        assert isinstance(failure, CardFailure) and failure.reason == reason, failure
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        assert isinstance(await next_card(it), CardRead)


def test_opensc_reads_the_virtual_card_as_standard_piv(pcsc_rig, demo_pki, tmp_path):
    """Independent check: OpenSC's PIV driver reads the card-authentication certificate (04)."""
    card = pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    out = tmp_path / "cert.pem"
    env = pcsc_rig.env
    # Wait (bounded) for pcscd to see the card: opensc-tool -l shows it once inserted.
    for _ in range(100):
        listing = subprocess.run(["opensc-tool", "-r", "Door0 00 00", "-a"], env=env,
                                 capture_output=True, text=True, timeout=20)
        if listing.returncode == 0:
            break
        assert card.alive(), card.log_tail()
        subprocess.run(["pcsc_scan", "-t", "1"], env=env, capture_output=True, timeout=5, check=False)
    r = subprocess.run(["pkcs15-tool", "--reader", "Door0 00 00", "--read-certificate", "04",
                        "--output", str(out)], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr + r.stdout
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    alice = json.loads(demo_pki.cards["alice"].read_text())["certificate"]
    assert cert == x509.load_pem_x509_certificate(alice.encode())
    assert dataclasses.is_dataclass(CardRead)


def card_with(demo_pki, tmp_path: Path, behaviour: str) -> Path:
    path = tmp_path / f"{behaviour}.card.json"
    doc = json.loads(demo_pki.cards["alice"].read_text())
    path.write_text(json.dumps({**doc, "behaviour": behaviour}))
    return path


async def test_a_stalling_card_times_out_and_the_reader_serves_the_next(pcsc_rig, demo_pki,
                                                                        tmp_path):
    async with PcscReader("front", "Door0", 0, PROFILE, timeout=0.5) as reader:
        it = reader.presentations()
        pcsc_rig.insert("Door0", card_with(demo_pki, tmp_path, "stall"))
        failure = await next_card(it)
        assert isinstance(failure, CardFailure) and failure.reason == "card-timeout"
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])  # the stalled card is pulled first
        assert isinstance(await next_card(it), CardRead)


async def test_a_card_pulled_mid_transaction_ends_cleanly(pcsc_rig, demo_pki, tmp_path):
    async with PcscReader("front", "Door0", 0, PROFILE) as reader:
        it = reader.presentations()
        pcsc_rig.insert("Door0", card_with(demo_pki, tmp_path, "leave-mid-transaction"))
        failure = await next_card(it)
        assert isinstance(failure, CardFailure) and failure.reason == "card-removed", failure
        pcsc_rig.insert("Door0", demo_pki.cards["alice"])
        assert isinstance(await next_card(it), CardRead)


async def test_reader_that_disappears_is_reported_offline_and_picked_up_again(pcsc_rig,
                                                                              demo_pki):
    async with PcscReader("front", "Door2", 0, PROFILE) as reader:
        it = reader.presentations()
        first = await asyncio.wait_for(it.__anext__(), 10)
        assert isinstance(first, ReaderStatus) and first.online
        await asyncio.to_thread(pcsc_rig.restart)
        statuses: list[ReaderStatus] = []
        while len(statuses) < 2 or not statuses[-1].online:
            item = await asyncio.wait_for(it.__anext__(), 15)
            assert isinstance(item, ReaderStatus)
            statuses.append(item)
        assert not statuses[0].online and statuses[-1].online
        pcsc_rig.insert("Door2", demo_pki.cards["alice"])
        assert isinstance(await next_card(it), CardRead)
