"""Access decisions: verified presentation -> person -> grant for a door. Pure functions.

This is the minimal policy (people, identity keys, doors) plus each door's stance on incomplete
revocation information and an untrusted clock; schedules, modes, temporary cards and signed
policy bundles come with the doors issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import PersonConfig, Stance
from gateway.domain import CardRead, Decision
from gateway.trust.validator import Rejection, TrustStore, Validated, verify_proof

PROOF_FAILED = ("proof of possession failed: the card's signature over our challenge does not "
                "verify with the certificate's key")


@dataclass(frozen=True)
class Policy:
    by_identity: dict[str, PersonConfig]

    @classmethod
    def from_people(cls, people: tuple[PersonConfig, ...]) -> Policy:
        return cls({ident: p for p in people for ident in p.identities})


def check_presentation(store: TrustStore, read: CardRead, at: float) -> Validated | Rejection:
    """Validate the presented certificate offline, then the card's proof over our challenge."""
    if not read.certificates:
        return Rejection("malformed", "the credential presented no certificate")
    verdict = store.validate_der(read.certificates, at)
    if isinstance(verdict, Rejection):
        return verdict
    leaf = store.leaf(read.certificates)
    if leaf is None or not verify_proof(leaf, read.challenge, read.signature, read.scheme):
        return Rejection("proof-failed", PROOF_FAILED)
    return verdict


DEFAULT_STANCE = Stance()


def decide(policy: Policy, verdict: Validated | Rejection, door: str,
           stance: Stance = DEFAULT_STANCE) -> Decision:
    """Grant or deny, with a reason code; alarms ride along as `alarm:<code>` actions."""
    if isinstance(verdict, Rejection):
        return Decision(False, verdict.reason)
    alarms: list[str] = []
    for flag, code, mode in (
            (verdict.revocation == "unknown", "revocation-unknown", stance.revocation_unknown),
            (verdict.revocation == "stale", "crl-stale", stance.crl_stale),
            (verdict.clock_behind, "clock-behind", stance.clock_behind)):
        if flag:
            if mode == "deny":
                return Decision(False, code)
            alarms.append(f"alarm:{code}")
    person = policy.by_identity.get(verdict.identity.key)
    if person is None:
        return Decision(False, "unknown-person")
    if door not in person.doors:
        return Decision(False, "no-access", person.id)
    return Decision(True, "granted", person.id, ("unlock", *alarms))
