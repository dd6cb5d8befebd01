"""config/mosquitto/mosquitto.conf as shipped (its paths moved into a temporary folder, its port
a free one) starts mosquitto, refuses anonymous and plain-text clients, and with the shipped ACL
lets a gateway write its events and read only its own policy; mosquitto_pub/sub are the
clients."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from gateway.rig.proc import RigProcess, free_port, port_open, wait_until
from gateway.rig.tls import make_ca, make_server_cert
from tests.conftest import repo_root

SHIPPED = repo_root() / "config" / "mosquitto"


def test_the_shipped_broker_configuration_runs_and_enforces_tls_passwords_and_the_acl(
        tmp_path: Path) -> None:
    etc, var = tmp_path / "etc", tmp_path / "var"
    etc.mkdir()
    var.mkdir()
    ca, ca_key = make_ca(etc / "tls", "site-ca")
    cert, key = make_server_cert(etc / "tls", ca, ca_key, "broker")
    shutil.copy(ca, etc / "ca.crt")
    shutil.copy(cert, etc / "server.crt")
    shutil.copy(key, etc / "server.key")
    shutil.copy(SHIPPED / "acl", etc / "acl")
    users = {"hq": secrets.token_urlsafe(12), "site1/gw-1": secrets.token_urlsafe(12),
             "site1/gw-2": secrets.token_urlsafe(12)}
    for i, (name, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []),
                        str(etc / "passwd"), name, password], check=True, capture_output=True)
    for f in ("passwd", "acl", "server.key"):
        (etc / f).chmod(0o600)
    port = free_port()
    conf = SHIPPED.joinpath("mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/portvakt/", f"{etc}/")
    conf = conf.replace("/var/lib/mosquitto/", f"{var}/").replace("listener 8883",
                                                                  f"listener {port} 127.0.0.1")
    conf += "\nlog_dest stderr\n" + ("user root\n" if os.geteuid() == 0 else "")
    (tmp_path / "mosquitto.conf").write_text(conf)
    broker = RigProcess("mosquitto", ["mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
                        tmp_path / "mosquitto.log")
    try:
        wait_until(lambda: port_open(port), 10, "the shipped broker listening", broker)

        def client(tool: str, *args: str, user: str | None = None,
                   tls: bool = True) -> subprocess.CompletedProcess[str]:
            auth = ["-u", user, "-P", users[user]] if user else []
            return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port),
                                   *(["--cafile", str(ca)] if tls else []), *auth, *args],
                                  capture_output=True, text=True, timeout=15, check=False)

        policy = "portvakt/site1/gw-1/policy"
        assert client("mosquitto_pub", "-t", policy, "-m", "v1", "-r", "-q", "1",
                      user="hq").returncode == 0
        got = client("mosquitto_sub", "-t", policy, "-C", "1", "-W", "5", user="site1/gw-1")
        assert got.returncode == 0 and got.stdout.strip() == "v1"
        # gw-2 may not read gw-1's policy: the subscription delivers nothing.
        other = client("mosquitto_sub", "-t", policy, "-C", "1", "-W", "2", user="site1/gw-2")
        assert other.stdout.strip() == ""
        # A gateway publishes its events; head office reads them.
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "--cafile",
                                str(ca), "-u", "hq", "-P", users["hq"], "-t",
                                "portvakt/site1/gw-1/events", "-C", "1", "-W", "10", "-q", "1"],
                               stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: "hq" in (tmp_path / "mosquitto.log").read_text()
                       .split("New client connected")[-1], 5, "head office subscribed", broker)
            assert client("mosquitto_pub", "-t", "portvakt/site1/gw-1/events", "-m", "e1", "-q",
                          "1", user="site1/gw-1").returncode == 0
            out, _ = sub.communicate(timeout=15)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
        assert out.strip() == "e1"
        # No anonymous clients, no plain text.
        anon = client("mosquitto_pub", "-t", "portvakt/x", "-m", "x")
        assert anon.returncode != 0
        plain = client("mosquitto_pub", "-t", "portvakt/x", "-m", "x", user="hq", tls=False)
        assert plain.returncode != 0
    finally:
        broker.stop()
