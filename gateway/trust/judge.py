"""The verdict `portvakt verify` gives: the door's trust checks and its stance, as data.

`judge` answers "would a door with this stance accept this certificate?" with the same calls
the door makes (`TrustStore.check_path` / `validate_der`, then `apply_stance`); only the proof of
possession and the access policy, which need a card and a person, are left to the door."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from gateway.config import Stance
from gateway.trust.stance import apply_stance
from gateway.trust.validator import Rejection, TrustStore

STANCE_DETAIL = {
    "revocation-unknown": ("no usable CRL covers {what}: its revocation status is unknown "
                           "(--revocation-unknown allow accepts it for diagnosis)"),
    "crl-stale": ("the CRL covering {what} is past its nextUpdate (--crl-stale allow accepts "
                  "it for diagnosis)"),
    "clock-behind": ("this clock is behind the newest trusted time seen (--clock-behind allow "
                     "accepts it for diagnosis)"),
}


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None = None  # why not: a validation or a stance reason code
    detail: str = ""
    position: int | None = None
    revocation: str | None = None  # good | stale | unknown, when the path is valid
    crl_age: float | None = None
    clock_behind: bool = False
    identity: str | None = None
    profile: str | None = None
    path: tuple[x509.Certificate, ...] = ()
    alarms: tuple[str, ...] = ()  # what an "allow" stance raised


def judge(store: TrustStore, chain_der: Sequence[bytes], at: float, stance: Stance,
          profile: str | None = None, *, path_only: bool = False) -> Verdict:
    """The verdict on a presented chain (DER, presented certificate first) at POSIX time `at`.

    `path_only`: path validation and stance without a credential profile (no identity)."""
    if path_only:
        checked = store.check_path(chain_der, at)
        if isinstance(checked, Rejection):
            return Verdict(False, checked.reason, checked.detail, checked.position)
        path, revocation, age = checked
        behind = store.clock_behind(at)
        identity = chosen = None
        certs = path.path
    else:
        v = store.validate_der(chain_der, at, profile)
        if isinstance(v, Rejection):
            return Verdict(False, v.reason, v.detail, v.position)
        revocation, age, behind = v.revocation, v.crl_age, v.clock_behind
        identity, chosen, certs = v.identity.key, v.profile, ()
    denied, alarms = apply_stance(revocation, behind, stance)
    if denied is not None:
        what = "a certificate in the path"
        return Verdict(False, denied, STANCE_DETAIL[denied].format(what=what), None, revocation,
                       age, behind, identity, chosen, certs)
    return Verdict(True, None, "", None, revocation, age, behind, identity, chosen, certs, alarms)
