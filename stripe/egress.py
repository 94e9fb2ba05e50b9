"""From the TUN to the links: inner packets become sealed datagrams.

Each packet read from the TUN is checked (long enough to route), routed to
the peer that owns its destination (`routing`), fitted to the peer's MTU
(`pmtu.Oversize`: fragmented, or answered with ICMP "too big"), offered to
queue management (`aqm`: dropped or ECN-marked while the links hold a
standing queue), and given to the link the peer's scheduler picks.

Consecutive packets to one peer go to the picked link as a run: as many as
that link carries in RUN_WINDOW_S at its estimated rate (one packet on a
slow link, dozens on a fast one), so the per-packet work is sealing alone
and the shell gets a GSO train.  A packet wanted twice (redundancy: small,
or of a chosen DSCP class) goes alone, and again as a DATA_COPY on a second
link; so does a small packet of a sparse flow that is not TCP (a ping, a
DNS query, a call: see `sendqueue`).  Without a session, or while no link
has room in its window (see `scheduler`), packets wait in the peer's
bounded queue, in order, until a session or a feedback report makes room;
queue management then judges each by the time it waited there plus the
links' own standing queue.

Data that starts after idleness goes, until a link has been heard from
since, on two links at once (the packet and a DATA_COPY), since any of them
may have died unseen while idle (see `links`).

When a link dies under data it carried lately and the peer has not
reported, that data goes out again as copies on the other links (see
`resend_recent`); so does each message the peer found lost and asks for
again (see `repair`).
"""

from __future__ import annotations

from collections.abc import Sequence

from . import pmtu, routing, wire
from .aqm import CoDel, mark_ce, measure_bond
from .flows import flow_bucket
from .links import RESEND_WINDOW_S, Link
from .offload import IPPROTO_TCP, complete_partial
from .outbox import Outbox
from .peer import Peer
from .scheduler import shortest_rtt, shortest_rtt_avoiding, usable_links
from .sendqueue import QUEUE_MIN_PACKETS, SPARSE_COPY_MAX_BYTES, limit_for
from .session import Session
from .spec import EndpointSpec
from .transmit import Transmitter

# How long a run of packets to one link lasts at the link's estimated rate,
# and its most packets: long enough for GRO trains and few switches between
# links at gigabit rates (a GSO send carries at most 64 of them), short
# enough that a slow link's run is one packet.
RUN_WINDOW_S = 0.002
RUN_MAX_PACKETS = 128

_DATA = wire.MessageType.DATA
_COPY = wire.MessageType.DATA_COPY


def wants_copy(packet: bytes, below: int, dscp: frozenset[int]) -> bool:
    """Redundancy: is this (valid) IP packet small or in a chosen DSCP class?"""
    if len(packet) <= below:
        return True
    if not dscp:
        return False
    if packet[0] >> 4 == 4:
        return packet[1] >> 2 in dscp
    return ((packet[0] & 0x0F) << 2 | packet[1] >> 6) in dscp


def copied_when_sparse(packet: bytes) -> bool:
    """A small packet that is not TCP (a ping, DNS, a call's or a game's
    packet; `packet` passed `tun_packet_ok`): of a sparse flow, it goes on
    two links even when nothing waits (see `sendqueue`)."""
    if len(packet) > SPARSE_COPY_MAX_BYTES:
        return False
    return (packet[9] if packet[0] >> 4 == 4 else packet[6]) != IPPROTO_TCP


def tun_packet_ok(packet: bytes) -> bool:
    """Long enough to route: an IPv4 header, or an IPv6 one."""
    n = len(packet)
    if n < 20:
        return False
    version = packet[0] >> 4
    return version == 4 or (version == 6 and n >= 40)


