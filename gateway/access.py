"""Access decisions: a presentation verified offline, the door's stance on incomplete revocation
information and an untrusted clock, then the site's access policy (`gateway.policy.decide`).
Pure functions."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.config import Stance
from gateway.domain import CardRead, Decision
from gateway.policy import DecisionState, Policy
from gateway.policy import decide as policy_decide
from gateway.trust.stance import apply_stance
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
    key = store.leaf_key(read.certificates)
    if key is None or not verify_proof(None, read.challenge, read.signature, read.scheme, key):
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
    denied, raised = apply_stance(verdict.revocation, verdict.clock_behind, stance)
    if denied is not None:
        return Decision(False, denied, decision.person)
    alarms = [f"alarm:{code}" for code in raised]
    return replace(decision, actions=(*decision.actions, *alarms)) if alarms else decision


def decision_fields(read: CardRead, verdict: Validated | Rejection,
                    decision: Decision) -> dict[str, Any]:
    """What the journal keeps with a decision at a door or printer: the transport, the time
    from the card being reported to the decision, the trust detail, and alarms and modes
    riding along as actions."""
    fields: dict[str, Any] = {"transport": read.transport,
                              "decision_ms": round((time.monotonic() - read.detected_at) * 1000,
                                                   2)}
    if isinstance(verdict, Rejection):
        fields["detail"] = verdict.detail
    else:
        fields["revocation"] = verdict.revocation
        if verdict.crl_age is not None:
            fields["crl_age_s"] = round(verdict.crl_age)
    for prefix, key in (("alarm:", "alarms"), ("mode:", "mode")):
        found = [a.removeprefix(prefix) for a in decision.actions if a.startswith(prefix)]
        if found:
            fields[key] = found if key == "alarms" else found[0]
    return fields
