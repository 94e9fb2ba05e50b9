"""Simulated clients: stripe's own core without a TUN.

A `SimClient` is a client `Endpoint` (two links, each to the server's one
address, each meant to leave from its own source address) that makes its
own inner packets: UDP datagrams from its tunnel address to the server's
sink (`sink`), at a paced rate while it is told to send.  Everything on the
wire is real: the Noise IKpsk2 handshake, sealed DATA with fresh counters,
probes, feedback, link tables; nothing is replayed.

`InMemory` joins a server `Endpoint` and many `SimClient`s through a
lossless in-memory network with a fake clock (tests); `worker` runs them
over real sockets with the monotonic clock.

Pure: no sockets, no clock.
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from stripe.endpoint import Endpoint
from stripe.noise import generate_keypair, public_from_private
from stripe.spec import EndpointSpec, LinkSpec, PeerSpec, Role

LINKS_PER_CLIENT = 2
SINK_PORT = 9000
PAYLOAD_BYTES = 1172  # + 28 = a 1200-byte inner packet
# The inner network: the server at .1 of it, client i at the address i + 2.
INNER_NET = ipaddress.ip_network("10.96.0.0/12")
SERVER_INNER = ipaddress.IPv4Address(int(INNER_NET.network_address) + 1)


def client_inner(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(INNER_NET.network_address) + 2 + index)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def udp_packet(source: ipaddress.IPv4Address, dest: ipaddress.IPv4Address, sport: int,
               dport: int, payload: bytes, ident: int = 0) -> bytes:
    """A whole IPv4/UDP packet (header checksum set, UDP checksum 0: none)."""
    total = 28 + len(payload)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0x4000, 64,
                                   17, 0, source.packed, dest.packed))
    struct.pack_into("!H", header, 10, _checksum(bytes(header)))
    return bytes(header) + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


@dataclass(frozen=True, slots=True)
class ClientKeys:
    private: bytes
    public: bytes


def make_keys(count: int) -> list[ClientKeys]:
    out = []
    for _ in range(count):
        private, public = generate_keypair()
        out.append(ClientKeys(private, public))
    return out


def client_spec(keys: ClientKeys, server_public: bytes, server: tuple[str, int],
                links: int = LINKS_PER_CLIENT) -> EndpointSpec:
    """A client of `server` with `links` links (socket index = link id)."""
    return EndpointSpec(
        Role.CLIENT, keys.private, (PeerSpec(server_public),),
        tuple(LinkSpec(i, f"l{i}", remote=server) for i in range(links)))


def server_spec(server_private: bytes, clients: list[ClientKeys]) -> EndpointSpec:
    """The server's spec for `clients` (the in-memory tests; the real run
    writes the same as a config file, see `run`)."""
    return EndpointSpec(Role.SERVER, server_private, tuple(
        PeerSpec(keys.public, None, (ipaddress.ip_network(f"{client_inner(i)}/32"),))
        for i, keys in enumerate(clients)))


@dataclass
class SimClient:
    """One simulated client: its endpoint, what it sent and when it connected.

    `rate_bps` > 0: it sends inner packets at that rate (paced by `poll`)."""

    index: int
    endpoint: Endpoint
    rate_bps: float = 0.0
    connected_at: float | None = None
    rekeyed_at: float | None = None  # the rekey burst's new session, see start_rekey
    _rekeying_from: object = None  # the session the rekey replaces
    packets_sent: int = 0
    bytes_sent: int = 0
    _credit_bytes: float = 0.0
    _last_poll: float | None = None
    _seq: int = 0

    @classmethod
    def create(cls, index: int, keys: ClientKeys, server_public: bytes,
               server: tuple[str, int], now: float, wall_offset: float,
               random_index: Callable[[], int] | None = None) -> SimClient:
        spec = client_spec(keys, server_public, server)
        if random_index is None:
            endpoint = Endpoint(spec, now, wall_offset=wall_offset)
        else:
            endpoint = Endpoint(spec, now, wall_offset=wall_offset, random_index=random_index)
        return cls(index, endpoint)

    @property
    def inner(self) -> ipaddress.IPv4Address:
        return client_inner(self.index)

    def note_connected(self, now: float) -> bool:
        """True the first time the client has a session."""
        if self.connected_at is None and self.endpoint.peers[0].current is not None:
            self.connected_at = now
            return True
        return False

    def start_rekey(self, now: float) -> None:
        """Handshake again now (the rekey burst: every client at once)."""
        self._rekeying_from = self.endpoint.peers[0].current
        self.rekeyed_at = None
        self.endpoint.rekey(now)

    def note_rekeyed(self, now: float) -> None:
        """Call after every input: notes when the rekey's session is up."""
        if self._rekeying_from is None or self.rekeyed_at is not None:
            return
        current = self.endpoint.peers[0].current
        if current is not None and current is not self._rekeying_from:
            self.rekeyed_at = now

    def next_send(self, now: float) -> float | None:
        """When `poll` next has a packet to send (None: not sending)."""
        if self.rate_bps <= 0 or self.connected_at is None:
            return None
        missing = (PAYLOAD_BYTES + 28) - self._credit_bytes
        return now if missing <= 0 else now + missing * 8 / self.rate_bps + 1e-6

    def poll(self, now: float, most: int = 64) -> None:
        """Send what the rate allows since the last poll (at most `most`
        packets, at most 50 ms of credit kept)."""
        last, self._last_poll = self._last_poll, now
        if self.rate_bps <= 0 or self.connected_at is None:
            return
        if last is not None:
            self._credit_bytes = min(self._credit_bytes + (now - last) * self.rate_bps / 8,
                                     self.rate_bps / 8 * 0.05 + PAYLOAD_BYTES + 28)
        packets: list[bytes] = []
        size = PAYLOAD_BYTES + 28
        while self._credit_bytes >= size and len(packets) < most:
            self._credit_bytes -= size
            self._seq += 1
            packets.append(udp_packet(self.inner, SERVER_INNER, 40000 + self.index % 20000,
                                      SINK_PORT, struct.pack("!Q", self._seq)
                                      + bytes(PAYLOAD_BYTES - 8), self._seq))
        if packets:
            self.packets_sent += len(packets)
            self.bytes_sent += len(packets) * size
            self.endpoint.send_packets(packets, now)


