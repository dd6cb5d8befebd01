"""The `[mqtt]` table of the gateway configuration, validated once into a frozen SyncConfig.

Secrets never sit in the configuration: the broker password and the client key are files
(readable by the service only; systemd credentials work too), named here and read at start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Table

DAY = 86400.0
PROTOCOLS = {"5": 5, "3.1.1": 4}
_TOPIC_LEVEL = re.compile(r"[^+#/\x00]+")


@dataclass(frozen=True)
class CrlFetchConfig:
    """Where and when the gateway fetches CRLs itself, with or without a broker.

    `urls`: the CRL distribution points (http or https); `lead`: fetch this many seconds before
    a CRL's nextUpdate; `refresh`: poll interval when a CRL has no nextUpdate, or it came back
    unchanged; `retry`: first wait after a failed fetch (doubles up to `refresh`); `timeout`
    seconds per request; `max_bytes`: the largest CRL accepted; `from_certificates`: also fetch
    the http(s) distribution points named in the trust store's CA certificates and in the
    validated certificates cards present (on by default in a `[crl]` table, off without one)."""

    urls: tuple[str, ...] = ()
    lead: float = 3600.0
    refresh: float = 3600.0
    retry: float = 60.0
    timeout: float = 60.0
    max_bytes: int = 512 * 1024 * 1024
    from_certificates: bool = False

    @property
    def fetches(self) -> bool:
        """Whether there is anything to fetch from: configured points, or certificates'."""
        return bool(self.urls) or self.from_certificates


@dataclass(frozen=True)
class SyncConfig:
    """Head-office sync over MQTT. Times in seconds, sizes in bytes.

    Broker: `host` (the name or address its certificate must carry), `port`, TLS always, with
    `ca_file` the only CA trusted for the broker (pinned). Client
    authentication: `username` + `password_file`, and/or `client_cert` + `client_key`.
    `client_id` names the persistent session (default ``portvakt-<site>-<gateway>``);
    `protocol` 5 (MQTT v5) or 4 (3.1.1); `session_expiry` how long the broker keeps the
    session while the gateway is away (v5).

    Topics live under ``<topic_prefix>/<site>/<gateway>/`` and ``<topic_prefix>/crl/``.
    Payloads above `inline_limit` arrive as signed manifests whose content is fetched over
    HTTPS (`fetch_ca_file`: the CA for those servers, default the system's; `allow_http`:
    accept http URLs, the content is still checked by SHA-256), up to `max_fetch_bytes`.
    `manifest_keys` and `command_keys` are pinned head-office PEM public keys.

    Outbox: at most `window` events are in flight beyond head office's acknowledgement, read in
    batches of `batch` and sent `events_per_message` (at most about `message_bytes`) to a
    message; with no acknowledgement progress for `resend_after` seconds the unacked
    ones are sent again. Acknowledged events stay `event_retention` seconds, then are purged.
    `backlog_alarm`: an alarm when more events than this wait for head office.
    """

    host: str
    ca_file: Path
    port: int = 8883
    username: str | None = None
    password_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    client_id: str | None = None
    protocol: int = 5
    keepalive: int = 30
    session_expiry: int = 7 * 86400
    connect_timeout: float = 10.0
    topic_prefix: str = "portvakt"
    inline_limit: int = 256 * 1024
    max_fetch_bytes: int = 256 * 1024 * 1024
    fetch_ca_file: Path | None = None
    allow_http: bool = False
    fetch_timeout: float = 120.0
    manifest_keys: tuple[Path, ...] = ()
    command_keys: tuple[Path, ...] = ()
    command_max_ttl: float = 600.0
    clock_skew: float = 300.0
    window: int = 5000
    batch: int = 1000
    events_per_message: int = 50
    message_bytes: int = 64 * 1024
    resend_after: float = 60.0
    event_retention: float = 14 * DAY
    purge_interval: float = 3600.0
    backlog_alarm: int = 100_000
    status_interval: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    crl: CrlFetchConfig = CrlFetchConfig()
    source: str = "(mqtt)"  # the configuration file, for error messages


MQTT_KEYS = {
    "host", "port", "ca_file", "username", "password_file", "client_cert",
    "client_key", "client_id", "protocol", "keepalive_seconds", "session_expiry_seconds",
    "connect_timeout_seconds", "topic_prefix", "inline_limit_bytes", "max_fetch_bytes",
    "fetch_ca_file", "allow_http", "fetch_timeout_seconds", "manifest_keys", "command_keys",
    "command_max_ttl_seconds", "clock_skew_seconds", "window", "batch", "events_per_message",
    "message_bytes", "resend_after_seconds",
    "event_retention_days", "purge_interval_seconds", "backlog_alarm_events",
    "status_interval_seconds", "backoff_initial_seconds", "backoff_max_seconds", "crl",
}
CRL_KEYS = {"urls", "lead_seconds", "refresh_seconds", "retry_seconds", "timeout_seconds",
            "max_bytes", "from_certificates"}


def parse_crl_fetch(c: Table) -> CrlFetchConfig:
    """The CRL distribution points table: `[crl]` (fetched with or without MQTT) or, the older
    place, `[mqtt.crl]`. Raises ConfigError naming the key."""
    c.reject_unknown(CRL_KEYS)
    urls = c.strings("urls", ())
    for i, u in enumerate(urls):
        if not u.lower().startswith(("http://", "https://")):
            raise c.fail(f"urls[{i}]", f"expected an http:// or https:// URL, got {u!r}")
    refresh = c.number("refresh_seconds", 10, 30 * DAY, 3600.0)
    return CrlFetchConfig(urls, c.number("lead_seconds", 0, 30 * DAY, 3600.0), refresh,
                          c.number("retry_seconds", 0.01, 30 * DAY, min(60.0, refresh)),
                          c.number("timeout_seconds", 1, 3600, 60.0),
                          c.integer("max_bytes", 1024, 2**40, 512 * 1024 * 1024),
                          c.boolean("from_certificates", True))


