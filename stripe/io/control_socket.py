"""The control socket: a root-only UNIX socket where `stripe status` asks
the running process for its figures.

Protocol: one request line of JSON, `{"cmd": "status"}`, answered by one
line of JSON and the connection closed.  A request may carry more fields for
its handler (`reload` carries the config files, read by root).  Requests are
local but still untrusted input: anything else gets `{"error": "..."}`,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

MAX_REQUEST_BYTES = 1 << 20  # a reload request carries the config and key files
REQUEST_TIMEOUT_S = 2.0
# A socket file this old that refuses connections is a stripe's that ended
# without removing it (after the drop of privileges it cannot: see `close`).
# Younger ones are left alone: a process may be between bind and listen.
STALE_AFTER_S = 60.0


# The request -> the reply (a coroutine for work that waits, such as a reload).
Handler = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self, shared_dir: Path | None = None) -> None:
        """Listen on `path`.  `shared_dir`: the directory every stripe keeps
        its socket in by default: the dead sockets left there by others are
        removed first (the caller still has the privileges to)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if shared_dir is not None and self.path.parent == shared_dir:
            remove_stale_sockets(shared_dir)
        if self.path.exists():
            if _alive(self.path):
                raise OSError(f"control socket {self.path} is in use by another stripe process")
            self.path.unlink()
        old_umask = os.umask(0o177)  # the socket is created 0600: root only
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES + 1)
        finally:
            os.umask(old_umask)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            answer = self._answer(line)
            reply = answer if isinstance(answer, dict) else await answer
        except (TimeoutError, ValueError, ConnectionError):
            reply = {"error": "no complete request line"}
        try:
            writer.write(json.dumps(reply, sort_keys=True).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        if len(line) > MAX_REQUEST_BYTES:
            return {"error": "request too long"}
        try:
            request = json.loads(line)
        except ValueError:
            return {"error": "request is not JSON"}
        command = request.get("cmd") if isinstance(request, dict) else None
        handler = self._handlers.get(command) if isinstance(command, str) else None
        if handler is None:
            return {"error": f"unknown command {command!r}; known: {sorted(self._handlers)}"}
        assert isinstance(request, dict)
        return handler(request)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Fails once privileges are dropped (the directory is root's, 0700):
        # the next stripe to start removes the file (`remove_stale_sockets`).
        with contextlib.suppress(OSError):
            self.path.unlink()


def remove_stale_sockets(directory: Path) -> int:
    """Remove the `*.sock` sockets in `directory` older than STALE_AFTER_S
    that refuse connections (their stripe has ended); how many were."""
    now = time.time()
    removed = 0
    try:
        entries = list(directory.glob("*.sock"))
    except OSError:
        return 0
    for entry in entries:
        try:
            info = entry.lstat()
            if not stat.S_ISSOCK(info.st_mode) or now - info.st_mtime < STALE_AFTER_S:
                continue
            if refuses_connections(entry):
                entry.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to judge
    return removed


def refuses_connections(path: Path) -> bool:
    """Nothing listens on socket file `path` (connect: refused)."""
    return isinstance(_connect_error(path), ConnectionRefusedError)


def _alive(path: Path) -> bool:
    return _connect_error(path) is None


def _connect_error(path: Path) -> OSError | None:
    """What connecting to socket file `path` raised (None: something listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError as exc:
            return exc
    return None


def request(path: Path, command: str = "status", timeout_s: float = 3.0,
            **fields: Any) -> dict[str, Any]:
    """Client side: send one command (and its fields), return the decoded reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": command, **fields}).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply
