"""Socket helpers shared by the bench's control channels (standard library
only: `bench.chaos.traffic` imports it in a fresh interpreter)."""

from __future__ import annotations

import socket


def recv_until(sock: socket.socket, end: bytes, chunk: int = 4096) -> bytes:
    """Read from `sock` until what was read ends with `end` or the peer
    closes; the socket's own timeout bounds each read."""
    reply = b""
    while not reply.endswith(end):
        more = sock.recv(chunk)
        if not more:
            break
        reply += more
    return reply
