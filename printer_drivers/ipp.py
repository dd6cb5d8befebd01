"""An async IPP client for cupsd, on pyipp: requests built with pyipp's attribute serializer
(with the tags it lacks added here), answers parsed by pyipp's parser, over cupsd's domain
socket with peer-credential authentication or over plain TCP.

Why not `pyipp.IPP.execute` as it is: it drops every attribute missing from its tag table
without a word (first-job-id, purge-job, ...), always sends requesting-user-name "PythonIPP",
cannot put attributes in a job group for CUPS-Move-Job except through its own merge, hides
the IPP status of a refusal, and cannot reach a domain socket. Its transport (`IPP._request`:
aiohttp, timeouts, HTTP errors) and its serializer and parser are reused as they are.

Peer credentials: over cupsd's domain socket the header `Authorization: PeerCred <account>` is
accepted only when the kernel says the connecting process runs as <account> (SO_PEERCRED);
cupsd then treats the request as authenticated (Basic) as that account. Over TCP nothing proves
who is asking, so cupsd takes requesting-user-name at its word unless a policy demands a login.

Every library error leaves this module as a PrinterError (see the subclasses below).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from pyipp import IPP
from pyipp.enums import IppOperation, IppTag
from pyipp.exceptions import IPPConnectionError, IPPError, IPPParseError, IPPResponseError
from pyipp.parser import parse
from pyipp.serializer import construct_attribute
from pyipp.tags import ATTRIBUTE_TAG_MAP

from gateway.errors import PrinterError

__all__ = ["NATURAL_LANGUAGE", "STATUS_NAMES", "CupsClient", "IppStatusError", "NotAuthorised",
           "SpoolerUnreachable", "encode_request", "natural_language", "os_account"]

log = logging.getLogger(__name__)

# Attributes pyipp has no tag for (it would silently leave them out of the request).
EXTRA_TAGS: Mapping[str, IppTag] = {
    "first-job-id": IppTag.INTEGER,  # CUPS: only jobs with this id or higher
    "limit": IppTag.INTEGER,
    "purge-job": IppTag.BOOLEAN,  # CUPS: Cancel-Job also removes the job's files and history
    "job-printer-uri": IppTag.URI,  # the target of CUPS-Move-Job (a job attribute)
    "printer-is-accepting-jobs": IppTag.BOOLEAN,
}
TAGS: Mapping[str, IppTag] = {**ATTRIBUTE_TAG_MAP, **EXTRA_TAGS}
IPP_VERSION = (2, 0)
# attributes-natural-language of every request. pyipp's default "en-US" is refused with
# client-error-bad-request by cupsd since Debian's 2.4.2-3+deb12u10 (upstream CUPS' stricter
# checks): RFC 8011 §5.1.9 naturalLanguage is RFC 5646 in lowercase.
NATURAL_LANGUAGE = "en"
_LANGUAGE = re.compile(r"[a-z]{1,8}(-[a-z0-9]{1,8})*")
_BIG_ANSWER = 64 * 1024  # parsed off the event loop above this many bytes
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)

STATUS_NAMES = {
    0x0400: "client-error-bad-request", 0x0401: "client-error-forbidden",
    0x0402: "client-error-not-authenticated", 0x0403: "client-error-not-authorized",
    0x0404: "client-error-not-possible", 0x0405: "client-error-timeout",
    0x0406: "client-error-not-found", 0x0407: "client-error-gone",
    0x040B: "client-error-attributes-or-values-not-supported",
    0x0500: "server-error-internal-error", 0x0501: "server-error-operation-not-supported",
    0x0502: "server-error-service-unavailable", 0x0507: "server-error-busy",
}


class SpoolerUnreachable(PrinterError):
    """cupsd does not answer (not running, socket missing, refused, or too slow)."""


class NotAuthorised(PrinterError):
    """cupsd refused the request for the gateway's account (HTTP 401/403, or IPP
    not-authenticated / not-authorized / forbidden)."""


class IppStatusError(PrinterError):
    """cupsd answered with an IPP error status; `status` is the code, `status_name` its name."""

    def __init__(self, operation: str, status: int, message: str) -> None:
        self.operation = operation
        self.status = status
        self.status_name = STATUS_NAMES.get(status, f"0x{status:04x}")
        self.message = message
        super().__init__(f"cupsd refused {operation}: {self.status_name}"
                         + (f" ({message})" if message else ""))


def os_account() -> str:
    """The name of the OS account this process runs as (what peer credentials prove)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise PrinterError(f"uid {uid} has no account name: peer credentials need one") from None


