"""An in-memory network with a fake clock for driving two stripe endpoints.

Each simulated link has a one-way delay, jitter, loss, duplication, an
up/down switch, a failing-send switch (the client's interface is down) and
optionally a path MTU (larger datagrams vanish, as in an
ICMP black hole), and is FIFO unless `reorder` is set (then jitter may
reorder packets within the link too).  Its rate is unlimited, a fixed
`rate_bps`, or a delivery trace per direction (`Trace`: mahimahi's
semantics, 1500 bytes per opportunity, a drop-tail queue of `queue_bytes`).
All randomness comes from one seeded RNG, so a failing run replays exactly.
"""

from __future__ import annotations

import heapq
import random
import struct
from dataclasses import dataclass, field

from stripe.aqm import DEFAULT_TARGET_S
from stripe.endpoint import Endpoint
from stripe.noise import generate_keypair
from stripe.spec import EndpointSpec, LinkSpec, PeerSpec, Role

MAHIMAHI_OPPORTUNITY_BYTES = 1500


@dataclass
class Trace:
    """Delivery opportunities of one direction of a link, mahimahi style:
    `times_ms` are the milliseconds (from the start, looping every
    `period_ms`) at which 1500 bytes may leave the queue; bytes an
    opportunity finds no packet for are lost.  `queue_bytes` bounds what
    waits (drop-tail)."""

    times_ms: list[int]
    period_ms: int
    queue_bytes: int = 300_000
    start_s: float = 0.0  # the sim time at which the trace's millisecond 0 falls
    _index: int = 0  # the opportunity being used: times_ms[_index % n] + loop * period
    _loop: int = 0
    _left: int = 0  # bytes left in that opportunity
    _departures: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def constant(cls, rate_bps: float, period_ms: int = 1000, **kwargs: float) -> Trace:
        """Opportunities spread evenly for `rate_bps` (whole packets per ms on average)."""
        per_ms = rate_bps / 8 / MAHIMAHI_OPPORTUNITY_BYTES / 1000
        count = max(round(per_ms * period_ms), 1)
        times = [int(i * period_ms / count) + 1 for i in range(count)]
        return cls(times, period_ms, **kwargs)  # type: ignore[arg-type]

    def _time_s(self) -> float:
        return self.start_s + (self.times_ms[self._index] + self._loop * self.period_ms) / 1000

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self.times_ms):
            self._index, self._loop = 0, self._loop + 1
        self._left = MAHIMAHI_OPPORTUNITY_BYTES

    def backlog(self, now: float) -> int:
        departures = self._departures
        while departures and departures[0][0] <= now:
            departures.pop(0)
        return sum(size for _t, size in departures)

    def depart(self, now: float, size: int) -> float | None:
        """When a packet of `size` bytes enqueued at `now` leaves (None: dropped)."""
        if self.backlog(now) + size > self.queue_bytes:
            return None
        if not self._departures:  # idle: the opportunities before now went unused
            while self._time_s() < now:
                self._advance()
            if self._left == 0:
                self._left = MAHIMAHI_OPPORTUNITY_BYTES
        remaining = size
        while remaining > 0:
            if self._left == 0:
                self._advance()
            used = min(remaining, self._left)
            self._left -= used
            remaining -= used
        at = max(self._time_s(), now)
        self._departures.append((at, size))
        return at


@dataclass
class SimLink:
    delay_s: float = 0.010
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    up: bool = True
    rate_bps: float | None = None  # serialization rate; None = infinite
    queue_limit_s: float = 0.1  # drop-tail: at most this much waiting (with rate_bps)
    traces: dict[str, Trace] = field(default_factory=dict)  # "up"/"down": replaces rate_bps
    weight: int = 1
    backup: bool = False
    mtu: int | None = None  # largest IPv4 packet carried (UDP payload + 28); None: any
    # The client's interface is down: its sends fail (ENETDOWN) and the
    # client is told, as the shell tells it.
    send_fails: bool = False
    # Per direction: when the link is free again, and the last arrival (FIFO).
    _free_at: dict[str, float] = field(default_factory=dict)
    _last_arrival: dict[str, float] = field(default_factory=dict)
    carried: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def queued_s(self, direction: str, now: float) -> float:
        """How long a datagram sent now would wait for the link (its buffer)."""
        return max(self._free_at.get(direction, 0.0) - now, 0.0)


