"""Content over HTTP(S): a manifest's payload or a CRL from its distribution point.

Blocking (urllib): call from a worker thread. The body is read in chunks and never beyond the
size allowed, hashed as it comes; a manifest's SHA-256 and size must match exactly. Redirects
are followed only to URLs of an allowed scheme.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gateway.errors import PortvaktError

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class FetchError(PortvaktError):
    """The content could not be fetched, or is not what was promised. `reason`: unreachable,
    http-error, too-large, size-mismatch, digest-mismatch, bad-url."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # None: not modified since the validators given
    sha256: str | None
    etag: str | None
    last_modified: str | None


def _context(ca_file: Path | None) -> ssl.SSLContext:
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file))  # only this CA


class _Redirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, schemes: tuple[str, ...]) -> None:
        self.schemes = schemes

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if not newurl.lower().startswith(self.schemes):
            raise FetchError("bad-url", f"{req.full_url}: redirected to {newurl[:100]!r}, "
                                        f"not an allowed URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, *, max_bytes: int, size: int | None = None, sha256: str | None = None,
          ca_file: Path | None = None, allow_http: bool = False, timeout: float = 60.0,
          etag: str | None = None, last_modified: str | None = None) -> Fetched:
    """GET `url`. With `size` / `sha256` (a manifest) the body must have exactly that many
    bytes and that digest. With `etag` / `last_modified` (a previous answer's validators) a
    304 answer gives `Fetched(data=None)`. `ca_file` pins the CA for https (default: the
    system's). Raises FetchError."""
    schemes = ("https://", "http://") if allow_http else ("https://",)
    if not url.lower().startswith(schemes):
        raise FetchError("bad-url", f"{url[:100]!r}: expected an "
                                    f"{' or '.join(s[:-3] for s in schemes)} URL")
    limit = max_bytes if size is None else min(size, max_bytes)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=_context(ca_file)), _Redirects(schemes))
    req = urllib.request.Request(url, headers={"User-Agent": "portvakt"})  # noqa: S310 (checked)
    if etag:
        req.add_header("If-None-Match", etag)
    if last_modified:
        req.add_header("If-Modified-Since", last_modified)
    try:
        with opener.open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise FetchError("too-large" if size is None or int(length) > max_bytes
                                 else "size-mismatch",
                                 f"{url}: {int(length):,} bytes announced, more than the "
                                 f"{limit:,} expected")
            h = hashlib.sha256()
            parts: list[bytes] = []
            got = 0
            while True:
                chunk = resp.read(min(CHUNK, limit + 1 - got))
                if not chunk:
                    break
                got += len(chunk)
                if got > limit:
                    raise FetchError("too-large" if size is None else "size-mismatch",
                                     f"{url}: more than the {limit:,} bytes expected")
                h.update(chunk)
                parts.append(chunk)
            new_etag, new_lm = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return Fetched(None, None, etag, last_modified)
        raise FetchError("http-error", f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchError("unreachable", f"{url}: {e.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise FetchError("unreachable", f"{url}: {e}") from None
    if size is not None and got != size:
        raise FetchError("size-mismatch", f"{url}: {got:,} bytes, the manifest says {size:,}")
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise FetchError("digest-mismatch", f"{url}: SHA-256 {digest[:16]}..., the manifest says "
                                            f"{sha256[:16]}...")
    return Fetched(b"".join(parts), digest, new_etag, new_lm)