def natural_language(value: str) -> str:
    """`value` if it is an IPP naturalLanguage cupsd accepts (RFC 5646, lowercase, as RFC 8011
    asks: "en", "sv-se"); raises PrinterError naming the value otherwise ("en-US")."""
    if not _LANGUAGE.fullmatch(value):
        raise PrinterError(f"IPP natural language {value!r} is not lowercase RFC 5646 "
                           "(RFC 8011 naturalLanguage; e.g. 'en', 'sv-se'): cupsd refuses it")
    return value


def encode_request(operation: IppOperation, groups: Sequence[tuple[IppTag, Mapping[str, Any]]],
                   request_id: int = 1, data: bytes = b"") -> bytes:
    """An IPP request: header, then each (group tag, attributes) in order, each attribute
    encoded by pyipp's `construct_attribute` with its tag from `TAGS`, then `data` (a document).
    A list value is a 1setOf. Raises KeyError for an attribute without a known tag (never
    dropped silently)."""
    out = bytearray(struct.pack(">bbhi", *IPP_VERSION, operation.value, request_id))
    for tag, attrs in groups:
        out += struct.pack(">b", tag.value)
        for name, value in attrs.items():
            out += construct_attribute(name, value, TAGS[name])
    out += struct.pack(">b", IppTag.END.value)
    return bytes(out + data)


class _Transport(IPP):
    """pyipp's HTTP transport (aiohttp session, timeout, HTTP error mapping), sent bytes we
    built ourselves to any resource on the server."""

    async def post(self, resource: str, payload: bytes) -> bytes:
        return await self._request(uri=resource, data=payload)


