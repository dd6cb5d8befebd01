"""Access decisions: a presentation verified offline, the door's stance on incomplete revocation
information and an untrusted clock, then the site's access policy (`gateway.policy.decide`).
Pure functions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from gateway.config import Stance
from gateway.domain import CardRead, Decision
from gateway.policy import DecisionState, Policy
from gateway.policy import decide as policy_decide
from gateway.trust.validator import Rejection, TrustStore, Validated, verify_proof

PROOF_FAILED = ("proof of possession failed: the card's signature over our challenge does not "
                "verify with the certificate's key")


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


def decide(policy: Policy | None, verdict: Validated | Rejection, resource: str, at: datetime,
           state: DecisionState, stance: Stance = DEFAULT_STANCE) -> Decision:
    """Grant or deny, with a reason code; alarms ride along as `alarm:<code>` actions.

    No policy (none received yet, or the stored one failed verification) denies everyone with
    `no-policy`."""
    if isinstance(verdict, Rejection):
        return Decision(False, verdict.reason)
    if policy is None:
        return Decision(False, "no-policy")
    # The chain and the proof of possession are valid, so the person is known even when the
    # stance denies: the journal says who was turned away for a stale CRL.
    decision = policy_decide(policy, verdict.identity.key, resource, at, state)
    alarms: list[str] = []
    for flag, code, mode in (
            (verdict.revocation == "unknown", "revocation-unknown", stance.revocation_unknown),
            (verdict.revocation == "stale", "crl-stale", stance.crl_stale),
            (verdict.clock_behind, "clock-behind", stance.clock_behind)):
        if flag:
            if mode == "deny":
                return Decision(False, code, decision.person)
            alarms.append(f"alarm:{code}")
    return replace(decision, actions=(*decision.actions, *alarms)) if alarms else decision
