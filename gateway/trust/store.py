"""Build the trust store from configuration: anchors, intermediates, CRLs, credential profiles."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from gateway.config import TrustConfig
from gateway.errors import InputError, TrustError
from gateway.trust.crlscan import Progress
from gateway.trust.material import load_certificates
from gateway.trust.revocation import CrlIndex, RevocationStore
from gateway.trust.validator import CredentialProfile, TrustStore

log = logging.getLogger(__name__)


def ingest_file(store: TrustStore, path: Path, *, now: float | None = None,
                progress: Progress | None = None) -> CrlIndex:
    """Verify and install the CRL at `path` (PEM or DER). Raises TrustError / InputError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    if b"-----BEGIN X509 CRL-----" in data[:4096]:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            data = x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        except ValueError as e:
            raise TrustError(f"{path}: not a CRL in PEM: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    for idx in store.revocation.all():
        if idx.sha256 == digest:
            return idx  # already in use: no re-parse at start
    return store.revocation.ingest(data, store.signers(), now=time.time() if now is None else now,
                                   clock_skew=store.clock_skew, source=str(path),
                                   progress=progress)


def load_trust_store(cfg: TrustConfig, crl_dir: Path | None = None, *,
                     strict_crls: bool = False) -> TrustStore:
    """Load everything `cfg` names. The revocation index persists in `crl_dir` (None: memory).

    A configured CRL that fails verification is skipped with an error log (its issuer keeps
    the CRL already installed, or has unknown revocation status) unless `strict_crls`.
    Unreadable anchors and intermediates raise InputError naming the file."""
    anchors = [c for p in cfg.anchors for c in load_certificates(p)]
    intermediates = [c for p in cfg.intermediates for c in load_certificates(p)]
    profiles = []
    for p in cfg.profiles:
        issuers = frozenset(c.subject.public_bytes() for f in p.issuers
                            for c in load_certificates(f))
        profiles.append(CredentialProfile(p.name, issuers, frozenset(p.eku),
                                          frozenset(p.policies), p.identity))
    store = TrustStore.create(anchors=anchors, intermediates=intermediates,
                              revocation=RevocationStore(crl_dir), profiles=profiles,
                              clock_skew=cfg.clock_skew, crl_grace=cfg.crl_grace)
    for path in cfg.crls:
        try:
            ingest_file(store, path)
        except (TrustError, InputError) as e:
            if strict_crls:
                raise
            log.error("CRL not used: %s", e)
    return store
