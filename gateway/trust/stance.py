"""A door's stance on what validation could not settle: revocation unknown, a CRL past its
nextUpdate, a clock behind the newest trusted time. One function, used by the door
(`gateway.access.decide`) and by `portvakt verify`, so both give the same verdict."""

from __future__ import annotations

from gateway.config import Stance

# The reason codes a stance can deny with (also the alarm codes when it allows).
STANCE_REASONS = ("revocation-unknown", "crl-stale", "clock-behind")


def apply_stance(revocation: str, clock_behind: bool,
                 stance: Stance) -> tuple[str | None, tuple[str, ...]]:
    """(the reason code that denies, or None; the alarm codes raised by an "allow" stance).

    `revocation` is "good", "stale" or "unknown" (`Validated.revocation`)."""
    alarms: list[str] = []
    for flag, code, mode in (
            (revocation == "unknown", "revocation-unknown", stance.revocation_unknown),
            (revocation == "stale", "crl-stale", stance.crl_stale),
            (clock_behind, "clock-behind", stance.clock_behind)):
        if flag:
            if mode != "allow":
                return code, tuple(alarms)
            alarms.append(code)
    return None, tuple(alarms)
