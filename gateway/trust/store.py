"""Build the trust store from configuration: anchors, intermediates, CRLs, credential profiles."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography import x509

from gateway.config import TrustConfig
from gateway.errors import InputError, TrustError
from gateway.trust.material import load_certificates, load_crl
from gateway.trust.revocation import RevocationIndex, build_entry
from gateway.trust.validator import CredentialProfile, TrustStore

log = logging.getLogger(__name__)


def ingest_crl(index: RevocationIndex, issuers: list[x509.Certificate], path: Path) -> bool:
    """Verify the CRL at `path` against its issuer and swap it in; TrustError/InputError if bad."""
    crl = load_crl(path)
    candidates = [c for c in issuers if c.subject == crl.issuer]
    if not candidates:
        raise TrustError(f"{path}: no trusted certificate for CRL issuer "
                         f"{crl.issuer.rfc4514_string()}")
    errors = []
    for cert in candidates:
        try:
            return index.install(build_entry(crl, cert, str(path)))
        except TrustError as e:
            errors.append(str(e))
    raise TrustError("; ".join(errors))


def load_trust_store(cfg: TrustConfig, *, strict_crls: bool = False) -> TrustStore:
    """Load everything `cfg` names. A CRL that fails verification is skipped with an error log
    (its issuer then has unknown revocation status) unless `strict_crls`; unreadable anchors
    and intermediates raise InputError naming the file."""
    anchors = [c for p in cfg.anchors for c in load_certificates(p)]
    intermediates = [c for p in cfg.intermediates for c in load_certificates(p)]
    index = RevocationIndex()
    for path in cfg.crls:
        try:
            ingest_crl(index, anchors + intermediates, path)
        except (TrustError, InputError) as e:
            if strict_crls:
                raise
            log.error("CRL not used: %s", e)
    profiles = []
    for p in cfg.profiles:
        issuers = frozenset(c.subject.public_bytes() for f in p.issuers
                            for c in load_certificates(f))
        profiles.append(CredentialProfile(p.name, issuers, frozenset(p.eku),
                                          frozenset(p.policies), p.identity))
    return TrustStore(tuple(anchors), tuple(intermediates), index, tuple(profiles),
                      cfg.clock_skew, cfg.crl_grace,
                      allow_unknown_revocation=cfg.revocation_unknown == "allow")