def server_addr(i: int) -> tuple[str, int]:
    return (f"10.{i}.0.2", 5000)


def client_addr(i: int) -> tuple[str, int]:
    return (f"10.{i}.0.1", 40000 + i)


def ip_packet(seq: int, size: int = 200) -> bytes:
    """A minimal IPv4 packet whose payload starts with `seq`."""
    header = bytearray(20)
    header[0] = 0x45
    struct.pack_into("!H", header, 2, size)
    header[9] = 17
    body = struct.pack("!Q", seq) + bytes(size - 28)
    return bytes(header) + body


def packet_seq(packet: bytes) -> int:
    return int(struct.unpack_from("!Q", packet, 20)[0])


def nine_then_one_lost(sim: Sim) -> None:
    """Over two links in round robin: 0..8 alternate (8 on link 0), then 9
    goes on link 1 while it is down: lost there."""
    sim.run(0.0095, [(sim.now + i * 0.001, "up", ip_packet(i, 1200)) for i in range(9)])
    sim.links[1].up = False
    sim.run(0.001, [(sim.now, "up", ip_packet(9, 1200))])
    sim.links[1].up = True


def out_of_order(got: list[int]) -> int:
    """How many of `got` came after a later one (a late packet, delivered
    out of order rather than dropped); AssertionError on a duplicate."""
    assert len(set(got)) == len(got), "duplicated"
    late, highest = 0, -1
    for seq in got:
        if seq < highest:
            late += 1
        highest = max(highest, seq)
    return late