class Egress:
    """TUN packets to sealed datagrams, for every peer.

    `routes` maps inner destinations to peers (rebuilt by the endpoint when
    peers or their allowed_ips change); `wake_handshake(peer, now)` is
    called when a packet waits for a session that nobody is setting up,
    `wake_links(peer, now)` when data goes to an idle peer (see links)."""

    def __init__(self, spec: EndpointSpec, outbox: Outbox, transmit: Transmitter,
                 routes: routing.AllowedIPs[Peer]) -> None:
        self.spec = spec
        self.routes = routes
        self.oversize = pmtu.Oversize()
        self._outbox = outbox
        self._transmit = transmit
        self.wake_handshake = _no_wake
        self.wake_links = _no_wake

    def send_packets(self, packets: Sequence[bytes], now: float) -> None:
        """IP packets from the TUN device, in order."""
        routes, drops = self.routes, self._outbox.drops
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
            if not tun_packet_ok(packet):
                drops["bad_tun_packet"] += 1
                continue
            dest = destination(packet)
            if dest != last_dest:
                peer, last_dest = routes.lookup(dest), dest
                if peer is not None:
                    self._outbox.touch(peer)
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
            if peer.queue:  # nothing overtakes what waits, but a sparse flow
                self._skip_or_enqueue(peer, session, packet, now)
                continue
            if peer.idle:
                self.wake_links(peer, now)
            aqm = peer.aqm
            if aqm is not None and peer is not aqm_quiet:
                # The bond's queue and `now` stay put for the whole call: once
                # CoDel says no, it says no to the rest of this peer's packets.
                if aqm.should_signal(measure_bond(usable_links(peer.links.values()), now), now):
                    signalled = _signal(aqm, packet)
                    if signalled is None:
                        continue
                    packet = signalled
                else:
                    aqm_quiet = peer
            link = peer.scheduler.pick(peer.links.values(), len(packet), now)
            if link is None:
                self._skip_or_enqueue(peer, session, packet, now)
                continue
            if (copies and wants_copy(packet, below, dscp)) or (
                    peer.verifying and _verifying(peer)) or (
                    copied_when_sparse(packet)
                    and peer.queue.sparse(flow_bucket(packet), len(packet), now)):
                self._send_with_copy(peer, session, link, packet, now)
                continue
            run = [packet]
            budget = peer.scheduler.run_bytes(link, peer.links.values(), RUN_WINDOW_S) - len(
                packet)
            extra = 0
            while i < count and extra < budget and len(run) < RUN_MAX_PACKETS:
                following = packets[i]
                if (not tun_packet_ok(following) or destination(following) != dest
                        or (mtu is not None and len(following) > mtu)
                        or (copies and wants_copy(following, below, dscp))
                        # (the size first, inline: most packets here are large)
                        or (len(following) <= SPARSE_COPY_MAX_BYTES
                            and copied_when_sparse(following))):
                    break
                run.append(following)
                extra += len(following)
                i += 1
            if extra:
                peer.scheduler.charge(link, extra)
            self._transmit.send(peer, session, link, _DATA, run, now)

    def flush_queue(self, peer: Peer, now: float) -> None:
        """Send what waited for a session or for room on a link, in order,
        while a link takes it."""
        session = peer.current
        queue = peer.queue
        if session is None or not queue:
            return
        scheduler, links = peer.scheduler, peer.links.values()
        below, dscp = self.spec.duplicate_below, self.spec.duplicate_dscp
        copies = bool(below or dscp)
        aqm = peer.aqm
        bond = None
        if peer.idle:
            self.wake_links(peer, now)
        while queue:
            packet, since = queue.peek()
            link = scheduler.pick(links, len(packet), now)
            if link is None:
                return
            queue.pop()
            if aqm is not None:
                if bond is None:
                    bond = measure_bond(usable_links(links), now)
                if aqm.should_signal(bond.after_waiting(now - since), now):
                    signalled = _signal(aqm, packet)
                    if signalled is None:
                        continue
                    packet = signalled
            if (copies and wants_copy(packet, below, dscp)) or (
                    peer.verifying and _verifying(peer)):
                self._send_with_copy(peer, session, link, packet, now)
                continue
            run = [packet]
            budget = scheduler.run_bytes(link, links, RUN_WINDOW_S) - len(packet)
            extra = 0
            while queue and extra < budget and len(run) < RUN_MAX_PACKETS:
                following = queue.peek()[0]
                if copies and wants_copy(following, below, dscp):
                    break
                queue.pop()
                run.append(following)
                extra += len(following)
            if extra:
                scheduler.charge(link, extra)
            self._transmit.send(peer, session, link, _DATA, run, now)

    def resend_recent(self, peer: Peer, dead: Link, now: float) -> None:
        """`dead` just went down: what it carried lately that the peer has
        not reported goes out again, each as a DATA_COPY (same counter, so
        the receiver slots it where the original belonged) on the link the
        scheduler picks, past its window if need be.  Lately: within
        `links.RESEND_WINDOW_S`, or since the newest send another link is
        known to have delivered if that is older (what the peer cannot
        see it lacks: no later counter reached it, so no gap shows it; an
        upload's acks, all on the link that died, went unseen until the
        inner TCP's retransmission timer brought a new one).
        Not re-sent: data of an older session (its counters mean nothing in
        the current one), messages that have their one copy already (a
        redundant copy is on its way), anything older; nor what no link
        takes (counted)."""
        delivered = max((link.window.reported_sent_at for link in peer.links.values()
                         if link is not dead), default=float("-inf"))
        runs = dead.recent.latest(min(now - RESEND_WINDOW_S, delivered))
        session = peer.current
        if session is None:
            return
        reported = dead.est.highest_reported
        counts = peer.copies
        for run in runs:
            if run.session is not session:
                continue
            for i, packet in enumerate(run.packets):
                counter = run.first_counter + i
                if run.first_link_seq + i <= reported or not session.can_copy(counter):
                    continue
                # Late already: a full window does not hold it back.
                link = peer.scheduler.pick(peer.links.values(), len(packet), now,
                                           within_window=False)
                if link is None:
                    counts.resend_failed += 1
                    continue
                self._send_copy_on(peer, session, link, counter, packet, now)
                counts.resent += 1

    def repair(self, peer: Peer, session: Session, counters: Sequence[int], now: float,
               overdue: bool = False) -> None:
        """The peer found data messages `counters` of `session` lost (their
        link delivered past them), or `overdue` (its hold for them ran out),
        and holds its bond for them: each a link still keeps
        (`links.KEEP_S`) goes again, once, as a DATA_COPY on the usable link
        with the shortest round trip, past its window; overdue ones on
        another link than the one that carried them, if there is one (that
        link is late or silent now).  Not sent (counted): what is no longer
        kept or had its one copy already."""
        counts = peer.copies
        wanted = sorted({c for c in counters if session.can_copy(c)})
        counts.repair_missing += len(counters) - len(wanted)
        links = usable_links(peer.links.values())
        if not wanted or not links:
            counts.repair_missing += len(wanted)
            return
        found: dict[int, bytes] = {}
        carriers = []
        for link in peer.links.values():
            lost_here = link.recent.find(session, wanted)
            if lost_here:
                found.update(lost_here)
                carriers.append(link)
                if not overdue:  # this link lost them: its window hears of it
                    est = link.est
                    link.window.on_loss(now, est.standing_queue_s(now), link.health.min_rtt_s,
                                        est.delivery_max_bps)
        fastest = shortest_rtt_avoiding(links, carriers if overdue else ())
        assert fastest is not None
        for counter in wanted:
            packet = found.get(counter)
            if packet is None:
                counts.repair_missing += 1
                continue
            self._send_copy_on(peer, session, fastest, counter, packet, now)
            counts.repaired += 1

    def _enqueue(self, peer: Peer, packet: bytes, now: float, bucket: int = -1) -> None:
        """No session or no room on a link yet: hold the packet (bounded:
        the oldest goes when it is full).  `bucket`: its flow's, if known."""
        self._outbox.touch(peer)
        queue = peer.queue
        if queue.full:  # in time, not a fixed count: asked again (see `sendqueue`)
            queue.maxlen = _queue_limit(peer, now)
        if queue.push(packet, now, flow_bucket(packet) if bucket < 0 else bucket):
            self._outbox.drops["queue_full"] += 1
        if peer.current is None:
            self.wake_handshake(peer, now)

    def _skip_or_enqueue(self, peer: Peer, session: Session, packet: bytes,
                         now: float) -> None:
        """A packet of a sparse flow goes past the queue and any full window
        (see `sendqueue`); any other waits in the queue (as does a sparse
        one when no link is up)."""
        bucket = flow_bucket(packet)
        link = None
        if peer.queue.may_skip(bucket, len(packet), now):
            link = peer.scheduler.pick(peer.links.values(), len(packet), now,
                                       within_window=False)
        if link is None:
            self._enqueue(peer, packet, now, bucket)
            return
        # Under load, which link is faster changes quicker than feedback
        # tells: a small packet of a sparse flow goes on two, and arrives by
        # whichever is first (see `sendqueue`), as redundancy's do.
        below = max(self.spec.duplicate_below, SPARSE_COPY_MAX_BYTES)
        if wants_copy(packet, below, self.spec.duplicate_dscp):
            self._send_with_copy(peer, session, link, packet, now)
        else:
            self._transmit.send(peer, session, link, _DATA, [packet], now)

    def _send_with_copy(self, peer: Peer, session: Session, first: Link, packet: bytes,
                        now: float) -> None:
        """A packet wanted twice (redundancy): alone on `first`, then again,
        as a DATA_COPY, on the usable link with the lowest RTT among the
        others (none: no copy)."""
        original = self._transmit.send(peer, session, first, _DATA, [packet], now)[0]
        others = [link for link in usable_links(peer.links.values()) if link is not first]
        if not others:
            return
        link = shortest_rtt(others)
        assert link is not None
        # The copy waits for what the original waits for (its flow's previous
        # message), so whichever arrives first is released as early.
        flow_gap = wire.TRANSPORT_HEADER.unpack_from(original)[7]
        datagram = self._send_copy_on(peer, session, link, session.send_counter - 1, packet,
                                      now, flow_gap)
        peer.copies.copies_sent += 1
        peer.copies.copy_bytes += len(datagram)

    def _send_copy_on(self, peer: Peer, session: Session, link: Link, counter: int,
                      packet: bytes, now: float, flow_gap: int = wire.FLOW_IN_ORDER) -> bytes:
        """Data message `counter` (`packet`) again, as a DATA_COPY on `link`
        (`flow_gap`: the original's; by default in counter order)."""
        datagram = self._transmit.send(peer, session, link, _COPY, [packet], now,
                                       copy_of=counter, flow_gap=flow_gap)[0]
        peer.scheduler.charge(link, len(packet))
        return datagram

    def _oversized(self, peer: Peer, packet: bytes, now: float) -> bool:
        """A packet above the peer's MTU: fragment it, or drop it and answer
        ICMP "too big" on the TUN.  False when it goes as it is (IPv6 up to
        1280 bytes: every IPv6 path must carry that much)."""
        mtu = peer.mtu
        assert mtu is not None
        if packet[0] >> 4 == 6 and len(packet) <= pmtu.MIN_MTU_IPV6:
            return False
        if self.spec.partial_csum:
            # A fragment has no transport header for the far end to complete.
            packet = complete_partial(packet)
        fragments, answer = self.oversize.handle(packet, mtu, now)
        if answer is not None:
            self._outbox.deliveries.append(answer)
        if not fragments:
            self._outbox.drops["too_big"] += 1
        for fragment in fragments:
            self.send_packets((fragment,), now)
        return True


