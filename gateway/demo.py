"""`portvakt demo` (`make demo`): the gateway with virtual cards and phones, a simulated relay
board, real pcscd, cupsd + ippeveprinter and mosquitto with head office's collector, driven by
config/demo.toml and narrated in plain words. With a terminal the dashboard shows it all live
(`--no-dashboard`: the timeline only). Stops everything it started."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config
from gateway.journal import Event, read_events
from gateway.pki_demo import make_demo_pki
from gateway.rig.board import RelayBoardRig
from gateway.rig.cups import PrintRig, shipped_policy
from gateway.rig.mosquitto import Mosquitto
from gateway.rig.pcsc import PcscRig
from gateway.rig.proc import RigProcess, port_open, wait_until

BOLD, GREEN, RED, DIM, RESET = "\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m"


class Narrator:
    """The demo's timeline. `quiet`: keep the lines (the dashboard owns the terminal) and print
    them at `replay()`; `on_line(text, kind)` also receives each step and result as it happens."""

    def __init__(self, quiet: bool = False) -> None:
        self.colour = sys.stdout.isatty()
        self.t0 = time.monotonic()
        self.quiet = quiet
        self.kept: list[str] = []
        self.on_line: Callable[[str, str], object] | None = None

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.colour else text

    def say(self, text: str) -> None:
        line = f"{self._c(DIM, f'[{time.monotonic() - self.t0:6.2f}s]')} {text}"
        if self.quiet:
            self.kept.append(line)
        else:
            print(line, flush=True)

    def _tell(self, text: str, kind: str) -> None:
        if self.on_line is not None:
            with contextlib.suppress(Exception):  # the dashboard may be closing
                self.on_line(text, kind)

    def step(self, text: str) -> None:
        if self.quiet:
            self.kept.append("")
        else:
            print(flush=True)
        self.say(self._c(BOLD, text))
        self._tell(text, "step")

    def good(self, text: str) -> None:
        self.say("  " + self._c(GREEN, "✔ " + text))
        self._tell("✔ " + text, "good")

    def bad(self, text: str) -> None:
        self.say("  " + self._c(RED, "✘ " + text))
        self._tell("✘ " + text, "bad")

    def note(self, text: str) -> None:
        self.say("  " + text)

    def replay(self) -> None:
        """Print what was kept while quiet, then print as it comes."""
        for line in self.kept:
            print(line, flush=True)
        self.kept.clear()
        self.quiet = False


class JournalWatch:
    """Follows the daemon's journal from outside, as an auditor would."""

    def __init__(self, db: Path, gateway: str, daemon: RigProcess) -> None:
        self.db, self.gateway, self.daemon = db, gateway, daemon
        self.seen = 0

    def _new(self) -> list[Event]:
        if not self.db.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(self.db, timeout=1)) as conn:
                return read_events(conn, self.gateway, after=self.seen)
        except sqlite3.Error:
            return []

    def wait(self, match: Callable[[Event], bool], what: str, timeout: float = 15) -> Event:
        found: list[Event] = []

        def check() -> bool:
            for ev in self._new():
                self.seen = ev.seq
                if match(ev):
                    found.append(ev)
                    return True
            return False

        wait_until(check, timeout, what, self.daemon)
        return found[0]


def _is_decision_at(door: str, ev: Event) -> bool:
    return ev.kind.startswith("access.") and ev.door == door


def _strike_writes(board: RelayBoardRig, coil: int) -> list[dict[str, Any]]:
    return [w for w in board.writes() if w["coil"] == coil]


def _has_writes(board: RelayBoardRig, coil: int, n: int) -> bool:
    return len(_strike_writes(board, coil)) >= n


