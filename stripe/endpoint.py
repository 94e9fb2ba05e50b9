"""The sans-I/O core of a stripe endpoint (client or server).

Theory of operation
-------------------
The driver (`io.driver`) feeds inputs, each with the current monotonic time:

- `receive_datagrams(sock, datagrams, addr, now)`: UDP datagrams read from a
  link socket (`receive_datagram` for one);
- `send_packets(packets, now)`: IP packets read from the TUN device;
- `handle_timer(now)`: the time returned by `get_timer()` has come;
- `send_failed(sock, addr, now)` / `datagram_too_big(...)`: the OS refused
  a send (interface down; larger than the path);
- `reconfigure(plan, now)`: a reload, planned beforehand by
  `plan_reconfigure(spec)` so the shell can open new links' sockets first;
- `receive_handoff(sock, data, addr, now)`: a server worker's initiation
  that another worker read (see `steering`).

After any input it pulls the outputs: `datagrams_to_send()` (socket index,
bytes, address), `packets_to_deliver()` (in-order IP packets for the TUN),
`sockets_to_close()` (removed links' sockets, once drained),
`block_changes(now)` (sources the guard blocked and unblocked lately),
`handoffs_to_send()` (a server worker: initiations for another worker's
peers) and `take_events()` (log lines), then re-arms one timer from
`get_timer()`.
Nothing here reads a clock, touches a socket or imports asyncio, so the
tests drive two endpoints through an in-memory network with a fake clock.

Timers scale with the peers that have work, not with the peers there are:
each peer's next deadline is kept in a heap (`_timers`), recomputed only
for the peers an input touched (`Outbox.touched`) or whose timer fired, so
a server with a thousand idle clients does not look at all of them after
every datagram.

The work is done by collaborators that share one `Outbox`; this class only
builds them and routes inputs to them:

- `ingress.Ingress`: datagrams in, the one parsing boundary;
- `egress.Egress`: TUN packets out, through the scheduler;
- `transmit.Transmitter`: the one place a transport datagram is sealed;
- `linkctl.LinkControl`: links, probes, feedback, control messages, MTU;
- `sessions.Sessions`: handshakes and the session table.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from . import reconfig, routing, wire
from .aqm import CoDel
from .egress import Egress
from .guard import BlockChanges, SourceGuard
from .ingress import Ingress
from .linkctl import LinkControl, client_link
from .noise import public_from_private
from .outbox import Address, Datagram, Handoff, Outbox
from .peer import Peer, PeerHandshake
from .scheduler import make_scheduler
from .sessions import Sessions
from .spec import EndpointSpec, PeerSpec, Role
from .status import snapshot
from .transmit import Transmitter


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
        self._spec = spec
        self.role = spec.role
        self.public_key = public_from_private(spec.private_key)
        self._outbox = outbox = Outbox()
        routes: routing.AllowedIPs[Peer] = routing.AllowedIPs()
        transmit = Transmitter(outbox, spec.partial_csum)
        self._egress = Egress(spec, outbox, transmit, routes)
        self._links = LinkControl(spec, outbox, transmit, self._egress)
        self._sessions = Sessions(spec, outbox, self._links, self._egress, wall_offset,
                                  random_index, random_bytes)
        self._ingress = Ingress(spec, outbox, self._sessions, self._links, routes)
        # Each peer's next deadline (id(peer) -> (peer, due)) and a heap of
        # (due, tie, id(peer)) whose entries are stale once `_due` moved on.
        self._due: dict[int, tuple[Peer, float | None]] = {}
        self._timers: list[tuple[float, int, int]] = []
        self._timer_tie = 0
        self._egress.wake_handshake = self._sessions.wake
        self._egress.wake_links = self._links.wake
        for peer_spec in spec.peers:
            peer = self._add_peer(peer_spec, now)
            if self.role is Role.CLIENT:
                peer.links = {ls.link_id: client_link(ls) for ls in spec.links}
        self._rebuild_routes()

    @property
    def spec(self) -> EndpointSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: EndpointSpec) -> None:
        """A new spec for every part (`reconfigure` applies a planned one)."""
        self._spec = spec
        for part in (self._egress, self._links, self._sessions, self._ingress):
            part.spec = spec

    @property
    def peers(self) -> list[Peer]:
        return self._sessions.peers

    @property
    def guard(self) -> SourceGuard:
        """The source guard of the receive path (see `guard`)."""
        return self._ingress.guard

    @guard.setter
    def guard(self, guard: SourceGuard) -> None:
        self._ingress.guard = guard

    @property
    def drops(self) -> Counter[str]:
        """Dropped input by reason (datagrams and TUN packets)."""
        return self._outbox.drops

    # -- outputs -----------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        return self._outbox.take_datagrams()

    def packets_to_deliver(self) -> list[bytes]:
        return self._outbox.take_deliveries()

    def take_events(self) -> list[tuple[int, str]]:
        return self._outbox.take_events()

    def handoffs_to_send(self) -> list[Handoff]:
        """Server worker: initiations from peers other workers own, to pass
        to them whole (see `steering`)."""
        return self._outbox.take_handoffs()

    def sockets_to_close(self) -> list[int]:
        """Client: sockets of removed links whose drain time is over."""
        return self._outbox.take_closed_sockets()

    def block_changes(self, now: float) -> BlockChanges | None:
        """The sources the guard blocked (newest last) and unblocked since the
        last call, or None: nothing changed (cheap: the shell asks after
        every input).  Sources are `guard.source_key`s: IPv4 addresses and
        IPv6 /64s.  The shell may drop their datagrams in the kernel (see
        io/source_filter); `urgent`: a handshake lifted a block."""
        return self._ingress.guard.block_changes(now)

    def handshakes_from_blocked_sources(self) -> int:
        """How many handshake messages from blocked sources were read so
        far (the shell's kernel filter samples them when they come fast)."""
        return self._ingress.blocked_handshakes

    def get_timer(self) -> float | None:
        self._refresh_timers()
        timers, due = self._timers, self._due
        while timers:
            at, _tie, key = timers[0]
            entry = due.get(key)
            if entry is not None and entry[1] == at:
                return at
            heapq.heappop(timers)  # stale: the peer's deadline moved, or it left
        return None

    def _peer_timer(self, peer: Peer) -> float | None:
        """The earliest deadline of `peer` (its sessions, links, reorder buffers)."""
        best = self._sessions.next_timer(peer)
        at = self._links.next_timer(peer)
        if at is not None and (best is None or at < best):
            best = at
        for session in peer.sessions():
            at = session.reorder.deadline()
            if at is not None and (best is None or at < best):
                best = at
        return best

    def _refresh_timers(self) -> None:
        """Recompute the deadlines of the peers touched since the last call."""
        touched = self._outbox.touched
        if not touched:
            return
        due, timers = self._due, self._timers
        for key, peer in touched.items():
            if key not in due:
                continue  # removed by a reload
            at = self._peer_timer(peer)
            if due[key][1] != at:
                due[key] = (peer, at)
                if at is not None:
                    self._timer_tie += 1
                    heapq.heappush(timers, (at, self._timer_tie, key))
        touched.clear()
        if len(timers) > 4 * len(due) + 64:  # too many stale entries: rebuild
            self._timers = [(at, i, key) for i, (key, (_p, at)) in enumerate(due.items())
                            if at is not None]
            heapq.heapify(self._timers)

    def _touch_all(self) -> None:
        for peer in self.peers:
            self._outbox.touch(peer)

    def status(self, now: float) -> dict[str, Any]:
        """What `stripe status` shows (see `status`)."""
        return snapshot(self.spec, self.peers, self.drops, self._egress.oversize.counters, now)

    # -- inputs --------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> None:
        """An IP packet from the TUN device."""
        self._egress.send_packets((packet,), now)

    def send_packets(self, packets: Sequence[bytes], now: float) -> None:
        """IP packets from the TUN device, in order (see `egress`)."""
        self._egress.send_packets(packets, now)

    def receive_datagram(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        """A datagram from the network (see `ingress`)."""
        self._ingress.receive_datagrams(sock, (data,), addr, now)

    def receive_datagrams(self, sock: int, datagrams: Sequence[bytes], addr: Address,
                          now: float) -> None:
        """Datagrams from one source read at once (a GRO train)."""
        self._ingress.receive_datagrams(sock, datagrams, addr, now)

    def receive_handoff(self, sock: int, data: bytes, addr: Address, now: float) -> None:
        """Server worker: an initiation another worker read on socket `sock`
        from `addr` and found to be from one of our peers."""
        try:
            authenticated = self._sessions.receive_handoff(sock, data, addr, now)
        except wire.WireError as exc:
            self._outbox.drops[exc.reason] += 1
            return
        if authenticated:
            self._ingress.guard.succeeded(addr[0], now)

    def rekey(self, now: float) -> None:
        """Client: handshake again with every peer now (as every
        REKEY_AFTER_S); the current sessions serve until the new ones are
        up.  The load generator uses it to measure a server's handshakes."""
        for peer in self.peers:
            self._sessions.rekey(peer, now)

    def send_failed(self, sock: int, addr: Address, now: float) -> None:
        """The OS refused a send to `addr` on `sock` (interface down, no route)."""
        self._touch_all()
        self._links.send_failed(self.peers, sock, addr, now)

    def datagram_too_big(self, sock: int, addr: Address, size: int, now: float) -> None:
        """The OS refused to send a `size`-byte datagram: larger than the
        local interface or route allows (EMSGSIZE)."""
        self._touch_all()
        self._links.datagram_too_big(self.peers, sock, addr, size, now)

    def handle_timer(self, now: float) -> None:
        """Run the timers of every peer whose deadline has come."""
        self._refresh_timers()
        timers, due, touch = self._timers, self._due, self._outbox.touch
        while timers and timers[0][0] <= now:
            at, _tie, key = heapq.heappop(timers)
            entry = due.get(key)
            if entry is None or entry[1] != at:
                continue  # stale
            peer = entry[0]
            due[key] = (peer, None)  # recomputed below, with the other touched peers
            touch(peer)
            self._sessions.on_timer(peer, now)
            self._links.on_timer(peer, now)
            for session in peer.sessions():
                session.reorder.poll(now)
                self._ingress.drain(peer, session, now)
        self._refresh_timers()

    # -- reload ----------------------------------------------------------------

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
        old = self.spec
        self.spec = spec = change.spec
        for peer_spec in change.removed_peers:
            gone = self._sessions.peer_for(peer_spec.public_key)
            self._sessions.drop_peer(gone)
            self._due.pop(id(gone), None)
        for peer_spec in change.added_peers:
            self._add_peer(peer_spec, now)
        removed = {ls.link_id for ls in change.removed_links}
        specs = {p.public_key: p for p in spec.peers}
        for peer in self.peers:
            self._sessions.respec_peer(peer, specs[peer.spec.public_key])
            if spec.scheduler != old.scheduler:
                peer.scheduler = make_scheduler(spec.scheduler)
            if spec.queue_target_s != old.queue_target_s:
                _set_aqm(peer, spec.queue_target_s)
            if self.role is Role.CLIENT:
                self._links.relink(peer, spec.links, removed, now)
            for session in peer.sessions():
                if spec.reorder_hold_s is not None:
                    session.reorder.hold_s = spec.reorder_hold_s
                if not spec.loss_repair:
                    session.reorder.repair_wait_s = 0.0
                # Derive the hold (if measured) and the repair wait again
                # from the next packet.
                session.hold_update_due = now
        self._touch_all()
        self._rebuild_routes()

    # -- internals -------------------------------------------------------------

    def _add_peer(self, peer_spec: PeerSpec, now: float) -> Peer:
        peer = Peer(peer_spec, make_scheduler(self.spec.scheduler), PeerHandshake(due=now),
                    mtu=self.spec.tunnel_mtu)
        _set_aqm(peer, self.spec.queue_target_s)
        self._sessions.add_peer(peer_spec, peer)
        self._due[id(peer)] = (peer, None)
        self._outbox.touch(peer)
        return peer

    def _rebuild_routes(self) -> None:
        """Inner address -> peer, for egress (destination) and ingress (source)."""
        routes: routing.AllowedIPs[Peer] = routing.AllowedIPs()
        for peer in self.peers:
            for network in peer.spec.allowed_ips:
                routes.insert(network, peer)
            peer.last_good_source = b""  # the cached check is void with new networks
        self._egress.routes = self._ingress.routes = routes


def _set_aqm(peer: Peer, target_s: float | None) -> None:
    """Queue management for `peer` at `target_s` (None: off); a new target
    keeps the counters."""
    if target_s is None:
        peer.aqm = None
    elif peer.aqm is None:
        peer.aqm = CoDel(target_s)
    else:
        peer.aqm.target_s = target_s
