"""Reader latency: from the reader reporting a card to the access decision, through real pcscd +
vpcd with an EC P-256 virtual PIV card; and 8 doors presenting at the same moment.

Beside it, in the same run: OpenSC's pkcs15-tool reading the same card's certificate alone, as an
independent reference for what a generic smart-card stack costs per card.

    python -m bench.readers [--taps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.access import check_presentation, decide
from gateway.config import ProfileConfig, TrustConfig
from gateway.domain import CardRead, ReaderStatus
from gateway.pki_demo import make_demo_pki
from gateway.policy import DecisionState, Policy
from gateway.rig.pcsc import PcscRig
from gateway.trust.store import load_trust_store
from readers.pcsc import PcscReader
from readers.profile import PivCakProfile

PIV_EKU = "2.16.840.1.101.3.6.8"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def next_read(it) -> CardRead:
    while True:
        item = await asyncio.wait_for(it.__anext__(), 20)
        if isinstance(item, ReaderStatus):
            continue
        assert isinstance(item, CardRead), item
        return item


async def measure(taps: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    pki = make_demo_pki(work / "pki")
    names = [f"Door{i}" for i in range(8)]
    rig = PcscRig.start(work / "pcsc", names)
    os.environ["PCSCLITE_CSOCK_NAME"] = str(rig.socket)
    store = load_trust_store(TrustConfig(
        (pki.root,), (pki.issuing,), (pki.crl, pki.root.parent / "root.crl"),
        (ProfileConfig("piv", (PIV_EKU,), (), "upn", ()),), 300, 0, "deny", "deny", "deny"))
    policy = Policy.from_dict({
        "time_zone": "Europe/Stockholm", "doors": names,
        "access_levels": {"all": {"resources": names, "schedule": "always"}},
        "groups": {"staff": {"access_levels": ["all"]}},
        "people": [{"id": "p-alice", "identities": ["upn:alice@demo.example"], "groups": ["staff"]},
                   {"id": "p-carol", "identities": ["upn:carol@demo.example"], "groups": ["staff"]}]})
    state = DecisionState()
    out: dict[str, object] = {}
    try:
        readers = [PcscReader(n, n, 0, PivCakProfile()) for n in names]
        for r in readers:
            await r.__aenter__()
        its = [r.presentations() for r in readers]

        async def decided(i: int) -> float:
            read = await next_read(its[i])
            d = decide(policy, check_presentation(store, read, time.time()), names[i],
                       datetime.now(UTC), state)
            assert d.granted, d
            return (time.monotonic() - read.detected_at) * 1000

        single = []
        for _ in range(taps):
            rig.insert("Door0", pki.cards["alice"])
            single.append(await decided(0))
            rig.remove("Door0", wait=True)
        out["single"] = single

        rounds = []
        for _ in range(max(3, taps // 10)):
            for n in names:
                rig.insert(n, pki.cards["alice"])  # eight card processes start at once
            rounds.append(await asyncio.gather(*(decided(i) for i in range(8))))
            for n in names:
                rig.remove(n, wait=True)
        out["eight"] = rounds

        rig.insert("Door1", pki.cards["alice"])
        rig.wait_slot("Door1", True)
        opensc = []
        for _ in range(5):
            t = time.perf_counter()
            done = subprocess.run(["pkcs15-tool", "--reader", "Door1 00 00",
                                   "--read-certificate", "04", "--output", str(work / "c.pem")],
                                  env=rig.env, capture_output=True, timeout=60)
            opensc.append((time.perf_counter() - t) * 1000)
            assert done.returncode == 0, done.stderr
        out["opensc"] = opensc
        for r in readers:
            await r.__aexit__(None, None, None)
        out["nfc"] = await measure_nfc(work, pki.cards["carol"], store, policy, taps)
    finally:
        rig.stop()
    return out


async def measure_nfc(work: Path, card: Path, store, policy, taps: int) -> list[float]:
    """A phone (its own process) tapping `taps` times on an nfcpy udp reader: from the reader
    sensing the target (before ISO-DEP activation) to the decision."""
    import socket

    from gateway.pki_demo import MOBILE_AID
    from gateway.rig.proc import RigProcess
    from readers.nfc import NfcReader
    from readers.piv import PIV_AID

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    phone = RigProcess("phone", [sys.executable, "-m", "readers.virtual.phone", "--udp", str(port),
                                 "--card", str(card), "--taps", str(taps), "--dwell", "0.05",
                                 "--away", "0.05"], work / "phone.log")
    reader = NfcReader("nfc-door", f"udp:127.0.0.1:{port}", PivCakProfile((PIV_AID, MOBILE_AID)))
    lat: list[float] = []
    try:
        async with reader:
            it = reader.presentations()
            while len(lat) < taps:
                read = await next_read(it)
                d = decide(policy, check_presentation(store, read, time.time()), "Door0",
                           datetime.now(UTC), DecisionState())
                assert d.granted, d
                lat.append((time.monotonic() - read.detected_at) * 1000)
    finally:
        phone.stop()
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--taps", type=int, default=30)
    args = ap.parse_args(argv)
    res = asyncio.run(measure(args.taps))
    single: list[float] = res["single"]  # type: ignore[assignment]
    rounds: list[list[float]] = res["eight"]  # type: ignore[assignment]
    opensc: list[float] = res["opensc"]  # type: ignore[assignment]
    worst = [max(r) for r in rounds]
    print(f"env: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, pcscd + vpcd, "
          f"EC P-256 virtual PIV card")
    print(f"{'':44} | {'ours':>22} | {'target':>10} | {'OpenSC pkcs15-tool':>20}")
    print(f"{'card reported -> decision, one door':44} | p50 {statistics.median(single):6.1f} ms "
          f"p95 {pct(single, 95):6.1f} ms | p50 <= 20 ms | read cert alone "
          f"{statistics.median(opensc):6.0f} ms")
    print(f"{'8 doors at once: slowest door per round':44} | max {max(worst):6.1f} ms "
          f"(median {statistics.median(worst):5.1f}) | <= 100 ms |")
    nfc: list[float] = res["nfc"]  # type: ignore[assignment]
    print(f"{'phone over nfcpy udp: activation -> decision':44} | p50 {statistics.median(nfc):6.1f} ms "
          f"p95 {pct(nfc, 95):6.1f} ms | p50 <= 50 ms |")
    print(f"single taps: {len(single)}; 8-door rounds: {len(rounds)}; phone taps: {len(nfc)}; "
          "every decision granted (alice; carol's phone); OpenSC: median of 5 process runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