# The demo site's policy, as head office would sign it: who may open which door, when.
DEMO_POLICY: dict[str, Any] = {
    "time_zone": "Europe/Stockholm",
    "doors": ["front", "lab"],
    "printers": ["floor1"],
    "schedules": {"office-hours": [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                    "from": "07:00", "to": "19:00"}]},
    "holidays": [{"date": "2026-12-24", "schedule": None}, {"date": "2026-12-25", "schedule": None}],
    "access_levels": {"everywhere": {"resources": ["front", "lab"], "schedule": "always"},
                      "front-door": {"resources": ["front"], "schedule": "always"},
                      "printing": {"resources": ["floor1"], "schedule": "always"}},
    "groups": {"lab-staff": {"access_levels": ["everywhere", "printing"]},
               "office": {"access_levels": ["front-door", "printing"]},
               "security": {"access_levels": ["everywhere"]}},
    "people": [
        {"id": "p-alice", "identities": ["upn:alice@demo.example"], "groups": ["lab-staff", "security"],
         "print_user": "alice"},
        {"id": "p-bob", "identities": ["upn:bob@demo.example"], "groups": ["office"],
         "print_user": "bob"},
        {"id": "p-carol", "identities": ["upn:carol@demo.example"], "groups": ["lab-staff"],
         "print_user": "carol"},
        {"id": "p-dave", "identities": ["upn:dave@demo.example"], "groups": ["office"],
         "print_user": "dave"},
    ],
    "lockdown_override": "security",
}


