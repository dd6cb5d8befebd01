"""What the sync service is doing, for the status message, the dashboard and tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncInfo:
    connected: bool = False
    connects: int = 0
    last_error: str | None = None
    sent: int = 0  # highest sequence the broker acknowledged in this session
    acked: int = 0  # head office's high-water mark
    resends: int = 0
    status_published: int = 0
    policy: dict[str, Any] | None = None  # the last policy offered: its outcome
    crl: dict[str, Any] = field(default_factory=dict)  # per topic or URL: the last outcome
    commands: dict[str, int] = field(default_factory=lambda: {"executed": 0, "refused": 0,
                                                              "failed": 0})
    handled: dict[str, int] = field(default_factory=lambda: {"policy": 0, "crl": 0, "cmd": 0})
    alarms: list[str] = field(default_factory=list)
    subscribe_failures: list[str] = field(default_factory=list)
