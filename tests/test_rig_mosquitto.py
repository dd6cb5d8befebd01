"""The mosquitto rig answers real clients: mosquitto_pub/mosquitto_sub (independent of our code)
and aiomqtt, with password auth, TLS pinned to the rig's CA, ACLs and persistence across restart."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid
from pathlib import Path

import aiomqtt
import pytest

from gateway.rig.mosquitto import Mosquitto
from gateway.rig.proc import wait_until
from gateway.rig.tls import make_ca

TIMEOUT = 10  # seconds; a safety net only, every wait below ends on an event


def _conn_args(broker: Mosquitto, user: str, password: str | None, *, tls: bool) -> list[str]:
    args = ["-u", user] if password is None else ["-u", user, "-P", password]
    if tls:
        # "localhost" so the client checks the certificate's DNS name against the SAN.
        return ["-h", "localhost", "-p", str(broker.tls_port), "--cafile", str(broker.ca_file),
                *args]
    return ["-h", broker.host, "-p", str(broker.port), *args]


def _pub(broker: Mosquitto, topic: str, payload: str, *, user: str = "gateway",
         password: str | None = None, tls: bool = False, qos: int = 1,
         extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    pw = broker.users[user] if password is None else password
    return subprocess.run(
        ["mosquitto_pub", *_conn_args(broker, user, pw, tls=tls), "-t", topic, "-m", payload,
         "-q", str(qos), *extra],
        capture_output=True, text=True, timeout=TIMEOUT, check=False)


class Subscriber:
    """mosquitto_sub waiting for `count` messages; `ready()` returns once its SUBACK arrived.

    stdout is a pipe, so mosquitto_sub's stdio would block-buffer the -d trace: stdbuf -oL
    makes it line-buffered, and the SUBACK line is the readiness event (no sleep, no race
    between subscribe and publish).
    """

    def __init__(self, broker: Mosquitto, topic: str, *, user: str = "hq", tls: bool = False,
                 count: int = 1, verbose: bool = False) -> None:
        argv = ["stdbuf", "-oL", "mosquitto_sub", "-d",
                *_conn_args(broker, user, broker.users[user], tls=tls),
                "-t", topic, "-q", "1", "-C", str(count), "-W", str(TIMEOUT)]
        if verbose:
            argv.append("-v")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.trace: list[str] = []

    def ready(self) -> None:
        assert self.proc.stdout is not None
        # -W bounds this loop: mosquitto_sub exits (EOF) if nothing happens.
        for line in self.proc.stdout:
            self.trace.append(line)
            if "received SUBACK" in line:
                return
        raise AssertionError(f"mosquitto_sub never subscribed: {self.trace} "
                             f"{self.proc.stderr.read() if self.proc.stderr else ''}")

    def messages(self) -> list[str]:
        """Wait for mosquitto_sub to exit after its -C messages; the non-trace lines."""
        out, err = self.proc.communicate(timeout=TIMEOUT + 5)
        assert self.proc.returncode == 0, (self.trace, out, err)
        trace = ("Client ", "Subscribed (mid")
        return [ln for ln in out.splitlines() if not ln.startswith(trace)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_sub_receives_pub_with_password(mosquitto: Mosquitto, tls: bool) -> None:
    sub = Subscriber(mosquitto, "site/door/1", tls=tls)
    try:
        sub.ready()
        r = _pub(mosquitto, "site/door/1", "opened", tls=tls)
        assert r.returncode == 0, r.stderr
        assert sub.messages() == ["opened"]
    finally:
        sub.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_wrong_password_refused(mosquitto: Mosquitto, tls: bool) -> None:
    r = _pub(mosquitto, "t", "x", password="wrong", tls=tls)
    assert r.returncode != 0
    assert "not authorised" in r.stderr
    r = _pub(mosquitto, "t", "x", user="gateway", password="", tls=tls)
    assert r.returncode != 0


def test_anonymous_and_unknown_user_refused(mosquitto: Mosquitto) -> None:
    r = subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port),
                        "-t", "t", "-m", "x"], capture_output=True, text=True, timeout=TIMEOUT,
                       check=False)
    assert r.returncode != 0 and "not authorised" in r.stderr
    r = subprocess.run(["mosquitto_pub", *_conn_args(mosquitto, "mallory", "pw", tls=False),
                        "-t", "t", "-m", "x"], capture_output=True, text=True, timeout=TIMEOUT,
                       check=False)
    assert r.returncode != 0 and "not authorised" in r.stderr


def test_tls_with_another_ca_refused(mosquitto: Mosquitto, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path, "other-ca")
    r = subprocess.run(
        ["mosquitto_pub", "-h", "localhost", "-p", str(mosquitto.tls_port), "--cafile",
         str(other_ca), "-u", "gateway", "-P", mosquitto.users["gateway"], "-t", "t", "-m", "x"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert r.returncode != 0
    assert "TLS error" in r.stderr, r.stderr
    # The broker logs the client's alert asynchronously: wait for it rather than race it.
    wait_until(lambda: "unknown ca" in mosquitto.log_tail(10), TIMEOUT, "the broker's TLS alert")


def test_acl_limits_topics(tmp_path: Path) -> None:
    acl = "user hq\ntopic read #\n\npattern readwrite site/%u/#\n"
    with Mosquitto.start(tmp_path / "acl-broker", acl=acl) as broker:
        sub = Subscriber(broker, "#", user="hq", verbose=True)
        try:
            sub.ready()
            # Denied first, then allowed, from the same user; QoS 1 so each is through the broker
            # before the next starts. If the denied one were delivered it would be the message.
            denied = _pub(broker, "site/hq/cmd", "forged")
            assert denied.returncode == 0  # MQTT 3.1.1 has no way to tell the publisher
            allowed = _pub(broker, "site/gateway/event", "door-open")
            assert allowed.returncode == 0, allowed.stderr
            assert sub.messages() == ["site/gateway/event door-open"]
        finally:
            sub.close()


def _client(broker: Mosquitto, *, identifier: str | None = None,
            clean_session: bool | None = None, tls: bool = True) -> aiomqtt.Client:
    if tls:
        ctx = ssl.create_default_context(cafile=str(broker.ca_file))  # pins the rig's CA only
        return aiomqtt.Client("localhost", broker.tls_port, username="gateway",
                              password=broker.users["gateway"], tls_context=ctx,
                              identifier=identifier, clean_session=clean_session, timeout=TIMEOUT)
    return aiomqtt.Client(broker.host, broker.port, username="gateway",
                          password=broker.users["gateway"], identifier=identifier,
                          clean_session=clean_session, timeout=TIMEOUT)


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        async for message in client.messages:
            return message
    raise AssertionError("message iterator ended")


async def test_aiomqtt_tls_qos1_round_trip(mosquitto: Mosquitto) -> None:
    async with _client(mosquitto) as client:
        await client.subscribe("site/gateway/echo", qos=1)  # returns on SUBACK
        await client.publish("site/gateway/echo", b"ping", qos=1)  # returns on PUBACK
        message = await _next_message(client)
    assert message.topic.matches("site/gateway/echo")
    assert message.payload == b"ping"
    assert message.qos == 1


async def test_restart_keeps_queued_qos1_for_persistent_session(mosquitto: Mosquitto) -> None:
    ports = (mosquitto.port, mosquitto.tls_port)
    ident = f"door-{uuid.uuid4().hex[:8]}"
    async with _client(mosquitto, identifier=ident, clean_session=False) as sub:
        await sub.subscribe("site/gateway/queued", qos=1)
    # Subscriber offline: the broker queues the message for its session (PUBACK = stored).
    r = _pub(mosquitto, "site/gateway/queued", "while-offline", user="hq", qos=1)
    assert r.returncode == 0, r.stderr

    old_pid = mosquitto.pid
    mosquitto.restart()
    assert mosquitto.pid != old_pid
    assert (mosquitto.port, mosquitto.tls_port) == ports

    async with _client(mosquitto, identifier=ident, clean_session=False) as sub:
        message = await _next_message(sub)  # no new SUBSCRIBE: the session survived
    assert message.payload == b"while-offline"
    assert message.qos == 1
    assert (mosquitto.workdir / "persist" / "mosquitto.db").exists()