def _queue_limit(peer: Peer, now: float) -> int:
    """The sending edge's limit for `peer` now: what its usable links send,
    at their estimated rates, in the time its queue management lets a
    queue stand before acting (its target and an interval); the least
    without queue management, a session or a usable link."""
    aqm = peer.aqm
    links = usable_links(peer.links.values())
    if aqm is None or peer.current is None or not links:
        return QUEUE_MIN_PACKETS
    hold_s = aqm.acts_after_s(measure_bond(links, now))
    return limit_for(sum(link.est.rate_bps for link in links), hold_s)


def _signal(aqm: CoDel, packet: bytes) -> bytes | None:
    """Queue management signals congestion with `packet`: marked CE if it is
    ECN-capable, else dropped (None); counted either way."""
    marked = mark_ce(packet)
    if marked is None:
        aqm.drops += 1
    else:
        aqm.marks += 1
    return marked


def _verifying(peer: Peer) -> bool:
    """Data started after idleness and no usable link has been heard from
    since (see links): each packet goes on two of them.  Clears
    `peer.verifying` once one has."""
    usable = usable_links(peer.links.values())
    if len(usable) > 1 and all(link.health.suspect for link in usable):
        return True
    peer.verifying = False
    return False


def _no_wake(peer: Peer, now: float) -> None:
    """Nothing to wake (a server does not initiate handshakes)."""
