"""Build the trust store from configuration: anchors, intermediates, CRLs, credential profiles."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from cryptography import x509

from gateway.config import TrustConfig
from gateway.errors import InputError, TrustError
from gateway.trust.certinfo import DSA_REASON, mentions_dsa
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


def _usable_certificates(paths: tuple[Path, ...], kind: str,
                         set_aside: list[tuple[str, tuple[str, str]]],
                         warnings: list[str] | None) -> list[x509.Certificate]:
    """The certificates in `paths`. A file holding a DSA certificate (which does not load, or
    is not accepted) is set aside with a warning; any other unreadable file raises InputError."""
    out = []
    for path in paths:
        try:
            certs = load_certificates(path)
        except InputError:
            try:
                data = Path(path).read_bytes()
            except OSError:
                raise
            if not mentions_dsa(data):
                raise
            certs = []
            set_aside.append(("", ("unsupported-algorithm", DSA_REASON)))
            _warn(warnings, f"{kind} {path} set aside: unsupported-algorithm: {DSA_REASON}")
        out.extend(certs)
    return out


def _warn(warnings: list[str] | None, text: str) -> None:
    """To the caller's list when it reports them itself (verify), else to the log."""
    if warnings is not None:
        warnings.append(text)
    else:
        log.error("%s", text)


def load_trust_store(cfg: TrustConfig, crl_dir: Path | None = None, *,
                     strict_crls: bool = False, warnings: list[str] | None = None) -> TrustStore:
    """Load everything `cfg` names. The revocation index persists in `crl_dir` (None: memory).

    A configured CRL that fails verification is set aside with a warning naming it and why
    (its issuer keeps the CRL already installed, or has unknown revocation status) unless
    `strict_crls`; so is a DSA certificate. `warnings` collects those texts. Unreadable anchors
    and intermediates raise InputError naming the file."""
    set_aside: list[tuple[str, tuple[str, str]]] = []
    anchors = _usable_certificates(cfg.anchors, "trust anchor", set_aside, warnings)
    intermediates = _usable_certificates(cfg.intermediates, "intermediate", set_aside, warnings)
    profiles = []
    for p in cfg.profiles:
        issuers = frozenset(c.subject.public_bytes() for f in p.issuers
                            for c in load_certificates(f))
        profiles.append(CredentialProfile(p.name, issuers, frozenset(p.eku),
                                          frozenset(p.policies), p.identity))
    store = TrustStore.create(anchors=anchors, intermediates=intermediates,
                              revocation=RevocationStore(crl_dir), profiles=profiles,
                              clock_skew=cfg.clock_skew, crl_grace=cfg.crl_grace,
                              set_aside=set_aside)
    for path in cfg.crls:
        try:
            ingest_file(store, path)
        except (TrustError, InputError) as e:
            if strict_crls:
                raise
            text = str(e) if str(path) in str(e) else f"{path}: {e}"
            _warn(warnings, f"CRL set aside: {text}")
    return store
