"""Path building and the checks of a path that do not depend on the time (RFC 5280 6.1,
RFC 4158).

Building is a depth-first search from the presented certificate towards the trust anchors that
tries every candidate issuer (names matched as RFC 5280 7.1 says; a candidate whose key
identifier agrees with the certificate's authorityKeyIdentifier first, anchors before
intermediates), verifies each link's signature once (cached), and keeps every complete path whose
static checks pass, shortest first. The work is bounded: at most MAX_PATH certificates in a path,
MAX_SIGNATURES new signature checks and MAX_PATHS complete paths per build. The chains above a CA
are computed once and kept, so a card never seen before costs one signature check and its own
certificate's checks.

Static checks, per path (leaf first, anchor last): every certificate readable, no unknown
critical extension, no RFC 5280 profile violation (`gateway.trust.rules`); every issuer a CA
(basicConstraints cA) with keyCertSign when keyUsage is present, within the pathLenConstraint of
every CA above it (self-issued certificates not counted, 6.1.4 (l)); name constraints
(`gateway.trust.names`) when any CA in the path has them; no policy mapping (not supported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from gateway.errors import TrustError
from gateway.trust.certinfo import CertInfo, key_identifiers_disagree, signature_problem
from gateway.trust.dn import DnKey
from gateway.trust.names import check_name_constraints
from gateway.trust.verdicts import Rejection

MAX_PATH = 8
MAX_SIGNATURES = 64
MAX_PATHS = 8
_SIG_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class PathOk:
    """A built path whose static checks passed (signatures, extensions, constraints)."""

    infos: tuple[CertInfo, ...]
    is_ca: tuple[bool, ...]

    @property
    def path(self) -> tuple[x509.Certificate, ...]:
        return tuple(i.cert for i in self.infos)

    @property
    def not_before(self) -> float:
        return max(i.not_before for i in self.infos)

    @property
    def not_after(self) -> float:
        return min(i.not_after for i in self.infos)


@dataclass(frozen=True, slots=True)
class _Failure:
    rank: int  # which failure explains best: higher wins
    reason: str
    detail: str
    position: int


class _Search:
    """The state of one build: the signature budget and the best explanation of failure."""

    def __init__(self) -> None:
        self.signatures = MAX_SIGNATURES
        self.best: _Failure | None = None

    def fail(self, rank: int, reason: str, detail: str, position: int) -> None:
        if self.best is None or rank > self.best.rank:
            self.best = _Failure(rank, reason, detail, position)


class PathBuilder:
    def __init__(self, anchors: Sequence[CertInfo], intermediates: Sequence[CertInfo],
                 set_aside: Sequence[tuple[str, tuple[str, str]]] = ()) -> None:
        self.anchors = {a.fp: a for a in anchors}
        self._by_der: dict[bytes, list[CertInfo]] = {}
        self._by_key: dict[DnKey, list[CertInfo]] = {}
        seen: set[bytes] = set()
        # Anchors first: among equal candidates, the shortest path is tried first.
        for info in (*anchors, *intermediates):
            if info.fp in seen:
                continue
            seen.add(info.fp)
            self._by_der.setdefault(info.subject_der, []).append(info)
            self._by_key.setdefault(info.subject_key, []).append(info)
        self.set_aside = tuple(set_aside)
        self._issuers: dict[bytes, list[CertInfo]] = {}
        self._signatures: dict[tuple[bytes, bytes], tuple[str, str] | None] = {}
        self._chains: dict[bytes, tuple[list[tuple[CertInfo, ...]], _Failure | None]] = {}
        self._key_ids: dict[bytes, str] = {}

    def key_id(self, info: CertInfo) -> str:
        """The SHA-256 of the certificate's SubjectPublicKeyInfo (hex), "" if unreadable."""
        kid = self._key_ids.get(info.fp)
        if kid is None:
            from gateway.trust.revocation import key_id

            try:
                kid = key_id(info.cert)
            except TrustError:
                kid = ""
            self._key_ids[info.fp] = kid
        return kid

    # --- candidates and links ---------------------------------------------------------------
    def _candidates(self, cert: CertInfo, extra: Sequence[CertInfo]) -> list[CertInfo]:
        found = self._issuers.get(cert.issuer_der)
        if found is None:
            exact = self._by_der.get(cert.issuer_der, [])
            found = [*exact, *(c for c in self._by_key.get(cert.issuer_key, []) if c not in exact)]
            if len(self._issuers) >= _SIG_CACHE_LIMIT:
                self._issuers.clear()
            self._issuers[cert.issuer_der] = found
        if extra:
            found = [*found, *(c for c in extra if c.subject_key == cert.issuer_key
                               and all(c.fp != f.fp for f in found))]
        # Key identifiers agreeing first; anchors before intermediates within that.
        return sorted(found, key=lambda c: (key_identifiers_disagree(cert, c),
                                            c.fp not in self.anchors))

    def _link(self, cert: CertInfo, issuer: CertInfo, search: _Search) -> tuple[str, str] | None:
        key = (cert.fp, issuer.fp)
        if key in self._signatures:
            return self._signatures[key]
        if search.signatures <= 0:
            return ("path-too-long", "path building gave up: too many candidate issuers")
        search.signatures -= 1
        problem = signature_problem(cert.cert, issuer)
        if len(self._signatures) >= _SIG_CACHE_LIMIT:
            self._signatures.clear()
        self._signatures[key] = problem
        return problem

    # --- building ---------------------------------------------------------------------------
    def build(self, leaf: CertInfo, extra: Sequence[CertInfo] = ()) -> tuple[PathOk, ...] | Rejection:
        """Every statically valid path from `leaf` to an anchor (shortest first), or why none."""
        if leaf.problem is not None:
            return Rejection(*leaf.problem, 0)
        if leaf.fp in self.anchors:
            return (PathOk((leaf,), (leaf.is_ca,)),)
        search = _Search()
        found: list[PathOk] = []
        candidates = self._candidates(leaf, extra)
        for issuer in candidates:
            problem = self._link(leaf, issuer, search)
            if problem is not None:
                search.fail(2 + (problem[0] == "unsupported-algorithm"), *problem, 0)
                continue
            chains, failure = self._ca_chains(issuer, extra, 1, frozenset(), search)
            if failure is not None:
                search.fail(failure.rank, failure.reason, failure.detail, failure.position)
            for chain in chains:
                if any(c.fp == leaf.fp for c in chain):
                    continue
                path = (leaf, *chain)
                refusal = _leaf_checks(path)
                if refusal is not None:
                    search.fail(5, *refusal)
                    continue
                found.append(PathOk(path, (leaf.is_ca, *(True for _ in chain))))
                if len(found) >= MAX_PATHS:
                    break
        if found:
            found.sort(key=lambda p: len(p.infos))
            return tuple(found)
        if not candidates:
            return _untrusted(leaf, 0, self.set_aside)
        best = search.best
        assert best is not None
        return Rejection(best.reason, best.detail, best.position)

    def _ca_chains(self, ca: CertInfo, extra: Sequence[CertInfo], position: int,
                   visiting: frozenset[bytes], search: _Search
                   ) -> tuple[list[tuple[CertInfo, ...]], _Failure | None]:
        """The statically valid chains from `ca` (at `position` in the path) to an anchor."""
        memo = self._chains.get(ca.fp) if not extra else None
        if memo is not None:
            chains, failure = memo
            return [c for c in chains if not any(x.fp in visiting for x in c)], _shift(failure, position)
        chains, failure = self._search_chains(ca, extra, position, visiting, search)
        if not visiting and not extra:
            # Every chain from this CA (a top-level search excludes none): kept for the next
            # certificate it issued, with positions as seen from position 1.
            self._chains[ca.fp] = (chains, _shift(failure, 2 - position))
        return chains, failure

    def _search_chains(self, ca: CertInfo, extra: Sequence[CertInfo], position: int,
                       visiting: frozenset[bytes], search: _Search
                       ) -> tuple[list[tuple[CertInfo, ...]], _Failure | None]:
        local = _Search()
        local.signatures = search.signatures
        if ca.problem is not None:
            return [], _Failure(4, *ca.problem, position)
        if ca.fp in self.anchors:
            refusal = _ca_checks((ca,), position)
            if refusal is not None:
                return [], _Failure(4, *refusal)
            return [(ca,)], None
        if position >= MAX_PATH:
            return [], _Failure(1, "path-too-long", f"no trust anchor within {MAX_PATH} "
                                                    "certificates", position)
        chains: list[tuple[CertInfo, ...]] = []
        candidates = [c for c in self._candidates(ca, extra) if c.fp not in visiting]
        if not candidates:
            u = _untrusted(ca, position, self.set_aside)
            return [], _Failure(0, u.reason, u.detail, u.position)
        for issuer in candidates:
            problem = self._link(ca, issuer, local)
            if problem is not None:
                local.fail(2 + (problem[0] == "unsupported-algorithm"), *problem, position)
                continue
            above, failure = self._ca_chains(issuer, extra, position + 1, visiting | {ca.fp}, local)
            if failure is not None:
                local.fail(failure.rank, failure.reason, failure.detail, failure.position)
            for chain in above:
                full = (ca, *chain)
                refusal = _ca_checks(full, position)
                if refusal is not None:
                    local.fail(4, *refusal)
                    continue
                chains.append(full)
                if len(chains) >= MAX_PATHS:
                    break
        search.signatures = local.signatures
        chains.sort(key=len)
        return chains, local.best


