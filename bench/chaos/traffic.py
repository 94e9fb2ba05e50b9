"""The chaos run's traffic: one long TCP transfer checked by SHA-256, and a
paced UDP flow with sequence numbers; each end prints one JSON line when it
stops.  Run inside a lab namespace: ``python -m bench.chaos.traffic
{tcp-recv,tcp-send,udp-recv,udp-send} ...`` (the standard library and
`bench.sockets` only: it starts in a fresh interpreter in the namespace).

* ``tcp-recv --port P --seconds S``: accepts one connection, reads to its
  end, hashes what came, then sends ``<sha256 hex> <bytes>\\n`` back and
  closes; records the bytes per 100 ms and every pause between two reads
  longer than `GAP_S` (the stalls).  Bounded by S.
* ``tcp-send --to HOST --port P --bytes N --rate-mbit R --seed K --seconds S``:
  sends N bytes of seeded content (each 16 KiB chunk starts with its index,
  so a lost, repeated or swapped chunk changes the hash) paced at R Mbit/s
  (what falls behind after a stall is caught up as fast as TCP goes), then
  half-closes and reads the receiver's hash.  Bounded by S.
* ``udp-recv --port P --seconds S`` / ``udp-send --to HOST --port P --pps
  N --len L --seconds S``: datagrams numbered from 0; the receiver counts
  received, duplicate and out-of-order ones and its pauses like tcp-recv.

A reset (ECONNRESET, EPIPE) is reported as ``"error": "reset: ..."``; each
end also stops on SIGTERM, with what it has.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from types import FrameType

from bench.sockets import recv_until

CHUNK_BYTES = 16384
CHUNK_INDEX = struct.Struct("!Q")
BASE_BYTES = 1 << 20
GAP_S = 0.2  # a pause between two arrivals longer than this is a stall
BIN_S = 0.1
RECV_BYTES = 1 << 18
UDP_HEADER = struct.Struct("!QQ")  # sequence number, sender's monotonic ns
ACCEPT_WAIT_S = 30.0
POLL_S = 0.2


class _Stop:
    requested = False

    @classmethod
    def handler(cls, _signum: int, _frame: FrameType | None) -> None:
        cls.requested = True


def content(seed: int) -> tuple[bytes, int]:
    """The seeded base block the chunks are cut from, and its usable span."""
    return random.Random(seed).randbytes(BASE_BYTES), BASE_BYTES - CHUNK_BYTES


def chunk(base: bytes, span: int, index: int, size: int = CHUNK_BYTES) -> bytes:
    """Chunk `index` of the transfer (its first `size` bytes)."""
    offset = (index * 7919 * 64) % span
    data = CHUNK_INDEX.pack(index) + base[offset : offset + CHUNK_BYTES - CHUNK_INDEX.size]
    return data[:size]


def expected_sha256(total: int, seed: int) -> str:
    """The hash of a whole transfer of `total` bytes (tests, and a check)."""
    base, span = content(seed)
    h = hashlib.sha256()
    for index in range((total + CHUNK_BYTES - 1) // CHUNK_BYTES):
        h.update(chunk(base, span, index, min(CHUNK_BYTES, total - index * CHUNK_BYTES)))
    return h.hexdigest()


class Arrivals:
    """Bytes per `BIN_S` since `t0` and the pauses longer than `GAP_S`."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.last = t0
        self.bins: list[int] = []
        self.gaps: list[tuple[float, float]] = []
        self.first: float | None = None

    def add(self, now: float, nbytes: int) -> None:
        if self.first is None:
            self.first = now
        elif now - self.last > GAP_S:
            self.gaps.append((round(self.last, 4), round(now, 4)))
        self.last = now
        k = int((now - self.t0) / BIN_S + 1e-9)
        if len(self.bins) <= k:
            self.bins.extend([0] * (k + 1 - len(self.bins)))
        self.bins[k] += nbytes

    def to_json(self) -> dict[str, object]:
        return {"t0": self.t0, "bin_s": BIN_S, "bins": self.bins, "gaps": self.gaps,
                "first": self.first, "last": self.last}


def _listener(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    return sock


def tcp_recv(port: int, seconds: float) -> dict[str, object]:
    end = time.monotonic() + seconds
    accept_by = min(end, time.monotonic() + ACCEPT_WAIT_S)
    out: dict[str, object] = {"bytes": 0, "sha256": None, "error": None, "eof": False}
    srv = _listener(socket.SOCK_STREAM, port)
    srv.listen(1)
    srv.settimeout(POLL_S)
    print("ready", flush=True)
    conn: socket.socket | None = None
    while conn is None:
        if _Stop.requested or time.monotonic() > accept_by:
            out["error"] = "no connection"
            return out
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
    srv.close()
    arrivals = Arrivals(time.monotonic())
    h = hashlib.sha256()
    total = 0
    conn.settimeout(POLL_S)
    try:
        while True:
            if _Stop.requested or time.monotonic() > end:
                out["error"] = "stopped before the end of the transfer"
                break
            try:
                data = conn.recv(RECV_BYTES)
            except TimeoutError:
                continue
            if not data:
                out["eof"] = True
                conn.settimeout(10.0)
                conn.sendall(f"{h.hexdigest()} {total}\n".encode())
                break
            arrivals.add(time.monotonic(), len(data))
            h.update(data)
            total += len(data)
    except OSError as exc:
        out["error"] = f"reset: {exc!r}" if _is_reset(exc) else repr(exc)
    finally:
        conn.close()
    out.update(bytes=total, sha256=h.hexdigest(), arrivals=arrivals.to_json())
    return out


def _is_reset(exc: OSError) -> bool:
    return isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)


