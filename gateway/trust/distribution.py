"""Where a certificate says its issuer's CRL is published: the http(s) full names of its CRL
Distribution Points extension (RFC 5280 4.2.1.13).

Only points a plain fetch can use count: a point restricted to some revocation reasons (a
partitioned CRL) or published by another issuer (an indirect CRL) is left out, as are ldap: and
other schemes. What is fetched from them is verified like any CRL, so a point only decides
where the gateway asks, never what it believes."""

from __future__ import annotations

from cryptography import x509

MAX_URL = 2048


def distribution_points(cert: x509.Certificate) -> tuple[str, ...]:
    """The usable http(s) CRL distribution point URLs of `cert`, in certificate order."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except (x509.ExtensionNotFound, ValueError):  # none, or malformed: the path check says why
        return ()
    out: list[str] = []
    for point in ext.value:
        if point.reasons is not None or point.crl_issuer is not None or not point.full_name:
            continue
        for name in point.full_name:
            if not isinstance(name, x509.UniformResourceIdentifier):
                continue
            url = name.value
            if (url.lower().startswith(("http://", "https://")) and len(url) <= MAX_URL
                    and url.isprintable() and " " not in url and url not in out):
                out.append(url)
    return tuple(out)
