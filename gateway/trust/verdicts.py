"""The refusal every part of the trust core returns: a reason code, a detail, a position."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a code: revoked, expired, untrusted-issuer, proof-failed, ...
    detail: str
    position: int = 0  # 0 = the presented certificate, 1 = its issuer, ...