def tcp_send(
    host: str, port: int, total: int, rate_mbit: float, seed: int, seconds: float
) -> dict[str, object]:
    start = time.monotonic()
    end = start + seconds
    base, span = content(seed)
    h = hashlib.sha256()
    out: dict[str, object] = {"bytes": 0, "sha256": None, "peer": None, "error": None}
    try:
        sock = socket.create_connection((host, port), timeout=10.0)
    except OSError as exc:
        out["error"] = f"connect: {exc!r}"
        return out
    print("ready", flush=True)
    rate_bps = rate_mbit * 1e6 / 8
    sent = 0
    index = 0
    try:
        while sent < total:
            now = time.monotonic()
            if _Stop.requested or now > end:
                out["error"] = "stopped before the end of the transfer"
                break
            allowed = rate_bps * (now - start) + CHUNK_BYTES
            if sent >= allowed:
                time.sleep(min(0.01, (sent - allowed) / rate_bps + 0.001))
                continue
            data = chunk(base, span, index, min(CHUNK_BYTES, total - sent))
            sock.settimeout(max(0.5, end - now))
            sock.sendall(data)
            h.update(data)
            sent += len(data)
            index += 1
        out.update(bytes=sent, sha256=h.hexdigest(), sent_by=round(time.monotonic() - start, 3))
        if out["error"] is None:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(max(1.0, end - time.monotonic()))
            reply = recv_until(sock, b"\n", 256)
            digest, _, count = reply.decode(errors="replace").strip().partition(" ")
            out["peer"] = {"sha256": digest, "bytes": int(count) if count.isdigit() else None}
    except OSError as exc:
        out["error"] = f"reset: {exc!r}" if _is_reset(exc) else repr(exc)
        out.update(bytes=sent, sha256=h.hexdigest())
    finally:
        sock.close()
    out["elapsed_s"] = round(time.monotonic() - start, 3)
    return out


def udp_send(host: str, port: int, pps: float, length: int, seconds: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = b"\0" * max(0, length - UDP_HEADER.size)
    start = time.monotonic()
    sent = errors = 0
    print("ready", flush=True)
    while not _Stop.requested:
        now = time.monotonic()
        if now - start > seconds:
            break
        due = start + sent / pps
        if due > now:
            time.sleep(due - now)
            continue
        try:
            sock.sendto(UDP_HEADER.pack(sent, time.monotonic_ns()) + pad, (host, port))
        except OSError:
            errors += 1  # no route while the tunnel restarts: counted, not fatal
        sent += 1
    return {"sent": sent, "send_errors": errors, "elapsed_s": round(time.monotonic() - start, 3)}


def udp_recv(port: int, seconds: float) -> dict[str, object]:
    sock = _listener(socket.SOCK_DGRAM, port)
    sock.settimeout(POLL_S)
    end = time.monotonic() + seconds
    arrivals = Arrivals(time.monotonic())
    seen = bytearray()
    received = duplicates = reordered = 0
    highest = -1
    print("ready", flush=True)
    while not _Stop.requested and time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if len(data) < UDP_HEADER.size:
            continue
        seq, _ = UDP_HEADER.unpack_from(data)
        arrivals.add(time.monotonic(), len(data))
        if seq >= len(seen) * 8:
            seen.extend(bytes(seq // 8 + 1 - len(seen) + 1024))
        if seen[seq // 8] >> (seq % 8) & 1:
            duplicates += 1
            continue
        seen[seq // 8] |= 1 << (seq % 8)
        received += 1
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    return {"received": received, "duplicates": duplicates, "reordered": reordered,
            "highest": highest, "arrivals": arrivals.to_json()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.traffic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tcp-recv", "tcp-send", "udp-recv", "udp-send"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--seconds", type=float, required=True)
        if name.endswith("send"):
            p.add_argument("--to", required=True)
        if name == "tcp-send":
            p.add_argument("--bytes", type=int, required=True)
            p.add_argument("--rate-mbit", type=float, required=True)
            p.add_argument("--seed", type=int, default=1)
        if name == "udp-send":
            p.add_argument("--pps", type=float, required=True)
            p.add_argument("--len", type=int, default=400)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _Stop.handler)
    if args.command == "tcp-recv":
        result = tcp_recv(args.port, args.seconds)
    elif args.command == "tcp-send":
        result = tcp_send(args.to, args.port, args.bytes, args.rate_mbit, args.seed, args.seconds)
    elif args.command == "udp-recv":
        result = udp_recv(args.port, args.seconds)
    else:
        result = udp_send(args.to, args.port, args.pps, args.len, args.seconds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
