"""The sans-I/O core of a stripe endpoint (client or server).

Theory of operation
-------------------
The driver feeds three kinds of input, each with the current monotonic time:

- `receive_datagram(sock, data, addr, now)`: a UDP datagram from a link socket;
- `send_packet(packet, now)`: an IP packet read from the TUN device;
- `handle_timer(now)`: the time returned by `get_timer()` has come;
- `send_failed(sock, addr, now)`: the OS refused a send (interface down);
- `reconfigure(plan, now)`: a reload (see `reconfig`), planned beforehand by
  `plan_reconfigure(spec)` so the shell can open new links' sockets first.

After any input it drains the outputs: `datagrams_to_send()` (socket index,
bytes, address), `packets_to_deliver()` (in-order IP packets for the TUN),
`sockets_to_close()` (removed links' sockets, once drained) and
`take_events()` (log lines), then re-arms one timer from `get_timer()`.
Nothing here reads a clock, touches a socket or imports asyncio, so the tests
drive two endpoints through an in-memory network with a fake clock.

Every datagram from the network passes `receive_datagram`, the one parsing
boundary: each failure drops it and bumps `drops[reason]`; no state changes
before a packet authenticated (handshake state only after the Noise message
verified and its timestamp grew).

The client initiates the handshake (Noise IKpsk2, see `handshake`) on one
link, retries on the next link with backoff, re-initiates to rekey and after
a silence that suggests the server lost its state.  The server learns each
link's return address from authenticated packets (NAT, roaming).  Links are
probed every 200 ms; the scheduler stripes data over the links that are up.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from . import control, pmtu, reconfig, routing, wire
from .aqm import DEFAULT_TARGET_S, CoDel, mark_ce, measure_bond
from .cookie import CookieChecker, CookieJar, HandshakeLimiter, reply_receiver_index
from .estimator import FEEDBACK_INTERVAL_S
from .guard import SourceGuard
from .handshake import (
    AcceptedInitiation,
    PendingInitiation,
    read_initiation,
    write_response,
)
from .links import Link, LinkState, RecentRun
from .noise import NoiseError, public_from_private
from .reorder import HOLD_MAX_S
from .scheduler import Scheduler, make_scheduler, usable_links
from .session import CONTROL_COUNTER_BASE, REKEY_AFTER_S, DecryptError, Session

Address = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Datagram = tuple[int, bytes, Address]

# Implementation constants.
HANDSHAKE_RETRY_S = 1.0
HANDSHAKE_RETRY_MAX_S = 8.0
REHANDSHAKE_AFTER_SILENCE_S = 3.0
LINKS_ANNOUNCE_INTERVAL_S = 5.0
QUEUE_MAX_PACKETS = 256
PREVIOUS_SESSION_KEEP_S = 10.0
MASK_LINGER_S = 0.3
# A link that carried data and then went quiet this long gets a MARKER, so
# the receiver need not wait for the hold deadline to write off a gap that
# might have been on it (a tail loss).
TAIL_MARKER_DELAY_S = 0.005
HOLD_UPDATE_INTERVAL_S = 0.01
# The first feedback after a pause in the data waits this long: the answer
# to that data (an ICMP echo reply, a TCP ACK) is usually ready within a
# millisecond, and a feedback due at once would leave ahead of it (the driver
# runs due timers before it reads the TUN again) and be handled ahead of it
# at the far end. Measured (bench `latency`): idle ping through the tunnel
# 1.04-1.11 -> 0.85 ms.
FIRST_FEEDBACK_DELAY_S = 0.002
# A link removed by a reload (or, on the server, by the client's link table)
# keeps its socket this long: packets already in flight on it, and those the
# peer sends before it hears of the removal, still arrive and are delivered.
LINK_DRAIN_S = 2.0


_DATA_TYPE = wire.MessageType.DATA.value
_TRANSPORT_TYPES = frozenset((wire.MessageType.DATA, wire.MessageType.CONTROL,
                              wire.MessageType.DATA_COPY))
_HANDSHAKE_TYPES = frozenset(t.value for t in (
    wire.MessageType.HANDSHAKE_INIT, wire.MessageType.HANDSHAKE_RESP,
    wire.MessageType.COOKIE_REPLY))
# A run of packets to one link (see `send_packets`): what the link carries in
# this long at its estimated rate, at most this many packets.  2 ms: one
# packet on a 5 Mbit/s link, ~9 at 50 Mbit/s, the cap at gigabit rates
# (measured on ceiling-2: 1.94 Gbit/s vs 1.70 with 0.5 ms, and with a cap of
# 128 rather than 64: fewer switches between links, so fewer held packets
# and longer GRO trains; a GSO send still carries at most 64).
RUN_WINDOW_S = 0.002
RUN_MAX_PACKETS = 128


def _wants_copy(packet: bytes, below: int, dscp: frozenset[int]) -> bool:
    """Redundancy: is this (valid) IP packet small or in a chosen DSCP class?"""
    if len(packet) <= below:
        return True
    if not dscp:
        return False
    if packet[0] >> 4 == 4:
        return packet[1] >> 2 in dscp
    return ((packet[0] & 0x0F) << 2 | packet[1] >> 6) in dscp


def _tun_packet_ok(packet: bytes) -> bool:
    """Long enough to route: an IPv4 header, or an IPv6 one."""
    n = len(packet)
    if n < 20:
        return False
    version = packet[0] >> 4
    return version == 4 or (version == 6 and n >= 40)


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A configured link.  On the client, socket index == link_id."""

    link_id: int
    name: str
    weight: int = 1
    backup: bool = False
    remote: Address | None = None
    # Where the shell binds the link's socket (interface, source, port).
    # Opaque here; on reload a change means a new socket, so a new link.
    binding: str = ""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    public_key: bytes
    preshared_key: bytes | None = None
    # Inner addresses this peer may use (cryptokey routing, see `routing`).
    allowed_ips: tuple[Network, ...] = (
        ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    role: Role
    private_key: bytes
    peers: tuple[PeerSpec, ...]
    links: tuple[LinkSpec, ...] = ()
    scheduler: str = "adaptive"
    reorder_hold_s: float | None = None  # None: derived from measured skew
    tunnel_mtu: int | None = None  # the TUN's MTU; None: no limit (see pmtu)
    pmtu_probe: bool = False  # probe each link's path MTU (needs tunnel_mtu)
    # Redundancy: data packets of at most this many bytes, or with one of
    # these DSCP values, also go out as a DATA_COPY on a second link.
    duplicate_below: int = 0
    duplicate_dscp: frozenset[int] = frozenset()
    # Queue management (see `aqm`): the standing queue the bond may keep
    # before inner packets are dropped or ECN-marked; None: off.
    queue_target_s: float | None = DEFAULT_TARGET_S


@dataclass(slots=True)
class Peer:
    spec: PeerSpec
    scheduler: Scheduler
    links: dict[int, Link] = field(default_factory=dict)
    current: Session | None = None
    previous: Session | None = None
    next_session: Session | None = None
    pending: PendingInitiation | None = None
    handshake_due: float = 0.0
    handshake_attempts: int = 0
    last_handshake: float | None = None
    last_init_timestamp: bytes = b""
    link_mask: int = 0
    feedback_due: float = 0.0
    data_since_feedback: bool = False
    links_announce_due: float = float("inf")
    # Redundancy: copies we sent (and their bytes); copies that arrived
    # before their original (the copy was worth it).
    copies_sent: int = 0
    copy_bytes: int = 0
    copies_first: int = 0
    # Data re-sent, as copies, because the link that had it went down before
    # the peer reported it; those that found no other usable link.
    resent: int = 0
    resend_failed: int = 0
    # Server: control counter of the newest LINKS applied in the current
    # session (an older one overtaken on a faster link must not undo it).
    links_seen: int = -1
    # Links removed by a reload, still draining: link id -> (link, until).
    retired: dict[int, tuple[Link, float]] = field(default_factory=dict)
    cookie_jar: CookieJar | None = None
    queue: deque[bytes] = field(default_factory=lambda: deque(maxlen=QUEUE_MAX_PACKETS))
    # The inner source address last found in this peer's allowed_ips.
    last_good_source: bytes = b""
    mtu: int | None = None  # largest inner packet the links that are up carry now
    aqm: CoDel | None = None  # None: queue management off

    def sessions(self) -> list[Session]:
        return [s for s in (self.current, self.previous, self.next_session) if s is not None]


class Endpoint:
    def __init__(
        self,
        spec: EndpointSpec,
        now: float,
        wall_offset: float = 0.0,
        random_index: Callable[[], int] = lambda: int.from_bytes(os.urandom(4), "big"),
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`wall_offset` turns `now` into wall-clock seconds for the handshake
        timestamp (the driver passes time.time() - loop.time())."""
        self.spec = spec
        self.role = spec.role
        self.public_key = public_from_private(spec.private_key)
        self._mac1_key = wire.mac1_key(self.public_key)
        self._wall_offset = wall_offset
        self._random_index = random_index
        self.drops: Counter[str] = Counter()
        self._datagrams: list[Datagram] = []
        self._closed_sockets: list[int] = []
        self._deliver: list[bytes] = []
        self._events: list[tuple[int, str]] = []
        self._sessions: dict[int, tuple[Peer, Session]] = {}
        self.peers: list[Peer] = []
        self._peer_by_key: dict[bytes, Peer] = {}
        self._psk_for: dict[bytes, bytes | None] = {}
        self._routes: routing.AllowedIPs[Peer] = routing.AllowedIPs()
        self._limiter = HandshakeLimiter()
        self.guard = SourceGuard()
        # Per `receive_datagrams` call: datagrams that failed to parse or
        # authenticate, and whether one authenticated (for the guard).
        self._junk = 0
        self._authenticated = False
        self._cookies = CookieChecker(self.public_key, random_bytes)
        self.oversize = pmtu.Oversize()
        for peer_spec in spec.peers:
            peer = self._add_peer(peer_spec, now)
            if self.role is Role.CLIENT:
                peer.links = {ls.link_id: _client_link(ls) for ls in spec.links}
        self._rebuild_routes()

    def _add_peer(self, peer_spec: PeerSpec, now: float) -> Peer:
        peer = Peer(peer_spec, make_scheduler(self.spec.scheduler), handshake_due=now,
                    cookie_jar=CookieJar(peer_spec.public_key), mtu=self.spec.tunnel_mtu)
        _set_aqm(peer, self.spec.queue_target_s)
        self.peers.append(peer)
        self._peer_by_key[peer_spec.public_key] = peer
        self._psk_for[peer_spec.public_key] = peer_spec.preshared_key
        return peer

    def _rebuild_routes(self) -> None:
        routes: routing.AllowedIPs[Peer] = routing.AllowedIPs()
        for peer in self.peers:
            for network in peer.spec.allowed_ips:
                routes.insert(network, peer)
            peer.last_good_source = b""  # the cached check is void with new networks
        self._routes = routes

    # -- outputs ---------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._datagrams = self._datagrams, []
        return out

    def packets_to_deliver(self) -> list[bytes]:
        out, self._deliver = self._deliver, []
        return out

    def take_events(self) -> list[tuple[int, str]]:
        out, self._events = self._events, []
        return out

    def sockets_to_close(self) -> list[int]:
        """Client: sockets of removed links whose drain time is over."""
        out, self._closed_sockets = self._closed_sockets, []
        return out

    def get_timer(self) -> float | None:
        due: list[float] = []
        for peer in self.peers:
            if self.role is Role.CLIENT:
                due.append(peer.handshake_due)
            if peer.current is not None:
                due.append(peer.links_announce_due)
                if peer.data_since_feedback:
                    due.append(peer.feedback_due)
                due.extend(link.health.next_check_time() for link in peer.links.values()
                           if link.path is not None)
                due.extend(link.pmtu.next_timer() for link in peer.links.values()
                           if link.pmtu is not None and link.path is not None)
                if peer.link_mask & (peer.link_mask - 1):  # two or more links in rotation
                    due.extend(link.last_data_sent + TAIL_MARKER_DELAY_S
                               for link in peer.links.values() if link.marker_due)
            for session in peer.sessions():
                deadline = session.reorder.deadline()
                if deadline is not None:
                    due.append(deadline)
            if peer.previous is not None:
                due.append(peer.previous.last_received + PREVIOUS_SESSION_KEEP_S)
            due.extend(until for _link, until in peer.retired.values())
        return min(due) if due else None

    # -- inputs ----------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> None:
        """An IP packet from the TUN device."""
        self.send_packets((packet,), now)

    def send_packets(self, packets: Sequence[bytes], now: float) -> None:
        """IP packets from the TUN device, in order.

        Consecutive packets to one peer go to the scheduler's link as a run:
        as many as that link carries in RUN_WINDOW_S at its estimated rate
        (one packet on a slow link, dozens on a gigabit one), so the
        per-packet work is sealing alone and the driver gets a GSO train.
        """
        routes, drops = self._routes, self.drops
        destination = routing.destination
        below, dscp = self.spec.duplicate_below, self.spec.duplicate_dscp
        copies = bool(below or dscp)
        count = len(packets)
        i = 0
        last_dest: bytes = b""
        peer: Peer | None = None
        aqm_quiet: Peer | None = None  # queue management said no to it at `now`
        while i < count:
            packet = packets[i]
            i += 1
            if not _tun_packet_ok(packet):
                drops["bad_tun_packet"] += 1
                continue
            dest = destination(packet)
            if dest != last_dest:
                peer, last_dest = routes.lookup(dest), dest
            if peer is None:
                drops["no_route"] += 1
                continue
            mtu = peer.mtu
            if mtu is not None and len(packet) > mtu and self._oversized(peer, packet, now):
                continue
            session = peer.current
            if session is None:
                self._enqueue(peer, packet, now)
                continue
            aqm = peer.aqm
            if aqm is not None and peer is not aqm_quiet:
                # The bond's queue and `now` stay put for the whole call: once
                # CoDel says no, it says no to the rest of this peer's packets.
                if aqm.should_signal(measure_bond(usable_links(peer.links.values()), now), now):
                    marked = mark_ce(packet)
                    if marked is None:
                        aqm.drops += 1
                        continue
                    aqm.marks += 1
                    packet = marked
                else:
                    aqm_quiet = peer
            link = peer.scheduler.pick(peer.links.values(), len(packet), now)
            if link is None:
                self._enqueue(peer, packet, now)
                continue
            if copies and _wants_copy(packet, below, dscp):
                self._send_run(peer, session, link, [packet], now)
                self._send_copy(peer, session, link, packet, now)
                continue
            run = [packet]
            budget = peer.scheduler.run_bytes(link, peer.links.values(), RUN_WINDOW_S) - len(
                packet)
            extra = 0
            while i < count and extra < budget and len(run) < RUN_MAX_PACKETS:
                following = packets[i]
                if (not _tun_packet_ok(following) or destination(following) != dest
                        or (mtu is not None and len(following) > mtu)
                        or (copies and _wants_copy(following, below, dscp))):
                    break
                run.append(following)
                extra += len(following)
                i += 1
            if extra:
                peer.scheduler.charge(link, extra)
            self._send_run(peer, session, link, run, now)

    def _enqueue(self, peer: Peer, packet: bytes, now: float) -> None:
        """No session or no usable link yet: hold the packet (bounded)."""
        if len(peer.queue) == peer.queue.maxlen:
            self.drops["queue_full"] += 1
        peer.queue.append(packet)
        if self.role is Role.CLIENT and peer.current is None and peer.pending is None:
            peer.handshake_due = min(peer.handshake_due, now)

    def receive_datagrams(self, sock: int, datagrams: Sequence[bytes], addr: Address,
                          now: float) -> None:
        """Datagrams from one source read at once (a GRO train), each on its own.

        The common case, data of an established session, is inlined here
        (same checks, same order as `receive_datagram`); anything else takes
        the general path.  One delay sample per link per train: its
        datagrams arrived together, so the newest one carries the news."""
        host = addr[0]
        guard, drops = self.guard, self.drops
        if guard.blocked(host, now):
            for data in datagrams:
                if data and data[0] in _HANDSHAKE_TYPES:
                    self._receive_one(sock, data, addr, now)  # never blocked (see guard)
                else:
                    drops["blocked_source"] += 1
            return
        junk_before = self._junk
        self._authenticated = False
        unpack = wire.TRANSPORT_HEADER.unpack_from
        sessions = self._sessions
        samples: dict[int, tuple[Session, int]] = {}
        links: dict[tuple[int, int], Link] = {}
        collect: list[Session] = []
        for data in datagrams:
            if len(data) < wire.TRANSPORT_OVERHEAD or data[0] != _DATA_TYPE:
                self._receive_one(sock, data, addr, now)
                continue
            _type, link_id, link_mask, receiver, counter, link_seq, sent_us = unpack(data)
            found = sessions.get(receiver)
            if (found is None or found[1] is found[0].next_session
                    or link_mask & ~wire.LINK_MASK_BITS or counter >= CONTROL_COUNTER_BASE):
                self._receive_one(sock, data, addr, now)  # rare: counts and promotes
                continue
            peer, session = found
            replay = session.replay
            if not replay.check(counter):
                if counter in session.copied:  # its copy came first
                    drops["duplicate"] += 1
                else:
                    drops["replay"] += 1
                    self._junk += 1
                continue
            try:
                plaintext = session.recv_key.decrypt_at(
                    counter, data[:wire.TRANSPORT_HEADER_SIZE], data[wire.TRANSPORT_HEADER_SIZE:])
            except NoiseError:
                drops["bad_tag"] += 1
                self._junk += 1
                continue
            # Authenticated from here on.
            self._authenticated = True
            replay.mark(counter)  # checked above
            session.last_received = now
            session.confirmed = True
            samples[link_id] = (session, sent_us)
            link = links.get((receiver, link_id))
            if link is None:
                link = links[(receiver, link_id)] = self._learn_path(
                    peer, link_id, sock, addr, now)
            link.note_received(len(data), link_seq)
            self._accept_data(peer, session, link_id, link_mask, counter, plaintext, now)
            if not collect or collect[-1] is not session:
                collect.append(session)
        for link_id, (session, sent_us) in samples.items():
            session.skew.sample(link_id, sent_us, now)
        for session in collect:
            self._collect(session)
        if self._authenticated:
            guard.succeeded(host, now)
        if self._junk != junk_before:
            guard.failed(host, now, self._junk - junk_before)

    def receive_datagram(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        """The one parsing boundary for untrusted network input."""
        self.receive_datagrams(sock, (data,), addr, now)

    def _receive_one(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        """Any datagram (see `receive_datagrams` for the guard around it)."""
        try:
            mtype = wire.peek_type(data)
            if mtype in _TRANSPORT_TYPES:
                self._receive_transport(sock, data, addr, now)
            elif mtype is wire.MessageType.HANDSHAKE_INIT:
                self._receive_init(sock, data, addr, now)
            elif mtype is wire.MessageType.HANDSHAKE_RESP:
                self._receive_resp(sock, data, addr, now)
            elif mtype is wire.MessageType.COOKIE_REPLY:
                self._receive_cookie_reply(data, now)
            else:
                self.drops["unexpected_type"] += 1
        except wire.WireError as exc:
            self.drops[exc.reason] += 1
            self._junk += 1

    def datagram_too_big(self, sock: int, addr: Address, size: int, now: float) -> None:
        """The OS refused to send a `size`-byte datagram: larger than the
        local interface or route allows (EMSGSIZE)."""
        for peer in self.peers:
            for link in peer.links.values():
                if link.path == (sock, addr) and link.pmtu is not None:
                    link.pmtu.on_too_big(size + _udp_ip_header_size(link), now)
                    self._pmtu_published(peer, link)

    def send_failed(self, sock: int, addr: Address, now: float) -> None:
        for peer in self.peers:
            for link in peer.links.values():
                if link.path == (sock, addr):
                    link.counters.send_errors += 1
                    self._link_changed(peer, link, now, link.health.on_send_error(now))

    def handle_timer(self, now: float) -> None:
        for peer in self.peers:
            if self.role is Role.CLIENT:
                self._client_timers(peer, now)
            self._expire_sessions(peer, now)
            self._expire_retired(peer, now)
            session = peer.current
            if session is not None:
                self._refresh_mask(peer, now)
                several = bool(peer.link_mask & (peer.link_mask - 1))
                for link in list(peer.links.values()):
                    if link.path is None:
                        continue
                    if link.marker_due and now >= link.last_data_sent + TAIL_MARKER_DELAY_S:
                        link.marker_due = False
                        if several and link.up:
                            self._send_control(peer, session, link, control.Marker(), now)
                    self._link_changed(peer, link, now, link.health.update(now))
                    if link.health.probe_due(now):
                        self._send_control(peer, session, link,
                                           control.Probe(link.health.start_probe(now)), now)
                    if self.spec.pmtu_probe:
                        self._pmtu_poll(peer, session, link, now)
                if peer.data_since_feedback and now >= peer.feedback_due:
                    peer.data_since_feedback = False
                    peer.feedback_due = now + FEEDBACK_INTERVAL_S
                    self._send_feedback(peer, session, now)
                if now >= peer.links_announce_due:
                    peer.links_announce_due = now + LINKS_ANNOUNCE_INTERVAL_S
                    if self.role is Role.CLIENT:
                        self._announce_links(peer, session, now)
            for s in peer.sessions():
                s.reorder.poll(now)
                self._collect(s)

    # -- reload ----------------------------------------------------------

    def plan_reconfigure(self, spec: EndpointSpec) -> reconfig.Reconfiguration:
        """What running `spec` instead would change, changing nothing yet.
        Raises reconfig.ReconfigError if it needs a restart."""
        draining = {link_id for peer in self.peers for link_id in peer.retired}
        return reconfig.plan(self.spec, spec, draining)

    def reconfigure(self, change: reconfig.Reconfiguration, now: float) -> None:
        """Apply a plan from `plan_reconfigure` (the shell has opened the added
        links' sockets).  Sessions, keys and unchanged links carry on; removed
        links leave the schedule at once (their queued data goes out on the
        others, as when a link dies) and drain for LINK_DRAIN_S; the server
        hears of added, removed and re-weighted links from a LINKS now."""
        old, self.spec = self.spec, change.spec
        for peer_spec in change.removed_peers:
            self._drop_peer(self._peer_by_key[peer_spec.public_key])
        for peer_spec in change.added_peers:
            self._add_peer(peer_spec, now)
        removed = {ls.link_id for ls in change.removed_links}
        for peer in self.peers:
            peer.spec = next(p for p in self.spec.peers if p.public_key == peer.spec.public_key)
            self._psk_for[peer.spec.public_key] = peer.spec.preshared_key
            if self.spec.scheduler != old.scheduler:
                peer.scheduler = make_scheduler(self.spec.scheduler)
            if self.spec.queue_target_s != old.queue_target_s:
                _set_aqm(peer, self.spec.queue_target_s)
            if self.role is Role.CLIENT:
                self._relink(peer, removed, now)
            for session in peer.sessions():
                if self.spec.reorder_hold_s is not None:
                    session.reorder.hold_s = self.spec.reorder_hold_s
                else:
                    session.hold_update_due = now  # derive it again from the next packet
        self._rebuild_routes()

    def _relink(self, peer: Peer, removed: set[int], now: float) -> None:
        """Client: make the peer's links those of the new spec."""
        for link_id in removed:
            self._retire(peer, peer.links.pop(link_id), now)
        session = peer.current
        links: dict[int, Link] = {}
        for ls in self.spec.links:
            link = peer.links.get(ls.link_id)
            if link is None:
                link = _client_link(ls)
                if session is not None:  # first contact now, not at the next probe round
                    self._send_control(peer, session, link,
                                       control.Probe(link.health.start_probe(now)), now)
            link.weight, link.backup = ls.weight, ls.backup
            links[ls.link_id] = link
        peer.links = links
        self._refresh_mask(peer, now)
        if session is not None:
            self._announce_links(peer, session, now)
            peer.links_announce_due = now + LINKS_ANNOUNCE_INTERVAL_S

    def _retire(self, peer: Peer, link: Link, now: float) -> None:
        """`link` (already out of `peer.links`) leaves for good.  Its last
        message is a final MARKER: once the peer has it, nothing older is in
        flight there and its reorder buffer stops waiting on the link."""
        peer.scheduler.forget(link.link_id)
        session = peer.current
        if session is not None and link.path is not None:
            self._send_control(peer, session, link, control.Marker(final=True), now)
        peer.retired[link.link_id] = (link, now + LINK_DRAIN_S)
        self._refresh_mask(peer, now)
        self._refresh_mtu(peer)  # the link may have been the narrowest

    def _expire_retired(self, peer: Peer, now: float) -> None:
        for link_id, (link, until) in list(peer.retired.items()):
            if now >= until:
                del peer.retired[link_id]
                if self.role is Role.CLIENT and link.path is not None:
                    self._closed_sockets.append(link.path[0])

    def _drop_peer(self, peer: Peer) -> None:
        """Server: a peer removed by a reload; its sessions end now."""
        for session in peer.sessions():
            self._sessions.pop(session.local_index, None)
        self.peers.remove(peer)
        del self._peer_by_key[peer.spec.public_key]
        del self._psk_for[peer.spec.public_key]

    # -- transport -------------------------------------------------------

    def _send_data(self, peer: Peer, packet: bytes, now: float) -> bool:
        session = peer.current
        if session is None:
            return False
        link = peer.scheduler.pick(peer.links.values(), len(packet), now)
        if link is None:
            return False
        self._send_run(peer, session, link, [packet], now)
        return True

    def _send_run(
        self, peer: Peer, session: Session, link: Link, packets: list[bytes], now: float
    ) -> None:
        seq = self._data_seq(peer, link, now)
        link.recent.add(RecentRun(now, session, session.send_counter, seq, packets))
        self._emit(link, session.seal_data_run(link.link_id, peer.link_mask, seq, packets, now),
                   now)

    def _data_seq(self, peer: Peer, link: Link, now: float) -> int:
        """`link` carries data from `now` (a tail marker is due, it is in the
        peer's link mask): the link sequence of its next datagram."""
        link.last_data_sent = now
        link.marker_due = True
        if link.link_id < wire.MASKABLE_LINKS:
            peer.link_mask |= 1 << link.link_id
        return link.next_link_seq

    def _emit(self, link: Link, datagrams: list[bytes], now: float) -> None:
        """Data datagrams sealed at `link`'s next sequences go out on it."""
        path = link.path
        assert path is not None
        link.next_link_seq += len(datagrams)
        # All sent at `now`: the newest stands for the run in stall detection.
        link.est.on_send(link.next_link_seq - 1, now)
        counters = link.counters
        counters.tx_packets += len(datagrams)
        sock, addr = path
        out = self._datagrams
        for datagram in datagrams:
            counters.tx_bytes += len(datagram)
            out.append((sock, datagram, addr))

    def _send_copy(self, peer: Peer, session: Session, first: Link, packet: bytes,
                   now: float) -> None:
        """The data message just sent on `first`, again on the usable link
        with the lowest RTT among the others (none: no copy)."""
        others = [link for link in usable_links(peer.links.values()) if link is not first]
        if not others:
            return
        link = min(others, key=lambda x: x.health.srtt_s or float("inf"))
        datagram = self._seal_copy(peer, session, link, session.send_counter - 1, packet, now)
        peer.copies_sent += 1
        peer.copy_bytes += len(datagram)

    def _seal_copy(self, peer: Peer, session: Session, link: Link, counter: int,
                   packet: bytes, now: float) -> bytes:
        """Send data message `counter` (`packet`) again, as a DATA_COPY on `link`."""
        seq = self._data_seq(peer, link, now)
        datagram = session.seal_copy(counter, link.link_id, peer.link_mask, seq, packet, now)
        self._emit(link, [datagram], now)
        peer.scheduler.charge(link, len(packet))
        return datagram

    def _resend_recent(self, peer: Peer, dead: Link, now: float) -> None:
        """`dead` just went down: what it carried lately that the peer has
        not reported goes out again, each as a DATA_COPY (same counter, so
        the receiver slots it where the original belonged) on the link the
        scheduler picks.  Not re-sent: data of an older session (its counters
        mean nothing in the current one), messages that have their one copy
        already (a redundant copy is on its way), anything older than
        `links.RESEND_WINDOW_S`."""
        runs = dead.recent.take(now)
        session = peer.current
        if session is None:
            return
        reported = dead.est.highest_reported
        for run in runs:
            if run.session is not session:
                continue
            for i, packet in enumerate(run.packets):
                counter = run.first_counter + i
                if run.first_link_seq + i <= reported or not session.can_copy(counter):
                    continue
                link = peer.scheduler.pick(peer.links.values(), len(packet), now)
                if link is None:
                    peer.resend_failed += 1
                    continue
                self._seal_copy(peer, session, link, counter, packet, now)
                peer.resent += 1

    def _seal_and_send(
        self, peer: Peer, session: Session, link: Link, mtype: wire.MessageType,
        payload: bytes, now: float,
    ) -> None:
        path = link.path
        assert path is not None
        seq = link.next_link_seq
        datagram = session.seal(mtype, link.link_id, peer.link_mask, seq, payload, now)
        link.next_link_seq = seq + 1
        link.est.on_send(seq, now, data=mtype is wire.MessageType.DATA)
        counters = link.counters
        counters.tx_packets += 1
        counters.tx_bytes += len(datagram)
        self._datagrams.append((path[0], datagram, path[1]))

    def _send_control(
        self, peer: Peer, session: Session, link: Link, message: control.ControlMessage,
        now: float,
    ) -> None:
        payload = control.encode(message, session.send_counter)
        self._seal_and_send(peer, session, link, wire.MessageType.CONTROL, payload, now)

    def _receive_transport(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        header = wire.decode_transport_header(data)
        found = self._sessions.get(header.receiver_index)
        if found is None:
            self.drops["unknown_session"] += 1
            return
        peer, session = found
        try:
            plaintext = session.open(header, data, now)
        except DecryptError as exc:
            self.drops[exc.reason] += 1
            if exc.reason != "duplicate":  # a redundant copy is no attack
                self._junk += 1
            return
        # Authenticated from here on.
        self._authenticated = True
        if session is peer.next_session:
            self._promote(peer, session, now)
        link = self._learn_path(peer, header.link_id, sock, addr, now)
        link.note_received(len(data), header.link_seq)
        if header.type is wire.MessageType.CONTROL:
            self._handle_control(peer, session, link, header.counter, plaintext, now)
            return
        self._accept_data(peer, session, header.link_id, header.link_mask, header.counter,
                          plaintext, now, copy=header.type is wire.MessageType.DATA_COPY)
        self._collect(session)

    def _accept_data(self, peer: Peer, session: Session, link_id: int, link_mask: int,
                     counter: int, plaintext: bytes, now: float, copy: bool = False) -> None:
        """An authenticated data message (`copy`: a DATA_COPY, which came
        before its original): check the inner packet, reorder it."""
        if not peer.data_since_feedback:
            peer.data_since_feedback = True
            peer.feedback_due = max(peer.feedback_due, now + FIRST_FEEDBACK_DELAY_S)
        payload: bytes | None = None  # an invalid packet still fills its reorder slot
        if not wire.inner_packet_valid(plaintext):
            self.drops["bad_inner_packet"] += 1
        else:
            source = routing.source(plaintext)
            if source == peer.last_good_source or self._routes.lookup(source) is peer:
                peer.last_good_source = source  # most packets: same source as the last one
                payload = plaintext
            else:
                self.drops["spoofed_source"] += 1  # not one of this peer's addresses
        if self.spec.reorder_hold_s is None and now >= session.hold_update_due:
            session.hold_update_due = now + HOLD_UPDATE_INTERVAL_S
            reorder = session.reorder
            reorder.hold_s = min(session.skew.hold_s(now) + reorder.late_bonus(now), HOLD_MAX_S)
        if not session.reorder.push(counter, payload, link_id, now, link_mask, copy=copy):
            self.drops["late"] += 1
        elif copy:
            peer.copies_first += 1

    def _collect(self, session: Session) -> None:
        ready = session.reorder.ready
        if ready:
            self._deliver.extend(ready)
            ready.clear()

    def _handle_control(
        self, peer: Peer, session: Session, link: Link, counter: int, plaintext: bytes,
        now: float,
    ) -> None:
        try:
            message, next_data_counter = control.decode(plaintext)
        except control.ControlError as exc:
            self.drops[f"control_{exc}"] += 1
            return
        session.reorder.note_progress(link.link_id, next_data_counter, now)
        if isinstance(message, control.Marker) and message.final:
            session.reorder.forget_link(link.link_id, now)
        self._collect(session)
        if peer.links.get(link.link_id) is not link and isinstance(
            message, control.Probe | control.ProbeAck
        ):
            return  # a removed link, draining: its health no longer matters
        if isinstance(message, control.Probe):
            self._send_control(peer, session, link, control.ProbeAck(message.probe_id), now)
            if link.health.state is LinkState.UNKNOWN and not link.health.outstanding:
                # First contact on this link: probe back now rather than in 200 ms.
                self._send_control(peer, session, link,
                                   control.Probe(link.health.start_probe(now)), now)
        elif isinstance(message, control.ProbeAck):
            self._link_changed(peer, link, now, link.health.on_ack(message.probe_id, now))
            if link.up:
                self._flush_queue(peer, now)
        elif isinstance(message, control.Feedback):
            self._on_feedback(peer, message, now)
        elif isinstance(message, control.PmtuProbe):
            self._send_control(peer, session, link, control.PmtuAck(message.probe_id), now)
        elif isinstance(message, control.PmtuAck):
            if link.pmtu is not None:
                link.pmtu.on_ack(message.probe_id, now)
                self._pmtu_published(peer, link)
        elif (isinstance(message, control.Links) and self.role is Role.SERVER
              and session is peer.current and counter > peer.links_seen):
            peer.links_seen = counter
            self._apply_link_table(peer, message.links, now)

    def _apply_link_table(
        self, peer: Peer, infos: tuple[control.LinkInfo, ...], now: float
    ) -> None:
        """Server: the client's link table.  A link it no longer lists was
        removed by a reload there: it leaves our schedule too."""
        listed = {info.link_id for info in infos}
        for link_id in [x for x in peer.links if x not in listed]:
            link = peer.links.pop(link_id)
            self._event(logging.INFO, f"link {link.name} removed by the client")
            self._retire(peer, link, now)
        for info in infos:
            known = peer.links.get(info.link_id)
            if known is None:
                # New, or an id used again after a removal: start afresh,
                # keeping the return address its probes may have taught us.
                draining = peer.retired.pop(info.link_id, None)
                known = peer.links[info.link_id] = Link(
                    info.link_id, info.name, path=None if draining is None else draining[0].path)
            known.name, known.weight, known.backup = info.name, info.weight, info.backup
        self._refresh_mask(peer, now)

    def _on_feedback(self, peer: Peer, feedback: control.Feedback, now: float) -> None:
        for report in feedback.reports:
            link = peer.links.get(report.link_id)
            if link is None:
                continue
            # Widen the 32-bit sequence to our unbounded per-link counter.
            last = link.next_link_seq - 1
            highest = last - ((last - report.highest_link_seq) & 0xFFFFFFFF)
            if highest > link.est.highest_reported:
                link.health.on_progress(now)  # data gets through: alive, even if probes drown
            link.est.on_report(report.rx_packets, report.rx_bytes, highest, report.owd_us,
                               report.owd_min_us, now, link.health.srtt_s, report.owd_low_us)
        # The peer is alive (it reports): a link whose data it never saw is dead.
        for link in peer.links.values():
            if link.up and link.est.stalled(now, link.health.min_rtt_s):
                link.est.forget_unacked()
                self._event(logging.WARNING, f"link {link.name}: data unacknowledged, "
                            "taking it out of the schedule")
                self._link_changed(peer, link, now, link.health.on_stall(now))

    def _send_feedback(self, peer: Peer, session: Session, now: float) -> None:
        reports = []
        for link in peer.links.values():
            owd = session.skew.take_owd_us(link.link_id)
            if owd is None or link.rx_highest_link_seq < 0:
                continue
            reports.append(control.LinkReport(
                link.link_id, link.counters.rx_packets, link.counters.rx_bytes,
                link.rx_highest_link_seq, owd[0], owd[1], owd[2]))
        # Over a link that just delivered data to us: the fastest link by
        # probes may be the one that has just been blackholed, and feedback
        # lost there would also hide that link's stall from the peer.
        up = [x for x in peer.links.values() if x.up]
        delivering = [x for x in up if x.counters.rx_packets > x.rx_packets_at_feedback]
        for link in peer.links.values():
            link.rx_packets_at_feedback = link.counters.rx_packets
        target = min(delivering or up,
                     key=lambda x: x.health.srtt_s or 0.0, default=None)
        if reports and target is not None:
            self._send_control(peer, session, target, control.Feedback(tuple(reports)), now)

    def _learn_path(self, peer: Peer, link_id: int, sock: int, addr: Address, now: float) -> Link:
        link = peer.links.get(link_id)
        if link is None:
            draining = peer.retired.get(link_id)
            if draining is not None:
                return draining[0]  # a removed link's packets in flight
            link = peer.links[link_id] = Link(link_id, f"link{link_id}")
        if self.role is Role.SERVER and link.path != (sock, addr):
            if link.path is not None:
                self._event(logging.INFO, f"link {link.name}: peer moved to {addr[0]}:{addr[1]}")
            link.path = (sock, addr)
            link.pmtu = None  # a new path: its MTU is to be found again
        return link

    def _link_changed(
        self, peer: Peer, link: Link, now: float, new_state: LinkState | None
    ) -> None:
        if new_state is None:
            return
        if new_state is LinkState.UP:
            link.est.restart()  # probes sent while down were never reported; rates are stale
            if link.pmtu is not None:
                link.pmtu.confirm_soon(now)  # the path may have changed while down
        self._refresh_mask(peer, now)
        if new_state is LinkState.DOWN:
            self._resend_recent(peer, link, now)
        self._refresh_mtu(peer)
        rtt = link.health.srtt_s
        detail = f" (rtt {rtt * 1000:.1f} ms)" if rtt is not None else ""
        level = logging.WARNING if new_state is LinkState.DOWN else logging.INFO
        self._event(level, f"link {link.name} is {new_state.value}{detail}")

    def _refresh_mask(self, peer: Peer, now: float) -> None:
        """The link mask announced in every packet (see reorder): the usable
        links that carried data lately.  Lately = longer than any delay skew
        between links, so a packet still in flight on a link that just left
        the rotation is waited for, not written off."""
        mask = 0
        for link in usable_links(list(peer.links.values())):
            if link.link_id < wire.MASKABLE_LINKS and now - link.last_data_sent < MASK_LINGER_S:
                mask |= 1 << link.link_id
        peer.link_mask = mask

    def _flush_queue(self, peer: Peer, now: float) -> None:
        while peer.queue:
            if not self._send_data(peer, peer.queue[0], now):
                return
            peer.queue.popleft()

    # -- path MTU (see pmtu) ----------------------------------------------

    def _oversized(self, peer: Peer, packet: bytes, now: float) -> bool:
        """A packet above the peer's MTU: fragment it, or drop it and answer
        ICMP "too big" on the TUN.  False when it goes as it is (IPv6 up to
        1280 bytes: every IPv6 path must carry that much)."""
        mtu = peer.mtu
        assert mtu is not None
        if packet[0] >> 4 == 6 and len(packet) <= pmtu.MIN_MTU_IPV6:
            return False
        fragments, answer = self.oversize.handle(packet, mtu, now)
        if answer is not None:
            self._deliver.append(answer)
        if not fragments:
            self.drops["too_big"] += 1
        for fragment in fragments:
            self.send_packet(fragment, now)
        return True

    def _pmtu_poll(self, peer: Peer, session: Session, link: Link, now: float) -> None:
        search = link.pmtu
        if search is None:
            if self.spec.tunnel_mtu is None:
                return
            family = _family(link)
            overhead = pmtu.overhead(family)
            search = link.pmtu = pmtu.PmtuSearch(
                pmtu.BASE_PMTU[family], self.spec.tunnel_mtu + overhead, overhead)
        probe = search.poll(now, pmtu.probe_timeout_s(link.health.srtt_s),
                            link.health.last_acked_sent)
        if probe is not None:
            probe_id, size = probe
            self._send_pmtu_probe(peer, session, link, probe_id, size, now)
        elif link.est.loss > pmtu.LOSS_SIGNAL:
            search.confirm_soon(now)
        self._pmtu_published(peer, link)

    def _send_pmtu_probe(self, peer: Peer, session: Session, link: Link, probe_id: int,
                         size: int, now: float) -> None:
        """A probe padded to `size` bytes on the wire (IP packet).  It reuses
        the link's last sequence number: it is meant to get lost now and
        then, and a gap in the sequence would count as data loss (and a
        stall) in the per-link estimates."""
        path = link.path
        assert path is not None
        payload = control.encode_pmtu_probe(
            probe_id, size - _udp_ip_header_size(link) - wire.TRANSPORT_OVERHEAD,
            session.send_counter)
        datagram = session.seal(wire.MessageType.CONTROL, link.link_id, peer.link_mask,
                                link.next_link_seq - 1, payload, now)
        link.counters.tx_packets += 1
        link.counters.tx_bytes += len(datagram)
        self._datagrams.append((path[0], datagram, path[1]))

    def _pmtu_published(self, peer: Peer, link: Link) -> None:
        notes = [] if link.pmtu is None else link.pmtu.take_notes()
        for note in notes:
            self._event(logging.INFO, f"link {link.name}: {note}")
        if notes:
            self._refresh_mtu(peer)

    def _refresh_mtu(self, peer: Peer) -> None:
        """The peer's MTU: the smallest any link that is up carries now."""
        tunnel_mtu = self.spec.tunnel_mtu
        if tunnel_mtu is None:
            return
        allowances = [link.pmtu.path_mtu - pmtu.overhead(_family(link))
                      for link in peer.links.values()
                      if link.up and link.pmtu is not None and link.pmtu.path_mtu is not None]
        mtu = pmtu.effective_mtu(tunnel_mtu, allowances)
        if mtu != peer.mtu:
            peer.mtu = mtu
            self._event(logging.INFO if mtu == tunnel_mtu else logging.WARNING,
                        f"tunnel mtu {mtu} (TUN {tunnel_mtu})" + (
                            "" if mtu == tunnel_mtu else
                            ": larger packets get ICMP too big or are fragmented"))

    # -- handshake -------------------------------------------------------

    def _client_timers(self, peer: Peer, now: float) -> None:
        current = peer.current
        if current is not None:
            silent = now - max(current.last_received, current.created) > (
                REHANDSHAKE_AFTER_SILENCE_S
            )
            rekey = current.needs_rekey(now)
            if not silent and not rekey:
                if peer.pending is None:
                    peer.handshake_due = current.created + REKEY_AFTER_S
                    return
            elif peer.pending is None:
                reason = "rekey" if rekey else "no answer from the server"
                self._event(logging.INFO, f"new handshake ({reason})")
                self._initiate(peer, now)
                return
        if now >= peer.handshake_due:
            self._initiate(peer, now)

    def _initiate(self, peer: Peer, now: float) -> None:
        links = list(peer.links.values())
        up = [link for link in links if link.up]
        pool = up or links
        link = pool[peer.handshake_attempts % len(pool)]
        if peer.pending is not None:
            self._sessions.pop(peer.pending.sender_index, None)
        index = self._new_index()
        jar = peer.cookie_jar
        pending = PendingInitiation(
            self.spec.private_key, peer.spec.public_key, peer.spec.preshared_key, index,
            link.link_id, now + self._wall_offset,
            mac2=None if jar is None else (lambda covered: jar.mac2(covered, now)),
        )
        pending.sent_at = now
        peer.pending = pending
        retry = min(HANDSHAKE_RETRY_S * 2 ** max(peer.handshake_attempts - 2, 0),
                    HANDSHAKE_RETRY_MAX_S)
        peer.handshake_attempts += 1
        peer.handshake_due = now + retry
        assert link.path is not None
        self._datagrams.append((link.path[0], pending.datagram, link.path[1]))

    def _receive_resp(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        if self.role is not Role.CLIENT:
            self.drops["unexpected_handshake"] += 1
            return
        resp = wire.decode_handshake_resp(data)
        peer = next((p for p in self.peers if p.pending is not None
                     and p.pending.sender_index == resp.receiver_index), None)
        if peer is None or peer.pending is None:
            self.drops["unknown_session"] += 1
            return
        pending = peer.pending
        try:
            result = pending.consume_response(resp, self._mac1_key, data)
        except NoiseError:
            self.drops["bad_handshake"] += 1
            return
        session = Session(peer.pending.sender_index, result.remote_index, result.send_key,
                          result.recv_key, created=now, initiator=True, confirmed=True)
        peer.pending = None
        peer.handshake_attempts = 0
        peer.handshake_due = now + REKEY_AFTER_S
        self._authenticated = True
        self._install(peer, session, now)
        link = peer.links.get(resp.link_id)
        if link is not None:
            # The response proves this link works both ways; its RTT is a sample.
            probe_id = link.health.start_probe(pending.sent_at)
            self._link_changed(peer, link, now, link.health.on_ack(probe_id, now))
        self._announce_links(peer, session, now)
        peer.links_announce_due = now + LINKS_ANNOUNCE_INTERVAL_S
        for other in peer.links.values():
            if other.health.state is not LinkState.UP and other.path is not None:
                self._send_control(peer, session, other,
                                   control.Probe(other.health.start_probe(now)), now)
        self._flush_queue(peer, now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        if self.role is not Role.CLIENT:
            self.drops["unexpected_handshake"] += 1
            return
        receiver = reply_receiver_index(data)
        for peer in self.peers:
            pending, jar = peer.pending, peer.cookie_jar
            if pending is not None and jar is not None and pending.sender_index == receiver:
                if jar.consume_reply(data, pending.mac1, now):
                    self._event(logging.INFO, "server under load: got a cookie, retrying")
                else:
                    self.drops["bad_cookie_reply"] += 1
                return
        self.drops["unknown_session"] += 1

    def _receive_init(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        if self.role is not Role.SERVER:
            self.drops["unexpected_handshake"] += 1
            return
        init = wire.decode_handshake_init(data)
        if not wire.mac1_valid(data, wire.HANDSHAKE_INIT_MAC1_OFFSET, self._mac1_key):
            self.drops["bad_mac1"] += 1
            return
        # From here on every step is cheap until the DH in read_initiation.
        limiter = self._limiter
        limiter.note(now)
        if limiter.under_load() and not self._cookies.mac2_valid(data, addr, now):
            if not self._cookies.may_reply(addr[0], now):
                self.drops["handshake_cookie_limited"] += 1
                return
            self.drops["handshake_cookie_sent"] += 1
            self._datagrams.append((sock, self._cookies.reply(init, addr, now), addr))
            return
        if not limiter.allow(addr[0], now):
            self.drops["handshake_rate_limited"] += 1
            return
        try:
            accepted = read_initiation(init, self.spec.private_key, self._psk_for)
        except NoiseError:
            self.drops["bad_handshake"] += 1
            return
        except KeyError:
            self.drops["unknown_peer"] += 1
            return
        peer = self._peer_by_key[accepted.peer_public]
        if accepted.timestamp <= peer.last_init_timestamp:
            self.drops["handshake_replay"] += 1
            return
        self._respond(peer, accepted, init, sock, addr, now)

    def _respond(self, peer: Peer, accepted: AcceptedInitiation, init: wire.HandshakeInit,
                 sock: int, addr: Address, now: float) -> None:
        self._authenticated = True  # the initiation proved the peer's key
        index = self._new_index()
        try:
            datagram, result = write_response(accepted, init.link_id, index, init.sender_index)
        except NoiseError:
            self.drops["bad_handshake"] += 1
            return
        peer.last_init_timestamp = accepted.timestamp
        session = Session(index, result.remote_index, result.send_key, result.recv_key,
                          created=now, initiator=False)
        self._learn_path(peer, init.link_id, sock, addr, now)
        if peer.next_session is not None:
            self._sessions.pop(peer.next_session.local_index, None)
        if peer.current is None:
            self._install(peer, session, now)
        else:
            # Keep sending on the current keys until the client proves it has
            # the new ones (its first packet under them), as WireGuard does.
            peer.next_session = session
            self._sessions[index] = (peer, session)
        self._datagrams.append((sock, datagram, addr))

    def _promote(self, peer: Peer, session: Session, now: float) -> None:
        peer.next_session = None
        self._install(peer, session, now)

    def _install(self, peer: Peer, session: Session, now: float) -> None:
        if peer.previous is not None:
            self._sessions.pop(peer.previous.local_index, None)
        peer.previous = peer.current
        peer.current = session
        peer.last_handshake = now
        peer.links_seen = -1
        self._sessions[session.local_index] = (peer, session)
        if self.spec.reorder_hold_s is not None:
            session.reorder.hold_s = self.spec.reorder_hold_s
        if peer.links_announce_due == float("inf"):
            peer.links_announce_due = now
        self._event(logging.INFO, f"session {session.local_index:08x} established")

    def _expire_sessions(self, peer: Peer, now: float) -> None:
        prev = peer.previous
        if prev is not None and (
            now - prev.last_received >= PREVIOUS_SESSION_KEEP_S or prev.expired(now)
        ):
            self._sessions.pop(prev.local_index, None)
            peer.previous = None
        cur = peer.current
        if cur is not None and cur.expired(now):
            self._sessions.pop(cur.local_index, None)
            peer.current = None
            self._event(logging.WARNING, "session expired without a rekey")

    def _announce_links(self, peer: Peer, session: Session, now: float) -> None:
        infos = tuple(control.LinkInfo(x.link_id, x.name, x.weight, x.backup)
                      for x in peer.links.values())
        target = next((x for x in peer.links.values() if x.up), None)
        if target is None:
            target = next(iter(peer.links.values()), None)
        if target is not None and target.path is not None:
            self._send_control(peer, session, target, control.Links(infos), now)

    def _new_index(self) -> int:
        while True:
            index = self._random_index() & 0xFFFFFFFF
            if index not in self._sessions:
                return index

    def _event(self, level: int, message: str) -> None:
        self._events.append((level, message))


def _set_aqm(peer: Peer, target_s: float | None) -> None:
    """Queue management for `peer` at `target_s` (None: off); a new target
    keeps the counters."""
    if target_s is None:
        peer.aqm = None
    elif peer.aqm is None:
        peer.aqm = CoDel(target_s)
    else:
        peer.aqm.target_s = target_s


def _client_link(spec: LinkSpec) -> Link:
    """A client link: its socket index is its link id."""
    assert spec.remote is not None
    return Link(spec.link_id, spec.name, spec.weight, spec.backup,
                path=(spec.link_id, spec.remote))


def _family(link: Link) -> int:
    """The outer IP version of a link's path (4 when not known yet)."""
    if link.path is None:
        return 4
    host = link.path[1][0]
    return 6 if ":" in host and not host.startswith("::ffff:") else 4


def _udp_ip_header_size(link: Link) -> int:
    return 8 + (40 if _family(link) == 6 else 20)