def client_source(index: int, link: int) -> str:
    """The outer source address of client `index`'s link `link` in the
    lab: 172.16.0.0/12, the server at 172.16.0.1."""
    n = 16 + index * LINKS_PER_CLIENT + link
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.0")) + n))


@dataclass
class InMemory:
    """A server `Endpoint` and many `SimClient`s joined by a lossless
    in-memory network with a fixed one-way `delay_s` and a fake clock.
    Link `j` of client `i` comes from `client_source(i, j)`."""

    server: Endpoint
    clients: list[SimClient]
    now: float
    delay_s: float = 0.005
    down: set[tuple[int, int]] = field(default_factory=set)  # (client, link) cut both ways
    delivered: dict[str, int] = field(default_factory=dict)  # inner source -> bytes
    _events: list[tuple[float, int, str, int, int, bytes]] = field(default_factory=list)
    _tie: int = 0

    SERVER_ADDR = ("172.16.0.1", 5000)

    def _by_source(self) -> dict[str, tuple[int, int]]:
        return {client_source(c.index, j): (c.index, j)
                for c in self.clients for j in range(LINKS_PER_CLIENT)}

    def _push(self, at: float, kind: str, client: int, link: int, data: bytes) -> None:
        self._tie += 1
        heapq.heappush(self._events, (at, self._tie, kind, client, link, data))

    def _drain(self) -> None:
        sources = None
        for client in self.clients:
            for sock, data, _addr in client.endpoint.datagrams_to_send():
                if (client.index, sock) not in self.down:
                    self._push(self.now + self.delay_s, "up", client.index, sock, data)
            client.endpoint.packets_to_deliver()
        for _sock, data, addr in self.server.datagrams_to_send():
            if sources is None:
                sources = self._by_source()
            index, link = sources[addr[0]]
            if (index, link) not in self.down:
                self._push(self.now + self.delay_s, "down", index, link, data)
        for packet in self.server.packets_to_deliver():
            source = str(ipaddress.IPv4Address(packet[12:16]))
            self.delivered[source] = self.delivered.get(source, 0) + len(packet)

    def run(self, duration: float, check_timers: bool = False) -> None:
        """Advance the fake clock by `duration`.  `check_timers`: assert at
        every step that the server's timer heap agrees with a full scan."""
        end = self.now + duration
        by_index = {c.index: c for c in self.clients}
        while True:
            due = [end]
            if self._events:
                due.append(self._events[0][0])
            for ep in [self.server] + [c.endpoint for c in self.clients]:
                t = ep.get_timer()
                if t is not None:
                    due.append(t)
            for c in self.clients:
                t = c.next_send(self.now)
                if t is not None:
                    due.append(t)
            self.now = max(min(due), self.now)
            if self.now >= end:
                self.now = end
            while self._events and self._events[0][0] <= self.now:
                _at, _tie, kind, index, link, data = heapq.heappop(self._events)
                if kind == "up":
                    self.server.receive_datagram(0, data, (client_source(index, link), 40000),
                                                 self.now)
                else:
                    by_index[index].endpoint.receive_datagram(link, data, self.SERVER_ADDR,
                                                              self.now)
            for ep in [self.server] + [c.endpoint for c in self.clients]:
                t = ep.get_timer()
                if t is not None and t <= self.now:
                    ep.handle_timer(self.now)
            for c in self.clients:
                c.note_connected(self.now)
                c.note_rekeyed(self.now)
                c.poll(self.now)
            self._drain()
            if check_timers:
                scan = [t for p in self.server.peers
                        if (t := self.server._peer_timer(p)) is not None]
                assert self.server.get_timer() == min(scan, default=None)
            if self.now >= end and not (self._events and self._events[0][0] <= end):
                return


def server_public(private: bytes) -> bytes:
    return public_from_private(private)


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: (sum x)^2 / (n sum x^2), 1 when all are equal."""
    if not values:
        return None
    square = sum(x * x for x in values)
    return 1.0 if square == 0 else sum(values) ** 2 / (len(values) * square)
