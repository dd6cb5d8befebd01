"""The broker connection: aiomqtt behind our own types, for the gateway and for head office.

aiomqtt's `publish` returns on the PUBACK but drops its reason code, and keeps waiting out its
timeout when the connection dies meanwhile. `Client.publish_checked` fixes both: an MQTT v5
PUBACK with a failure code (a publish the broker's ACL refused is 135) raises PublishRefused,
and a lost connection fails every publish still waiting at once. Everything aiomqtt, paho and
ssl raise is turned into BrokerError here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import ConfigError, PortvaktError

log = logging.getLogger(__name__)


class SyncError(PortvaktError):
    """Head-office sync failed (broker, message, content)."""


class BrokerError(SyncError):
    """The broker cannot be reached, refused us, or the connection was lost."""


class PublishRefused(BrokerError):
    """The broker answered a publish with a failure reason code (MQTT v5 PUBACK >= 0x80)."""

    def __init__(self, topic: str, code: int, name: str) -> None:
        self.topic = topic
        self.code = code
        super().__init__(f"{topic}: the broker refused the publish: {name} ({code})")


@dataclass(frozen=True)
class BrokerParams:
    """How to reach and log in to the broker. `password` is the secret itself (read from a
    file by the caller); `ca_file` is the only CA trusted for the broker's certificate."""

    host: str
    port: int
    ca_file: Path
    client_id: str
    username: str | None = None
    password: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    protocol: int = 5
    keepalive: int = 30
    session_expiry: int = 7 * 86400
    persistent: bool = True
    timeout: float = 10.0


def read_secret(path: Path, file: str, key: str) -> str:
    """The secret in `path` (one line; trailing newline dropped). Refused (ConfigError naming
    `file` and `key`) when missing, empty, or readable or writable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(file, key, f"cannot read {path}: {e.strerror}") from None
    try:
        check_private(os.fstat(fd), path, file, key)
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace").rstrip("\r\n")
    if not text:
        raise ConfigError(file, key, f"{path} is empty; expected the secret")
    return text


def check_private(st: os.stat_result, path: Path, file: str, key: str) -> None:
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(file, key, f"{path} is accessible to group or others (mode "
                                     f"{stat.S_IMODE(st.st_mode):04o}); expected 0600 or 0400, "
                                     f"owned by the service")


def tls_context(params: BrokerParams) -> ssl.SSLContext:
    """TLS 1.2+ trusting `ca_file` only; the client certificate when configured."""
    ctx = ssl.create_default_context(cafile=str(params.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if params.client_cert is not None and params.client_key is not None:
        ctx.load_cert_chain(str(params.client_cert), str(params.client_key))
    return ctx


class _LastError(logging.Handler):
    """Keeps the last error paho logged: the only place it says why a socket failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


class Client(aiomqtt.Client):
    """aiomqtt.Client that keeps each PUBACK's reason code (see the module docstring) and
    knows when its socket closed and why."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A logger of its own (not registered, so not kept forever) passing records on to
        # gateway.sync.paho, with a handler that remembers the last error.
        self.paho_error = _LastError()
        own = logging.Logger("gateway.sync.paho")
        own.parent = logging.getLogger("gateway.sync.paho")
        own.addHandler(self.paho_error)
        super().__init__(*args, logger=own, **kwargs)
        self._reasons: dict[int, ReasonCode] = {}
        self.socket_closed = asyncio.Event()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_close(client, userdata, sock)
        self._loop.call_soon_threadsafe(self.socket_closed.set)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties) -> None:
        self._reasons[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    @property
    def connected(self) -> bool:
        return self._connected.done() and not self._disconnected.done()

    async def wait_disconnected(self) -> None:
        """Return when the connection is lost (raise BrokerError saying why)."""
        try:
            await asyncio.shield(self._disconnected)
        except Exception as e:
            raise BrokerError(f"connection lost: {e}") from None
        raise BrokerError("disconnected")

    async def publish_checked(self, topic: str, payload: bytes, *, qos: int = 1,
                              retain: bool = False, ack_timeout: float | None = None) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1: PUBACK). Raises
        PublishRefused for a failure reason code, BrokerError when the connection is lost or
        the acknowledgement does not come within `ack_timeout` (default: the client's)."""
        if self._disconnected.done():
            raise BrokerError(f"{topic}: not connected")
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerError(f"{topic}: publish failed: {paho.error_string(info.rc)}")
        if not info.is_published():
            done = asyncio.Event()
            with self._pending_call(info.mid, done, self._pending_publishes):
                waiter = asyncio.ensure_future(done.wait())
                try:
                    finished, _ = await asyncio.wait(
                        (waiter, self._disconnected), return_when=asyncio.FIRST_COMPLETED,
                        timeout=self.timeout if ack_timeout is None else ack_timeout)
                finally:
                    waiter.cancel()
                if waiter not in finished:
                    self._reasons.pop(info.mid, None)
                    if self._disconnected.done():
                        raise BrokerError(f"{topic}: connection lost before the broker "
                                          f"acknowledged")
                    raise BrokerError(f"{topic}: no acknowledgement from the broker within "
                                      f"{self.timeout if ack_timeout is None else ack_timeout:g} s")
        rc = self._reasons.pop(info.mid, None)
        if rc is not None and rc.is_failure:
            raise PublishRefused(topic, rc.value, str(rc))


