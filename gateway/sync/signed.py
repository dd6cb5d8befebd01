"""Signed manifests and commands: the policy bundle's envelope (gateway/bundle.py: detached
Ed25519 / ECDSA P-256 signature over the exact payload bytes, `key_id` naming the pinned key)
around other documents. The payload's `type` keeps the kinds apart: a command can never pass
for a manifest or a policy bundle, whatever key signed it.

A manifest stands in for content too large for the broker (docs/mqtt.md): it names the URL,
SHA-256 and size of the content, what the content is for (`kind`: policy or crl) and for whom
(`scope`: the site, or the CRL issuer's key id). A command carries an action, its arguments,
the site and gateway it is for, a validity window and a single-use nonce.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.bundle import (
    BundleError,
    SigningKey,
    VerifyKey,
    key_id,
    parse_envelope,
    sign_payload,
    strict_json,
    verify_envelope,
)
from gateway.errors import InputError

MANIFEST = "portvakt.manifest"
COMMAND = "portvakt.command"
FORMAT = 1
KINDS = ("policy", "crl")
ACTIONS = ("door.unlock", "site.lockdown", "site.normal", "status.resend")
MAX_SIGNED_BYTES = 1024 * 1024  # a manifest or command is a few hundred bytes
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9A-Za-z_-]{16,128}")


class SignedError(InputError):
    """A manifest or command that must not be used. `reason` is the journaled code: those of
    the bundle envelope (bad-envelope, too-large, unknown-key, bad-signature, schema) and
    wrong-type, wrong-site, wrong-gateway, wrong-kind, wrong-scope, bad-url, expired,
    not-yet-valid, too-long, replayed."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def pin(keys: Iterable[VerifyKey]) -> dict[str, VerifyKey]:
    return {key_id(k): k for k in keys}


