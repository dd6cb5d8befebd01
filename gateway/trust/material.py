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


def read_chain_der(path: Path) -> list[bytes]:
    """The certificates in a file as DER, presented certificate first, without parsing them:
    a certificate the library cannot read is judged (and refused with a reason) by the
    validator, not lost here. Raises InputError when the file is unreadable or holds neither
    PEM certificate blocks nor one DER SEQUENCE."""
    import base64
    import binascii
    import re

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    if PEM_CERT in data:
        blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data,
                            re.DOTALL)
        if not blocks:
            raise InputError(f"{path}: not a certificate in PEM or DER: no complete PEM block")
        try:
            return [base64.b64decode(b"".join(b.split()), validate=True) for b in blocks]
        except (binascii.Error, ValueError) as e:
            raise InputError(f"{path}: not a certificate in PEM or DER: bad base64: {e}") from e
    if len(data) < 2 or data[0] != 0x30:
        raise InputError(f"{path}: not a certificate in PEM or DER")
    return [data]
