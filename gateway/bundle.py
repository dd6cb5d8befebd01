"""The signed policy bundle: head office's policy for one site, as MQTT sync will carry it (and a
file carries it until then), and the SQLite store that keeps the last good one.

A bundle is a UTF-8 JSON object ``{"format": 1, "version", "issued_at", "not_after", "site",
"content"}`` where `content` is the policy document (`Policy.from_dict`). It travels inside an
envelope, a JSON object ``{"payload": base64(bundle bytes), "key_id": hex SHA-256 of the signer's
SubjectPublicKeyInfo DER, "alg": "ed25519" | "ecdsa-p256-sha256", "signature": base64}``; the
signature is detached, over the exact payload bytes (ECDSA: DER-encoded, over SHA-256).

`open_bundle` never raises anything but BundleError for a bad envelope or bundle, whatever the
bytes; `BundleError.reason` is the journaled code. `PolicyStore.offer` applies the delivery rules
(same version and digest: ignored; same version, other digest: conflict; lower version: rollback;
newer: applied in one transaction). docs/policy.md is the reference.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from gateway.errors import InputError, PortvaktError
from gateway.policy import Policy, PolicyError

__all__ = [
    "ALGS", "FORMAT", "MAX_ENVELOPE_BYTES", "REASONS", "BundleError", "Outcome", "PolicyStore",
    "PolicyStoreError", "SigningKey", "Status", "VerifiedBundle", "VerifyKey", "key_id",
    "load_keys", "make_bundle", "open_bundle", "sign_bundle", "sign_payload", "stale",
]

log = logging.getLogger(__name__)

FORMAT = 1
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
MAX_VERSION = 2**63 - 1  # SQLite's INTEGER
ALGS = ("ed25519", "ecdsa-p256-sha256")
ENVELOPE_KEYS = frozenset({"payload", "key_id", "alg", "signature"})
BUNDLE_KEYS = frozenset({"format", "version", "issued_at", "not_after", "site", "content"})
REASONS = frozenset({
    # open_bundle
    "bad-envelope", "too-large", "unknown-key", "bad-signature", "unsupported-format", "schema",
    "wrong-site",
    # PolicyStore
    "conflict", "rollback", "tampered", "store-error",
})

VerifyKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

_HEX64 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_T = TypeVar("_T")


class BundleError(InputError):
    """A policy envelope or bundle that must not be used. `reason` is one of REASONS (the code a
    journal line carries); `str()` says what is wrong and names the field."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class PolicyStoreError(PortvaktError):
    """The policy store's database cannot be opened or read."""


# --- keys ----------------------------------------------------------------------------------------

def key_id(key: VerifyKey | SigningKey) -> str:
    """Hex SHA-256 of the (public) key's SubjectPublicKeyInfo DER: how an envelope names its key."""
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) \
        else key
    return hashlib.sha256(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _alg(key: VerifyKey | SigningKey) -> str | None:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) \
            and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256-sha256"
    return None


