"""`portvakt doctor`: is everything this gateway needs there and answering? One line a check;
exit 1 if any fails. Read-only: it never drives a relay nor takes a reader from the daemon."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import DEFAULT_CONFIG, Config, add_config_options, load_config
from gateway.errors import PortvaktError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False  # shown, but not a failure


def _run(name: str, fn: Callable[[], str | tuple[bool, str]]) -> Check:
    try:
        out = fn()
    except PortvaktError as e:
        return Check(name, False, str(e))
    except OSError as e:
        return Check(name, False, f"{e.strerror or e}")
    if isinstance(out, tuple):
        return Check(name, out[0], out[1])
    return Check(name, True, out)


def check_trust(cfg: Config) -> str:
    from gateway.trust.store import load_trust_store

    store = load_trust_store(dataclasses.replace(cfg.trust, crls=()))
    profiles = ", ".join(p.name for p in cfg.trust.profiles) or "NONE (no card opens anything)"
    return f"{len(store.anchors)} anchor(s), profiles: {profiles}"


def check_crls(cfg: Config) -> tuple[bool, str]:
    from gateway.trust.revocation import RevocationStore, crl_status

    crl_dir = cfg.state_dir / "crl"
    if not crl_dir.is_dir():
        return False, f"no CRLs installed in {crl_dir} (revocation unknown: doors deny)"
    rows = [crl_status(i, time.time(), cfg.trust.crl_grace) for i in RevocationStore(crl_dir).all()]
    if not rows:
        return False, f"no CRLs installed in {crl_dir} (revocation unknown: doors deny)"
    stale = [r for r in rows if r["state"] == "stale"]
    worst = max(rows, key=lambda r: r["age_s"])
    text = f"{len(rows)} CRL(s), oldest {worst['age_s'] / 3600:.1f} h ({worst['issuer']})"
    if stale:
        return False, text + f"; STALE: {', '.join(r['issuer'] for r in stale)}"
    return True, text


def check_policy(cfg: Config) -> tuple[bool, str]:
    from gateway.bundle import PolicyStore, load_keys, stale

    if not cfg.policy.keys:
        return False, "no [policy] keys pinned: no policy can be verified, every door denies"
    keys = load_keys(cfg.policy.keys)
    if not cfg.database.exists():
        return False, f"no state database yet ({cfg.database}): the daemon has not run"
    with PolicyStore(cfg.database, keys, cfg.site) as store:
        b = store.current()
    if b is None:
        return False, "no policy received yet: every door denies"
    if stale(b, time.time()):
        return False, f"version {b.version} is past its not_after ({b.not_after:%Y-%m-%d %H:%M})"
    return True, f"version {b.version}, issued {b.issued_at:%Y-%m-%d %H:%M}"


def check_clock() -> tuple[bool, str]:
    from gateway.clock import clock_status

    st = clock_status()
    return st.synchronised is not False, st.describe()


def check_readers(cfg: Config) -> tuple[bool, str]:
    from readers.pcsc import list_readers, resolve_reader

    if cfg.pcsc_socket is not None:
        os.environ["PCSCLITE_CSOCK_NAME"] = str(cfg.pcsc_socket)
    pcsc = [d for d in cfg.doors if d.reader]
    nfc = [d.name for d in cfg.doors if d.nfc]
    missing, found = [], []
    if pcsc:
        names = list_readers()
        for d in pcsc:
            try:
                resolve_reader(names, d.reader, d.slot)
                found.append(d.name)
            except PortvaktError as e:
                missing.append(f"{d.name} ({e})")
    text = f"{len(found)}/{len(pcsc)} PC/SC door readers present"
    if nfc:
        text += f"; nfc doors not probed (the daemon owns them): {', '.join(nfc)}"
    if missing:
        return False, text + "; MISSING: " + "; ".join(missing)
    return True, text


def check_boards(cfg: Config) -> tuple[bool, str]:
    from door_drivers.modbus import open_boards
    from gateway.daemon import board_params

    async def probe() -> list[str]:
        bad = []
        boards = open_boards(board_params(b) for b in cfg.boards)
        for b, board in zip(cfg.boards, boards, strict=True):
            relay = next((d.relay for d in cfg.doors if d.board == b.name), 0)
            try:
                await board.read_coils(relay, 1)
            except PortvaktError as e:
                bad.append(f"{b.name}: {e}")
            finally:
                await board.close()
        return bad

    bad = asyncio.run(probe())
    if bad:
        return False, "; ".join(bad)
    return True, f"{len(cfg.boards)} board(s) answer"


def check_daemon(cfg: Config) -> tuple[bool, str]:
    from gateway.control import request

    try:
        ans = request(cfg.state_dir / "control.sock", {"id": 1, "cmd": "status"}, 5)
    except (ConnectionError, OSError) as e:
        return False, f"not running or not reachable ({e})"
    faulted = [d["name"] for d in ans.get("doors", []) if d.get("faulted")]
    alarms = [f"{d['name']}: {d['alarm']}" for d in ans.get("doors", []) if d.get("alarm")]
    text = f"running, site mode {ans.get('site_mode')}"
    if ans.get("journal_fault"):
        return False, text + f"; JOURNAL FAULT: {ans['journal_fault']}"
    if faulted:
        return False, text + f"; faulted doors: {', '.join(faulted)}"
    return True, text + (f"; alarms: {', '.join(alarms)}" if alarms else "")


def check_printers(cfg: Config) -> tuple[bool, str]:
    """cupsd answers the requests a release makes (Get-Jobs, Get-Printer-Attributes) on the
    configured server and every printer may print now; a refusal carries cupsd's own words."""
    from printer_drivers.model import refusal
    from printer_drivers.release import NoJournal, PrintRelease

    pc = cfg.print
    assert pc is not None

    async def probe() -> list[tuple[str, tuple[str, str] | None]]:
        async with PrintRelease(pc, NoJournal()) as engine:
            await engine.sync(full=True)  # the held-job listing every release starts with
            out = []
            for p in pc.printers:
                state = await engine.printer_state(p.name)
                out.append((p.name, refusal(state) if state else ("queue-not-found", "")))
            return out

    states = asyncio.run(probe())
    bad = [f"{name}: {r[0]}{f' ({r[1]})' if r[1] else ''}" for name, r in states if r]
    if bad:
        return False, f"cupsd at {pc.server} answers; {'; '.join(bad)}"
    return True, f"cupsd at {pc.server} answers; {len(states)} printer(s) ready"