def _shift(failure: _Failure | None, position: int) -> _Failure | None:
    if failure is None:
        return None
    return _Failure(failure.rank, failure.reason, failure.detail,
                    failure.position + position - 1)


def _untrusted(cert: CertInfo, position: int,
               set_aside: Sequence[tuple[str, tuple[str, str]]]) -> Rejection:
    issuer = cert.cert.issuer.rfc4514_string()
    for subject, (reason, detail) in set_aside:
        if reason == "unsupported-algorithm" and subject in ("", issuer):
            return Rejection(reason, f"{cert.name} is issued by {issuer}, whose certificate was "
                                     f"set aside: {detail}", position)
    return Rejection("untrusted-issuer", f"{cert.name} is issued by {issuer}, which is not "
                                         "trusted", position)


def _ca_checks(chain: tuple[CertInfo, ...], position: int) -> tuple[str, str, int] | None:
    """The checks of `chain[0]` as an issuer at `position`, given the chain above it."""
    ca = chain[0]
    if ca.policy_mappings:
        return ("policy-mapping", f"{ca.name} maps certificate policies; policy mapping is not "
                                  "supported", position)
    if not ca.is_ca:
        return ("not-a-ca", f"{ca.name} issues certificates but is not a CA (basicConstraints)",
                position)
    if ca.key_usage is not None and not ca.key_usage.key_cert_sign:
        return "key-usage", f"{ca.name} lacks keyCertSign", position
    if ca.profile:
        return "profile", f"{ca.name}: {ca.profile[0]}", position
    # pathLenConstraint of every CA above: non-self-issued intermediates below it, leaf excluded.
    below = 0
    for j, above in enumerate(chain):
        if j > 0 and above.path_length is not None and below > above.path_length:
            return ("path-length", f"{above.name} allows {above.path_length} CA(s) below it, the "
                                   f"path has {below}", position + j)
        if not above.self_issued:
            below += 1
    return None


def _leaf_checks(path: tuple[CertInfo, ...]) -> tuple[str, str, int] | None:
    leaf = path[0]
    if leaf.profile:
        return "profile", f"{leaf.name}: {leaf.profile[0]}", 0
    if leaf.policy_mappings:
        return ("policy-mapping", f"{leaf.name} maps certificate policies; policy mapping is not "
                                  "supported", 0)
    if any(i.has_name_constraints for i in path[1:]):
        nc = check_name_constraints([i.cert for i in path])
        if nc is not None:
            return "name-constraints", nc[1], nc[0]
    return None