def write_demo_policy(folder: Path, site: str, version: int = 1) -> None:
    """Play head office: a signing key, its public half pinned by the gateway, a signed bundle."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gateway.bundle import make_bundle, sign_bundle

    folder.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    (folder / "head-office.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    now = datetime.now(UTC)
    bundle = make_bundle(DEMO_POLICY, version=version, site=site,
                         issued_at=now - timedelta(minutes=5), not_after=now + timedelta(days=7))
    (folder / "site.bundle").write_bytes(sign_bundle(bundle, key))


def run_demo(keep: bool = False, dashboard: bool | None = None) -> int:
    """Play the demo; `dashboard` None: show the dashboard when stdout is a terminal."""
    from gateway.cli import template_dir

    config_file = template_dir() / "demo.toml"
    work = Path(tempfile.mkdtemp(prefix="portvakt-demo-"))
    state = work / "state"
    stack: list[Callable[[], None]] = []
    show = sys.stdout.isatty() and sys.stdin.isatty() if dashboard is None else dashboard
    n = Narrator(quiet=show)
    try:
        cfg = load_config(config_file, state)
        if show:
            return _with_dashboard(n, cfg, config_file, work, state, stack)
        return _scenario(n, cfg, config_file, work, state, stack)
    finally:
        n.step("Stopping everything the demo started")
        for stop in reversed(stack):
            with contextlib.suppress(Exception):
                stop()
        if keep:
            n.note(f"demo folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        n.note("done")
        n.replay()


def _with_dashboard(n: Narrator, cfg: Config, config_file: Path, work: Path, state: Path,
                    stack: list[Callable[[], None]]) -> int:
    """The scenario on a thread while the dashboard (tui/) runs in this terminal; each step of
    the narration shows as a notification, the whole timeline is printed afterwards."""
    import threading

    from tui.app import Dashboard

    result: list[int] = []
    ready = threading.Event()

    def play() -> None:
        try:
            result.append(_scenario(n, cfg, config_file, work, state, stack, ready))
        except Exception as e:  # shown in the timeline; the dashboard stays up
            n.bad(f"the demo stopped: {e}")
            result.append(1)
        finally:
            ready.set()
            n.step("Demo finished: press q to leave the dashboard")

    player = threading.Thread(target=play, name="demo-scenario", daemon=True)
    player.start()
    ready.wait()  # the daemon's control socket exists once the gateway runs
    if not result:
        app = Dashboard(state / "control.sock")
        n.on_line = lambda text, kind: app.call_from_thread(
            app.notify, text, severity="error" if kind == "bad" else "information",
            timeout=6) if app.is_running else None
        app.run()
        n.on_line = None
        if player.is_alive():
            print("dashboard closed; the scenario plays on to its end", flush=True)
    n.replay()
    player.join()
    return result[0] if result else 1


def _port_in_use(n: Narrator, config_file: Path, ports: dict[str, int]) -> bool:
    for key, port in ports.items():
        if port_open(port):
            n.bad(f"port {port} ({key} in {config_file}) is in use; stop what uses it and run "
                  "the demo again")
            return True
    return False


def _tap_phone(work: Path, stack: list[Callable[[], None]], nfc: str, card: Path) -> RigProcess:
    """A phone (the demo's mobile credential app) tapped once on nfcpy's udp reader `nfc`."""
    port = nfc.rsplit(":", 1)[1]
    phone = RigProcess("phone", [sys.executable, "-m", "gateway.cli", "phone", "serve",
                                 "--udp", port, "--card", str(card), "--taps", "1"],
                       work / f"phone-{port}.log")
    stack.append(phone.stop)
    return phone


def _start_print(n: Narrator, cfg: Config, work: Path, state: Path,
                 stack: list[Callable[[], None]]) -> PrintRig:
    assert cfg.print is not None and cfg.print.socket is not None
    rig = PrintRig.start(work / "print", printers=[p.queue for p in cfg.print.printers],
                         findme=cfg.print.findme_queue, driverless=True, held=True,
                         policy=shipped_policy(), default_auth="Basic")
    stack.append(rig.stop)
    cfg.print.socket.parent.mkdir(parents=True, exist_ok=True)
    cfg.print.socket.unlink(missing_ok=True)
    cfg.print.socket.symlink_to(rig.socket_path)
    n.note(f"cupsd + ippeveprinter started: printer queue {', '.join(rig.printers)} (driverless "
           f"PDF) and the stopped find-me queue {cfg.print.findme_queue!r}; jobs wait there, "
           f"held, until their owner badges at a printer")
    return rig


def _start_head_office(n: Narrator, cfg: Config, config_file: Path, work: Path,
                       stack: list[Callable[[], None]]) -> tuple[Mosquitto, Path]:
    from gateway.cli import template_dir

    m = cfg.mqtt
    assert m is not None and m.password_file is not None
    user = f"{cfg.site}/{cfg.gateway_id}"
    users = {user: secrets.token_urlsafe(12), "hq": secrets.token_urlsafe(12)}
    broker = Mosquitto.start(work / "mqtt", users=users,
                             acl=(template_dir() / "mosquitto" / "acl").read_text(),
                             settings=("max_queued_messages 20000",), tls_port=m.port)
    stack.append(broker.stop)
    m.ca_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(broker.ca_file, m.ca_file)
    for path, secret in ((m.password_file, users[user]), (work / "hq-password", users["hq"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    store = work / "head-office.db"
    collector = RigProcess("collector", [
        sys.executable, "-m", "gateway.cli", "hq", "collect", "--store", str(store),
        "--broker", f"127.0.0.1:{broker.tls_port}", "--ca-file", str(broker.ca_file),
        "--username", "hq", "--password-file", str(work / "hq-password")],
        work / "collector.log")
    stack.append(collector.stop)
    wait_until(lambda: "collecting into" in collector.log_tail(), 15, "the collector", collector)
    n.note(f"mosquitto on 127.0.0.1:{broker.tls_port} (TLS, passwords, the shipped ACL) and head "
           f"office's collector (portvakt hq collect) started")
    return broker, store


def _stored(store: Path, site: str, gateway: str) -> list[int]:
    try:
        with contextlib.closing(sqlite3.connect(store)) as conn:
            return [r[0] for r in conn.execute(
                "SELECT seq FROM events WHERE site = ? AND gateway = ? ORDER BY seq",
                (site, gateway))]
    except sqlite3.Error:
        return []


def _scenario(n: Narrator, cfg: Config, config_file: Path, work: Path, state: Path,
              stack: list[Callable[[], None]], ready: Any = None) -> int:
    n.step("Portvakt demo: one gateway, two doors, a printer, head office over MQTT")
    n.note(f"configuration: {config_file}")
    pki = make_demo_pki(state / "pki")
    n.note("demo PKI written: root CA -> issuing CA -> card certificates; CRL revokes Bob's card")
    write_demo_policy(state / "policy", cfg.site)
    n.note("site policy signed by 'head office' (Ed25519); the gateway pins its public key")

    ports = {"boards[0].port": cfg.boards[0].port}
    ports.update({f"nfc of {d.name}": int(d.nfc.rsplit(":", 1)[1]) for d in cfg.doors if d.nfc})
    if cfg.print is not None:
        ports.update({f"nfc of printer {p.name}": int(p.nfc.rsplit(":", 1)[1])
                      for p in cfg.print.printers if p.nfc})
    if cfg.mqtt is not None:
        ports["mqtt.port"] = cfg.mqtt.port
    if _port_in_use(n, config_file, ports):
        return 1

    readers = [d.reader for d in cfg.doors if d.reader]
    pcsc = PcscRig.start(work / "pcsc", readers)
    stack.append(pcsc.stop)
    os.environ["PCSCLITE_CSOCK_NAME"] = str(pcsc.socket)
    n.note(f"pcscd started with virtual readers {', '.join(readers)} (vpcd)")
    for d in cfg.doors:
        if d.nfc:
            n.note(f"door {d.name} reads phones over NFC ({d.nfc}, nfcpy's udp driver)")

    board_cfg = cfg.boards[0]
    board = RelayBoardRig.start(work / "board", port=board_cfg.port, unit=board_cfg.unit)
    for d in cfg.doors:
        if d.contact_input is not None:
            board.set_input(d.contact_input, True)  # every door shut (NC contacts active)
    stack.append(board.stop)
    n.note(f"simulated Modbus TCP relay board on 127.0.0.1:{board.port} "
           f"(try: mbpoll -m tcp -p {board.port} -a 1 -t 0 -0 -r 0 -c 4 -1 127.0.0.1)")
    printing = _start_print(n, cfg, work, state, stack) if cfg.print is not None else None
    office = _start_head_office(n, cfg, config_file, work, stack) if cfg.mqtt is not None \
        else None

    daemon = RigProcess("portvakt", [sys.executable, "-m", "gateway.cli", "run", "--config",
                                     str(config_file), "--state-dir", str(state)],
                        work / "daemon.log", env={**os.environ})
    stack.append(daemon.stop)
    watch = JournalWatch(state / "portvakt.db", cfg.gateway_id, daemon)
    readers_total = len(cfg.doors) + (len(cfg.print.printers) if cfg.print else 0)
    for _ in range(readers_total):
        watch.wait(lambda e: e.kind == "reader.online", "the gateway to see its readers")
    wait_until(lambda: all(_strike_writes(board, d.relay) for d in cfg.doors), 10,
               "every strike forced locked", daemon)
    n.good(f"gateway {cfg.gateway_id} running; relays forced locked at start; readers online")
    if ready is not None:
        ready.set()

    doors = {d.name: d for d in cfg.doors}
    front, lab = doors["front"], doors["lab"]
    scenes = [
        ("alice", front, "Alice presents her card at the front door"),
        ("bob", front, "Bob presents his card, revoked yesterday, at the front door"),
        ("mallory", front, "Mallory presents a card carrying a copy of Alice's certificate"),
        ("dave", front, "Dave presents his card, which expired last month"),
        ("carol", lab, "Carol taps her phone (mobile credential, its own AID) on the lab door's "
                       "NFC reader"),
    ]
    ok = True
    for card, door, text in scenes:
        n.step(text)
        writes_before = len(_strike_writes(board, door.relay))
        phone = _tap_phone(work, stack, door.nfc, pki.cards[card]) if door.nfc else None
        if phone is None:
            pcsc.insert(door.reader, pki.cards[card])
        ev = watch.wait(functools.partial(_is_decision_at, door.name),
                        f"a decision at door {door.name}")
        ms = ev.data.get("decision_ms")
        if ev.kind == "access.granted":
            n.good(f"granted to {ev.person} in {ms} ms: PKI-CAK proof and offline chain valid, "
                   f"CRL checked ({ev.data.get('revocation')})")
            wait_until(functools.partial(_has_writes, board, door.relay, writes_before + 2),
                       door.unlock_seconds + 5, "the relay to pulse")
            on, off = _strike_writes(board, door.relay)[writes_before:writes_before + 2]
            n.note(f"strike relay (coil {on['coil']}) on, then off {off['t'] - on['t']:.2f} s "
                   f"later (the board's own log); green LED flashed; door locked again")
        else:
            n.bad(f"refused ({ev.reason}) in {ms} ms: {ev.data.get('detail', '')}")
            if len(_strike_writes(board, door.relay)) != writes_before:
                n.bad("…but the relay moved: this is a bug")
                ok = False
        if phone is not None:
            phone.stop()
        else:
            pcsc.remove(door.reader, wait=True)

    if printing is not None:
        ok = _print_scene(n, cfg, work, stack, printing, board, pki.cards, watch) and ok
    ok = _supervision_scenes(n, cfg, board, pcsc, pki.cards, watch, state) and ok
    if office is not None:
        ok = _link_scene(n, cfg, office, pcsc, pki.cards, watch, state) and ok

    n.step("The journal (SQLite, on disk): what head office received")
    with contextlib.closing(sqlite3.connect(state / "portvakt.db")) as conn:
        for ev in read_events(conn, cfg.gateway_id):
            if ev.kind.startswith(("access.", "alarm.", "control.", "print.", "sync.")):
                who = ev.person or ev.data.get("user") or "-"
                where = ev.door or ev.data.get("printer") or "-"
                n.note(f"#{ev.seq:<3} {ev.kind:<22} at={where:<6} who={who:<8} "
                       f"reason={ev.reason or ev.data.get('mode') or '-'}")
    return 0 if ok else 1


def _print_scene(n: Narrator, cfg: Config, work: Path, stack: list[Callable[[], None]],
                 rig: PrintRig, board: RelayBoardRig, cards: dict[str, Path],
                 watch: JournalWatch) -> bool:
    assert cfg.print is not None
    printer = cfg.print.printers[0]
    n.step("Carol prints a report from her laptop: it waits, held, in the find-me queue")
    doc = work / "carol-report.pdf"
    data = b"%PDF-1.4\n% Carol's quarterly report\n" + secrets.token_bytes(16_384)
    doc.write_bytes(data)
    job = rig.submit("carol", doc, hold=False, queue=cfg.print.findme_queue)
    n.note(f"job {job} from carol, {len(data):,} bytes, held in {cfg.print.findme_queue!r} "
           f"(lpstat: {rig.lpstat('-o').strip().splitlines()[0]})")
    n.step(f"Carol taps her phone on the reader at printer {printer.name}")
    phone = _tap_phone(work, stack, printer.nfc, cards["carol"])
    ev = watch.wait(lambda e: e.kind in ("print.released", "print.nothing-to-print",
                                         "print.refused", "print.failed", "access.denied")
                    and e.data.get("printer") == printer.name, "the release at the printer")
    phone.stop()
    if ev.kind != "print.released":
        n.bad(f"not released: {ev.kind} ({ev.reason})")
        return False
    [printed] = rig.wait_printed(1, 15, printer=printer.queue)
    same = printed.read_bytes() == data
    (n.good if same else n.bad)(
        f"job {ev.data.get('job')} released by {ev.person} at {printer.name} and printed: "
        f"{printed.stat().st_size:,} bytes at the printer, "
        f"{'identical to' if same else 'DIFFERENT from'} what she sent")
    fb = printer.feedback
    if fb is not None and fb.green is not None:
        green = fb.green
        wait_until(lambda: any(w["coil"] == green for w in board.writes()), 5, "the green LED")
        n.note(f"green LED at the printer (coil {green}) flashed; anyone else's jobs stay held")
    return same


def _link_scene(n: Narrator, cfg: Config, office: tuple[Mosquitto, Path], pcsc: PcscRig,
                cards: dict[str, Path], watch: JournalWatch, state: Path) -> bool:
    from gateway.control import request

    broker, store = office
    sock = state / "control.sock"

    def status() -> dict[str, Any]:
        return request(sock, {"id": 1, "cmd": "status"}, 10)

    def delivered() -> bool:
        last = int(status()["journal"]["last_seq"])
        return _stored(store, cfg.site, cfg.gateway_id) == list(range(1, last + 1))

    wait_until(delivered, 20, "head office to have every event so far", watch.daemon)
    n.step("The link to head office goes down (the broker stops)")
    broker.stop()
    wait_until(lambda: status()["sync"]["connected"] is False, 15, "the gateway to notice",
               watch.daemon)
    front = next(d for d in cfg.doors if d.name == "front")
    pcsc.insert(front.reader, cards["alice"])
    ev = watch.wait(functools.partial(_is_decision_at, "front"), "a decision at front")
    pcsc.remove(front.reader, wait=True)
    (n.good if ev.kind == "access.granted" else n.bad)(
        f"Alice badges at the front door: {ev.kind.split('.')[1]}; doors decide on what the "
        f"gateway already has")
    backlog = status()["sync"]["backlog"]
    n.note(f"{backlog} event{'s' if backlog != 1 else ''} waiting in the journal on disk until "
           f"head office acknowledges {'them' if backlog != 1 else 'it'}")
    n.step("The link comes back")
    broker.restart()
    wait_until(delivered, 30, "the backlog to reach head office", watch.daemon)
    last = int(status()["journal"]["last_seq"])
    n.good(f"head office (its collector's SQLite) has events 1..{last} of {cfg.gateway_id}: "
           f"every one, in order, none twice; each acknowledged back to the gateway")
    return ev.kind == "access.granted"


def _supervision_scenes(n: Narrator, cfg: Config, board: RelayBoardRig, pcsc: PcscRig,
                        cards: dict[str, Path], watch: JournalWatch, state: Path) -> bool:
    """The door is supervised: forced open, exit button, and a technician's lockdown."""
    from gateway.control import request

    front = next(d for d in cfg.doors if d.name == "front")
    assert front.contact_input is not None and front.exit_input is not None
    n.step("Someone pulls the front door open without badging")
    board.set_input(front.contact_input, False)
    ev = watch.wait(lambda e: e.kind == "alarm.forced-open", "the forced-open alarm")
    n.bad(f"ALARM forced-open at door {ev.door} (the door contact opened with the strike locked)")
    board.set_input(front.contact_input, True)
    watch.wait(lambda e: e.kind == "alarm.cleared", "the alarm to clear")
    n.note("door shut again: alarm cleared, journaled")

    n.step("Someone inside presses the exit button and walks out")
    board.set_input(front.exit_input, True)
    watch.wait(lambda e: e.kind == "door.exit-request", "the exit request")
    board.set_input(front.exit_input, False)
    board.set_input(front.contact_input, False)
    ev = watch.wait(lambda e: e.kind == "door.opened", "the door to open")
    n.good(f"door opened ({ev.data.get('detail')}): the exit button shunts the forced-open alarm")
    board.set_input(front.contact_input, True)
    watch.wait(lambda e: e.kind == "door.closed", "the door to close")

    n.step("A technician locks the site down: portvakt door lockdown --site")
    sock = state / "control.sock"
    request(sock, {"id": 1, "cmd": "door.mode", "site": True, "mode": "lockdown"}, 10)
    ok = True
    for who, expect in (("carol", False), ("alice", True)):
        pcsc.insert(front.reader, cards[who])
        ev = watch.wait(functools.partial(_is_decision_at, "front"), "a decision at front")
        pcsc.remove(front.reader, wait=True)
        if ev.kind == "access.granted":
            n.good(f"{ev.person} granted: member of the lockdown-override group")
        else:
            n.bad(f"{ev.person or who} refused ({ev.reason})")
        ok = ok and (ev.kind == "access.granted") == expect
    request(sock, {"id": 1, "cmd": "door.mode", "site": True, "mode": "normal"}, 10)
    n.note("back to normal; every command is journaled with the technician's OS user")
    return ok