def check_broker(cfg: Config) -> tuple[bool, str]:
    """The broker accepts this gateway's credentials over TLS with the pinned CA. A session of
    its own (clean, another client id): the daemon's persistent session is not touched."""
    from gateway.sync.mqtt import BrokerError, connect, read_secret
    from gateway.sync.service import broker_params

    m = cfg.mqtt
    assert m is not None
    password = (read_secret(m.password_file, str(cfg.file), "mqtt.password_file")
                if m.password_file is not None else None)
    daemons = broker_params(m, cfg.site, cfg.gateway_id, password)
    params = dataclasses.replace(daemons, client_id=f"{daemons.client_id}-doctor",
                                 persistent=False, timeout=min(m.connect_timeout, 10.0))

    async def probe() -> None:
        async with connect(params):
            pass

    try:
        asyncio.run(probe())
    except BrokerError as e:
        return False, f"{m.host}:{m.port}: {e}"
    text = f"{m.host}:{m.port} accepts this gateway (TLS, pinned CA)"
    expected = f"{cfg.site}/{cfg.gateway_id}"
    if m.username is not None and m.username != expected:
        # The broker let us in, but the shipped ACL grants topics by user name.
        text += (f"; note: user {m.username!r} is not {expected!r}, which the shipped broker "
                 f"ACL (config/mosquitto/acl) needs to let this gateway use its topics")
    return True, text


EXTRA_CHECKS: list[Callable[[Config], Check | None]] = []  # site-specific checks may add more


def run_checks(cfg: Config) -> list[Check]:
    checks = [
        _run("trust store", lambda: check_trust(cfg)),
        _run("CRLs", lambda: check_crls(cfg)),
        _run("policy", lambda: check_policy(cfg)),
        _run("clock", check_clock),
        _run("readers", lambda: check_readers(cfg)),
        _run("relay boards", lambda: check_boards(cfg)),
        _run("daemon", lambda: check_daemon(cfg)),
    ]
    if cfg.print is not None:
        checks.append(_run("printers", lambda: check_printers(cfg)))
    if cfg.mqtt is not None:
        checks.append(_run("head office", lambda: check_broker(cfg)))
    for extra in EXTRA_CHECKS:
        c = extra(cfg)
        if c is not None:
            checks.append(c)
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    path = args.config or DEFAULT_CONFIG
    try:
        cfg = load_config(path, args.state_dir)
    except PortvaktError as e:
        checks = [Check("configuration", False, str(e))]
    else:
        checks = [Check("configuration", True, f"{path}: {len(cfg.doors)} door(s), "
                                               f"{len(cfg.boards)} board(s)"), *run_checks(cfg)]
    if args.json:
        doc: list[dict[str, Any]] = [dataclasses.asdict(c) for c in checks]
        print(json.dumps(doc, indent=2))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<14} {c.detail}")
    return 0 if all(c.ok for c in checks) else 1


def register(sub: Any) -> None:
    d = sub.add_parser("doctor", help="check everything the gateway needs; exit 1 if any fails")
    add_config_options(d)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_doctor)
