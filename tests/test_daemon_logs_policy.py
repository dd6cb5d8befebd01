"""The daemon's own logs (JSON with --log-format json) carry no personal identity numbers,
certificate names or identities; and a policy past its not_after raises the stale-policy
alarm while doors keep deciding on it."""

from __future__ import annotations

import copy
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.pki_demo import DemoPki
from gateway.rig.board import RelayBoardRig
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, wait_until
from tests.fixtures_daemon import CONTACT, POLICY, Daemon, HeadOffice, write_config

PNR = "19121212-1212"  # a personal identity number in the policy: never in a log line


def test_json_logs_parse_and_never_carry_personal_data(
        tmp_path: Path, demo_pki: DemoPki, pcsc_rig: PcscRig, head_office: HeadOffice) -> None:
    policy = copy.deepcopy(POLICY)
    policy["people"][0]["identities"].append(f"pnr:{PNR}")
    bundle = tmp_path / "policy.bundle"
    head_office.publish(bundle, policy, 1)
    cfg = tmp_path / "portvakt.toml"
    with RelayBoardRig.start(tmp_path / "board") as board:
        board.set_input(CONTACT, True)
        write_config(cfg, demo_pki, board.port, pcsc_rig.socket, bundle=bundle,
                     key=head_office.public)
        log = tmp_path / "daemon.log"
        proc = RigProcess("portvakt", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                       str(cfg), "--state-dir", str(tmp_path / "state"),
                                       "--log-format", "json"], log)
        try:
            d = Daemon(proc, tmp_path / "state" / "portvakt.db", board, tmp_path / "state", cfg,
                       bundle, head_office)
            d.wait_event("reader.online")
            for card, kind in (("alice", "access.granted"), ("bob", "access.denied"),
                               ("mallory", "access.denied")):
                pcsc_rig.insert("Door0", demo_pki.cards[card])
                d.wait_event(kind, 1 if card != "mallory" else 2)
                pcsc_rig.remove("Door0", wait=True)
            wait_until(lambda: log.read_text().count('"msg": "door front:') >= 3, 10,
                       "three decisions logged", proc)
        finally:
            proc.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all({"t", "level", "logger", "msg"} <= set(x) for x in lines)
    text = log.read_text()
    for personal in (PNR, PNR.replace("-", ""), "alice@demo.example", "bob@demo.example",
                     "CN=Alice", "CN=Bob"):
        assert personal not in text, personal
    assert any("granted" in x["msg"] for x in lines) and any("revoked" in x["msg"] for x in lines)


def test_a_policy_past_not_after_raises_the_stale_alarm_and_doors_keep_deciding(
        daemon: Daemon, pcsc_rig: PcscRig, demo_pki: DemoPki) -> None:
    # not_after is cut to whole seconds: 5 to 6 s from now, time for a slow machine to apply it.
    daemon.office.publish(daemon.bundle, POLICY, 2, valid=timedelta(seconds=6))
    answer: dict[str, Any] = daemon.ask({"cmd": "policy.reload"})
    assert answer["ok"] and answer["outcome"] == "applied"
    assert daemon.ask({"cmd": "status"})["policy"]["stale"] is False
    alarm = daemon.wait_event("alarm.policy-stale", timeout=20)
    assert alarm["version"] == 2
    assert daemon.ask({"cmd": "status"})["policy"]["stale"] is True
    pcsc_rig.insert("Door0", demo_pki.cards["alice"])
    granted = daemon.wait_event("access.granted")
    assert granted["person"] == "p-alice"
    assert len(daemon.events("alarm.policy-stale")) == 1
