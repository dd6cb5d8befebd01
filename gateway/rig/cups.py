"""A private print path on loopback: dbus-daemon + ippeveprinter (printer) + cupsd (spooler).

cupsd holds jobs and releases them to ippeveprinter through one raw queue; ippeveprinter keeps
every document it receives in `spool_dir`, so tests can compare bytes. For print release the rig
also builds the Portvakt layout (`PrintRig.start(printers=..., findme=..., driverless=True,
held=True, policy=shipped_policy())`): one ippeveprinter per printer queue (each with its own
spool folder), driverless PDF queues, a stopped find-me queue, every queue holding new jobs, and
the cupsd policy shipped in config/cups/cupsd.conf. cupsd also listens on a domain socket
(`socket_path`), where a client authenticates by peer credentials.

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
- A queue made with `lpadmin -m everywhere` (IPP Everywhere, driverless) runs every PDF through
  cups-filters' pdftopdf, which rewrites it: the printer no longer receives the submitted bytes.
  A "driverless PDF" queue here is that generated PPD with its PDF filter line replaced by
  `*cupsFilter2: "application/pdf application/pdf 0 -"` (PDF goes to the printer as submitted;
  text and images are still converted to PDF first). config/cups/add-printer.sh does the same.
- A domain socket's peer credentials reach cupsd only over that socket; the socket folder must be
  searchable by whoever connects (a 0755 mkdtemp folder here, so a test can connect as nobody).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
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
_PDF_FILTER = re.compile(r'^\*cupsFilter2: "application/vnd\.cups-pdf application/pdf \d+ -"$', re.M)
PDF_PASSTHROUGH = '*cupsFilter2: "application/pdf application/pdf 0 -"'
# A device URI that never prints: the find-me queue is stopped, and if it were started by mistake
# its jobs would still be held and then fail here (port 9 is "discard").
FINDME_DEVICE = "ipp://localhost:9/portvakt-findme-never-prints"
_POLICY_BEGIN, _POLICY_END = "# --- BEGIN PORTVAKT POLICY", "# --- END PORTVAKT POLICY"


def shipped_cupsd_conf() -> Path:
    """config/cups/cupsd.conf in a source checkout, or its copy inside the wheel."""
    here = Path(__file__).resolve().parent.parent  # gateway/
    packaged = here / "_templates" / "cups" / "cupsd.conf"
    return packaged if packaged.exists() else here.parent / "config" / "cups" / "cupsd.conf"


def shipped_policy(account: str | None = None, conf: Path | None = None) -> str:
    """The <Policy> block of the shipped cupsd.conf with the gateway account "portvakt" replaced
    by `account` (default: the user running this process, the gateway's account in tests)."""
    text = (conf or shipped_cupsd_conf()).read_text()
    try:
        start = text.index("\n", text.index(_POLICY_BEGIN)) + 1
        block = text[start:text.index(_POLICY_END)]
    except ValueError:
        raise RuntimeError(f"{conf or shipped_cupsd_conf()}: no PORTVAKT POLICY block") from None
    name = account or pwd.getpwuid(os.geteuid()).pw_name
    return re.sub(r"\bportvakt\b", name, block)


def pdf_passthrough(ppd: str) -> str:
    """An IPP Everywhere PPD (`lpadmin -m everywhere`) turned into a driverless PDF one: PDF goes
    to the printer unchanged instead of through pdftopdf. Raises ValueError if the printer does
    not take PDF (the PPD has no PDF filter line)."""
    out, n = _PDF_FILTER.subn(PDF_PASSTHROUGH, ppd)
    if n != 1:
        raise ValueError("the PPD has no application/vnd.cups-pdf filter: the printer takes no PDF")
    return out


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
    """A running dbus-daemon + ippeveprinter(s) + cupsd; build it with `PrintRig.start(workdir)`.

    Attributes: `host`, `queue` (the first printer queue), `printers` (every printer queue, one
    ippeveprinter each), `findme` (the stopped find-me queue, or None), `cups_port`,
    `printer_port` (the first ippeveprinter's), `printer_ports` (queue -> port), `spool_dir`
    (documents received by the first printer), `spool_dirs` (queue -> folder), `socket_path`
    (cupsd's domain socket), `cups_uri` (ipp://127.0.0.1:PORT/printers/QUEUE), `printer_uri`
    (ipp://localhost:PPORT/ipp/print), `env` (a full environment for child tools: CUPS_SERVER
    and the D-Bus addresses set), `workdir`, `request_root`, `error_log`, `processes` (name ->
    RigProcess, for fault injection: "cupsd", "dbus-daemon", "ippeveprinter" for the first
    printer and "ippeveprinter-QUEUE" for the others), `start_seconds`.
    """

    def __init__(self, workdir: Path, printers: Sequence[str], findme: str | None) -> None:
        self.host = HOST
        self.workdir = workdir
        self.printers = tuple(printers)
        self.queue = self.printers[0]
        self.findme = findme
        self.cups_port = 0
        self.printer_ports: dict[str, int] = {}
        self.spool_dirs = {q: workdir / ("printer-spool" if i == 0 else f"printer-spool-{q}")
                           for i, q in enumerate(self.printers)}
        self.request_root = workdir  # replaced in start()
        self.socket_path = workdir / "cups.sock"  # replaced in start()
        self.error_log = workdir / "cups" / "log" / "error_log"
        self.env: dict[str, str] = {}
        self.processes: dict[str, RigProcess] = {}
        self._private_dirs: list[Path] = []
        self.start_seconds = 0.0

    @property
    def printer_port(self) -> int:
        return self.printer_ports.get(self.queue, 0)

    @property
    def spool_dir(self) -> Path:
        return self.spool_dirs[self.queue]

    @property
    def cups_uri(self) -> str:
        return f"ipp://{self.host}:{self.cups_port}/printers/{self.queue}"

    @property
    def printer_uri(self) -> str:
        return f"ipp://localhost:{self.printer_port}/ipp/print"

    @property
    def server(self) -> str:
        """The `-h` argument for lp, lpstat, cancel over TCP (unauthenticated, as users do)."""
        return f"{self.host}:{self.cups_port}"

    @property
    def admin_server(self) -> str:
        """The `-h` argument for administration (lpadmin, cupsdisable, cupsreject): cupsd's
        domain socket, where root is known by its peer credentials."""
        return str(self.socket_path)

    @classmethod
    def start(cls, workdir: Path, *, queue: str = "printer1", printers: Sequence[str] = (),
              findme: str | None = None, driverless: bool = False, held: bool = False,
              policy: str = OPEN_POLICY, default_auth: str = "None", log_level: str = "info",
              timeout: float = 10.0) -> PrintRig:
        """Start all of them in `workdir` (created if needed) and create the queues; returns when
        every queue accepts jobs and every printer listens.

        `printers`: the printer queues (default: just `queue`), one ippeveprinter each.
        `findme`: also create this stopped (disabled) queue that accepts jobs. `driverless`: IPP
        Everywhere queues with PDF passed through (see the module docstring) instead of raw ones.
        `held`: every queue's job-hold-until-default is "indefinite". `policy`: the <Policy>
        block(s) of cupsd.conf (`shipped_policy()` for the one shipped in config/cups/).
        `default_auth`: cupsd's DefaultAuthType ("Basic" as in the shipped cupsd.conf: then
        administration works only over the domain socket, where root is known by its peer
        credentials; the rig administers its queues there in any case)."""
        t0 = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        names = tuple(printers) or (queue,)
        if len(set(names)) != len(names) or findme in names:
            raise ValueError(f"queue names must differ: {names}, find-me {findme!r}")
        for attempt in range(_PORT_ATTEMPTS):
            rig = cls(workdir, names, findme)
            try:
                rig._start(policy, default_auth, log_level, timeout, driverless, held)
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

    def _printer_process(self, queue: str) -> str:
        return "ippeveprinter" if queue == self.queue else f"ippeveprinter-{queue}"

    def _port_clash(self) -> bool:
        names = ["cupsd", *(self._printer_process(q) for q in self.printers)]
        logs = [self.error_log, *(self.workdir / f"{n}.log" for n in names)]
        for log in logs:
            with contextlib.suppress(OSError):
                if "in use" in log.read_text(errors="replace"):
                    return True
        return False

    def _private_dir(self, prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix))
        self._private_dirs.append(d)
        return d

    def _start(self, policy: str, default_auth: str, log_level: str, timeout: float,
               driverless: bool, held: bool) -> None:
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
        taken: set[int] = set()
        self.cups_port = free_port()
        taken.add(self.cups_port)
        for q in self.printers:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            self.printer_ports[q] = port
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
        sock_dir = self._private_dir("pv-cups-sock-")
        sock_dir.chmod(0o755)  # a test may connect as another user (peer credentials)
        self.socket_path = sock_dir / "cups.sock"
        self.error_log = log / "error_log"
        (etc / "cupsd.conf").write_text("\n".join([
            "# written by gateway.rig.cups",
            f"LogLevel {log_level}",
            f"Listen {self.host}:{self.cups_port}",
            f"Listen {self.socket_path}",
            "Browsing Off",
            "BrowseLocalProtocols none",
            "WebInterface No",
            f"DefaultAuthType {default_auth}",
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
        printers: dict[str, RigProcess] = {}
        for q in self.printers:
            self.spool_dirs[q].mkdir(exist_ok=True)
            printers[q] = self._spawn(self._printer_process(q), [
                "ippeveprinter", "-k", "-n", "localhost", "-p", str(self.printer_ports[q]),
                "-r", "off", "-d", str(self.spool_dirs[q]), "-c", "/bin/true",
                "-f", "application/pdf,image/pwg-raster,text/plain,application/octet-stream",
                q,
            ])
        # --- queues -----------------------------------------------------------------------------
        # A bare port check could be answered by another process that took the port while our
        # cupsd fails to bind and exits. So: is the listening socket cupsd's own?
        wait_until(lambda: _pid_listens(cupsd.pid, self.cups_port), timeout,
                   f"cupsd listening on {self.cups_port}", cupsd)
        wait_until(lambda: _unix_socket_accepts(self.socket_path), timeout,
                   f"cupsd on {self.socket_path}", cupsd)
        admin = self.admin_server
        hold = ["-o", "job-hold-until-default=indefinite"] if held else []
        ppd: Path | None = None
        for q in self.printers:
            device = f"ipp://localhost:{self.printer_ports[q]}/ipp/print?waitjob=false"
            if driverless:
                # -m everywhere asks the printer for its attributes: it must listen first.
                self._wait_printer(printers[q], q, timeout)
                # ippeveprinter answers "not found" for the URI with ?waitjob=false.
                self._run(["lpadmin", "-h", admin, "-p", q, "-v", device.split("?")[0],
                           "-m", "everywhere"], timeout)
                ppd = w / f"{q}-driverless-pdf.ppd"
                ppd.write_text(pdf_passthrough(self._driverless_ppd(q, timeout)))
                model = ["-P", str(ppd)]
            else:
                model = ["-m", "raw"]
            self._run(["lpadmin", "-h", admin, "-p", q, "-E", "-v", device, *model,
                       "-o", "printer-error-policy=abort-job", *hold], timeout)
        if self.findme is not None:
            model = ["-P", str(ppd)] if ppd is not None else ["-m", "raw"]
            self._run(["lpadmin", "-h", admin, "-p", self.findme, "-E", "-v",
                       FINDME_DEVICE, *model, *hold], timeout)
            self._run(["cupsdisable", "-h", admin, self.findme], timeout)
        for q, proc in printers.items():
            self._wait_printer(proc, q, timeout)

    def _driverless_ppd(self, queue: str, timeout: float) -> str:
        """The PPD cupsd generated for `queue` (lpadmin -m everywhere): cupsd asks the printer in
        a thread of its own after lpadmin returns, then serves it at /printers/NAME.ppd."""
        url = f"http://{self.host}:{self.cups_port}/printers/{queue}.ppd"
        found: list[str] = []

        def fetched() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    found.append(r.read().decode())
                    return True
            except urllib.error.HTTPError as e:
                if e.code == 404:  # not generated yet
                    return False
                raise
        try:
            wait_until(fetched, timeout, f"the driverless PPD of {queue}", self.processes["cupsd"])
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.error_log_tail()}") from None
        return found[0]

    def _wait_printer(self, proc: RigProcess, queue: str, timeout: float) -> None:
        port = self.printer_ports[queue]
        wait_until(lambda: _pid_listens(proc.pid, port), timeout,
                   f"ippeveprinter {queue} listening on {port}", proc)

    def _spawn(self, name: str, argv: list[str]) -> RigProcess:
        proc = RigProcess(name, argv, self.workdir / f"{name}.log", env=self.env,
                          cwd=self.workdir)
        self.processes[name] = proc
        return proc

    def _run(self, argv: list[str], timeout: float = 10.0) -> str:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                           check=False)
        if r.returncode != 0:
            died = self.cupsd_died()
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n"
                               + (f"{died}\n" if died else "") + self.error_log_tail())
        return r.stdout

    def cupsd_died(self) -> str | None:
        """None while cupsd runs; else one line saying how it ended (a crash is named: since
        Debian's 2.4.2-3+deb12u10 a `Require user @OWNER` crashed it, see config/cups/)."""
        proc = self.processes.get("cupsd")
        how = proc.exit_description() if proc is not None else None
        return f"cupsd (pid {proc.pid}) {how}" if proc is not None and how else None

    # --- helpers for tests and the demo ---------------------------------------------------------

    def submit(self, user: str, file: Path, *, hold: bool = True, queue: str | None = None,
               title: str | None = None, options: Sequence[str] = ()) -> int:
        """`lp` as `user` (held indefinitely unless hold=False; a queue made with held=True holds
        it anyway) to `queue` (default: the first printer); `options` are extra `lp`
        arguments. Returns the CUPS job id."""
        argv = ["lp", "-h", self.server, "-U", user, "-d", queue or self.queue]
        if hold:
            argv += ["-H", "indefinite"]
        if title is not None:
            argv += ["-t", title]
        out = self._run([*argv, *options, "--", str(file)])
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

    def printed(self, printer: str | None = None) -> list[Path]:
        """Documents the ippeveprinter behind queue `printer` (default: the first) has received
        completely so far, in its job order.

        ippeveprinter (-k) names a document `JOBID-JOBNAME.EXT` and writes it while receiving;
        once it is complete it runs the print command (-c /bin/true) with its output in
        `JOBID-JOBNAME.prn`. A document counts only when that sibling .prn exists, so a caller
        never compares a half-written file.
        """
        spool = self.spool_dirs[printer or self.queue]
        if not spool.exists():
            return []
        names = {p.name for p in spool.iterdir()}
        done = [spool / n for n in names
                if not n.endswith(".prn") and f"{n.rsplit('.', 1)[0]}.prn" in names]
        return sorted(done, key=lambda p: (int(p.name.split("-", 1)[0]), p.name))

    def wait_printed(self, count: int = 1, timeout: float = 10.0,
                     printer: str | None = None) -> list[Path]:
        """Poll (with a deadline) until at least `count` documents arrived at `printer` (default:
        the first); returns printed(printer)."""
        queue = printer or self.queue
        proc = self.processes.get(self._printer_process(queue))
        try:
            wait_until(lambda: len(self.printed(queue)) >= count, timeout,
                       f"{count} document(s) at printer {queue}", proc)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.error_log_tail()}") from None
        return self.printed(queue)

    def restart_cupsd(self, timeout: float = 10.0) -> None:
        """Stop cupsd by PID and start it again on the same configuration and ports; returns
        when it listens on its port and its socket again (jobs and queue states persist)."""
        old = self.processes["cupsd"]
        old.stop()
        cupsd = self._spawn("cupsd", old.argv)
        wait_until(lambda: _pid_listens(cupsd.pid, self.cups_port), timeout,
                   f"cupsd listening on {self.cups_port} again", cupsd)
        wait_until(lambda: _unix_socket_accepts(self.socket_path), timeout,
                   f"cupsd on {self.socket_path} again", cupsd)

    def error_log_tail(self, n: int = 30) -> str:
        try:
            lines = self.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- last lines of {self.error_log} ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        """Stop cupsd, the ippeveprinters and dbus-daemon by PID (in that order); idempotent."""
        for name in ("cupsd", *(self._printer_process(q) for q in self.printers), "dbus-daemon"):
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
