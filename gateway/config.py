"""Configuration: TOML validated once at start into frozen, typed objects.

Every error names the file, the key (dotted, with list indexes) and the expected form. Relative
paths resolve against the gateway's state directory (systemd's StateDirectory).
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.errors import ConfigError
from printer_drivers.config import PrintConfig, parse_print_config

if TYPE_CHECKING:
    from gateway.sync.config import CrlFetchConfig, SyncConfig

T = TypeVar("T")
IDENTITY_SOURCES = ("upn", "email", "serial", "cn")
DEFAULT_CONFIG = Path("/etc/portvakt/portvakt.toml")
PIV_AID_HEX = "A000000308000010000100"


@dataclass(frozen=True)
class ProfileConfig:
    name: str
    eku: tuple[str, ...]
    policies: tuple[str, ...]
    identity: str
    issuers: tuple[Path, ...]


STANCES = ("deny", "allow")


@dataclass(frozen=True)
class Stance:
    """What a door does when revocation cannot be checked fully or the clock is untrusted:
    deny, or allow with an alarm."""

    revocation_unknown: str = "deny"
    crl_stale: str = "deny"
    clock_behind: str = "deny"


@dataclass(frozen=True)
class TrustConfig:
    anchors: tuple[Path, ...]
    intermediates: tuple[Path, ...]
    crls: tuple[Path, ...]
    profiles: tuple[ProfileConfig, ...]
    clock_skew: float
    crl_grace: float
    revocation_unknown: str  # "deny" | "allow": no usable CRL for an issuer in the path
    crl_stale: str  # "deny" | "allow": a CRL past nextUpdate + grace
    clock_behind: str  # "deny" | "allow": the clock is behind the newest trusted time seen


@dataclass(frozen=True)
class BoardConfig:
    """A Modbus relay board: on TCP (`host`, `port`) or on an RTU serial line (`device`, `baud`).

    `timed_pulse`: the board ends a pulse by its own timer (its "flash on" registers), so a dead
    gateway cannot leave a fail-secure door unlocked. `watchdog_seconds`: the board de-energises
    every relay after this long without a request (0: not used)."""

    name: str
    host: str
    port: int
    device: str
    baud: int
    unit: int
    timeout: float
    poll_seconds: float
    timed_pulse: bool
    watchdog_seconds: int


@dataclass(frozen=True)
class DoorTimingConfig:
    access: float  # the strike stays unlocked this long after a grant
    extended_access: float  # the same for people flagged extended_access (accessibility)
    open_too_long: float  # a door open longer after a valid opening raises held-open
    pre_alarm: float  # the held-open pre-alarm starts this long before the alarm (0: none)
    relock_on_close: bool
    exit_button_unlocks: bool  # a press of the exit button also pulses the strike
    exit_shunt: float  # an opening this soon after an exit-button press is an exit


@dataclass(frozen=True)
class FeedbackConfig:
    """Optional feedback outputs (coils on the door's board): LEDs and a buzzer."""

    green: int | None
    red: int | None
    buzzer: int | None
    seconds: float


@dataclass(frozen=True)
class DoorConfig:
    name: str
    reader: str  # PC/SC reader name without its index ("" when read over nfc)
    nfc: str  # nfcpy device path, e.g. "usb:072f:2200" or "udp:127.0.0.1:15030" ("" if PC/SC)
    slot: int
    board: str
    relay: int
    energise_to_unlock: bool  # strike = "fail-secure" (True) or "fail-safe" (False)
    stance: Stance
    timing: DoorTimingConfig
    contact_input: int | None = None
    contact_closed_when: bool = True  # the input's value while the door is shut
    exit_input: int | None = None
    exit_pressed_when: bool = True  # the input's value while the button is pressed
    feedback: FeedbackConfig = FeedbackConfig(None, None, None, 1.0)

    @property
    def unlock_seconds(self) -> float:
        return self.timing.access


@dataclass(frozen=True)
class PolicyConfig:
    """Where the signed policy bundle comes from and the head-office keys that may sign it."""

    bundle: Path | None  # a bundle file offered at start and on reload (until MQTT sync)
    keys: tuple[Path, ...]  # pinned head-office verification keys (PEM public keys)


@dataclass(frozen=True)
class Config:
    file: Path
    gateway_id: str
    site: str
    state_dir: Path
    pcsc_socket: Path | None
    aids: tuple[bytes, ...]
    trust: TrustConfig
    boards: tuple[BoardConfig, ...]
    doors: tuple[DoorConfig, ...]
    policy: PolicyConfig
    print: PrintConfig | None = None  # None: no [[printers]], print release off
    mqtt: SyncConfig | None = None  # None: no [mqtt], no head-office sync
    # CRL distribution points fetched by the daemon itself ([crl]); with [mqtt] they are
    # mqtt.crl (SyncService runs the fetcher and wakes it on a head-office notice)
    crl_fetch: CrlFetchConfig | None = None

    @property
    def database(self) -> Path:
        return self.state_dir / "portvakt.db"


class Table:
    """A TOML table with typed getters whose errors name file and dotted key."""

    def __init__(self, file: str, prefix: str, data: dict[str, Any]) -> None:
        self.file, self.prefix, self.data = file, prefix, data

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def fail(self, k: str, expected: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), expected)

    def get(self, k: str, typ: type[T], expected: str, default: T | None = None) -> T:
        if k not in self.data:
            if default is None:
                raise self.fail(k, f"missing; expected {expected}")
            return default
        v = self.data[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise self.fail(k, f"expected {expected}, got {v!r}")
        return v

    def text(self, k: str, default: str | None = None) -> str:
        v = self.get(k, str, "a string", default)
        if not v and default is None:
            raise self.fail(k, "expected a non-empty string")
        return v

    def integer(self, k: str, lo: int, hi: int, default: int | None = None) -> int:
        v = self.get(k, int, f"an integer {lo}..{hi}", default)
        if not lo <= v <= hi:
            raise self.fail(k, f"expected an integer {lo}..{hi}, got {v}")
        return v

    def number(self, k: str, lo: float, hi: float, default: float | None = None) -> float:
        v = self.get(k, float, f"a number {lo}..{hi}", default)
        if not lo <= v <= hi:
            raise self.fail(k, f"expected a number {lo}..{hi}, got {v}")
        return v

    def index(self, k: str) -> int | None:
        """An optional 0-based coil or input number."""
        return self.integer(k, 0, 65535, -1) if k in self.data else None

    def boolean(self, k: str, default: bool) -> bool:
        return self.get(k, bool, "true or false", default)

    def strings(self, k: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        v = self.get(k, list, "a list of strings", list(default) if default is not None else None)
        if not all(isinstance(x, str) and x for x in v):
            raise self.fail(k, "expected a list of non-empty strings")
        return tuple(v)

    def choice(self, k: str, options: tuple[str, ...], default: str) -> str:
        v = self.text(k, default)
        if v not in options:
            raise self.fail(k, f"expected one of {', '.join(options)}, got {v!r}")
        return v

    def table(self, k: str, required: bool = False) -> Table:
        v = self.data.get(k, None)
        if v is None:
            if required:
                raise self.fail(k, "missing table")
            v = {}
        if not isinstance(v, dict):
            raise self.fail(k, "expected a table")
        return Table(self.file, f"{self.key(k)}.", v)

    def tables(self, k: str) -> list[Table]:
        v = self.data.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self.fail(k, "expected an array of tables ([[...]])")
        return [Table(self.file, f"{self.key(k)}[{i}].", x) for i, x in enumerate(v)]

    def reject_unknown(self, known: set[str]) -> None:
        for k in self.data:
            if k not in known:
                raise self.fail(k, f"unknown key; expected one of {', '.join(sorted(known))}")


def _unique(items: list[tuple[Table, str]], what: str) -> None:
    seen: set[str] = set()
    for t, name in items:
        if name in seen:
            raise t.fail("name" if what != "id" else "id", f"duplicate {what} {name!r}")
        seen.add(name)


def _identity_source(t: Table) -> str:
    v = t.text("identity", "upn")
    if v in IDENTITY_SOURCES:
        return v
    if v.startswith("oid:") and all(x.isdigit() for x in v[4:].split(".")) and v.count(".") >= 2:
        return v
    raise t.fail("identity", f"expected one of {', '.join(IDENTITY_SOURCES)} or oid:<dotted "
                             f"OID>, got {v!r}")


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at `path`; ConfigError naming the file when unreadable or not TOML."""
    file = str(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(file, "(file)", f"cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(file, "(file)", "expected UTF-8 text") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "(syntax)", f"expected valid TOML: {e}") from e


def add_config_options(p: argparse.ArgumentParser) -> None:
    """`--config` and `--state-dir`, as every subcommand that reads the gateway's config has."""
    p.add_argument("--config", type=Path, help=f"gateway configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--state-dir", type=Path, help="overrides [gateway] state_dir")


def load_config(path: Path, state_dir: Path | None = None) -> Config:
    """Read and validate `path`; raise ConfigError naming file, key and expected form."""
    file = str(path)
    raw = read_toml(Path(path))
    top = Table(file, "", raw)
    top.reject_unknown({"gateway", "trust", "readers", "boards", "doors", "policy", "print",
                       "printers", "mqtt", "crl"})

    gw = top.table("gateway", required=True)
    gw.reject_unknown({"id", "site", "state_dir"})
    sd = state_dir or Path(gw.text("state_dir", "/var/lib/portvakt"))

    def resolve(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else sd / q

    rd = top.table("readers")
    rd.reject_unknown({"pcsc_socket", "aids"})
    sock = rd.text("pcsc_socket", "")
    aids: list[bytes] = []
    for i, a in enumerate(rd.strings("aids", (PIV_AID_HEX,))):
        try:
            aid = bytes.fromhex(a)
        except ValueError:
            aid = b""
        if not 5 <= len(aid) <= 16:
            raise rd.fail(f"aids[{i}]", "expected an application identifier of 5-16 hex bytes")
        aids.append(aid)

    tr = top.table("trust", required=True)
    tr.reject_unknown({"anchors", "intermediates", "crls", "profiles", "clock_skew_seconds",
                       "crl_grace_seconds", "revocation_unknown", "crl_stale", "clock_behind"})
    profiles = []
    for p in tr.tables("profiles"):
        p.reject_unknown({"name", "eku", "policies", "identity", "issuers"})
        profiles.append((p, ProfileConfig(
            p.text("name"), p.strings("eku", ()), p.strings("policies", ()),
            _identity_source(p),
            tuple(resolve(x) for x in p.strings("issuers", ())))))
    _unique([(t, c.name) for t, c in profiles], "profile")
    anchors = tr.strings("anchors")
    if not anchors:
        raise tr.fail("anchors", "expected at least one trust anchor file")
    trust = TrustConfig(
        tuple(resolve(x) for x in anchors), tuple(resolve(x) for x in tr.strings("intermediates", ())),
        tuple(resolve(x) for x in tr.strings("crls", ())), tuple(c for _, c in profiles),
        tr.number("clock_skew_seconds", 0, 86400, 300.0),
        tr.number("crl_grace_seconds", 0, 30 * 86400, 0.0),
        tr.choice("revocation_unknown", STANCES, "deny"), tr.choice("crl_stale", STANCES, "deny"),
        tr.choice("clock_behind", STANCES, "deny"))

    boards = []
    for bt in top.tables("boards"):
        bt.reject_unknown({"name", "host", "port", "device", "baud", "unit", "timeout_seconds",
                           "poll_ms", "timed_pulse", "watchdog_seconds"})
        host, device = bt.text("host", ""), bt.text("device", "")
        if bool(host) == bool(device):
            raise bt.fail("host", "expected exactly one of host (Modbus TCP) or device (a serial "
                                  "port for Modbus RTU, e.g. /dev/ttyUSB0)")
        boards.append((bt, BoardConfig(
            bt.text("name"), host, bt.integer("port", 1, 65535, 502), device,
            bt.integer("baud", 1200, 921600, 9600), bt.integer("unit", 1, 247, 1),
            bt.number("timeout_seconds", 0.05, 30, 0.5),
            bt.integer("poll_ms", 10, 10_000, 100) / 1000, bt.boolean("timed_pulse", False),
            bt.integer("watchdog_seconds", 0, 3600, 0))))
    _unique([(t, c.name) for t, c in boards], "board")
    by_board = {c.name: c for _, c in boards}

    doors = []
    for d in top.tables("doors"):
        d.reject_unknown({"name", "reader", "nfc", "slot", "board", "relay", "strike",
                          "unlock_seconds", "extended_unlock_seconds", "open_too_long_seconds",
                          "pre_alarm_seconds", "relock_on_close", "exit_button_unlocks",
                          "exit_shunt_seconds", "contact_input", "contact_closed_when",
                          "exit_input", "exit_pressed_when", "feedback",
                          "revocation_unknown", "crl_stale", "clock_behind"})
        reader, nfc = d.text("reader", ""), d.text("nfc", "")
        if bool(reader) == bool(nfc):
            raise d.fail("reader", "expected exactly one of reader (a PC/SC reader name) or "
                                   "nfc (an nfcpy device such as usb:072f:2200)")
        board = d.text("board")
        if board not in by_board:
            raise d.fail("board", f"expected the name of a [[boards]] entry, got {board!r}")
        access = d.number("unlock_seconds", 0.1, 600, 5.0)
        extended = d.number("extended_unlock_seconds", access, 3600, max(access, 15.0))
        too_long = d.number("open_too_long_seconds", 1, 86400, 30.0)
        pre = d.number("pre_alarm_seconds", 0, too_long, min(10.0, too_long / 2))
        if pre >= too_long:
            raise d.fail("pre_alarm_seconds", f"expected less than open_too_long_seconds "
                                              f"({too_long:g})")
        timing = DoorTimingConfig(access, extended, too_long, pre,
                                  d.boolean("relock_on_close", True),
                                  d.boolean("exit_button_unlocks", False),
                                  d.number("exit_shunt_seconds", 0, 600, 10.0))
        fb = d.table("feedback")
        fb.reject_unknown({"green", "red", "buzzer", "seconds"})
        feedback = FeedbackConfig(fb.index("green"), fb.index("red"), fb.index("buzzer"),
                                  fb.number("seconds", 0.1, 10, 1.0))
        relay = d.integer("relay", 0, 65535)
        contact, exit_in = d.index("contact_input"), d.index("exit_input")
        if contact is not None and contact == exit_in:
            raise d.fail("exit_input", f"expected another input than contact_input ({contact})")
        coils = [c for c in (relay, feedback.green, feedback.red, feedback.buzzer) if c is not None]
        if len(set(coils)) != len(coils):
            raise d.fail("feedback", f"expected coils other than the strike relay ({relay}) and "
                                     f"each other")
        doors.append((d, DoorConfig(
            d.text("name"), reader, nfc, d.integer("slot", 0, 15, 0), board, relay,
            d.choice("strike", ("fail-secure", "fail-safe"), "fail-secure") == "fail-secure",
            Stance(d.choice("revocation_unknown", STANCES, trust.revocation_unknown),
                   d.choice("crl_stale", STANCES, trust.crl_stale),
                   d.choice("clock_behind", STANCES, trust.clock_behind)),
            timing, contact,
            d.choice("contact_closed_when", ("active", "inactive"), "active") == "active",
            exit_in,
            d.choice("exit_pressed_when", ("active", "inactive"), "active") == "active",
            feedback)))
    _unique([(t, c.name) for t, c in doors], "door")
    seen_readers: dict[tuple[str, int], str] = {}
    for t, c in doors:
        other = seen_readers.setdefault((c.reader or c.nfc, c.slot), c.name)
        if other != c.name:
            raise t.fail("reader", f"reader {c.reader!r} slot {c.slot} is already door {other!r}")
    # Two doors driving one coil, or reading one input as different things, is a wiring error.
    used: dict[tuple[str, str, int], str] = {}
    for t, c in doors:
        b = by_board[c.board]
        bus = b.device or f"{b.host}:{b.port}"
        for field, kind, n in (("relay", "coil", c.relay), ("feedback", "coil", c.feedback.green),
                               ("feedback", "coil", c.feedback.red),
                               ("feedback", "coil", c.feedback.buzzer),
                               ("contact_input", "input", c.contact_input),
                               ("exit_input", "input", c.exit_input)):
            if n is None:
                continue
            other = used.setdefault((f"{bus}/{b.unit}", kind, n), c.name)
            if other != c.name:
                raise t.fail(field, f"{kind} {n} of board {c.board!r} is already used by door "
                                    f"{other!r}")

    printing = _printers(raw, file, resolve, by_board, doors, used)

    mqtt: SyncConfig | None = None
    crl_fetch: CrlFetchConfig | None = None
    if "mqtt" in raw or "crl" in raw:
        import dataclasses

        # gateway.sync.config builds on this module's Table: imported here, not at the top
        from gateway.sync.config import parse_crl_fetch, parse_sync_config

        if "crl" in raw:
            crl_fetch = parse_crl_fetch(top.table("crl"))
        mq = raw.get("mqtt")
        if mq is not None:
            if not isinstance(mq, dict):
                raise ConfigError(file, "mqtt", "expected a table ([mqtt])")
            mqtt = parse_sync_config(mq, file, resolve)
            if crl_fetch is not None:
                if mqtt.crl.urls:
                    raise ConfigError(file, "mqtt.crl", "the distribution points in one place: "
                                                        "[crl] or [mqtt.crl], not both")
                mqtt = dataclasses.replace(mqtt, crl=crl_fetch)
                crl_fetch = None

    pol = top.table("policy")
    pol.reject_unknown({"bundle", "keys"})
    bundle = pol.text("bundle", "")
    keys = tuple(resolve(k) for k in pol.strings("keys", ()))
    if bundle and not keys:
        raise pol.fail("keys", "expected at least one pinned head-office key to verify the bundle")
    policy = PolicyConfig(resolve(bundle) if bundle else None, keys)

    return Config(Path(path), gw.text("id"), gw.text("site"), sd,
                  Path(sock) if sock else None, tuple(aids), trust,
                  tuple(c for _, c in boards), tuple(c for _, c in doors), policy, printing, mqtt,
                  crl_fetch)


def _printers(raw: dict[str, Any], file: str, resolve: Any, boards: dict[str, BoardConfig],
              doors: list[tuple[Table, DoorConfig]],
              used: dict[tuple[str, str, int], str]) -> PrintConfig | None:
    """[print] and [[printers]] (printer_drivers/config.py), checked against the doors: a
    printer's reader is not a door's, its feedback board exists and its coils are free."""
    cfg = parse_print_config(raw, file, resolve)
    if not cfg.printers:
        return None
    door_readers = {(c.reader or c.nfc, c.slot): c.name for _, c in doors}
    for i, p in enumerate(cfg.printers):
        key = f"printers[{i}]"
        door = door_readers.get((p.reader or p.nfc, p.slot))
        if door is not None:
            raise ConfigError(file, f"{key}.{'reader' if p.reader else 'nfc'}",
                              f"a reader of its own: {p.reader or p.nfc!r} slot {p.slot} is "
                              f"door {door!r}'s reader")
        fb = p.feedback
        if fb is None:
            continue
        b = boards.get(fb.board)
        if b is None:
            raise ConfigError(file, f"{key}.feedback.board",
                              f"expected the name of a [[boards]] entry, got {fb.board!r}")
        bus = b.device or f"{b.host}:{b.port}"
        for colour, n in (("green", fb.green), ("red", fb.red)):
            if n is None:
                continue
            if b.timed_pulse and n >= 256:
                raise ConfigError(file, f"{key}.feedback.{colour}",
                                  f"a coil below 256 (board {b.name!r} times its pulses), got {n}")
            other = used.setdefault((f"{bus}/{b.unit}", "coil", n), f"printer {p.name}")
            if other != f"printer {p.name}":
                owner = other if other.startswith("printer ") else f"door {other!r}"
                raise ConfigError(file, f"{key}.feedback.{colour}",
                                  f"a free coil: coil {n} of board {b.name!r} is already used "
                                  f"by {owner}")
    return cfg
