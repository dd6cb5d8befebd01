"""The revocation index: serials of each issuer's current CRL, keyed by integer value.

A CRL's signature is checked once at ingest against its issuer; lookups are then O(1) set
membership. A new CRL is built beside the old entry and swapped in by one assignment.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from gateway.errors import TrustError

# CRL extensions we understand; an unknown critical one makes the CRL unusable (RFC 5280 5.2).
KNOWN_CRL_EXTENSIONS = {
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_NUMBER,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT, ExtensionOID.DELTA_CRL_INDICATOR,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.FRESHEST_CRL,
}


@dataclass(frozen=True, slots=True)
class CrlEntry:
    issuer: bytes  # DER of the issuer name
    serials: frozenset[int]
    this_update: float  # POSIX seconds
    next_update: float | None
    number: int | None
    source: str


def _key_usage_allows_crl_sign(cert: x509.Certificate) -> bool:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(ku.crl_sign)


def build_entry(crl: x509.CertificateRevocationList, issuer: x509.Certificate,
                source: str) -> CrlEntry:
    """Check `crl` against its issuer and index its serials; raise TrustError with a reason."""
    if crl.issuer != issuer.subject:
        raise TrustError(f"{source}: CRL issuer {crl.issuer.rfc4514_string()} is not "
                         f"{issuer.subject.rfc4514_string()}")
    if not _key_usage_allows_crl_sign(issuer):
        raise TrustError(f"{source}: issuer certificate may not sign CRLs (keyUsage lacks cRLSign)")
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise TrustError(f"{source}: CRL signature does not verify with the issuer's key")
    for ext in crl.extensions:
        if ext.critical and ext.oid not in KNOWN_CRL_EXTENSIONS:
            raise TrustError(f"{source}: unknown critical CRL extension {ext.oid.dotted_string}")
    number = None
    with contextlib.suppress(x509.ExtensionNotFound):
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    serials = frozenset(r.serial_number for r in crl)
    nu = crl.next_update_utc
    return CrlEntry(issuer.subject.public_bytes(), serials, crl.last_update_utc.timestamp(),
                    nu.timestamp() if nu else None, number, source)


class RevocationIndex:
    """Current CRL entry per issuer name; readers never see a half-built entry."""

    def __init__(self) -> None:
        self._entries: dict[bytes, CrlEntry] = {}
        self._lock = threading.Lock()

    def install(self, entry: CrlEntry) -> bool:
        """Swap in `entry` unless an entry at least as new is present; return whether it was."""
        with self._lock:
            old = self._entries.get(entry.issuer)
            if old is not None:
                if entry.number is not None and old.number is not None:
                    if entry.number <= old.number and entry.serials != old.serials:
                        return False
                elif entry.this_update < old.this_update:
                    return False
            entries = dict(self._entries)
            entries[entry.issuer] = entry
            self._entries = entries
            return True

    def entry(self, issuer: bytes) -> CrlEntry | None:
        return self._entries.get(issuer)

    def entries(self) -> list[CrlEntry]:
        return list(self._entries.values())