def sign_document(doc: Mapping[str, Any], key: SigningKey) -> bytes:
    """The envelope over `doc` as compact UTF-8 JSON."""
    payload = json.dumps(doc, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode("utf-8")
    return sign_payload(payload, key)


def payload_type(data: bytes) -> str | None:
    """The `type` of an envelope's payload, unverified: only to route a message (a policy
    bundle has none). None when `data` is no envelope or the payload no typed object."""
    try:
        env = parse_envelope(data, MAX_SIGNED_BYTES)
        doc = strict_json(env.payload, "payload", "schema")
    except BundleError:
        return None
    t = doc.get("type") if isinstance(doc, dict) else None
    return t if isinstance(t, str) else None


def open_document(data: bytes, pinned: Mapping[str, VerifyKey], doc_type: str) -> tuple[
        dict[str, Any], str]:
    """(payload object, signer key id) of an envelope whose signature verifies with a pinned
    key and whose payload is of `doc_type`. Raises SignedError and nothing else."""
    try:
        env = parse_envelope(data, MAX_SIGNED_BYTES)
        verify_envelope(env, pinned)
        doc = strict_json(env.payload, "payload", "schema")
    except BundleError as e:
        raise SignedError(e.reason, str(e)) from None
    if not isinstance(doc, dict):
        raise SignedError("schema", f"payload: expected a JSON object, got {type(doc).__name__}")
    if doc.get("type") != doc_type:
        raise SignedError("wrong-type", f"payload.type: expected {doc_type!r}, got "
                                        f"{doc.get('type')!r}"[:200])
    if doc.get("format") != FORMAT:
        raise SignedError("schema", f"payload.format: expected {FORMAT}, got "
                                    f"{doc.get('format')!r}"[:200])
    return doc, env.key_id


def _keys(doc: dict[str, Any], required: set[str], what: str) -> None:
    for k in sorted(required - doc.keys()):
        raise SignedError("schema", f"{what}.{k}: missing")
    for k in sorted(doc.keys() - required):
        raise SignedError("schema", f"{what}.{k}: unknown key")


def _text(doc: dict[str, Any], k: str, what: str) -> str:
    v = doc[k]
    if not isinstance(v, str) or not v:
        raise SignedError("schema", f"{what}.{k}: expected a non-empty string")
    return v


def _instant(doc: dict[str, Any], k: str, what: str) -> datetime:
    v = doc[k]
    try:
        dt = datetime.fromisoformat(v) if isinstance(v, str) else None
        if dt is not None and dt.utcoffset() is not None:
            dt.timestamp()
            return dt
    except (ValueError, OverflowError):
        pass
    raise SignedError("schema", f"{what}.{k}: expected an ISO 8601 date-time with a UTC offset")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


# --- manifests -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    kind: str  # "policy" | "crl"
    scope: str  # the site (policy) or the CRL issuer's key id (crl)
    url: str
    sha256: str  # hex, lower case
    size: int  # bytes
    issued_at: datetime
    key_id: str


_MANIFEST_KEYS = {"type", "format", "kind", "scope", "url", "sha256", "size", "issued_at"}


def make_manifest(kind: str, scope: str, url: str, sha256: str, size: int,
                  issued_at: datetime) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return {"type": MANIFEST, "format": FORMAT, "kind": kind, "scope": scope, "url": url,
            "sha256": sha256.lower(), "size": size, "issued_at": _iso(issued_at)}


def open_manifest(data: bytes, pinned: Mapping[str, VerifyKey], *, kind: str, scope: str | None,
                  max_size: int, allow_http: bool = False) -> Manifest:
    """Verify a manifest for content of `kind` for `scope` (None: any scope), at most
    `max_size` bytes, fetched over https (or http with `allow_http`). Raises SignedError."""
    doc, kid = open_document(data, pinned, MANIFEST)
    _keys(doc, _MANIFEST_KEYS, "manifest")
    if doc["kind"] != kind:
        raise SignedError("wrong-kind", f"manifest.kind: expected {kind!r}, got "
                                        f"{doc['kind']!r}"[:200])
    mscope = _text(doc, "scope", "manifest")
    if scope is not None and mscope != scope:
        raise SignedError("wrong-scope", f"manifest.scope: this manifest is for {mscope!r}, "
                                         f"expected {scope!r}"[:200])
    url = _text(doc, "url", "manifest")
    schemes = ("https://", "http://") if allow_http else ("https://",)
    if not url.lower().startswith(schemes):
        raise SignedError("bad-url", f"manifest.url: expected an {' or '.join(s[:-3] for s in schemes)} "
                                     f"URL, got {url[:100]!r}")
    sha = doc["sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise SignedError("schema", "manifest.sha256: expected 64 lower-case hex digits")
    size = doc["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SignedError("schema", "manifest.size: expected a byte count")
    if size > max_size:
        raise SignedError("too-large", f"manifest.size: {size:,} bytes, more than the "
                                       f"{max_size:,} allowed")
    return Manifest(kind, mscope, url, sha, size, _instant(doc, "issued_at", "manifest"), kid)


# --- commands ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifiedCommand:
    """A command whose signature, target, validity window and arguments were checked (the
    nonce is checked against those seen before by the service). Times are POSIX seconds."""

    action: str
    args: Mapping[str, Any]
    nonce: str
    site: str
    gateway: str
    issued_at: float
    expires_at: float
    key_id: str


_COMMAND_KEYS = {"type", "format", "action", "args", "site", "gateway", "nonce", "issued_at",
                 "expires_at"}


def make_command(action: str, args: Mapping[str, Any] | None = None, *, site: str, gateway: str,
                 ttl: float = 60.0, now: datetime | None = None,
                 nonce: str | None = None) -> dict[str, Any]:
    """A command document for `sign_document`, valid from `now` for `ttl` seconds."""
    now = datetime.now(UTC) if now is None else now
    doc = {"type": COMMAND, "format": FORMAT, "action": action, "args": dict(args or {}),
           "site": site, "gateway": gateway, "nonce": nonce or secrets.token_urlsafe(18),
           "issued_at": _iso(now), "expires_at": _iso(now + timedelta(seconds=ttl))}
    _check_args(action, doc["args"])
    return doc


def _check_args(action: str, args: object) -> dict[str, Any]:
    if action not in ACTIONS:
        raise SignedError("schema", f"command.action: expected one of {', '.join(ACTIONS)}, "
                                    f"got {action!r}"[:200])
    if not isinstance(args, dict):
        raise SignedError("schema", "command.args: expected an object")
    allowed = {"door.unlock": {"door", "seconds"}}.get(action, set())
    for k in sorted(args.keys() - allowed):
        raise SignedError("schema", f"command.args.{k}: unknown for {action}")
    if action == "door.unlock":
        door = args.get("door")
        if not isinstance(door, str) or not door:
            raise SignedError("schema", "command.args.door: expected the door's name")
        seconds = args.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                                    or not 0 < seconds <= 3600):
            raise SignedError("schema", "command.args.seconds: expected a number, "
                                        "0 < seconds <= 3600")
    return args


def open_command(data: bytes, pinned: Mapping[str, VerifyKey], *, site: str, gateway: str,
                 now: float, max_ttl: float, clock_skew: float) -> VerifiedCommand:
    """Verify a command for this gateway at POSIX time `now`. Refused: a signature that does
    not verify with a pinned command key, another site or gateway, issued more than
    `clock_skew` seconds in the future (not-yet-valid), expired, or valid longer than `max_ttl`
    seconds (too-long: the nonce would have to be kept that long). Raises SignedError."""
    doc, kid = open_document(data, pinned, COMMAND)
    _keys(doc, _COMMAND_KEYS, "command")
    if _text(doc, "site", "command") != site:
        raise SignedError("wrong-site", f"command.site: for site {doc['site']!r}, this gateway is "
                                        f"at {site!r}"[:200])
    if _text(doc, "gateway", "command") != gateway:
        raise SignedError("wrong-gateway", f"command.gateway: for gateway {doc['gateway']!r}, "
                                           f"this is {gateway!r}"[:200])
    nonce = _text(doc, "nonce", "command")
    if not _NONCE.fullmatch(nonce):
        raise SignedError("schema", "command.nonce: expected 16-128 characters of [A-Za-z0-9_-]")
    issued = _instant(doc, "issued_at", "command").timestamp()
    expires = _instant(doc, "expires_at", "command").timestamp()
    if expires <= issued:
        raise SignedError("schema", "command.expires_at: expected an instant after issued_at")
    if expires - issued > max_ttl:
        raise SignedError("too-long", f"command: valid for {expires - issued:.0f} s, more than "
                                      f"the {max_ttl:.0f} s allowed")
    if issued > now + clock_skew:
        raise SignedError("not-yet-valid", f"command.issued_at: {doc['issued_at']} is in the "
                                           f"future")
    if now >= expires:
        raise SignedError("expired", f"command.expires_at: expired at {doc['expires_at']}")
    action = doc["action"]
    if not isinstance(action, str):
        raise SignedError("schema", "command.action: expected a string")
    args = _check_args(action, doc["args"])
    return VerifiedCommand(action, args, nonce, site, gateway, issued, expires, kid)
