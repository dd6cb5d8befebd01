"""A private mosquitto broker on loopback: password auth, a TLS listener, optional ACL, persistence.

Pitfalls (mosquitto 2.0.11, Debian 12):
- As root, mosquitto drops privileges to user "mosquitto" after reading its config and then cannot
  write the persistence file in a root-owned folder at shutdown (the queued messages of persistent
  sessions are silently lost across a restart). `user root` in the config keeps it root.
- Persistence is written at a clean shutdown (SIGTERM) and every `autosave_interval`; a SIGKILLed
  broker loses what arrived since the last save. `stop()` sends SIGTERM and waits, so `restart()`
  keeps sessions and queued QoS 1/2 messages.
- `per_listener_settings false` (the default, written out here) makes password_file, acl_file and
  allow_anonymous apply to both listeners; they are written before the `listener` lines.
- A listener without `bind_address`/host listens on every interface: always give 127.0.0.1.
- The listeners accept connections a moment before the SIGTERM handler is installed; a SIGTERM in
  that window kills the broker silently, without saving persistence. Readiness therefore waits
  for the "mosquitto version X running" log line (written after both), then for the ports.
- Log to stderr, not stdout: stdout into a file is block-buffered, so lines are lost or late.
- mosquitto blocks signals while in its 100 ms epoll_wait: once clients have connected a SIGTERM
  takes up to ~100 ms to act (stop() measured 0.11 s vs 0.01 s for an idle broker).
- A broker restarted on the same ports binds at once (SO_REUSEADDR), even right after clients
  were connected.
- The readiness probe (a bare TCP connect) makes the broker log "Client <unknown> closed its
  connection" and, on the TLS port, "SSL routines::unexpected eof while reading"; harmless.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from gateway.rig.proc import RigProcess, free_port, port_open, wait_until
from gateway.rig.tls import make_ca, make_server_cert

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3
_RUNNING = re.compile(rb"mosquitto version \S+ running")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class Mosquitto:
    """A running mosquitto; build it with `Mosquitto.start(workdir)`.

    Attributes: `host` ("127.0.0.1"), `port` (plain listener, password auth), `tls_port` (TLS
    listener, same auth), `ca_file` (the CA that signed the server certificate: pin it in
    clients; `ca_key` is its key), `users` (name -> password), `workdir`, `conf_file`,
    `log_file`, `process` (the RigProcess, for fault injection: `broker.process.kill()`),
    `start_seconds` (time of the last start until both ports accepted).
    """

    def __init__(self, workdir: Path, *, port: int, tls_port: int, ca_file: Path,
                 users: dict[str, str], conf_file: Path) -> None:
        self.host = HOST
        self.workdir = workdir
        self.port = port
        self.tls_port = tls_port
        self.ca_file = ca_file
        self.ca_key = ca_file.with_suffix(".key")
        self.users = dict(users)
        self.conf_file = conf_file
        self.log_file = workdir / "mosquitto.log"
        self.process: RigProcess | None = None
        self.start_seconds = 0.0

    @classmethod
    def start(cls, workdir: Path, *, users: dict[str, str] | None = None,
              acl: str | None = None, settings: Sequence[str] = (),
              tls_settings: Sequence[str] = (), tls_port: int | None = None,
              timeout: float = 10.0) -> Mosquitto:
        """Configure and start a broker in `workdir` (created if needed); returns when ready.

        `users` defaults to {"gateway": <random>, "hq": <random>}. `acl` is the text of a
        mosquitto ACL file (e.g. "pattern readwrite site/%u/#"); without it every authenticated
        user may use every topic. `settings`: more mosquitto.conf lines for every listener
        (e.g. "max_queued_messages 20000"); `tls_settings`: lines for the TLS listener only
        (e.g. "require_certificate true", "use_identity_as_username true": clients then log in
        with a certificate from `ca_file`'s CA, its CN the user name; `ca_key` signs them).
        `tls_port`: a fixed port for the TLS listener (the demo's config names it); default a
        free one.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        if users is None:
            users = {"gateway": secrets.token_urlsafe(12), "hq": secrets.token_urlsafe(12)}
        if not users:
            raise ValueError("mosquitto needs at least one user (allow_anonymous is false)")

        passwd = workdir / "passwd"
        passwd.unlink(missing_ok=True)
        for i, (name, password) in enumerate(users.items()):
            args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else [])
            subprocess.run([*args, str(passwd), name, password], check=True,
                           capture_output=True, timeout=10)
        passwd.chmod(0o600)

        ca_cert, ca_key = make_ca(workdir / "tls", "mqtt-ca")
        server_cert, server_key = make_server_cert(workdir / "tls", ca_cert, ca_key, "mqtt-server")

        persist = workdir / "persist"
        persist.mkdir(exist_ok=True)

        common = [
            "# written by gateway.rig.mosquitto",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
        ]
        if acl is not None:
            acl_file = workdir / "acl"
            _write_private(acl_file, acl if acl.endswith("\n") else acl + "\n")
            common.append(f"acl_file {acl_file}")
        if os.geteuid() == 0:
            common.append("user root")
        common += [
            "persistence true",
            f"persistence_location {persist}/",
            "persistence_file mosquitto.db",
            "autosave_interval 60",
            "log_dest stderr",  # unbuffered: stdout to a file is block-buffered and lost on SIGKILL
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            *settings,
        ]
        conf = workdir / "mosquitto.conf"
        for attempt in range(_PORT_ATTEMPTS):
            # free_port() only says the port was free a moment ago: another process may bind it
            # before mosquitto does. Then mosquitto exits at once and we pick new ports.
            port, tls = free_port(), tls_port or free_port()
            while tls == port:
                port = free_port()
            _write_private(conf, "\n".join([
                *common,
                "",
                f"listener {port} {HOST}",
                "",
                f"listener {tls} {HOST}",
                f"cafile {ca_cert}",
                f"certfile {server_cert}",
                f"keyfile {server_key}",
                *tls_settings,
                "",
            ]))
            broker = cls(workdir, port=port, tls_port=tls, ca_file=ca_cert, users=users,
                         conf_file=conf)
            try:
                broker._launch(timeout)
            except RuntimeError:
                if attempt + 1 < _PORT_ATTEMPTS and "Address already in use" in broker.log_tail():
                    continue
                raise
            return broker
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        t0 = time.monotonic()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        proc = RigProcess("mosquitto", ["mosquitto", "-c", str(self.conf_file)], self.log_file,
                          cwd=self.workdir)
        self.process = proc
        try:
            # The ports accept before the signal handlers are installed; a SIGTERM in that window
            # kills the broker without saving persistence. "running" is logged after both.
            wait_until(lambda: self._logged_running(offset), timeout, "mosquitto running", proc)
            wait_until(lambda: port_open(self.port) and port_open(self.tls_port), timeout,
                       f"mosquitto listening on {self.port} and {self.tls_port}", proc)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def _logged_running(self, offset: int) -> bool:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return _RUNNING.search(f.read()) is not None
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        """SIGTERM by PID (the broker saves persistence), SIGKILL after 5 s; idempotent."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same ports, config and persistence."""
        self.stop()
        self._launch(timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
