"""Counts the inner UDP traffic that reaches the server, per client.

``python -m bench.clients.sink HOST PORT OUT.json`` inside the server's
namespace: bytes (UDP payload + 28) per inner source address, written to
OUT.json at SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from types import FrameType


def main(host: str, port: int, out: str) -> int:
    counts: dict[str, int] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    stop = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock.settimeout(0.2)
    while not stop:
        try:
            data, addr = sock.recvfrom(65535)
        except (TimeoutError, InterruptedError):
            continue
        counts[addr[0]] = counts.get(addr[0], 0) + len(data) + 28
    Path(out).write_text(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
