"""Loading certificates and CRLs (PEM or DER) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from gateway.errors import InputError

PEM_CERT = b"-----BEGIN CERTIFICATE-----"
PEM_CRL = b"-----BEGIN X509 CRL-----"


def parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates in `data` (one DER, or one or more PEM blocks)."""
    try:
        if PEM_CERT in data:
            return list(x509.load_pem_x509_certificates(data))
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise InputError(f"{source}: not a certificate in PEM or DER: {e}") from e


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    return parse_certificates(data, str(path))


def load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    try:
        if PEM_CRL in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as e:
        raise InputError(f"{path}: not a CRL in PEM or DER: {e}") from e
