"""A local HTTP(S) file server in a process of its own: where manifests' content and CRL
distribution points live in tests and the demo.

`FileServer.start(root, workdir)` serves the files in `root` over HTTPS on 127.0.0.1 with a
certificate from a throw-away CA (`ca_file`: pin it in clients), or plain HTTP with
`tls=False`. Each request is one line in the log (`requests(path)` counts them). The child is
`python -m gateway.rig.http`; it picks its own port and logs "serving URL" when ready, so there
is no window in which another process can take the port.

Pitfalls: http.server answers If-Modified-Since from the file's mtime (whole seconds) and sends
no ETag; a file rewritten within the same second looks unchanged to a conditional GET.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import signal
import ssl
import sys
from pathlib import Path
from types import FrameType, TracebackType

from gateway.rig.proc import RigProcess, wait_until
from gateway.rig.tls import make_ca, make_server_cert

HOST = "127.0.0.1"
_SERVING = re.compile(r"serving (https?://\S+)")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")
        sys.stderr.flush()


def serve(root: Path, cert: Path | None, key: Path | None) -> None:
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
    scheme = "http"
    if cert is not None and key is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    sys.stderr.write(f"serving {scheme}://{HOST}:{httpd.server_address[1]}\n")
    sys.stderr.flush()
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


class FileServer:
    """A running file server; build it with `FileServer.start(root, workdir)`."""

    def __init__(self, process: RigProcess, base_url: str, ca_file: Path | None,
                 log_file: Path) -> None:
        self.process: RigProcess | None = process
        self.base_url = base_url
        self.ca_file = ca_file
        self.log_file = log_file

    @classmethod
    def start(cls, root: Path, workdir: Path, *, tls: bool = True,
              timeout: float = 10.0) -> FileServer:
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "gateway.rig.http", "--root", str(root)]
        ca = None
        if tls:
            ca, ca_key = make_ca(workdir / "tls", "http-ca")
            cert, key = make_server_cert(workdir / "tls", ca, ca_key, "http-server")
            argv += ["--cert", str(cert), "--key", str(key)]
        log = workdir / "http.log"
        log.write_bytes(b"")
        proc = RigProcess("http", argv, log, cwd=Path(__file__).resolve().parents[2])
        found: list[str] = []

        def ready() -> bool:
            m = _SERVING.search(log.read_text(errors="replace"))
            if m:
                found.append(m[1])
            return m is not None

        try:
            wait_until(ready, timeout, "the file server", proc)
        except BaseException:
            proc.stop()
            raise
        return cls(proc, found[0], ca, log)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def requests(self, path: str = "") -> int:
        """How many requests for paths starting with `path` were logged so far."""
        text = self.log_file.read_text(errors="replace")
        return len(re.findall(rf'"(?:GET|HEAD) /{re.escape(path.lstrip("/"))}\S* HTTP', text))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.rig.http")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    a = p.parse_args(argv)
    serve(a.root, a.cert, a.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
