"""The control API: a Unix socket owned by the daemon (mode 0660), newline-delimited JSON.

Request: one JSON object per line, `{"id": <any>, "cmd": "<name>", ...}`; answer: one line,
`{"id": <same>, "ok": true, ...}` or `{"id": <same>, "ok": false, "error": "..."}`. The caller's
OS user (SO_PEERCRED) is journaled with every command. A malformed line is answered with an
error and the connection stays; a line over MAX_LINE bytes is answered and the connection closed.
Nothing a client sends can disturb the daemon.

Commands: `status`, `door.list`, `door.unlock`, `door.lock`, `door.mode`, `alarm.ack`,
`policy.reload`, `card.check` (wait for the next presentation at a door's reader and return what
was read and the verdict — the presentation is also an ordinary badge at that door), and the
stream `events.follow` (`{"cmd": "events.follow", "after": SEQ}`: one `{"event": {...}}` line per
journaled event, from after SEQ if given, then live, until the client disconnects; a follower too
far behind gets `{"overflow": true}` and reconnects with the last SEQ it saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_LINE = 64 * 1024
Handler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]
# A streaming command answers with one line per item until the client goes away.
Stream = Callable[[dict[str, Any], str], AsyncIterator[dict[str, Any]]]


class CommandError(Exception):
    """A command that cannot be carried out; its text goes back to the client."""


def peer_user(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
    except OSError:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Handler],
                 streams: dict[str, Stream] | None = None) -> None:
        self.path = path
        self.commands = commands
        self.streams = streams or {}
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a daemon that died
        old = os.umask(0o117)  # created 0660: no window in which it is wider
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            for t in list(self._clients):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        user = peer_user(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await _send(writer, {"id": None, "ok": False,
                                         "error": f"message longer than {MAX_LINE} bytes"})
                    return
                if not line:
                    return
                stream = self._stream_for(line)
                if stream is not None:
                    await self._stream(stream, line, user, writer)
                    return  # a stream holds its connection until the client goes away
                await _send(writer, await self._answer(line, user))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _stream_for(self, line: bytes) -> Stream | None:
        try:
            msg = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return None
        cmd = msg.get("cmd") if isinstance(msg, dict) else None
        return self.streams.get(cmd) if isinstance(cmd, str) else None

    async def _stream(self, stream: Stream, line: bytes, user: str,
                      writer: asyncio.StreamWriter) -> None:
        msg = json.loads(line)
        rid = msg.get("id")
        try:
            async for item in stream(msg, user):
                await _send(writer, {"id": rid, "ok": True, **item})
        except CommandError as e:
            await _send(writer, {"id": rid, "ok": False, "error": str(e)})
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    async def _answer(self, line: bytes, user: str) -> dict[str, Any]:
        try:
            msg = json.loads(line)
        except (UnicodeDecodeError, ValueError) as e:
            return {"id": None, "ok": False, "error": f"not JSON: {e}"}
        if not isinstance(msg, dict):
            return {"id": None, "ok": False, "error": "expected a JSON object"}
        rid = msg.get("id")
        cmd = msg.get("cmd")
        handler = self.commands.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            known = sorted([*self.commands, *self.streams])
            return {"id": rid, "ok": False, "error": f"unknown command {cmd!r}; expected one "
                                                     f"of {', '.join(known)}"}
        try:
            result = await handler(msg, user)
        except CommandError as e:
            return {"id": rid, "ok": False, "error": str(e)}
        except Exception:
            log.exception("control command %s failed", cmd)
            return {"id": rid, "ok": False, "error": "internal error (see the daemon's log)"}
        return {"id": rid, "ok": True, **result}


async def _send(writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
    writer.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def request(path: Path, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request from a client (the CLI): connect, send, read one answer.

    Raises ConnectionError when no daemon answers on `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ConnectionError(f"no daemon on {path}") from e
        s.sendall(json.dumps(doc).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            buf += chunk
    answer = json.loads(buf)
    assert isinstance(answer, dict)
    return answer
