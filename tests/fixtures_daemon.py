"""A running `portvakt run` daemon against the real rig (pcscd readers, a relay board), with a
signed policy bundle and a supervised door (contact and exit button wired)."""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.bundle import make_bundle, sign_bundle
from gateway.control import request
from gateway.pki_demo import DemoPki
from gateway.rig.board import RelayBoardRig
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, wait_until
from tests.fixtures_board import mbpoll_write_coil

UNLOCK_SECONDS = 0.8
STRIKE, GREEN, RED = 3, 6, 7  # coils
CONTACT, EXIT = 2, 5  # discrete inputs: contact active while shut (NC reed), exit active pressed
OPEN_TOO_LONG, PRE_ALARM = 1.6, 0.6

POLICY: dict[str, Any] = {
    "time_zone": "Europe/Stockholm",
    "doors": ["front"],
    "access_levels": {"front": {"resources": ["front"], "schedule": "always"}},
    "groups": {"staff": {"access_levels": ["front"]}, "security": {"access_levels": ["front"]}},
    "people": [
        {"id": "p-alice", "identities": ["upn:alice@demo.example"], "groups": ["staff", "security"]},
        {"id": "p-bob", "identities": ["upn:bob@demo.example"], "groups": ["staff"]},
        {"id": "p-carol", "identities": ["upn:carol@demo.example"], "groups": ["staff"]},
    ],
    "lockdown_override": "security",
}


class HeadOffice:
    """Signs policy bundles, as head office will; its public key is what a gateway pins."""

    def __init__(self, folder: Path, site: str = "test") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.public = folder / "policy-key.pem"
        self.public.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.site = site

    def sign(self, content: dict[str, Any], version: int, *, site: str | None = None,
             valid: timedelta = timedelta(days=7)) -> bytes:
        now = datetime.now(UTC)
        return sign_bundle(make_bundle(content, version=version, site=site or self.site,
                                       issued_at=now - timedelta(minutes=1),
                                       not_after=now + valid), self.key)

    def publish(self, path: Path, content: dict[str, Any], version: int, **kw: Any) -> None:
        path.write_bytes(self.sign(content, version, **kw))


@dataclass
class Daemon:
    proc: RigProcess
    db: Path
    board: RelayBoardRig
    state: Path
    config: Path
    bundle: Path
    office: HeadOffice

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            try:
                rows = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
            except sqlite3.OperationalError:
                return []
        out = []
        for r in rows:
            if kind is None or r["kind"] == kind:
                ev = dict(r)
                ev.update(json.loads(ev.pop("data") or "{}"))
                out.append(ev)
        return out

    def wait_event(self, kind: str, count: int = 1, timeout: float = 15) -> dict[str, Any]:
        wait_until(lambda: len(self.events(kind)) >= count, timeout, f"{count} x {kind}",
                   self.proc)
        return self.events(kind)[count - 1]

    def ask(self, doc: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        return request(self.state / "control.sock", {"id": 1, **doc}, timeout)


def write_config(path: Path, pki: DemoPki, board_port: int, socket: Path, *,
                 bundle: Path | None = None, key: Path | None = None, board: str = "",
                 board_extra: str = "", door: str = "", crls: list[Path] | None = None,
                 intermediates: list[Path] | None = None) -> None:
    policy = f'[policy]\nbundle = "{bundle}"\nkeys = ["{key}"]\n' if bundle else ""
    crl_files = crls if crls is not None else [pki.crl, pki.root.parent / "root.crl"]
    cas = [pki.issuing, *(intermediates or [])]
    path.write_text(f"""
[gateway]
id = "gw-test"
site = "test"
[readers]
pcsc_socket = "{socket}"
aids = ["A000000308000010000100", "F0504F525456414B5401"]
[trust]
anchors = ["{pki.root}"]
intermediates = [{", ".join(f'"{c}"' for c in cas)}]
crls = [{", ".join(f'"{c}"' for c in crl_files)}]
[[trust.profiles]]
name = "piv"
eku = ["2.16.840.1.101.3.6.8"]
[[boards]]
name = "b1"
{board or f'host = "127.0.0.1"{chr(10)}port = {board_port}'}
poll_ms = 20
{board_extra}
[[doors]]
name = "front"
reader = "Door0"
board = "b1"
relay = {STRIKE}
unlock_seconds = {UNLOCK_SECONDS}
contact_input = {CONTACT}
exit_input = {EXIT}
open_too_long_seconds = {OPEN_TOO_LONG}
pre_alarm_seconds = {PRE_ALARM}
feedback = {{ green = {GREEN}, red = {RED}, seconds = 0.3 }}
{door}
{policy}""")


def start_daemon(tmp_path: Path, cfg: Path, state: Path, name: str = "portvakt") -> RigProcess:
    return RigProcess(name, [sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg),
                             "--state-dir", str(state)], tmp_path / f"{name}.log")


@pytest.fixture
def head_office(tmp_path: Path) -> HeadOffice:
    return HeadOffice(tmp_path / "head-office")


@pytest.fixture
def daemon_factory(tmp_path: Path, demo_pki: DemoPki, pcsc_rig: PcscRig, head_office: HeadOffice):
    """Starts daemons with extra board/door TOML lines; stops everything afterwards."""
    started: list[tuple[RigProcess, RelayBoardRig]] = []

    def start(*, board_toml: str = "", board_extra: str = "", door_toml: str = "", serial: str | None = None,
              timers: bool = True, coils: int = 16,
              policy: dict[str, Any] | None = None, crls: list[Path] | None = None,
              intermediates: list[Path] | None = None) -> Daemon:
        n = len(started)
        board = RelayBoardRig.start(tmp_path / f"board{n}", serial=serial, timers=timers,
                                    coils=coils)
        if serial is None and coils > STRIKE:
            # Leave the strike energised (unlocked), as a gateway that died mid-pulse could have.
            mbpoll_write_coil(board.port, STRIKE, True)
        board.set_input(CONTACT, True)  # the door is shut
        cfg = tmp_path / f"portvakt{n}.toml"
        bundle = tmp_path / f"policy{n}.bundle"
        head_office.publish(bundle, policy or POLICY, 1)
        write_config(cfg, demo_pki, board.port, pcsc_rig.socket, bundle=bundle,
                     key=head_office.public, board=board_toml, board_extra=board_extra,
                     door=door_toml, crls=crls, intermediates=intermediates)
        state = tmp_path / f"state{n}"
        proc = start_daemon(tmp_path, cfg, state, f"portvakt{n}")
        started.append((proc, board))
        d = Daemon(proc, state / "portvakt.db", board, state, cfg, bundle, head_office)
        d.wait_event("reader.online")
        d.wait_event("board.online")
        return d

    try:
        yield start
    finally:
        for proc, board in started:
            proc.stop()
            board.stop()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory()
