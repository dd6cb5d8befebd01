"""Payloads that are not signed: events out (several consecutive ones per message: the
per-message cost of MQTT, not the bytes, limits a drain), acknowledgements in, status. Strict JSON both ways:
a payload that does not parse is refused with a reason, never half-used."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InputError
from gateway.journal import Event

EVENT_FORMAT = 1
MAX_SEQ = 2**63 - 1


class MessageError(InputError):
    """A payload that must not be used; `str()` says why and names the field."""


def encode_events(events: Sequence[Event], site: str, acked: int) -> bytes:
    """Consecutive events in one message, as head office receives them. `acked`: head office's
    acknowledged high-water mark when they were sent (every event up to it is already
    there), so a collector that starts empty knows where the gateway's unbroken sequence
    begins."""
    if not events:
        raise ValueError("no events")
    return json.dumps({"format": EVENT_FORMAT, "site": site, "gateway": events[0].gateway,
                       "acked": min(acked, events[0].seq - 1),
                       "events": [{"seq": e.seq, "at": e.at, "kind": e.kind, "door": e.door,
                                   "person": e.person, "reason": e.reason, "data": e.data}
                                  for e in events]},
                      separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def chunk_events(events: Sequence[Event], site: str, acked: int, *, per_message: int,
                 max_bytes: int) -> list[tuple[int, bytes]]:
    """`events` as messages of at most `per_message` events and about `max_bytes` bytes (a
    single event larger than that still goes, alone): [(last sequence, payload)]."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(events):
        n = min(per_message, len(events) - i)
        payload = encode_events(events[i:i + n], site, acked)
        while len(payload) > max_bytes and n > 1:
            n = max(1, n // 2)
            payload = encode_events(events[i:i + n], site, acked)
        out.append((events[i + n - 1].seq, payload))
        i += n
    return out


@dataclass(frozen=True)
class EventMessage:
    site: str
    gateway: str
    seq: int
    at: float
    kind: str
    acked: int
    body: dict[str, Any]


def _load(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessageError(f"{what}: not valid UTF-8 JSON: {e}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _seq(v: object, what: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_SEQ:
        raise MessageError(f"{what}: expected an integer from {lo} to {MAX_SEQ}, got {v!r}"[:200])
    return v


def decode_events(payload: bytes, site: str, gateway: str) -> list[EventMessage]:
    """The events of a message received on ``<prefix>/<site>/<gateway>/events``: the topic says
    who sent them (the broker's ACL lets a gateway write only its own), the payload must
    agree. All or nothing: one bad event refuses the message (MessageError)."""
    doc = _load(payload, "events")
    if not isinstance(doc, dict):
        raise MessageError("events: expected a JSON object")
    if doc.get("format") != EVENT_FORMAT:
        raise MessageError(f"events.format: expected {EVENT_FORMAT}, got {doc.get('format')!r}"
                           [:200])
    if doc.get("site") != site or doc.get("gateway") != gateway:
        raise MessageError(f"events: site/gateway {doc.get('site')!r}/{doc.get('gateway')!r} do "
                           f"not match the topic's {site!r}/{gateway!r}"[:300])
    acked = _seq(doc.get("acked", 0), "events.acked", 0)
    items = doc.get("events")
    if not isinstance(items, list) or not items:
        raise MessageError("events.events: expected a non-empty list")
    out = []
    for i, ev in enumerate(items):
        where = f"events.events[{i}]"
        if not isinstance(ev, dict):
            raise MessageError(f"{where}: expected an object")
        seq = _seq(ev.get("seq"), f"{where}.seq")
        at = ev.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise MessageError(f"{where}.at: expected POSIX seconds, got {at!r}"[:200])
        kind = ev.get("kind")
        if not isinstance(kind, str) or not kind:
            raise MessageError(f"{where}.kind: expected a non-empty string")
        out.append(EventMessage(site, gateway, seq, float(at), kind, min(acked, seq - 1),
                                {"site": site, "gateway": gateway, **ev}))
    return out


def encode_ack(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode("ascii")


def decode_ack(payload: bytes) -> int:
    """The high-water mark of an `events/ack` message: ``{"seq": N}``."""
    doc = _load(payload, "ack")
    if not isinstance(doc, dict) or set(doc) != {"seq"}:
        raise MessageError('ack: expected {"seq": N}')
    return _seq(doc["seq"], "ack.seq", 0)


def encode_status(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str,
                      allow_nan=False).encode("utf-8")


def offline_status(site: str, gateway: str) -> bytes:
    """The retained status a broker publishes as the gateway's last will (and the gateway
    itself at a clean shutdown)."""
    return encode_status({"site": site, "gateway": gateway, "online": False,
                          "state": "offline"})
