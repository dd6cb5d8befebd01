"""Access decisions: verified presentation -> person -> grant for a door. Pure functions.

This is the walking skeleton's minimal policy (people, identity keys, doors); schedules, modes,
temporary cards and signed policy bundles come with the doors issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from gateway.config import PersonConfig
from gateway.domain import CardRead, Decision
from gateway.trust.validator import Rejection, TrustStore, Validated, verify_proof


@dataclass(frozen=True)
class Policy:
    by_identity: dict[str, PersonConfig]

    @classmethod
    def from_people(cls, people: tuple[PersonConfig, ...]) -> Policy:
        return cls({ident: p for p in people for ident in p.identities})


def check_presentation(store: TrustStore, read: CardRead, at: float) -> Validated | Rejection:
    """Validate the presented certificate offline, then the card's proof over our challenge."""
    try:
        certs = [x509.load_der_x509_certificate(d) for d in read.certificates]
    except ValueError as e:
        return Rejection("malformed", f"presented certificate does not parse: {e}")
    verdict = store.validate(certs, at)
    if isinstance(verdict, Rejection):
        return verdict
    if not verify_proof(certs[0], read.challenge, read.signature, read.scheme):
        return Rejection("proof-failed", "proof of possession failed: the card's signature "
                                         "over our challenge does not verify with the "
                                         "certificate's key")
    return verdict


def decide(policy: Policy, verdict: Validated | Rejection, door: str) -> Decision:
    if isinstance(verdict, Rejection):
        return Decision(False, verdict.reason)
    person = policy.by_identity.get(verdict.identity.key)
    if person is None:
        return Decision(False, "unknown-person")
    if door not in person.doors:
        return Decision(False, "no-access", person.id)
    return Decision(True, "granted", person.id, ("unlock",))
