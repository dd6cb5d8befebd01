"""`portvakt card check` against a real pcscd reader, as a technician runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.pki_demo import DemoPki
from gateway.rig.pcsc import PcscRig


def check(rig: PcscRig, pki: DemoPki, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "card", "check", "--reader", "Door3",
         "--trust-anchor", str(pki.root), "--intermediate", str(pki.issuing),
         "--crl", str(pki.crl), "--crl", str(pki.root.parent / "root.crl"), *extra],
        capture_output=True, text=True, timeout=60, env=rig.env)


@pytest.mark.parametrize(("card", "code", "expect"), [
    ("alice", 0, "PATH AND PROOF VALID  revocation=good; no configured profile"),
    ("bob", 1, "REFUSED  revoked"),
    ("mallory", 1, "REFUSED  proof-failed"),
])
def test_card_check_reads_the_inserted_card(pcsc_rig, demo_pki, card, code, expect):
    pcsc_rig.insert("Door3", demo_pki.cards[card])
    pcsc_rig.wait_slot("Door3", True)
    r = check(pcsc_rig, demo_pki, "--timeout", "10")
    assert r.returncode == code, r.stdout + r.stderr
    assert expect in r.stdout


def test_card_check_json(pcsc_rig, demo_pki):
    pcsc_rig.insert("Door3", demo_pki.cards["alice"])
    r = check(pcsc_rig, demo_pki, "--json", "--timeout", "10")
    doc = json.loads(r.stdout)
    assert doc["valid"] and doc["aid"] == "A000000308000010000100" and doc["ms"] < 5000


def test_no_card_is_a_clear_error_with_exit_2(pcsc_rig, demo_pki):
    r = check(pcsc_rig, demo_pki, "--timeout", "0.5")
    assert r.returncode == 2 and "no card presented at 'Door3' within 0.5 s" in r.stderr
    assert "Traceback" not in r.stderr


def test_card_readers_lists_stable_names(pcsc_rig):
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "card", "readers", "--json"],
                       capture_output=True, text=True, timeout=30, env=pcsc_rig.env)
    names = {(x["reader"], x["slot"]) for x in json.loads(r.stdout)}
    assert ("Door3", 0) in names and ("Door0", 1) in names


def test_card_check_with_the_configured_profile(pcsc_rig, demo_pki, tmp_path):
    import shutil

    from tests.conftest import repo_root

    state = tmp_path / "state"
    shutil.copytree(demo_pki.root.parent, state / "pki")
    pcsc_rig.insert("Door3", demo_pki.cards["carol"])  # a phone's AID, via the config's list
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "card", "check", "--reader",
                        "Door3", "--config", str(repo_root() / "config" / "demo.toml"),
                        "--state-dir", str(state), "--timeout", "10"],
                       capture_output=True, text=True, timeout=60, env=pcsc_rig.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VALID  identity=upn:carol@demo.example profile=piv-card-auth" in r.stdout
    assert "AID F0504F525456414B5401" in r.stdout