class Sim:
    def __init__(
        self,
        links: list[SimLink],
        seed: int = 1,
        scheduler: str = "weighted",
        start: float = 1000.0,
        reorder_hold_s: float | None = None,
        configured: int | None = None,
        tunnel_mtu: int | None = None,
        pmtu_probe: bool = False,
        queue_target_s: float | None = DEFAULT_TARGET_S,
        duplicate_below: int = 0,
        partial_csum: tuple[bool, bool] = (False, False),
        loss_repair: bool = True,
    ) -> None:
        """`configured`: the client starts with only the first N links (the
        others are there for a reload to add); `partial_csum`: the client's
        and the server's TUN take partial checksums (see `offload`)."""
        self.rng = random.Random(seed)
        self.links = links
        self.now = start
        client_priv, client_pub = generate_keypair()
        server_priv, server_pub = generate_keypair()
        psk = bytes(range(32))
        self.client = Endpoint(
            EndpointSpec(
                Role.CLIENT, client_priv, (PeerSpec(server_pub, psk),),
                tuple(self.link_spec(i) for i in range(len(links))[:configured]),
                scheduler=scheduler, reorder_hold_s=reorder_hold_s,
                tunnel_mtu=tunnel_mtu, pmtu_probe=pmtu_probe, queue_target_s=queue_target_s,
                duplicate_below=duplicate_below, partial_csum=partial_csum[0],
                loss_repair=loss_repair,
            ),
            self.now, wall_offset=1.7e9, random_index=lambda: self.rng.getrandbits(32),
        )
        self.server = Endpoint(
            EndpointSpec(Role.SERVER, server_priv, (PeerSpec(client_pub, psk),),
                         scheduler=scheduler, reorder_hold_s=reorder_hold_s,
                         tunnel_mtu=tunnel_mtu, pmtu_probe=pmtu_probe,
                         queue_target_s=queue_target_s, partial_csum=partial_csum[1],
                         loss_repair=loss_repair),
            self.now, wall_offset=1.7e9, random_index=lambda: self.rng.getrandbits(32),
        )
        self._events: list[tuple[float, int, str, int, bytes]] = []
        self._seq = 0
        self.delivered: dict[str, list[bytes]] = {"client": [], "server": []}
        self.wire_log: list[tuple[str, int, bytes]] = []
        self.stray: list[tuple[tuple[str, int], bytes]] = []
        self.closed_sockets: list[int] = []

    def link_spec(self, i: int, name: str | None = None) -> LinkSpec:
        """The client's spec for sim link `i` (its remote picks the sim link)."""
        link = self.links[i]
        return LinkSpec(i, name or f"l{i}", link.weight, link.backup, server_addr(i))

    # -- plumbing --------------------------------------------------------

    def _transmit(self, direction: str, link_index: int, data: bytes) -> None:
        link = self.links[link_index]
        self.wire_log.append((direction, link_index, data))
        if not link.up or self.rng.random() < link.loss:
            return
        if link.mtu is not None and len(data) + 28 > link.mtu:
            return
        copies = 2 if self.rng.random() < link.duplicate else 1
        trace = link.traces.get(direction)
        for _ in range(copies):
            start = max(self.now, link._free_at.get(direction, 0.0))
            if trace is not None:
                departure = trace.depart(self.now, len(data) + 28)
                if departure is None:
                    return  # tail drop
                start = departure
            elif link.rate_bps and start - self.now > link.queue_limit_s:
                return  # tail drop: the link's buffer is full
            elif link.rate_bps:
                start += len(data) * 8 / link.rate_bps
                link._free_at[direction] = start
            arrival = start + link.delay_s + self.rng.random() * link.jitter_s
            if not link.reorder:
                arrival = max(arrival, link._last_arrival.get(direction, 0.0))
                link._last_arrival[direction] = arrival
            self._seq += 1
            link.carried[direction] += 1
            heapq.heappush(self._events, (arrival, self._seq, direction, link_index, data))

    def _drain(self) -> None:
        for _ in range(100):
            moved = False
            for sock, data, addr in self.client.datagrams_to_send():
                moved = True
                index = self._server_index(addr)
                if self.links[index].send_fails:
                    self.client.send_failed(sock, addr, self.now)
                else:
                    self._transmit("up", index, data)
            for _sock, data, addr in self.server.datagrams_to_send():
                moved = True
                index = next((i for i in range(len(self.links)) if client_addr(i) == addr), None)
                if index is None:
                    self.stray.append((addr, data))  # to an address outside the sim
                else:
                    self._transmit("down", index, data)
            self.delivered["client"].extend(self.client.packets_to_deliver())
            self.delivered["server"].extend(self.server.packets_to_deliver())
            self.closed_sockets.extend(self.client.sockets_to_close())
            if not moved:
                return

    def _server_index(self, addr: tuple[str, int]) -> int:
        return next(i for i in range(len(self.links)) if server_addr(i) == addr)

    def inject(self, direction: str, link_index: int, data: bytes) -> None:
        """Deliver raw bytes as if they came over a link (attacks, replays)."""
        self._seq += 1
        heapq.heappush(self._events, (self.now, self._seq, direction, link_index, data))

    def run(self, duration: float, traffic: list[tuple[float, str, bytes]] | None = None) -> None:
        """Advance the clock by `duration`, sending `traffic` (time, 'up'|'down', packet)."""
        end = self.now + duration
        pending = sorted(traffic or [], key=lambda t: t[0])
        pending.reverse()
        last_time, spins = self.now, 0
        while True:
            candidates = [end]
            if self._events:
                candidates.append(self._events[0][0])
            if pending:
                candidates.append(pending[-1][0])
            for ep in (self.client, self.server):
                t = ep.get_timer()
                if t is not None:
                    candidates.append(t)
            t_next = max(min(candidates), self.now)
            if t_next >= end and (not self._events or self._events[0][0] > end):
                self.now = end
                break
            spins = spins + 1 if t_next == last_time else 0
            if spins > 10_000:
                raise RuntimeError(f"timer does not advance at t={t_next}")
            last_time = self.now = t_next
            while pending and pending[-1][0] <= self.now:
                _, direction, packet = pending.pop()
                ep = self.client if direction == "up" else self.server
                ep.send_packet(packet, self.now)
            # What arrived by now, consecutive datagrams of one link and
            # direction as one train (as a GRO read hands them over).
            trains: list[tuple[str, int, list[bytes]]] = []
            while self._events and self._events[0][0] <= self.now:
                _, _, direction, index, data = heapq.heappop(self._events)
                if trains and trains[-1][0] == direction and trains[-1][1] == index:
                    trains[-1][2].append(data)
                else:
                    trains.append((direction, index, [data]))
            for direction, index, datagrams in trains:
                if direction == "up":
                    self.server.receive_datagrams(index, datagrams, client_addr(index), self.now)
                else:
                    self.client.receive_datagrams(index, datagrams, server_addr(index), self.now)
            for ep in (self.client, self.server):
                t = ep.get_timer()
                if t is not None and t <= self.now:
                    ep.handle_timer(self.now)
            self._drain()
        self._drain()