def make_client(params: BrokerParams, *, will: aiomqtt.Will | None = None,
                inflight: int = 100) -> Client:
    """A client for `params` (not yet connected: `async with connect(...)`)."""
    kwargs: dict[str, Any] = {}
    if params.protocol == 5:
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
        kwargs["clean_start"] = not params.persistent
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = params.session_expiry if params.persistent else 0
        kwargs["properties"] = props
    else:
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
        kwargs["clean_session"] = not params.persistent
    client = Client(params.host, params.port, username=params.username,
                    password=params.password, identifier=params.client_id,
                    tls_context=tls_context(params), will=will, keepalive=params.keepalive,
                    timeout=params.timeout, max_inflight_messages=inflight, **kwargs)
    client.pending_calls_threshold = 1 << 30  # aiomqtt warns above it; we bound it ourselves
    return client


@contextlib.asynccontextmanager
async def connect(params: BrokerParams, *, will: aiomqtt.Will | None = None,
                  inflight: int = 100) -> AsyncIterator[Client]:
    """A connected client; BrokerError when the broker cannot be reached or refuses us (bad
    credentials, a certificate not from the pinned CA), or the connection breaks."""
    try:
        client = make_client(params, will=will, inflight=inflight)
    except (ssl.SSLError, OSError) as e:
        raise BrokerError(f"TLS set-up: {e}") from None
    where = f"{params.host}:{params.port}"
    # aiomqtt waits for the CONNACK until its timeout even when the connection died first (a
    # TLS alert such as "certificate required" comes after the handshake): race the two.
    enter = asyncio.ensure_future(client.__aenter__())
    closed = asyncio.ensure_future(client.socket_closed.wait())
    try:
        await asyncio.wait((enter, closed), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        enter.cancel()
        raise
    finally:
        closed.cancel()
    if not enter.done():
        enter.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await enter
        raise BrokerError(f"{where}: cannot connect: "
                          f"{client.paho_error.message or 'the broker closed the connection'}")
    try:
        enter.result()
    except (aiomqtt.MqttError, ssl.SSLError, OSError) as e:
        raise BrokerError(f"{where}: cannot connect: {e}") from None
    try:
        yield client
    except aiomqtt.MqttError as e:
        raise BrokerError(str(e)) from None
    finally:
        with contextlib.suppress(aiomqtt.MqttError, OSError, asyncio.TimeoutError):
            async with asyncio.timeout(2):
                await client.__aexit__(None, None, None)


def suback_failures(codes: Any) -> list[str]:
    """Failure codes in a SUBACK (v5 ReasonCodes, or 3.1.1's 128), as text."""
    out = []
    for c in codes or ():
        if isinstance(c, ReasonCode) and c.is_failure:
            out.append(f"{c} ({c.value})")
        elif isinstance(c, int) and c >= 0x80:
            out.append(str(c))
    return out
