"""An asyncio client of the daemon's control API (gateway/control.py).

One JSON object per line each way on a Unix socket. `ControlClient` keeps one connection for
requests and answers (serialised by a lock: the daemon answers one line per request, in order);
`EventStream` opens a connection of its own for the `events.follow` stream, which holds it
until the client goes away. Every failure to reach the daemon is a `DaemonUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

# Answers can outgrow the daemon's request limit (a status with many doors and CRLs).
ANSWER_LIMIT = 16 * 1024 * 1024


class DaemonUnavailable(ConnectionError):
    """No daemon answers on the socket (not started yet, restarting, or no permission)."""


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path), limit=ANSWER_LIMIT)
    except PermissionError:
        raise DaemonUnavailable(f"{path}: permission denied (join the daemon's group)") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonUnavailable(f"no daemon on {path}") from None
    except OSError as e:
        raise DaemonUnavailable(f"{path}: {e.strerror or e}") from None


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _parse(line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise DaemonUnavailable(f"the daemon sent something that is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DaemonUnavailable("the daemon sent something that is not a JSON object")
    return doc


class ControlClient:
    """Requests over one connection, opened on first use and again after any failure.

    `timeout`: seconds to wait for an answer before the connection is given up."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def ask(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send `cmd` with `fields`; return the daemon's answer, `ok` true or false.

        Raises DaemonUnavailable when the daemon cannot be reached, closes the connection, or
        sends no answer within `timeout` seconds (the connection is then dropped, so a late
        answer can never be taken for the next one)."""
        async with self._lock:
            if self._writer is None:
                self._reader, self._writer = await _open(self.path)
            assert self._reader is not None
            self._next_id += 1
            rid = self._next_id
            try:
                self._writer.write(_line({"id": rid, "cmd": cmd, **fields}))
                await self._writer.drain()
                async with asyncio.timeout(self.timeout):
                    while True:
                        line = await self._reader.readline()
                        if not line:
                            raise DaemonUnavailable("the daemon closed the connection")
                        answer = _parse(line)
                        if answer.get("id") == rid:
                            return answer
            except DaemonUnavailable:
                await self._drop()
                raise
            except TimeoutError:
                await self._drop()
                raise DaemonUnavailable(f"no answer to {cmd} within {self.timeout:g} s") from None
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                await self._drop()
                raise DaemonUnavailable(f"connection to the daemon lost: {e}") from None

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class EventStream:
    """The `events.follow` stream on a connection of its own.

    `await EventStream.open(path, after)`, then `async for item in stream`: items are
    `{"event": {...}}` (journaled events in sequence order, those after `after` first when it
    is given, then live) or `{"overflow": true}` (this follower fell too far behind: open again
    with the last sequence seen). Iteration ends when the daemon closes the stream; `close()`
    ends it from this side. DaemonUnavailable is raised if the daemon cannot be reached, drops
    the connection, or refuses the stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, path: Path, after: int | None) -> EventStream:
        reader, writer = await _open(path)
        stream = cls(reader, writer)
        doc: dict[str, Any] = {"id": "events", "cmd": "events.follow"}
        if after is not None:
            doc["after"] = after
        try:
            writer.write(_line(doc))
            await writer.drain()
        except OSError as e:
            await stream.close()
            raise DaemonUnavailable(f"event stream lost: {e}") from None
        return stream

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            raise DaemonUnavailable(f"event stream lost: {e}") from None
        if not line:
            raise StopAsyncIteration
        item = _parse(line)
        if not item.get("ok"):
            raise DaemonUnavailable(f"the daemon refused the event stream: {item.get('error')}")
        return item

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
