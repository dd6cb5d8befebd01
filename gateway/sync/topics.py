"""The MQTT topic tree (docs/mqtt.md): one gateway's topics, and the fleet-wide CRL notices."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LEVEL = re.compile(r"[^+#/\x00]+")


def check_level(value: str, what: str) -> str:
    """`value` as one topic level: non-empty, no '/', '+', '#' or NUL. Raises ValueError."""
    if not _LEVEL.fullmatch(value):
        raise ValueError(f"{what}: {value!r} cannot be one MQTT topic level (no '/', '+', '#', "
                         f"NUL, not empty)")
    return value


@dataclass(frozen=True)
class Topics:
    """``<prefix>/<site>/<gateway>/...``: what a gateway reads and writes."""

    prefix: str
    site: str
    gateway: str

    def __post_init__(self) -> None:
        check_level(self.site, "site")
        check_level(self.gateway, "gateway")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.gateway}"

    @property
    def policy(self) -> str:
        return f"{self.base}/policy"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def ack(self) -> str:
        return f"{self.base}/events/ack"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def crl_all(self) -> str:
        return crl_filter(self.prefix)


def crl_topic(prefix: str, issuer_key_id: str) -> str:
    return f"{prefix}/crl/{check_level(issuer_key_id, 'issuer key id')}"


def crl_filter(prefix: str) -> str:
    return f"{prefix}/crl/+"


def events_filter(prefix: str) -> str:
    """Every gateway's events (head office's collector)."""
    return f"{prefix}/+/+/events"


def status_filter(prefix: str) -> str:
    return f"{prefix}/+/+/status"


def split_gateway_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """(site, gateway, rest) of ``<prefix>/<site>/<gateway>/<rest>``; None for another topic."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]
