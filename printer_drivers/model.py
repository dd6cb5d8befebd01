"""What print release talks about: held jobs, the outcome of a release, how a followed job
ended, and the rule that refuses a printer. Frozen dataclasses and pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["JOB_ABORTED", "JOB_CANCELED", "JOB_COMPLETED", "JOB_HELD", "JOB_PENDING",
           "PRINTER_STOPPED", "FailedJob", "HeldJob", "JobEnd", "ReleaseOutcome", "ReleasedJob",
           "queue_of", "refusal", "state_reasons"]

# IPP job-state and printer-state values (RFC 8011).
JOB_PENDING, JOB_HELD, JOB_PROCESSING = 3, 4, 5
JOB_CANCELED, JOB_ABORTED, JOB_COMPLETED = 7, 8, 9
PRINTER_STOPPED = 5
JOB_END_NAMES = {JOB_CANCELED: "canceled", JOB_ABORTED: "aborted", JOB_COMPLETED: "completed"}


@dataclass(frozen=True, slots=True)
class HeldJob:
    """A job waiting for release: held (state 4) on a printer queue or the find-me queue, or
    pending (3) on the stopped find-me queue.

    `owner` is job-originating-user-name as cupsd has it, `user` its normalised form
    (printer_drivers.users); `size_kb` is job-k-octets (units of 1,024 bytes, rounded up);
    `created` is time-at-creation in POSIX seconds; `name` the job's title, or None unless
    `journal_job_names` is configured (titles are personal data and are not even fetched)."""

    job_id: int
    owner: str
    user: str
    queue: str
    state: int
    size_kb: int
    created: float
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job_id, "owner": self.owner, "user": self.user, "queue": self.queue,
                "state": "held" if self.state == JOB_HELD else "pending",
                "size_kb": self.size_kb, "created": self.created,
                **({"name": self.name} if self.name is not None else {})}


@dataclass(frozen=True, slots=True)
class ReleasedJob:
    """A job moved to the printer's queue (if it waited in the find-me queue) and released."""

    job_id: int
    owner: str  # normalised print user
    size_kb: int
    from_queue: str
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job_id, "owner": self.owner, "size_kb": self.size_kb,
                "from_queue": self.from_queue,
                **({"name": self.name} if self.name is not None else {})}


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A job that could not be released; it stays held (in the queue named by `queue`)."""

    job_id: int
    owner: str
    queue: str
    reason: str  # cupsd's IPP status name (e.g. client-error-bad-request) or spooler-unavailable
    detail: str = ""  # cupsd's own status-message, or the error, as it said it


Result = Literal["released", "nothing-to-print", "refused", "failed"]


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    """The answer to one release at one printer.

    `result`: "released" (at least one job; `released` lists them), "nothing-to-print",
    "refused" (the printer may not print now: `reason` is printer-stopped,
    printer-not-accepting, printer-error or queue-not-found, `detail` the printer's state
    reasons; every job stays held) or "failed" (jobs were found but none could be released:
    see `failed`). `seconds` is how long the release took, from the call to the last
    Release-Job acknowledged."""

    printer: str
    result: Result
    reason: str | None = None
    detail: str = ""
    released: tuple[ReleasedJob, ...] = ()
    failed: tuple[FailedJob, ...] = ()
    seconds: float = 0.0

    @property
    def nothing_to_print(self) -> bool:
        return self.result == "nothing-to-print"

    def to_json(self) -> dict[str, Any]:
        return {"printer": self.printer, "result": self.result, "reason": self.reason,
                "detail": self.detail, "released": [j.to_json() for j in self.released],
                "failed": [{"job": f.job_id, "owner": f.owner, "queue": f.queue,
                            "reason": f.reason} for f in self.failed],
                "seconds": round(self.seconds, 6)}


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How a followed job ended: "completed", "aborted", "canceled", "gone" (cupsd no longer
    knows it) or "timeout" (still not finished when following stopped); `detail` holds cupsd's
    job-state-reasons and message."""

    job_id: int
    state: str
    detail: str = ""
    printer: str | None = None
    owner: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def state_reasons(attrs: Mapping[str, Any], key: str = "printer-state-reasons") -> list[str]:
    """A 1setOf keyword from pyipp's parse (a string when one value, a list when several)."""
    v = attrs.get(key)
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def refusal(printer: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why a printer must not print now, from its Get-Printer-Attributes answer, or None.

    Refused: printer-state stopped ("printer-stopped"), printer-is-accepting-jobs false
    ("printer-not-accepting"), or any printer-state-reasons keyword ending in "-error"
    ("printer-error"). Reasons ending in "-warning" or "-report" (toner low, ...) and reasons
    without a suffix never refuse. An answer without printer-state is refused as
    "printer-state-unknown". The second item is the printer's state reasons, comma-separated."""
    reasons = state_reasons(printer)
    detail = ",".join(r for r in reasons if r != "none")
    state = printer.get("printer-state")
    if state is None:
        return "printer-state-unknown", detail
    if int(state) == PRINTER_STOPPED:
        return "printer-stopped", detail
    if printer.get("printer-is-accepting-jobs") is False:
        return "printer-not-accepting", detail
    errors = [r for r in reasons if r.endswith("-error")]
    if errors:
        return "printer-error", ",".join(errors)
    return None


def queue_of(uri: str) -> str:
    """The queue name in a printer URI (ipp://host:631/printers/NAME -> NAME); "" if none."""
    path = uri.split("://", 1)[-1].partition("/")[2]
    kind, _, name = path.partition("/")
    return name.split("?", 1)[0] if kind in ("printers", "classes") else ""
