"""A private print path on loopback: dbus-daemon + ippeveprinter (printer) + cupsd (spooler).

cupsd holds jobs and releases them to ippeveprinter through one raw queue; ippeveprinter keeps
every document it receives in `spool_dir`, so tests can compare bytes.

Pitfalls (CUPS 2.4.2, Debian 12, as root):
- The ipp backend is mode 0755, so cupsd runs it as user lp, and it opens the job's document in
  RequestRoot by path. Every ancestor of RequestRoot must be searchable by lp; pytest's tmp dirs
  (/tmp/pytest-of-root is 0700) are not: the job is aborted with the state message "Unable to open
  print file: Permission denied" (seen only in `lpstat -l` or at LogLevel debug). The request
  spool therefore lives in a private 0711 folder made with mkdtemp under /tmp (`request_root`),
  removed by `stop()`.
- cupsd writes /run/cups/printcap unless cups-files.conf names another Printcap file.
- `lpadmin -m raw` still works on 2.4.2 but prints "Raw queues are deprecated" on stderr.
- ippeveprinter auto-types application/octet-stream by sniffing and rejects content it does not
  recognise (Send-Document: "Unsupported document-format"). Worse, the half-created job then stays
  "processing" in ippeveprinter, which answers every further Create-Job with server-error-busy:
  one bad document jams the printer. Submit real formats (text, PDF, PWG raster).
- ippeveprinter prints one job at a time and needs a reachable D-Bus (a private session bus,
  address given as both DBUS_SYSTEM_BUS_ADDRESS and DBUS_SESSION_BUS_ADDRESS); `-n localhost`,
  not `-n 127.0.0.1` (it also listens on ::1). Its job ids restart at 1 per run.
- A unix socket path is limited to 107 bytes; long pytest tmp paths can exceed it, so the bus
  socket falls back to a short mkdtemp folder.
- `lp -U NAME` is trusted as the job owner on an unauthenticated connection; this rig's policy
  allows every operation to everyone (pass `policy=` to cupsd to test a stricter one).
- JobPrivateAccess/JobPrivateValues stay at the stock default (also in OPEN_POLICY): Get-Jobs
  and lpstat hide job-originating-user-name and job-name from anyone but the owner and @SYSTEM,
  and an unauthenticated requesting-user-name "root" counts as @SYSTEM. A gateway asking as
  "gateway" sees job ids and states but not whose job it is.
- Get-Jobs returns only job-id and job-uri unless requested-attributes asks for more.
- `lpadmin -E` before `-p` means "encrypt"; after `-p NAME` it means "enable and accept".
- cupsd that cannot bind its Listen port logs "Address already in use" and exits; a bare
  connect() test could meanwhile be answered by whoever holds the port. Readiness here checks
  (via /proc) that the listening socket belongs to our cupsd / ippeveprinter PID, and start()
  retries on new ports after such a clash.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.rig.proc import RigProcess, free_port, wait_until

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3

# Every operation allowed to every (unauthenticated) user; private job values as in stock CUPS.
OPEN_POLICY = """<Policy default>
  JobPrivateAccess default
  JobPrivateValues default
  SubscriptionPrivateAccess default
  SubscriptionPrivateValues default
  <Limit All>
    Order deny,allow
  </Limit>