class CupsClient:
    """One cupsd, over its domain socket (`socket`) or TCP (`host`, `port`).

    `account`: the name sent as requesting-user-name and, with `peer_credentials`, proved by the
    kernel over the socket. `timeout`: seconds per request. `language`: the request's
    attributes-natural-language (checked by `natural_language`). Connections are kept alive and
    reused; a request that finds its pooled connection closed by a restarted cupsd is sent once
    more on a fresh one. Use `async with` or call `close()`."""

    def __init__(self, *, socket: Path | None = None, host: str = "", port: int = 631,
                 account: str, peer_credentials: bool, timeout: float = 5.0,
                 language: str = NATURAL_LANGUAGE) -> None:
        if peer_credentials and socket is None:
            raise PrinterError("peer credentials need cupsd's domain socket")
        self.language = natural_language(language)
        self.socket = socket
        self.host = host or "localhost"
        self.port = port
        self.account = account
        self.peer_credentials = peer_credentials
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._transport: _Transport | None = None
        # The host part of printer/job URIs inside requests; cupsd resolves them by path.
        self.base_uri = "ipp://localhost" if socket is not None else f"ipp://{self.host}:{port}"

    @property
    def where(self) -> str:
        return str(self.socket) if self.socket is not None else f"{self.host}:{self.port}"

    def printer_uri(self, queue: str | None = None) -> str:
        return f"{self.base_uri}/printers/{queue}" if queue else f"{self.base_uri}/"

    def _transport_for_loop(self) -> _Transport:
        if self._transport is None:
            if self.socket is not None:
                connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(self.socket))
            else:
                connector = aiohttp.TCPConnector()
            headers = {"Authorization": f"PeerCred {self.account}"} if self.peer_credentials \
                else {}
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
            # Over the socket the host only fills the Host header, which cupsd wants "localhost".
            self._transport = _Transport(
                host=self.host if self.socket is None else "localhost",
                port=self.port if self.socket is None else 631, base_path="/",
                session=self._session, request_timeout=self.timeout,  # type: ignore[arg-type]
            )
        return self._transport

    async def request(self, operation: IppOperation, resource: str, attrs: Mapping[str, Any],
                      job_attrs: Mapping[str, Any] | None = None,
                      data: bytes = b"") -> dict[str, Any]:
        """Send `operation` to `resource` ("/", "/printers/NAME", "/jobs") with operation
        attributes `attrs` (charset, language and requesting-user-name are added first, the
        latter as `account` unless `attrs` names another; put printer-uri or job-uri in
        `attrs`), optional job attributes and a document `data` (Print-Job); returns pyipp's
        parsed answer (keys "status-code", "operation-attributes", "jobs", "printers").

        Raises SpoolerUnreachable, NotAuthorised, IppStatusError (an IPP error status) or
        PrinterError (an answer that does not parse)."""
        head = {"attributes-charset": "utf-8", "attributes-natural-language": self.language,
                **{k: v for k, v in attrs.items() if k in ("printer-uri", "job-uri")},
                "requesting-user-name": self.account,
                **{k: v for k, v in attrs.items() if k not in ("printer-uri", "job-uri")}}
        groups: list[tuple[IppTag, Mapping[str, Any]]] = [(IppTag.OPERATION, head)]
        if job_attrs:
            groups.append((IppTag.JOB, job_attrs))
        payload = encode_request(operation, groups, data=data)
        name = operation.name.replace("_", "-").title()
        raw = await self._post(name, resource, payload)
        try:
            answer = await asyncio.to_thread(parse, raw) if len(raw) > _BIG_ANSWER \
                else parse(raw)
        except Exception as e:  # pyipp's parser raises struct.error, IndexError, ValueError...
            raise PrinterError(f"{name}: cupsd's answer does not parse ({e!r})") from e
        status = int(answer.get("status-code", -1))
        if not 0 <= status < 0x100:
            ops = answer.get("operation-attributes")
            message = str(ops.get("status-message", "")) if isinstance(ops, dict) else ""
            if status in (0x0401, 0x0402, 0x0403):
                raise NotAuthorised(f"cupsd refused {name} for account {self.account!r}: "
                                    f"{STATUS_NAMES[status]}" + (f" ({message})" if message else ""))
            raise IppStatusError(name, status, message)
        return answer

    async def _post(self, name: str, resource: str, payload: bytes) -> bytes:
        for attempt in (1, 2):
            transport = self._transport_for_loop()
            try:
                return await transport.post(resource, payload)
            except IPPConnectionError as e:
                # A kept-alive connection closed by a cupsd restart fails at once, while the
                # request is written (ClientOSError) or when the answer should start
                # (ServerDisconnectedError): cupsd never saw it, so send it again, once.
                cause = e.__cause__
                if attempt == 1 and isinstance(cause, _STALE) \
                        and not isinstance(cause, aiohttp.ClientConnectorError):
                    log.debug("%s: connection to cupsd was closed; sending again", name)
                    continue
                cause = e.__cause__ or e
                what = "did not answer in time" if isinstance(cause, TimeoutError) \
                    else f"is unreachable ({cause})"
                raise SpoolerUnreachable(f"cupsd on {self.where} {what}") from None
            except IPPResponseError as e:
                code = e.args[1].get("status-code") if len(e.args) > 1 else None
                if code in (401, 403):
                    how = "peer credentials" if self.peer_credentials else "no authentication"
                    raise NotAuthorised(
                        f"cupsd refused {name} for account {self.account!r} ({how}): HTTP {code}; "
                        f"its policy must allow this account (config/cups/cupsd.conf)") from None
                raise PrinterError(f"cupsd answered {name} with HTTP {code}") from None
            except (IPPParseError, IPPError) as e:
                raise PrinterError(f"{name}: {e}") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._transport = None

    async def __aenter__(self) -> CupsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
