"""Identity keys from a certificate: canonical `type:value` strings the policy refers to."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
SOURCES = ("upn", "email", "serial", "cn")


def _utf8_from_der(value: bytes) -> str | None:
    # otherName values are [0] EXPLICIT UTF8String in practice: peel tags until the string.
    data = value
    for _ in range(3):
        if len(data) < 2:
            return None
        tag, length = data[0], data[1]
        body = data[2:]
        if length & 0x80:
            n = length & 0x7F
            if n > 2 or len(body) < n:
                return None
            length = int.from_bytes(body[:n], "big")
            body = body[n:]
        if length > len(body):
            return None
        if tag == 0x0C:  # UTF8String
            try:
                return body[:length].decode("utf-8")
            except UnicodeDecodeError:
                return None
        data = body[:length]
    return None


def extract_identity(cert: x509.Certificate, source: str) -> str | None:
    """The identity key of `cert` from `source` (upn, email, serial, cn, or `oid:<dotted>` for a
    subject attribute), or None. Keys are `type:value`; a named OID gives `oid:<dotted>:value`."""
    if source in ("upn", "email"):
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        if source == "email":
            mails = san.get_values_for_type(x509.RFC822Name)
            return f"email:{mails[0].casefold()}" if mails else None
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id == UPN_OID:
                upn = _utf8_from_der(other.value)
                if upn:
                    return f"upn:{upn.casefold()}"
        return None
    oid = {"serial": NameOID.SERIAL_NUMBER, "cn": NameOID.COMMON_NAME}.get(source)
    if source.startswith("oid:"):
        try:
            oid = ObjectIdentifier(source[4:])
        except ValueError:
            return None
    if oid is None:
        return None
    attrs = cert.subject.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    text = value.decode() if isinstance(value, bytes) else value
    return f"{source}:{text.strip()}"
