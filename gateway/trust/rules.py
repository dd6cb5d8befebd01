"""RFC 5280 profile rules (the MUSTs a validator can see in one certificate)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.trust.certinfo import CertInfo


def profile_violations(info: CertInfo) -> tuple[str, ...]:
    """The profile rules `info` breaks, as reasons; () when none."""
    return ()
