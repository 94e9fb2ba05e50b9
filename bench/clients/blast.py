"""The sealed blast: a load generator that does its work before the window.

``python -m bench.clients.blast SPEC.json OUT.json`` (inside the clients'
namespace), for `python -m bench workers` (`rate`).  Its clients connect
like `worker`'s (real handshakes over real UDP); then, before the measured
window, each client seals its whole share of DATA datagrams with its
session (fresh counters, real AES-GCM, on its first link, inner UDP packets
to an address the server's namespace drops: the measure is the server's
work up to the TUN write), groups them into GSO trains of equal-sized
datagrams, and at ``blast_at`` only sends: one sendmsg per train, trains
of the clients in turn, paced to ``rate_pps``.  So during the window this
process costs one system call per train, and the two cores of the machine
go to the server.

SPEC: {"server": [host, port], "server_public": hex, "clients": [{"index",
"private"}], "connect_by", "blast_at" (monotonic seconds), "rate_pps",
"datagrams" (per client), "inner_bytes", "sink": address}.  OUT: connected,
sealed, sent, the blast's duration, how late it ran.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import selectors
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from bench.clients.sim import ClientKeys, SimClient, udp_packet
from bench.clients.worker import open_sockets
from stripe import wire
from stripe.noise import public_from_private

SOL_UDP, UDP_SEGMENT = 17, 103
TRAIN = 64  # datagrams per GSO send (the kernel's limit)
SEAL_CHUNK = 64


def connect(spec: dict[str, Any]) -> tuple[list[SimClient], list[list[socket.socket]]]:
    """The clients, connected (or as far as they got by ``connect_by``)."""
    server = (spec["server"][0], int(spec["server"][1]))
    server_public = bytes.fromhex(spec["server_public"])
    wall_offset = time.time() - time.monotonic()
    now = time.monotonic()
    sel = selectors.DefaultSelector()
    clients, socks = [], []
    for slot, entry in enumerate(spec["clients"]):
        private = bytes.fromhex(entry["private"])
        client = SimClient.create(int(entry["index"]), ClientKeys(private,
                                  public_from_private(private)), server_public, server, now,
                                  wall_offset)
        clients.append(client)
        socks.append(open_sockets(client, slot, sel))
    deadline = float(spec["connect_by"])
    while time.monotonic() < deadline:
        now = time.monotonic()
        for slot, client in enumerate(clients):
            ep = client.endpoint
            ep.handle_timer(now)
            for sock_index, data, addr in ep.datagrams_to_send():
                with contextlib.suppress(OSError):  # a lost handshake is retried
                    socks[slot][sock_index].sendto(data, addr)
            ep.packets_to_deliver()
            ep.take_events()
            client.note_connected(now)
        if all(c.connected_at is not None for c in clients):
            break
        for key, _ in sel.select(0.02):
            slot, link = key.data
            try:
                data, addr = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
            except OSError:
                continue
            clients[slot].endpoint.receive_datagram(link, data, (addr[0], addr[1]),
                                                    time.monotonic())
    return clients, socks


def seal(client: SimClient, count: int, inner_bytes: int,
         sink: ipaddress.IPv4Address) -> list[bytes]:
    """`count` DATA datagrams of this client's session on its first link,
    as GSO trains (bytes each, TRAIN datagrams of one size)."""
    peer = client.endpoint.peers[0]
    session, link = peer.current, peer.links[0]
    assert session is not None
    payload = bytes(inner_bytes - 28)
    packets = [udp_packet(client.inner, sink, 40000, 9, payload, i) for i in range(SEAL_CHUNK)]
    datagrams: list[bytes] = []
    seq = link.next_link_seq
    now = time.monotonic()
    while len(datagrams) < count:
        run = packets[:min(SEAL_CHUNK, count - len(datagrams))]
        datagrams += session.seal(wire.MessageType.DATA, 0, 1, seq, run, now)
        seq += len(run)
    link.next_link_seq = seq
    return [b"".join(datagrams[i:i + TRAIN]) for i in range(0, len(datagrams), TRAIN)]


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    clients, socks = connect(spec)
    connected = [c for c in clients if c.connected_at is not None]
    sink = ipaddress.IPv4Address(spec["sink"])
    inner = int(spec["inner_bytes"])
    size = inner + wire.TRANSPORT_OVERHEAD
    t0 = time.monotonic()
    trains = {c.index: seal(c, int(spec["datagrams"]), inner, sink) for c in connected}
    seal_s = time.monotonic() - t0
    server = (spec["server"][0], int(spec["server"][1]))
    segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    order = [(socks[slot][0], trains[c.index]) for slot, c in enumerate(clients)
             if c.index in trains]
    blast_at = float(spec["blast_at"])
    late_start = time.monotonic() - blast_at  # > 0: sealing took longer than planned
    while time.monotonic() < blast_at:
        time.sleep(min(0.01, max(blast_at - time.monotonic(), 0.0)))
    start = time.monotonic()
    per_train = TRAIN / float(spec["rate_pps"])
    schedule = [(sock, client_trains[position])
                for position in range(max((len(t) for _s, t in order), default=0))
                for sock, client_trains in order if position < len(client_trains)]
    sent = errors = done = 0
    while done < len(schedule):
        # Every millisecond, the trains due by now: a sleeping sender (a
        # busy one would take a core from the server it measures).
        due = min(int((time.monotonic() - start) / per_train) + 1, len(schedule))
        for sock, train in schedule[done:due]:
            try:
                sock.sendmsg([train], segment, 0, server)
                sent += len(train) // size
            except OSError:
                errors += 1
        done = due
        time.sleep(0.001)
    blast_s = time.monotonic() - start
    Path(out_path).write_text(json.dumps({
        "clients": len(clients), "connected": len(connected),
        "sealed": sum(len(b) // size for t in trains.values() for b in t),
        "seal_s": round(seal_s, 2), "late_start_s": round(late_start, 3),
        "sent": sent, "send_errors": errors, "blast_s": round(blast_s, 3),
        "offered_pps": round(sent / blast_s) if blast_s > 0 else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
