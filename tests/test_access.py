"""gateway.access.decide: the trust stance (revocation unknown, CRL stale, clock behind) before
the policy, per door; denials still name the person (the chain and proof were valid)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.access import decide
from gateway.config import Stance
from gateway.domain import Identity
from gateway.policy import DecisionState, Policy
from gateway.trust.validator import Rejection, Validated

POLICY = Policy.from_dict({
    "time_zone": "Europe/Stockholm", "doors": ["front"],
    "access_levels": {"all": {"resources": ["front"], "schedule": "always"}},
    "groups": {"staff": {"access_levels": ["all"]}},
    "people": [{"id": "p-alice", "identities": ["upn:alice@demo.example"], "groups": ["staff"]}],
})
AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ALICE = Identity("upn:alice@demo.example", "CN=Alice", "00" * 32, 2e9)
STATE = DecisionState()


def verdict(revocation: str = "good", clock_behind: bool = False) -> Validated:
    return Validated(ALICE, "piv", revocation, None, clock_behind)


@pytest.mark.parametrize(("flag", "code"), [
    ({"revocation": "unknown"}, "revocation-unknown"),
    ({"revocation": "stale"}, "crl-stale"),
    ({"clock_behind": True}, "clock-behind"),
])
def test_each_stance_denies_naming_the_person_or_allows_with_an_alarm(flag, code):
    v = verdict(**flag)
    denied = decide(POLICY, v, "front", AT, STATE, Stance())
    assert (denied.granted, denied.reason, denied.person) == (False, code, "p-alice")
    field = code.replace("-", "_")
    allowing = Stance(**{field: "allow"})
    granted = decide(POLICY, v, "front", AT, STATE, allowing)
    assert granted.granted and "unlock" in granted.actions and f"alarm:{code}" in granted.actions


def test_an_allowing_stance_never_grants_what_the_policy_denies():
    stranger = Validated(Identity("upn:eve@demo.example", "CN=Eve", "11" * 32, 2e9), "piv",
                         "stale")
    d = decide(POLICY, stranger, "front", AT, STATE, Stance(crl_stale="allow"))
    assert (d.granted, d.reason) == (False, "unknown-person")


def test_no_policy_and_a_rejected_card_are_denied_with_their_reason():
    assert decide(None, verdict(), "front", AT, STATE).reason == "no-policy"
    rej = decide(POLICY, Rejection("revoked", "on the CRL"), "front", AT, STATE)
    assert (rej.granted, rej.reason, rej.person) == (False, "revoked", None)