def parse_sync_config(raw: dict[str, Any], file: str,
                      resolve: Callable[[str], Path]) -> SyncConfig:
    """Validate the contents of the `[mqtt]` table (`raw`) of configuration file `file`.

    `resolve` turns a path as written into a Path (relative paths against the state directory,
    as gateway/config.py does). Raises ConfigError(file, "mqtt.<key>", expected form). Does not
    read the files named: SyncService does at start (and checks their permissions)."""
    t = Table(file, "mqtt.", raw)
    if "password" in raw:  # not a known key, but say why
        raise t.fail("password", "not allowed; put the password in a file and name it in "
                                 "password_file")
    t.reject_unknown(MQTT_KEYS)

    def path(k: str) -> Path | None:
        v = t.text(k, "")
        return resolve(v) if v else None

    host = t.text("host")
    ca = path("ca_file")
    if ca is None:
        raise t.fail("ca_file", "missing; expected the PEM file of the CA that signed the "
                                "broker's certificate (TLS is required; the CA is pinned)")
    username = t.text("username", "") or None
    password_file = path("password_file")
    if password_file is not None and username is None:
        raise t.fail("username", "missing; expected the broker user name that password_file "
                                 "belongs to")
    if username is not None and password_file is None:
        raise t.fail("password_file", "missing; expected a file holding the broker password "
                                      "(never the password itself in the configuration)")
    cert, key = path("client_cert"), path("client_key")
    if (cert is None) != (key is None):
        raise t.fail("client_key" if key is None else "client_cert",
                     "expected both client_cert and client_key, or neither")
    if username is None and cert is None:
        raise t.fail("username", "missing; expected username + password_file, or "
                                 "client_cert + client_key")
    prefix = t.text("topic_prefix", "portvakt")
    if not all(_TOPIC_LEVEL.fullmatch(level) for level in prefix.split("/")):
        raise t.fail("topic_prefix", f"expected topic levels without +, # or empty levels, "
                                     f"got {prefix!r}")
    proto = t.text("protocol", "5")
    if proto not in PROTOCOLS:
        raise t.fail("protocol", f"expected one of {', '.join(PROTOCOLS)}, got {proto!r}")
    client_id = t.text("client_id", "") or None
    if client_id is not None and len(client_id.encode()) > 65535:
        raise t.fail("client_id", "expected at most 65535 bytes")
    window = t.integer("window", 1, 1_000_000, 5000)
    batch = t.integer("batch", 1, 100_000, min(1000, window))
    if batch > window:
        raise t.fail("batch", f"expected at most window ({window})")
    inline = t.integer("inline_limit_bytes", 1024, 256 * 1024 * 1024, 256 * 1024)
    message_bytes = t.integer("message_bytes", 1024, inline, min(64 * 1024, inline))

    crl = parse_crl_fetch(t.table("crl"))

    backoff_initial = t.number("backoff_initial_seconds", 0.01, 3600, 0.5)
    return SyncConfig(
        host=host, ca_file=ca, port=t.integer("port", 1, 65535, 8883),
        username=username,
        password_file=password_file, client_cert=cert, client_key=key, client_id=client_id,
        protocol=PROTOCOLS[proto], keepalive=t.integer("keepalive_seconds", 5, 3600, 30),
        session_expiry=t.integer("session_expiry_seconds", 0, 2**32 - 1, 7 * 86400),
        connect_timeout=t.number("connect_timeout_seconds", 0.5, 600, 10.0),
        topic_prefix=prefix,
        inline_limit=inline,
        max_fetch_bytes=t.integer("max_fetch_bytes", 1024, 2**40, 256 * 1024 * 1024),
        fetch_ca_file=path("fetch_ca_file"), allow_http=t.boolean("allow_http", False),
        fetch_timeout=t.number("fetch_timeout_seconds", 1, 3600, 120.0),
        manifest_keys=tuple(resolve(k) for k in t.strings("manifest_keys", ())),
        command_keys=tuple(resolve(k) for k in t.strings("command_keys", ())),
        command_max_ttl=t.number("command_max_ttl_seconds", 1, 7 * DAY, 600.0),
        clock_skew=t.number("clock_skew_seconds", 0, 86400, 300.0),
        window=window, batch=batch,
        events_per_message=t.integer("events_per_message", 1, 1000, 50),
        message_bytes=message_bytes,
        resend_after=t.number("resend_after_seconds", 0.05, 86400, 60.0),
        event_retention=t.number("event_retention_days", 0, 3650, 14.0) * DAY,
        purge_interval=t.number("purge_interval_seconds", 1, 7 * DAY, 3600.0),
        backlog_alarm=t.integer("backlog_alarm_events", 1, 2**62, 100_000),
        status_interval=t.number("status_interval_seconds", 0.05, 86400, 60.0),
        backoff_initial=backoff_initial,
        backoff_max=t.number("backoff_max_seconds", backoff_initial, 86400,
                             max(60.0, backoff_initial)),
        crl=crl, source=file)
