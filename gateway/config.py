"""Configuration: TOML validated once at start into frozen, typed objects.

Every error names the file, the key (dotted, with list indexes) and the expected form. Relative
paths resolve against the gateway's state directory (systemd's StateDirectory).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

T = TypeVar("T")
IDENTITY_SOURCES = ("upn", "email", "serial", "cn")
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
    name: str
    host: str
    port: int
    unit: int
    timeout: float


@dataclass(frozen=True)
class DoorConfig:
    name: str
    reader: str  # PC/SC reader name without its index ("" when read over nfc)
    nfc: str  # nfcpy device path, e.g. "usb:072f:2200" or "udp:127.0.0.1:15030" ("" if PC/SC)
    slot: int
    board: str
    relay: int
    energise_to_unlock: bool
    unlock_seconds: float
    stance: Stance


@dataclass(frozen=True)
class PersonConfig:
    id: str
    identities: tuple[str, ...]
    doors: tuple[str, ...]


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
    people: tuple[PersonConfig, ...]

    @property
    def database(self) -> Path:
        return self.state_dir / "portvakt.db"


class _Table:
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

    def table(self, k: str, required: bool = False) -> _Table:
        v = self.data.get(k, None)
        if v is None:
            if required:
                raise self.fail(k, "missing table")
            v = {}
        if not isinstance(v, dict):
            raise self.fail(k, "expected a table")
        return _Table(self.file, f"{self.key(k)}.", v)

    def tables(self, k: str) -> list[_Table]:
        v = self.data.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self.fail(k, "expected an array of tables ([[...]])")
        return [_Table(self.file, f"{self.key(k)}[{i}].", x) for i, x in enumerate(v)]

    def reject_unknown(self, known: set[str]) -> None:
        for k in self.data:
            if k not in known:
                raise self.fail(k, f"unknown key; expected one of {', '.join(sorted(known))}")


def _unique(items: list[tuple[_Table, str]], what: str) -> None:
    seen: set[str] = set()
    for t, name in items:
        if name in seen:
            raise t.fail("name" if what != "id" else "id", f"duplicate {what} {name!r}")
        seen.add(name)


def _identity_source(t: _Table) -> str:
    v = t.text("identity", "upn")
    if v in IDENTITY_SOURCES:
        return v
    if v.startswith("oid:") and all(x.isdigit() for x in v[4:].split(".")) and v.count(".") >= 2:
        return v
    raise t.fail("identity", f"expected one of {', '.join(IDENTITY_SOURCES)} or oid:<dotted "
                             f"OID>, got {v!r}")


def load_config(path: Path, state_dir: Path | None = None) -> Config:
    """Read and validate `path`; raise ConfigError naming file, key and expected form."""
    file = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(file, "(file)", f"cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(file, "(file)", "expected UTF-8 text") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "(syntax)", f"expected valid TOML: {e}") from e
    top = _Table(file, "", raw)
    top.reject_unknown({"gateway", "trust", "readers", "boards", "doors", "people"})

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
        bt.reject_unknown({"name", "host", "port", "unit", "timeout_seconds"})
        boards.append((bt, BoardConfig(bt.text("name"), bt.text("host"),
                                       bt.integer("port", 1, 65535, 502),
                                       bt.integer("unit", 1, 247, 1),
                                       bt.number("timeout_seconds", 0.05, 30, 0.5))))
    _unique([(t, c.name) for t, c in boards], "board")
    board_names = {c.name for _, c in boards}

    doors = []
    for d in top.tables("doors"):
        d.reject_unknown({"name", "reader", "nfc", "slot", "board", "relay",
                          "energise_to_unlock", "unlock_seconds", "revocation_unknown",
                          "crl_stale", "clock_behind"})
        reader, nfc = d.text("reader", ""), d.text("nfc", "")
        if bool(reader) == bool(nfc):
            raise d.fail("reader", "expected exactly one of reader (a PC/SC reader name) or "
                                   "nfc (an nfcpy device such as usb:072f:2200)")
        board = d.text("board")
        if board not in board_names:
            raise d.fail("board", f"expected the name of a [[boards]] entry, got {board!r}")
        doors.append((d, DoorConfig(d.text("name"), reader, nfc, d.integer("slot", 0, 15, 0),
                                    board, d.integer("relay", 0, 65535),
                                    d.boolean("energise_to_unlock", True),
                                    d.number("unlock_seconds", 0.1, 600, 5.0),
                                    Stance(d.choice("revocation_unknown", STANCES,
                                                    trust.revocation_unknown),
                                           d.choice("crl_stale", STANCES, trust.crl_stale),
                                           d.choice("clock_behind", STANCES,
                                                    trust.clock_behind)))))
    _unique([(t, c.name) for t, c in doors], "door")
    seen_readers: dict[tuple[str, int], str] = {}
    for t, c in doors:
        other = seen_readers.setdefault((c.reader or c.nfc, c.slot), c.name)
        if other != c.name:
            raise t.fail("reader", f"reader {c.reader!r} slot {c.slot} is already door {other!r}")
    door_names = {c.name for _, c in doors}

    people = []
    for p in top.tables("people"):
        p.reject_unknown({"id", "identities", "doors"})
        ids = p.strings("identities")
        for i, ident in enumerate(ids):
            kind, _, value = ident.partition(":")
            if kind not in IDENTITY_SOURCES or not value:
                raise p.fail(f"identities[{i}]", f"expected type:value with type one of "
                                                 f"{', '.join(IDENTITY_SOURCES)}")
        pd = p.strings("doors", ())
        for i, dn in enumerate(pd):
            if dn not in door_names:
                raise p.fail(f"doors[{i}]", f"expected the name of a [[doors]] entry, got {dn!r}")
        canonical = tuple(i.casefold() if i.startswith(("upn:", "email:")) else i for i in ids)
        people.append((p, PersonConfig(p.text("id"), canonical, pd)))
    _unique([(t, c.id) for t, c in people], "id")

    return Config(Path(path), gw.text("id"), gw.text("site"), sd,
                  Path(sock) if sock else None, tuple(aids), trust,
                  tuple(c for _, c in boards), tuple(c for _, c in doors),
                  tuple(c for _, c in people))