</Policy>
"""

_REQUEST_ID = re.compile(r"request id is (\S+)-(\d+)")


def _pid_listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a listening TCP socket on `port` (via /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f[9])
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes:  # "socket:[INODE]"
                return True
    return False


def _unix_socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


class PrintRig:
    """A running dbus-daemon + ippeveprinter + cupsd; build it with `PrintRig.start(workdir)`.

    Attributes: `host`, `queue` (the CUPS queue name), `cups_port`, `printer_port`
    (ippeveprinter), `spool_dir` (documents received by the printer), `cups_uri`
    (ipp://127.0.0.1:PORT/printers/QUEUE), `printer_uri` (ipp://localhost:PPORT/ipp/print),
    `env` (a full environment for child tools: CUPS_SERVER and the D-Bus addresses set),
    `workdir`, `request_root`, `error_log`, `processes` (name -> RigProcess, for fault
    injection), `start_seconds`.
    """

    def __init__(self, workdir: Path, queue: str) -> None:
        self.host = HOST
        self.workdir = workdir
        self.queue = queue
        self.cups_port = 0
        self.printer_port = 0
        self.spool_dir = workdir / "printer-spool"
        self.request_root = workdir  # replaced in start()
        self.error_log = workdir / "cups" / "log" / "error_log"
        self.env: dict[str, str] = {}
        self.processes: dict[str, RigProcess] = {}
        self._private_dirs: list[Path] = []
        self.start_seconds = 0.0

    @property
    def cups_uri(self) -> str:
        return f"ipp://{self.host}:{self.cups_port}/printers/{self.queue}"

    @property
    def printer_uri(self) -> str:
        return f"ipp://localhost:{self.printer_port}/ipp/print"

    @property
    def server(self) -> str:
        """The `-h` argument for lp, lpstat, lpadmin, cancel."""
        return f"{self.host}:{self.cups_port}"

    @classmethod
    def start(cls, workdir: Path, *, queue: str = "printer1", policy: str = OPEN_POLICY,
              log_level: str = "info", timeout: float = 10.0) -> PrintRig:
        """Start all three in `workdir` (created if needed) and create `queue`; returns when the
        queue accepts jobs and the printer listens."""
        t0 = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_PORT_ATTEMPTS):
            rig = cls(workdir, queue)
            try:
                rig._start(policy, log_level, timeout)
            except (RuntimeError, TimeoutError):
                rig.stop()
                # free_port() only says a port was free a moment ago; if another process took
                # it first, start again on new ports.
                if attempt + 1 < _PORT_ATTEMPTS and rig._port_clash():
                    continue
                raise
            except BaseException:
                rig.stop()
                raise
            rig.start_seconds = time.monotonic() - t0
            return rig
        raise AssertionError("unreachable")

    def _port_clash(self) -> bool:
        logs = [self.error_log, *(self.workdir / f"{n}.log" for n in ("cupsd", "ippeveprinter"))]
        for log in logs:
            with contextlib.suppress(OSError):
                if "in use" in log.read_text(errors="replace"):
                    return True
        return False

    def _private_dir(self, prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix))
        self._private_dirs.append(d)
        return d

    def _start(self, policy: str, log_level: str, timeout: float) -> None:
        w = self.workdir
        # --- D-Bus ---------------------------------------------------------------------------
        bus = w / "dbus.sock"
        if len(os.fsencode(bus)) > 100:
            bus = self._private_dir("pv-dbus-") / "bus"
        bus.unlink(missing_ok=True)
        address = f"unix:path={bus}"
        self.env = dict(os.environ)
        self.env.update({
            "DBUS_SYSTEM_BUS_ADDRESS": address,
            "DBUS_SESSION_BUS_ADDRESS": address,
            "CUPS_SERVER": self.server,  # rewritten below once the port is known
        })
        dbus = self._spawn("dbus-daemon", [
            "dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={address}",
        ])
        # --- cupsd configuration (written while D-Bus starts) ---------------------------------
        self.cups_port = free_port()
        self.printer_port = free_port()
        while self.printer_port == self.cups_port:
            self.printer_port = free_port()
        self.env["CUPS_SERVER"] = self.server
        lp_gid = grp.getgrnam("lp").gr_gid
        root = w / "cups"
        etc, cache, state, log = root / "etc", root / "cache", root / "state", root / "log"
        for d in (etc / "ppd", cache, state, log):
            d.mkdir(parents=True, exist_ok=True)
        # RequestRoot must be reachable by user lp (see module docstring).
        self.request_root = self._private_dir("pv-cups-spool-")
        self.request_root.chmod(0o711)
        tmp = self.request_root / "tmp"
        tmp.mkdir()
        if os.geteuid() == 0:
            os.chown(tmp, 0, lp_gid)
        tmp.chmod(0o1770)
        (w / "cups-spool").unlink(missing_ok=True)
        (w / "cups-spool").symlink_to(self.request_root)  # for humans reading the workdir
        self.error_log = log / "error_log"
        (etc / "cupsd.conf").write_text("\n".join([
            "# written by gateway.rig.cups",
            f"LogLevel {log_level}",
            f"Listen {self.host}:{self.cups_port}",
            "Browsing Off",
            "BrowseLocalProtocols none",
            "WebInterface No",
            "DefaultAuthType None",
            "DefaultEncryption Never",
            "MaxJobs 5000",
            "MaxJobsPerPrinter 0",
            "MaxJobsPerUser 0",
            "PreserveJobHistory Yes",
            "PreserveJobFiles No",
            "<Location />",
            "  Order allow,deny",
            f"  Allow from {self.host}",
            "</Location>",
            policy,
        ]))
        (etc / "cups-files.conf").write_text("\n".join([
            f"ServerRoot {etc}",
            f"RequestRoot {self.request_root}",
            f"TempDir {tmp}",
            f"CacheDir {cache}",
            f"StateDir {state}",
            f"AccessLog {log / 'access_log'}",
            f"ErrorLog {self.error_log}",
            f"PageLog {log / 'page_log'}",
            f"Printcap {etc / 'printcap'}",
            "CreateSelfSignedCerts no",
            "",
        ]))
        cupsd = self._spawn("cupsd", [
            "cupsd", "-f", "-c", str(etc / "cupsd.conf"), "-s", str(etc / "cups-files.conf"),
        ])
        # --- ippeveprinter needs the bus ------------------------------------------------------
        wait_until(lambda: _unix_socket_accepts(bus), timeout, f"D-Bus on {bus}", dbus)
        self.spool_dir.mkdir(exist_ok=True)
        printer = self._spawn("ippeveprinter", [
            "ippeveprinter", "-k", "-n", "localhost", "-p", str(self.printer_port), "-r", "off",
            "-d", str(self.spool_dir), "-c", "/bin/true",
            "-f", "application/pdf,image/pwg-raster,text/plain,application/octet-stream",
            self.queue,
        ])
        # --- queue ------------------------------------------------------------------------------
        # A bare port check could be answered by another process that took the port while our
        # cupsd fails to bind and exits. So: is the listening socket cupsd's own?
        wait_until(lambda: _pid_listens(cupsd.pid, self.cups_port), timeout,
                   f"cupsd listening on {self.cups_port}", cupsd)
        device = f"ipp://localhost:{self.printer_port}/ipp/print?waitjob=false"
        self._run(["lpadmin", "-h", self.server, "-p", self.queue, "-E", "-v", device,
                   "-m", "raw", "-o", "printer-error-policy=abort-job"], timeout)
        wait_until(lambda: _pid_listens(printer.pid, self.printer_port), timeout,
                   f"ippeveprinter listening on {self.printer_port}", printer)

    def _spawn(self, name: str, argv: list[str]) -> RigProcess:
        proc = RigProcess(name, argv, self.workdir / f"{name}.log", env=self.env,
                          cwd=self.workdir)
        self.processes[name] = proc
        return proc

    def _run(self, argv: list[str], timeout: float = 10.0) -> str:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                           check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n"
                               f"{self.error_log_tail()}")
        return r.stdout

    # --- helpers for tests and the demo ---------------------------------------------------------

    def submit(self, user: str, file: Path, *, hold: bool = True, queue: str | None = None,
               title: str | None = None) -> int:
        """`lp` as `user` (held indefinitely unless hold=False); returns the CUPS job id."""
        argv = ["lp", "-h", self.server, "-U", user, "-d", queue or self.queue]
        if hold:
            argv += ["-H", "indefinite"]
        if title is not None:
            argv += ["-t", title]
        out = self._run([*argv, "--", str(file)])
        m = _REQUEST_ID.search(out)
        if m is None:
            raise RuntimeError(f"no request id in lp output: {out!r}")
        return int(m.group(2))

    def release(self, job_id: int, user: str) -> None:
        """`lp -i JOB -H resume` as `user`: the CLI way to release a held job."""
        self._run(["lp", "-h", self.server, "-U", user, "-i", f"{self.queue}-{job_id}",
                   "-H", "resume"])

    def lpstat(self, *args: str) -> str:
        """`lpstat -h SERVER ARGS...`; returns stdout."""
        return self._run(["lpstat", "-h", self.server, *args])

    def printed(self) -> list[Path]:
        """Documents ippeveprinter has received completely so far, in its job order.

        ippeveprinter (-k) names a document `JOBID-JOBNAME.EXT` and writes it while receiving;
        once it is complete it runs the print command (-c /bin/true) with its output in
        `JOBID-JOBNAME.prn`. A document counts only when that sibling .prn exists, so a caller
        never compares a half-written file.
        """
        if not self.spool_dir.exists():
            return []
        names = {p.name for p in self.spool_dir.iterdir()}
        done = [self.spool_dir / n for n in names
                if not n.endswith(".prn") and f"{n.rsplit('.', 1)[0]}.prn" in names]
        return sorted(done, key=lambda p: (int(p.name.split("-", 1)[0]), p.name))

    def wait_printed(self, count: int = 1, timeout: float = 10.0) -> list[Path]:
        """Poll (with a deadline) until at least `count` documents arrived; returns printed()."""
        printer = self.processes.get("ippeveprinter")
        try:
            wait_until(lambda: len(self.printed()) >= count, timeout,
                       f"{count} document(s) at the printer", printer)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.error_log_tail()}") from None
        return self.printed()

    def error_log_tail(self, n: int = 30) -> str:
        try:
            lines = self.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- last lines of {self.error_log} ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        """Stop cupsd, ippeveprinter and dbus-daemon by PID (in that order); idempotent."""
        for name in ("cupsd", "ippeveprinter", "dbus-daemon"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                proc.stop()
        for d in self._private_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._private_dirs.clear()
        with contextlib.suppress(OSError):
            (self.workdir / "cups-spool").unlink()

    def __enter__(self) -> PrintRig:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
