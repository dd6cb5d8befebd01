"""Is the system clock synchronised? Every certificate and CRL check depends on it.

The kernel knows: `adjtimex(2)` with no modes returns TIME_ERROR while the clock is not
synchronised (STA_UNSYNC, set until an NTP daemon — chrony, systemd-timesyncd, ntpd — disciplines
it). That answer needs no daemon, no D-Bus and no privilege. Which daemon runs, and whether
chrony uses authenticated time (NTS), is read from /proc and chrony's configuration, for advice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from pathlib import Path

TIME_ERROR = 5
_NTP_DAEMONS = ("chronyd", "systemd-timesyncd", "ntpd", "ntpsec", "openntpd")


@dataclass(frozen=True)
class ClockStatus:
    synchronised: bool | None  # None: the kernel could not be asked
    daemon: str | None  # the NTP daemon found running, if any
    nts: bool  # chrony is configured with NTS (authenticated time)

    def describe(self) -> str:
        if self.synchronised is None:
            state = "synchronisation unknown"
        else:
            state = "synchronised" if self.synchronised else "NOT synchronised"
        by = f" by {self.daemon}" if self.daemon else " (no NTP daemon running)"
        auth = ", authenticated (NTS)" if self.nts else ""
        return f"{state}{by}{auth}"


def kernel_synchronised() -> bool | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0 reads only
    state = int(libc.adjtimex(buf))
    if state < 0:
        return None
    return state != TIME_ERROR


def running_ntp_daemon(proc: Path = Path("/proc")) -> str | None:
    try:
        entries = [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for p in entries:
        try:
            name = (p / "comm").read_text().strip()
        except OSError:
            continue
        if name in _NTP_DAEMONS:
            return name
    return None


def chrony_uses_nts(conf_dir: Path = Path("/etc/chrony")) -> bool:
    files = [conf_dir / "chrony.conf", *sorted((conf_dir / "sources.d").glob("*.sources"))]
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if words and words[0] in ("server", "pool") and "nts" in words[2:]:
                return True
    return False


def clock_status() -> ClockStatus:
    daemon = running_ntp_daemon()
    nts = daemon == "chronyd" and chrony_uses_nts()
    return ClockStatus(kernel_synchronised(), daemon, nts)

