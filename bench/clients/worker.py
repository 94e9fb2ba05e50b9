"""A load-generator process: a share of the simulated clients over real UDP.

``python -m bench.clients.worker SPEC.json OUT.json`` (inside the clients'
namespace).  Each client's two links are UDP sockets bound to their own
source address (`sim.client_source`), so the server sees 2 sources per
client.  One epoll loop serves them all with the monotonic clock: it feeds
datagrams to each client's `Endpoint`, runs their timers from a heap,
paces the sending clients' inner packets, and sends what they put out.

SPEC: {"server": [host, port], "server_public": hex, "clients": [{"index",
"private"}], "start_at", "send_from", "send_until", "end_at" (monotonic
seconds), "senders": [index, ...], "rate_bps"}.  OUT: per client when it
connected and what it sent, and this process's CPU seconds.
"""

from __future__ import annotations

import heapq
import json
import os
import resource
import selectors
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from bench.clients.sim import LINKS_PER_CLIENT, ClientKeys, SimClient, client_source
from bench.lab.synthetic import percentile
from stripe.noise import public_from_private


def open_sockets(client: SimClient, slot: int,
                 sel: selectors.BaseSelector) -> list[socket.socket]:
    """One UDP socket per link of the client, bound to the link's own source
    address, registered for reading with (slot, link) as its data."""
    socks = []
    for link in range(len(client.endpoint.spec.links)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((client_source(client.index, link), 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, (slot, link))
        socks.append(s)
    return socks


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    server = (spec["server"][0], int(spec["server"][1]))
    server_public = bytes.fromhex(spec["server_public"])
    wall_offset = time.time() - time.monotonic()
    start_at = float(spec["start_at"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = LINKS_PER_CLIENT * len(spec["clients"]) + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    sel = selectors.EpollSelector()
    clients: list[SimClient] = []
    socks: list[list[socket.socket]] = []
    now = time.monotonic()
    for slot, entry in enumerate(spec["clients"]):
        private = bytes.fromhex(entry["private"])
        client = SimClient.create(int(entry["index"]), ClientKeys(private,
                                  public_from_private(private)),
                                  server_public, server, now, wall_offset)
        clients.append(client)
        socks.append(open_sockets(client, slot, sel))
    # Every client was made with its handshake due now: they all initiate
    # at start_at, in the loop's first round.
    while time.monotonic() < start_at:
        time.sleep(min(0.05, max(start_at - time.monotonic(), 0.0)))
    senders = set(spec.get("senders", []))
    send_from, send_until = float(spec["send_from"]), float(spec["send_until"])
    rekey_at = float(spec.get("rekey_at", float("inf")))
    rekeyed = False
    end_at = float(spec["end_at"])
    heap: list[tuple[float, int]] = []
    due: list[float | None] = [None] * len(clients)
    send_errors = 0
    late: list[float] = []  # how late client timers ran: this process's own latency
    sent_per_s = [0] * (int(float(spec["end_at"]) - start_at) + 1)
    sent_by_type: Counter[int] = Counter()  # by message type (the first byte)
    stalls: list[tuple[float, float, str]] = []  # (since start_at, seconds, which part) > 0.2 s
    wake = time.monotonic()

    def note_stall(part: str) -> None:
        nonlocal wake
        t = time.monotonic()
        if t - wake > 0.2 and len(stalls) < 50:
            stalls.append((round(wake - start_at, 2), round(t - wake, 3), part))
        wake = t

    def flush(slot: int, now: float) -> None:
        nonlocal send_errors
        client = clients[slot]
        ep = client.endpoint
        for sock_index, data, addr in ep.datagrams_to_send():
            second = int(now - start_at)
            if 0 <= second < len(sent_per_s):
                sent_per_s[second] += 1
            sent_by_type[data[0] if data else -1] += 1
            try:
                socks[slot][sock_index].sendto(data, addr)
            except BlockingIOError:
                send_errors += 1
            except OSError:
                send_errors += 1
                ep.send_failed(sock_index, addr, now)
        ep.packets_to_deliver()
        ep.take_events()
        client.note_connected(now)
        client.note_rekeyed(now)
        at = ep.get_timer()
        if client.rate_bps > 0:
            t = client.next_send(now)
            if t is not None and (at is None or t < at):
                at = t
        if at is not None and at != due[slot]:
            due[slot] = at
            heapq.heappush(heap, (at, slot))

    for slot in range(len(clients)):
        flush(slot, now)
    sending = False
    while True:
        now = time.monotonic()
        if now >= end_at:
            break
        if not sending and now >= send_from and now < send_until:
            sending = True
            for slot, client in enumerate(clients):
                if client.index in senders:
                    client.rate_bps = float(spec["rate_bps"])
                    client.poll(now)
                    flush(slot, now)
        elif sending and now >= send_until:
            sending = False
            for client in clients:
                client.rate_bps = 0.0
        if not rekeyed and now >= rekey_at:
            rekeyed = True  # the rekey burst: every client handshakes again at once
            for slot, client in enumerate(clients):
                if client.connected_at is not None:
                    client.start_rekey(now)
                    flush(slot, now)
        timeout = end_at - now
        if heap:
            timeout = min(timeout, heap[0][0] - now)
        if sending:
            timeout = min(timeout, 0.002, send_until - now)
        elif now < send_from:
            # Wake for the send phase itself: idle clients' next timers may
            # be seconds away (this slept up to 0.8 s into the phase).
            timeout = min(timeout, send_from - now)
        if not rekeyed:
            timeout = min(timeout, rekey_at - now)
        ready = sel.select(max(timeout, 0.0))
        wake = time.monotonic()
        for key, _mask in ready:
            slot, link = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            batch: dict[tuple[str, int], list[bytes]] = {}
            for _ in range(64):
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                batch.setdefault(addr, []).append(data)
            now = time.monotonic()
            for addr, datagrams in batch.items():
                clients[slot].endpoint.receive_datagrams(link, datagrams, addr, now)
            flush(slot, now)
        note_stall(f"{len(ready)} sockets read")
        now = time.monotonic()
        fired = 0
        while heap and heap[0][0] <= now:
            at, slot = heapq.heappop(heap)
            if due[slot] != at:
                continue
            due[slot] = None
            if at >= start_at:  # (timers made before the start are due at once)
                late.append(now - at)
            client = clients[slot]
            t = client.endpoint.get_timer()
            if t is not None and t <= now:
                client.endpoint.handle_timer(now)
            client.poll(now)
            flush(slot, now)
            fired += 1
        note_stall(f"{fired} timers")
        if sending:
            for slot, client in enumerate(clients):
                if client.rate_bps > 0:
                    client.poll(now)
                    flush(slot, now)
    usage = os.times()
    out = {
        "clients": [{"index": c.index, "connected_at": c.connected_at,
                     "rekeyed_at": c.rekeyed_at,
                     "bytes_sent": c.bytes_sent, "packets_sent": c.packets_sent,
                     "connected_end": c.endpoint.peers[0].current is not None,
                     "drops": dict(c.endpoint.drops)} for c in clients],
        "cpu_s": usage.user + usage.system,
        "send_errors": send_errors,
        "timer_late_ms": _percentiles(late),
        "stalls": stalls,
        "sent_per_s": sent_per_s,
        "sent_by_type": {str(k): v for k, v in sorted(sent_by_type.items())},
    }
    Path(out_path).write_text(json.dumps(out))
    return 0


def _percentiles(values: list[float]) -> dict[str, float] | None:
    """Median, p99 and max, in ms."""
    if not values:
        return None
    return {name: round(1000 * percentile(values, q), 1)
            for name, q in (("p50", 50), ("p99", 99), ("max", 100))}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