def load_keys(paths: Iterable[Path]) -> tuple[VerifyKey, ...]:
    """The pinned head-office verification keys: one PEM public key (Ed25519 or ECDSA P-256) per
    file. Raises InputError naming the file that is missing, unreadable or of another kind."""
    keys: list[VerifyKey] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read the policy verification key: "
                             f"{e.strerror or e}") from None
        try:
            key = load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise InputError(f"{path}: expected a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) or _alg(key) is None:
            raise InputError(f"{path}: expected an Ed25519 or ECDSA P-256 public key, got "
                             f"{type(key).__name__.removeprefix('_')}")
        keys.append(key)
    return tuple(keys)


def _pin(keys: Iterable[VerifyKey]) -> dict[str, VerifyKey]:
    return {key_id(k): k for k in keys}


# --- signing (head office, tests, demo) ----------------------------------------------------------

def make_bundle(content: Mapping[str, Any], *, version: int, site: str, issued_at: datetime,
                not_after: datetime) -> dict[str, Any]:
    """A bundle dict for `sign_bundle` (times must be aware; written to the second)."""
    return {"format": FORMAT, "version": version, "site": site,
            "issued_at": issued_at.isoformat(timespec="seconds"),
            "not_after": not_after.isoformat(timespec="seconds"), "content": dict(content)}


def sign_payload(payload: bytes, private_key: SigningKey) -> bytes:
    """The envelope for `payload` as it is, signed with `private_key` (Ed25519 or ECDSA P-256).
    No check of the payload: `sign_bundle` is the safe way; this one exists to build test cases."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        alg, signature = "ed25519", private_key.sign(payload)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey) and _alg(private_key):
        alg, signature = "ecdsa-p256-sha256", private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    else:
        raise InputError("expected an Ed25519 or ECDSA P-256 private key to sign policy bundles")
    envelope = {"payload": base64.b64encode(payload).decode("ascii"), "key_id": key_id(private_key),
                "alg": alg, "signature": base64.b64encode(signature).decode("ascii")}
    return json.dumps(envelope, indent=1).encode("ascii")


def sign_bundle(bundle: Mapping[str, Any], private_key: SigningKey) -> bytes:
    """Check `bundle` as a gateway will (every field, the policy content with `Policy.from_dict`),
    serialise it as compact UTF-8 JSON and return the signed envelope. Raises BundleError
    (`schema`, `unsupported-format`) naming the bad field, InputError for an unusable key."""
    try:
        payload = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise BundleError("schema", f"bundle: not representable as JSON: {e}") from None
    parsed = strict_json(payload, "payload", "schema")  # as a gateway will read it
    _load(_header(parsed, None), parsed["content"])
    return sign_payload(payload, private_key)


# --- opening -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, site and content have been checked. `content` is the policy
    document as signed (do not mutate it); `policy` its loaded form; `digest` the hex SHA-256 of
    the payload bytes; `envelope` the bytes it came in, as the store keeps them."""

    version: int
    digest: str
    issued_at: datetime
    not_after: datetime
    site: str
    key_id: str
    content: Mapping[str, Any] = field(repr=False)
    policy: Policy = field(repr=False)
    envelope: bytes = field(repr=False)


class Envelope(NamedTuple):
    payload: bytes
    key_id: str
    alg: str
    signature: bytes
    digest: str


class _Header(NamedTuple):
    version: int
    issued_at: datetime
    not_after: datetime
    site: str


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {dup!r} appears twice in one object")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes, what: str, reason: str) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no key twice in an object."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique,
                          parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise BundleError(reason, f"{what}: not UTF-8 (byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError, duplicate keys, NaN, an integer of 5,000 digits
        raise BundleError(reason, f"{what}: not valid JSON: {e}") from None
    except RecursionError:
        raise BundleError(reason, f"{what}: nested too deeply") from None


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError("bad-envelope", f"envelope.{what}: expected a base64 string, got "
                          f"{type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError("bad-envelope", f"envelope.{what}: not valid base64") from None


def parse_envelope(data: object, max_bytes: int | None) -> Envelope:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BundleError("bad-envelope", f"envelope: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise BundleError("too-large", f"envelope: {len(data):,} bytes, more than the "
                          f"{max_bytes:,} allowed")
    env = strict_json(data, "envelope", "bad-envelope")
    if not isinstance(env, dict):
        raise BundleError("bad-envelope", f"envelope: expected a JSON object, got {type(env).__name__}")
    if not ENVELOPE_KEYS & env.keys():
        raise BundleError("bad-envelope", "envelope: expected an object with payload, key_id, alg "
                          f"and signature, got one with {_short(sorted(env)[:6])} (an unsigned "
                          "policy document?)")
    for k in sorted(ENVELOPE_KEYS - env.keys()):
        raise BundleError("bad-envelope", f"envelope.{k}: missing")
    for k in sorted(env.keys() - ENVELOPE_KEYS):
        raise BundleError("bad-envelope", f"envelope.{k}: unknown key; expected "
                          f"{', '.join(sorted(ENVELOPE_KEYS))}")
    kid, alg = env["key_id"], env["alg"]
    if not isinstance(kid, str) or not _HEX64.fullmatch(kid):
        raise BundleError("bad-envelope", f"envelope.key_id: expected 64 hex digits (SHA-256 of the "
                          f"key's SubjectPublicKeyInfo), got {_short(kid)}")
    if alg not in ALGS:
        raise BundleError("bad-envelope", f"envelope.alg: expected one of {', '.join(ALGS)}, got "
                          f"{_short(alg)}")
    payload = _b64(env["payload"], "payload")
    signature = _b64(env["signature"], "signature")
    return Envelope(payload, kid.lower(), alg, signature, hashlib.sha256(payload).hexdigest())


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def verify_envelope(env: Envelope, pinned: Mapping[str, VerifyKey]) -> None:
    key = pinned.get(env.key_id)
    if key is None:
        raise BundleError("unknown-key", f"envelope.key_id: {env.key_id} is not a pinned policy key "
                          f"(pinned: {', '.join(sorted(k[:16] for k in pinned)) or 'none'})")
    if _alg(key) != env.alg:
        raise BundleError("bad-signature", f"envelope.alg: {env.alg} does not match the pinned key "
                          f"{env.key_id[:16]}, which is {_alg(key)}")
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(env.signature, env.payload)
        else:
            key.verify(env.signature, env.payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise BundleError("bad-signature", f"envelope.signature: does not verify over the payload "
                          f"with key {env.key_id[:16]}") from None


def _instant(v: object, name: str) -> datetime:
    try:
        dt = datetime.fromisoformat(v) if isinstance(v, str) else None
        if dt is not None and dt.utcoffset() is not None:
            dt.timestamp()  # representable in POSIX time
            return dt
    except (ValueError, OverflowError):
        pass
    raise BundleError("schema", f"bundle.{name}: expected an ISO 8601 date-time with a UTC offset, "
                      f"got {_short(v)}")


def _header(bundle: object, site: str | None) -> _Header:
    if not isinstance(bundle, dict):
        raise BundleError("schema", f"bundle: expected a JSON object, got {type(bundle).__name__}")
    fmt = bundle.get("format")
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise BundleError("schema", f"bundle.format: expected the integer {FORMAT}, got {_short(fmt)}")
    if fmt != FORMAT:
        raise BundleError("unsupported-format", f"bundle.format: {fmt} is not supported; this "
                          f"gateway reads format {FORMAT}")
    for k in sorted(BUNDLE_KEYS - bundle.keys()):
        raise BundleError("schema", f"bundle.{k}: missing")
    for k in sorted(bundle.keys() - BUNDLE_KEYS):
        raise BundleError("schema", f"bundle.{k}: unknown key; expected "
                          f"{', '.join(sorted(BUNDLE_KEYS))}")
    version = bundle["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise BundleError("schema", f"bundle.version: expected an integer from 1 to {MAX_VERSION}, "
                          f"got {_short(version)}")
    issued_at = _instant(bundle["issued_at"], "issued_at")
    not_after = _instant(bundle["not_after"], "not_after")
    if not_after <= issued_at:
        raise BundleError("schema", f"bundle.not_after: expected an instant after issued_at, got "
                          f"{_short(bundle['not_after'])}")
    bsite = bundle["site"]
    if not isinstance(bsite, str) or not bsite.strip():
        raise BundleError("schema", f"bundle.site: expected a non-empty string, got {_short(bsite)}")
    if site is not None and bsite != site:
        raise BundleError("wrong-site", f"bundle.site: the bundle is for site {bsite!r}, this "
                          f"gateway is at {site!r}")
    if not isinstance(bundle["content"], dict):
        raise BundleError("schema", f"bundle.content: expected a JSON object (the policy document), "
                          f"got {type(bundle['content']).__name__}")
    return _Header(version, issued_at, not_after, bsite)


def _load(header: _Header, content: dict[str, Any]) -> Policy:
    # Two-digit-year personal identity numbers are read as of the day the bundle was issued, so
    # the same bundle means the same thing on every day it is loaded.
    try:
        return Policy.from_dict(content, today=header.issued_at.date())
    except PolicyError as e:
        msg = str(e)
        where = ("content" + msg.removeprefix("policy")) if msg.startswith(("policy:", "policy.")) \
            else f"content.{msg}"
        raise BundleError("schema", f"bundle.{where}") from None


def _open(env: Envelope, envelope: bytes, pinned: Mapping[str, VerifyKey],
          site: str) -> VerifiedBundle:
    verify_envelope(env, pinned)
    bundle = strict_json(env.payload, "payload", "schema")
    header = _header(bundle, site)
    policy = _load(header, bundle["content"])
    return VerifiedBundle(header.version, env.digest, header.issued_at, header.not_after,
                          header.site, env.key_id, bundle["content"], policy, envelope)


def open_bundle(envelope: bytes, pinned_keys: Iterable[VerifyKey], site: str, *,
                max_bytes: int | None = MAX_ENVELOPE_BYTES) -> VerifiedBundle:
    """Verify an envelope against the pinned keys and load its bundle for `site`.

    Checks, in order: size (`too-large`, more than `max_bytes` bytes), envelope shape
    (`bad-envelope`), key (`unknown-key`), signature (`bad-signature`), bundle format
    (`unsupported-format`), bundle fields (`schema`), site (`wrong-site`), policy content
    (`schema`, naming the path, e.g. `bundle.content.people[3].identities[0]`). Raises BundleError
    and nothing else, whatever `envelope` holds. Costs a full policy load (about 2 s for 100,000
    people).
    """
    env = parse_envelope(envelope, max_bytes)
    return _open(env, bytes(envelope), _pin(pinned_keys), site)


def stale(bundle: VerifiedBundle, now: datetime | float) -> bool:
    """Is `now` (aware, or POSIX seconds) past the bundle's not_after? The caller raises a
    stale-policy alarm and keeps deciding on it."""
    t = now if isinstance(now, int | float) else _aware(now, "now").timestamp()
    return t > bundle.not_after.timestamp()


def _aware(t: datetime, name: str) -> datetime:
    if t.utcoffset() is None:
        raise ValueError(f"{name}: expected an aware datetime, got {t!r}")
    return t


# --- the store -----------------------------------------------------------------------------------

class Status(enum.StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Outcome:
    """What `PolicyStore.offer` did. `reason`: None when applied, `duplicate` when ignored, a
    REASONS code when rejected. `version` is the offered version when known (it is not for an
    envelope that does not verify), `previous` the version in force before (None: none), `digest`
    the payload's SHA-256 when the envelope could be read, `bundle` the bundle now in force when
    applied, `detail` a sentence for the journal and the technician."""

    status: Status
    reason: str | None
    version: int | None
    previous: int | None
    digest: str | None
    detail: str
    bundle: VerifiedBundle | None = field(default=None, repr=False)


_SCHEMA = """CREATE TABLE IF NOT EXISTS policy_bundle (
    version INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    site TEXT NOT NULL,
    key_id TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_after TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    envelope BLOB
)"""


class _Row(NamedTuple):
    version: int
    digest: str
    envelope: bytes | None


class PolicyStore:
    """The last good bundle, persisted in its own table of a SQLite database (the gateway's
    state database `portvakt.db`, shared with the journal; `PRAGMA user_version` is the
    journal's and is never touched here).

    The newest row holds the envelope in force; older rows keep their version, digest and times
    as history (their envelopes are dropped when superseded). Thread-safe; one connection.
    """

    def __init__(self, path: Path | str, pinned_keys: Iterable[VerifyKey], site: str, *,
                 max_bytes: int | None = MAX_ENVELOPE_BYTES) -> None:
        self.path = Path(path)
        self.site = site
        self.max_bytes = max_bytes
        self._pinned = _pin(pinned_keys)
        self._lock = threading.Lock()
        self._verified: tuple[int, str] | None = None  # (version, digest) this store has verified
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                self._conn.execute("PRAGMA busy_timeout=5000")
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._transaction(lambda c: c.execute(_SCHEMA))
            except BaseException:
                self._conn.close()
                raise
        except (sqlite3.Error, OSError) as e:
            raise PolicyStoreError(f"{self.path}: cannot open the policy store: {e}") from e

    def __enter__(self) -> PolicyStore:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work(conn)` in one write transaction: all of it or, on any exception, none."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return result

    def _top(self, conn: sqlite3.Connection) -> _Row | None:
        row = conn.execute("SELECT version, digest, envelope FROM policy_bundle "
                           "ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else _Row(int(row[0]), str(row[1]), row[2])

    def current(self) -> VerifiedBundle | None:
        """The bundle in force, verified again against the pinned keys and site (a full load:
        call it at start, then keep what `offer` returns). None when none was ever applied.
        Raises BundleError when the stored one is refused (the gateway then runs with no policy,
        which denies everyone), PolicyStoreError when the database cannot be read."""
        with self._lock:
            try:
                top = self._top(self._conn)
            except sqlite3.Error as e:
                raise PolicyStoreError(f"{self.path}: cannot read the policy store: {e}") from e
        if top is None:
            return None
        where = f"{self.path}: the stored policy (version {top.version})"
        if not isinstance(top.envelope, bytes):
            raise BundleError("tampered", f"{where} has no envelope")
        try:
            bundle = _open(parse_envelope(top.envelope, None), top.envelope, self._pinned, self.site)
        except BundleError as e:
            raise BundleError(e.reason, f"{where} is refused: {e}") from None
        if (bundle.version, bundle.digest) != (top.version, top.digest):
            raise BundleError("tampered", f"{where} is refused: its row says version {top.version}, "
                              f"digest {top.digest[:16]}, its signed payload version "
                              f"{bundle.version}, digest {bundle.digest[:16]}")
        with self._lock:
            self._verified = (bundle.version, bundle.digest)
        return bundle

    def offer(self, envelope: bytes, now: datetime | None = None) -> Outcome:
        """Apply the delivery rules to an offered envelope and persist it if it is newer.

        Rejected (the bundle in force stays): anything `open_bundle` refuses, with its reason;
        `conflict` for the version in force with another digest; `rollback` for an older version;
        `store-error` when the database write fails (nothing is written). Ignored (`duplicate`):
        the payload in force again; when it comes with another valid signature (re-signed with a
        new key), the stored envelope takes that signature, so unpinning the old key later does
        not strand the stored copy. Applied, in one transaction: a newer version, or the payload
        of the stored row when that row has not been verified by this store (it was refused at
        start, or `current` was never asked): the verified copy restores it. `now` (aware, default
        the current time) is recorded as applied_at. Never raises for any `envelope`.
        """
        now = datetime.now(UTC) if now is None else _aware(now, "now")
        previous: int | None = None
        try:
            with self._lock:
                top = self._top(self._conn)
            previous = top.version if top is not None else None
            env = parse_envelope(envelope, self.max_bytes)
            raw = bytes(envelope)
            same = top is not None and env.digest == top.digest
            if top is not None and same and self._verified == (top.version, top.digest):
                if raw != top.envelope:
                    verify_envelope(env, self._pinned)
                    with self._lock:
                        self._transaction(lambda c: c.execute(
                            "UPDATE policy_bundle SET envelope = ?, key_id = ? WHERE version = ? "
                            "AND digest = ?", (raw, env.key_id, top.version, top.digest)))
                return Outcome(Status.IGNORED, "duplicate", top.version, previous, env.digest,
                               f"version {top.version} is already in force"
                               + ("" if raw == top.envelope else
                                  f"; its stored signature is now by key {env.key_id[:16]}"))
            verify_envelope(env, self._pinned)
            bundle = strict_json(env.payload, "payload", "schema")
            header = _header(bundle, self.site)
        except BundleError as e:
            return Outcome(Status.REJECTED, e.reason, None, previous, None, str(e))
        except sqlite3.Error as e:
            return self._store_error(e, None, previous, None)
        refused = None if same else _against(header.version, env.digest, top)
        if refused is not None:
            return Outcome(Status.REJECTED, refused[0], header.version, previous, env.digest,
                           refused[1])
        try:
            policy = _load(header, bundle["content"])
        except BundleError as e:
            return Outcome(Status.REJECTED, e.reason, header.version, previous, env.digest, str(e))
        verified = VerifiedBundle(header.version, env.digest, header.issued_at, header.not_after,
                                  header.site, env.key_id, bundle["content"], policy, raw)

        def apply(conn: sqlite3.Connection) -> tuple[str, str] | None:
            # Checked again under the write lock: another writer may have written meanwhile.
            top_now = self._top(conn)
            if top_now is not None and (top_now.version, top_now.digest) == (verified.version,
                                                                              verified.digest):
                conn.execute("UPDATE policy_bundle SET envelope = ?, key_id = ?, applied_at = ? "
                             "WHERE version = ?", (raw, verified.key_id, now.isoformat(),
                                                   verified.version))
                return None
            again = _against(verified.version, verified.digest, top_now)
            if again is not None:
                return again
            conn.execute(
                "INSERT INTO policy_bundle (version, digest, site, key_id, issued_at, not_after, "
                "applied_at, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (verified.version, verified.digest, verified.site, verified.key_id,
                 verified.issued_at.isoformat(), verified.not_after.isoformat(),
                 now.isoformat(), raw))
            # Superseded versions stay as history without their envelopes.
            conn.execute("UPDATE policy_bundle SET envelope = NULL "
                         "WHERE version < ? AND envelope IS NOT NULL", (verified.version,))
            return None

        try:
            with self._lock:
                refused = self._transaction(apply)
                if refused is None:
                    self._verified = (verified.version, verified.digest)
        except sqlite3.Error as e:
            return self._store_error(e, verified.version, previous, verified.digest)
        if refused is not None:
            return Outcome(Status.REJECTED, refused[0], verified.version, previous,
                           verified.digest, refused[1])
        detail = (f"version {verified.version} restored: the stored copy had not been verified"
                  if same else f"version {verified.version} applied (was {previous})")
        log.info("policy %s, digest %s", detail, verified.digest[:16])
        return Outcome(Status.APPLIED, None, verified.version, previous, verified.digest, detail,
                       verified)

    def _store_error(self, e: sqlite3.Error, version: int | None, previous: int | None,
                     digest: str | None) -> Outcome:
        log.error("%s: policy store write failed, nothing changed: %s", self.path, e)
        return Outcome(Status.REJECTED, "store-error", version, previous, digest,
                       f"{self.path}: the policy store could not be written ({e}); nothing changed")


def _against(version: int, digest: str, top: _Row | None) -> tuple[str, str] | None:
    """The delivery rules: (reason, detail) for a bundle that must not replace `top`, else None."""
    if top is None or version > top.version:
        return None
    if version == top.version:
        if digest == top.digest:
            return "duplicate", f"version {version} is already in force"
        return "conflict", (f"version {version} is already in force with digest {top.digest[:16]}; "
                            f"this one has digest {digest[:16]}")
    return "rollback", f"version {version} is older than version {top.version} in force"
