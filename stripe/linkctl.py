"""The links of each peer: health, feedback, control messages, paths, reloads.

Theory of operation
-------------------
A peer's links live in `Peer.links` (link id -> `links.Link`).  A client's
come from its spec; a server learns each link from the first authenticated
packet on it (`learn_path`), and follows it to a new return address when
the client's NAT or address changes (roaming).  The client tells the server
its link table (names, weights, backup flags) in a LINKS control message
after each handshake, every LINKS_ANNOUNCE_INTERVAL_S and after a reload;
a link missing from it was removed there and is retired here too.

Health (see `links`): each link with a path is probed every
PROBE_INTERVAL_S while the peer has data, rarely (the client) or not at all
(the server) while it is idle; acks, send errors and the peer's feedback
move it between UNKNOWN, UP, STALE and DOWN.  Data after idleness wakes
every link (`wake`): probed at once, suspect until heard from.  When a
link goes down, the data it carried lately is re-sent on the others
(`egress.resend_recent`); when it comes back, its estimates start afresh.

Feedback (see `estimator`): while data arrives, every FEEDBACK_INTERVAL_S
the receiver reports per link what it got; the sender's estimates, and the
stall check that takes a silently dead link out of the schedule, run on it.
When data stops arriving, the receiver reports that nothing came, a few
times backing off from SILENCE_REPORT_INTERVAL_S, within
SILENCE_REPORTS_FOR_S: the sender's stall check needs a report to run,
and a peer whose every packet went to a link that died gets none
otherwise.

The link mask: every transport header announces the links that carried
data lately, so the receiver's loss inference waits for them; a link that
goes quiet after data sends a MARKER, so a gap it might hold is settled
without waiting for the hold deadline (not while packets wait for the
links' windows: then its next data will do).

Retired links (removed by a reload, or by the client's link table) keep
their socket and path for LINK_DRAIN_S so packets in flight still land;
their last message is a final MARKER.

Path MTU (see `pmtu`): with probing on, each link searches its path MTU
with padded probes; the peer's MTU is the smallest any up link carries.
"""

from __future__ import annotations

import logging

from . import control, pmtu, wire
from .egress import Egress
from .estimator import FEEDBACK_INTERVAL_S, queue_delay_s
from .links import IDLE_PROBE_INTERVAL_S, Link, LinkState
from .minrtt import probe_is_clean, refresh_drain, space_drain_probes
from .outbox import Address, Outbox
from .peer import FeedbackClock, Peer
from .scheduler import shortest_rtt_avoiding, usable_links
from .session import Session
from .spec import EndpointSpec, LinkSpec, Role
from .transmit import Transmitter

# Every link is probed every 200 ms and the server answers each probe, so
# a second of silence on all of them means they are all down or the server
# lost the session (a restart): a handshake then costs nothing, and waiting
# longer lets the sending edge's queue (256 packets without a usable link)
# overflow with the flows' retransmissions (3 s made TCP stall 7.5 s across
# a server restart in the chaos bench).
REHANDSHAKE_AFTER_SILENCE_S = 1.0
# While idle: two of the idle links' probes unanswered, and the same second.
REHANDSHAKE_AFTER_IDLE_SILENCE_S = 2 * IDLE_PROBE_INTERVAL_S + REHANDSHAKE_AFTER_SILENCE_S

# Reports of nothing: when the peer's data stops arriving, a report that
# nothing came SILENCE_REPORT_INTERVAL_S after the last report, then after
# twice as long each time, until SILENCE_REPORTS_FOR_S after the last
# data (at 50, 150, 350 and 750 ms).  The peer's stall check runs on
# reports; if all it sent went to one link that just died (a light flow,
# such as the acks of our upload, may all take one link), nothing arrives
# here, so no report would go and the peer would learn only from its
# probes, after `dead_after_s()` (0.45-3 s): past the inner TCP's
# retransmission timeout, whose retransmission's ack then went the same
# way (a blackholed link cost uploads 0.6-1.1 s without goodput).  With
# these, the dead link is out by the first report after its stall limit
# (at least 100 ms; one that long is caught at 150 ms, one of 300 ms, a
# deep queue's, at 350).  Cost: at most four small datagrams per pause in
# the peer's data longer than 50 ms (a ping's, a chat's, a burst's end).
SILENCE_REPORT_INTERVAL_S = 0.05
SILENCE_REPORTS_FOR_S = 1.0

LINKS_ANNOUNCE_INTERVAL_S = 5.0
LINKS_ANNOUNCE_IDLE_INTERVAL_S = 30.0  # while the peer is idle
# A link that left the rotation stays in the mask this long: longer than any
# delay skew between links, so a packet still in flight on it is waited for,
# not written off.
MASK_LINGER_S = 0.3
# A link that carried data and then went quiet this long gets a MARKER, so
# the receiver need not wait for the hold deadline to write off a gap that
# might have been on it (a tail loss); once no packet waits at the sending
# edge for the links' windows (see next_timer).
TAIL_MARKER_DELAY_S = 0.005
# A link removed by a reload (or, on the server, by the client's link table)
# keeps its socket this long: packets already in flight on it, and those the
# peer sends before it hears of the removal, still arrive and are delivered.
LINK_DRAIN_S = 2.0
# A link whose path MTU search is under way is probed at the busy pace even
# while idle: the search counts a try as "too big" only once a small probe
# sent after it came back (see pmtu).
_SEARCHING = (pmtu.SearchState.BASE, pmtu.SearchState.SEARCHING)

# How long the reorder buffer waits for a message it asked the peer for
# again (see reorder): a round trip of the fastest link, which carries the
# request and the copy, as a retransmission timer counts it (the smoothed
# RTT and four deviations: the copy joins that link's queue, which grows
# fastest when losses come, under load), and at least twice the smoothed
# RTT; plus half of it again, at least REPAIR_MARGIN_MIN_S, for the copies
# of a burst of losses, which leave together; never longer than the hold's
# cap (a repair later than that stalls the bond longer than the inner
# transport's own recovery would).  In proportion to the RTT, not a fixed
# margin: on a fast, short link the inner flow's own round trip is a
# millisecond, and a stall of 20 ms makes its TCP retransmit what it holds.
REPAIR_MARGIN_MIN_S = 0.005
REPAIR_WAIT_MAX_S = 0.300


def repair_wait_s(peer: Peer, session: Session) -> float:
    """How long a lost message is waited for (0: the peer does not repair)."""
    if not session.peer_features & control.FEATURE_REPAIR:
        return 0.0
    best = None
    for link in peer.links.values():
        srtt = link.health.srtt_s
        if link.up and srtt is not None:
            wait = max(2 * srtt, srtt + 4 * link.health.rttvar_s) + max(
                srtt / 2, REPAIR_MARGIN_MIN_S)
            best = wait if best is None else min(best, wait)
    if best is None:
        return 0.0
    return min(best, REPAIR_WAIT_MAX_S)


def _silence_report_due(feedback: FeedbackClock) -> float | None:
    """When the next report of nothing goes, if one is owed: no data since
    the last report, and within SILENCE_REPORTS_FOR_S of the last data."""
    if feedback.data_since or feedback.silence_due >= feedback.data_at + SILENCE_REPORTS_FOR_S:
        return None
    return feedback.silence_due


class LinkControl:
    """Link lifecycle and control messages, for every peer.

    `egress` is used for what a link's state change means for data: queued
    packets flushed when a link comes up, recent data re-sent when one dies."""

    def __init__(self, spec: EndpointSpec, outbox: Outbox, transmit: Transmitter,
                 egress: Egress) -> None:
        self.spec = spec
        self._outbox = outbox
        self._transmit = transmit
        self._egress = egress

    # -- timers ------------------------------------------------------------

    @staticmethod
    def silence_allowance(peer: Peer) -> tuple[float, float]:
        """Client: (from when, for how long) the server may say nothing
        before a re-handshake.  Idle links are probed every
        IDLE_PROBE_INTERVAL_S, so the server's answers come that far apart;
        busy, every link is probed at once on waking, and what the server
        said before the wake-up is not silence now."""
        if peer.idle:
            return float("-inf"), REHANDSHAKE_AFTER_IDLE_SILENCE_S
        return peer.woke_at, REHANDSHAKE_AFTER_SILENCE_S

    def next_timer(self, peer: Peer) -> float | None:
        """The earliest time `on_timer` has work for `peer`."""
        due: list[float] = [until for _link, until in peer.retired.values()]
        due += [at for link in peer.links.values() if (at := link.recent.purge_due()) is not None]
        if peer.current is not None:
            if self.spec.role is Role.CLIENT:
                due.append(peer.links_announce_due)
            if not peer.idle:
                due.append(peer.busy_until)
            feedback = peer.feedback
            if feedback.data_since:
                due.append(feedback.due)
            elif (silence := _silence_report_due(feedback)) is not None:
                due.append(silence)
            for link in peer.links.values():
                if link.path is None:
                    continue
                due.append(link.health.next_check_time())
                search = link.pmtu
                if search is not None:
                    at = search.owner_timer(link.last_data_sent, peer.idle)
                    if at is not None:
                        due.append(at)
            # Two or more links in rotation, and no packet waiting at the
            # sending edge: while one waits, a link paused for its window and
            # its next data (a report away) settles a gap as a marker would.
            # On a slow link nearly every pause is that long: a marker after
            # each was 12 % of the datagrams on an ADSL uplink.  The markers
            # due go out once the queue is empty (a tail).
            if peer.link_mask & (peer.link_mask - 1) and not peer.queue:
                due.extend(link.last_data_sent + TAIL_MARKER_DELAY_S
                           for link in peer.links.values() if link.marker_due)
        return min(due, default=None)

    def on_timer(self, peer: Peer, now: float) -> None:
        self._expire_retired(peer, now)
        for link in peer.links.values():
            link.recent.purge(now)
        session = peer.current
        if session is None:
            return
        self.refresh_mask(peer, now)
        if not peer.idle and now >= peer.busy_until:
            peer.idle = True
            peer.verifying = False
        several = bool(peer.link_mask & (peer.link_mask - 1))
        send_control = self._transmit.send_control
        for link in list(peer.links.values()):
            if link.health.idle is not peer.idle:
                link.health.set_idle(peer.idle, now)
            if link.path is None:
                continue
            if (link.marker_due and now >= link.last_data_sent + TAIL_MARKER_DELAY_S
                    and not peer.queue):
                link.marker_due = False
                if several and link.up:
                    send_control(peer, session, link, control.Marker(), now)
            self._link_changed(peer, link, now, link.health.update(now))
            if link.window.expire(now, link.health.srtt_s):
                self._egress.flush_queue(peer, now)
            self._refresh_min_rtt(peer, link, now)
            if link.health.probe_due(now):
                send_control(peer, session, link, _probe(link, now), now)
            if self.spec.pmtu_probe:
                self._pmtu_poll(peer, session, link, now)
                search = link.pmtu
                link.health.set_keep_busy(search is not None and (
                    search.size is not None or search.state in _SEARCHING))
        feedback = peer.feedback
        if feedback.data_since and now >= feedback.due:
            feedback.data_since = False
            feedback.due = now + FEEDBACK_INTERVAL_S
            feedback.silence_interval = SILENCE_REPORT_INTERVAL_S
            feedback.silence_due = now + SILENCE_REPORT_INTERVAL_S
            self._send_feedback(peer, session, now)
        elif (silence := _silence_report_due(feedback)) is not None and now >= silence:
            # (set by the report of data that comes before any of these)
            feedback.silence_interval *= 2
            feedback.silence_due = now + feedback.silence_interval
            self._send_feedback(peer, session, now)
        if now >= peer.links_announce_due:
            peer.links_announce_due = now + (
                LINKS_ANNOUNCE_IDLE_INTERVAL_S if peer.idle else LINKS_ANNOUNCE_INTERVAL_S)
            if self.spec.role is Role.CLIENT:
                self.announce_links(peer, session, now)

    def _refresh_min_rtt(self, peer: Peer, link: Link, now: float) -> None:
        """Start or end a drain of `link` to measure its minimum RTT again
        (see minrtt); a drain that ends gives the link its room back."""
        # Another link out of the schedule (a fade, an outage, a Starlink
        # step): the bond is short already, and a drain would take more.
        short = any(not other.up for other in peer.links.values() if other is not link)
        if refresh_drain(link, now, hold=short or peer.idle):
            self._egress.flush_queue(peer, now)

    def data_seen(self, peer: Peer, now: float) -> None:
        """Data came from the peer: wake it if idle, keep it busy."""
        if peer.idle:
            self.wake(peer, now)
        else:
            peer.keep_busy(now)

    def wake(self, peer: Peer, now: float) -> None:
        """Data to or from an idle peer: it is busy again, and every link not
        heard from at this moment is probed now (on the timer, after the
        data) and suspect until heard from (see links); with two or more
        links up and suspect, data goes on two of them until then (see
        egress)."""
        peer.idle = False
        peer.woke_at = now
        peer.keep_busy(now)
        for link in peer.links.values():
            # The probes go on the timer, right after the data that woke us.
            link.health.set_idle(False, now)
            link.woke_seq = link.next_link_seq
        peer.verifying = sum(link.health.suspect for link in usable_links(
            list(peer.links.values()))) > 1
        self.refresh_mask(peer, now)

    # -- paths and the link table -----------------------------------------

    def learn_path(self, peer: Peer, link_id: int, sock: int, addr: Address, now: float) -> Link:
        """The link an authenticated datagram came on (created on a server's
        first packet of it); a server follows the client to `addr`."""
        link = peer.links.get(link_id)
        if link is None:
            draining = peer.retired.get(link_id)
            if draining is not None:
                return draining[0]  # a removed link's packets in flight
            link = peer.links[link_id] = self._server_link(peer, link_id, f"link{link_id}", None)
        if self.spec.role is Role.SERVER and link.path != (sock, addr):
            if link.path is not None:
                self._outbox.event(logging.INFO,
                                   f"link {link.name}: peer moved to {addr[0]}:{addr[1]}")
            link.path = (sock, addr)
            link.pmtu = None  # a new path: its MTU is to be found again
        return link

    @staticmethod
    def _server_link(peer: Peer, link_id: int, name: str,
                     path: tuple[int, Address] | None) -> Link:
        """A link the server learns: it does not probe it while idle (the
        client's probes are its evidence, see links)."""
        link = Link(link_id, name, path=path)
        link.health.idle_probes = False
        link.health.idle = peer.idle
        return link

    def on_established(self, peer: Peer, session: Session, link_id: int, sent_at: float,
                       now: float) -> None:
        """Client: a handshake response came on `link_id` for an initiation
        sent at `sent_at`.  It proves the link works both ways (an RTT
        sample); the server hears our link table, and every other link is
        probed now rather than at the next probe round."""
        link = peer.links.get(link_id)
        if link is not None:
            probe_id = link.health.start_probe(sent_at)
            self._link_changed(peer, link, now, link.health.on_ack(probe_id, now))
        self.announce_links(peer, session, now)
        peer.links_announce_due = now + LINKS_ANNOUNCE_INTERVAL_S
        for other in peer.links.values():
            if other.health.state is not LinkState.UP and other.path is not None:
                self._transmit.send_control(peer, session, other, _probe(other, now), now)

    def announce_links(self, peer: Peer, session: Session, now: float) -> None:
        """Client: our link table, to the server, on a link that is up."""
        infos = tuple(control.LinkInfo(x.link_id, x.name, x.weight, x.backup)
                      for x in peer.links.values())
        target = next((x for x in peer.links.values() if x.up), None)
        if target is None:
            target = next(iter(peer.links.values()), None)
        if target is not None and target.path is not None:
            self._transmit.send_control(peer, session, target, control.Links(infos), now)

    def relink(self, peer: Peer, links: tuple[LinkSpec, ...], removed: set[int],
               now: float) -> None:
        """Client, on reload: make the peer's links those of `links`."""
        for link_id in removed:
            self._retire(peer, peer.links.pop(link_id), now)
        session = peer.current
        table: dict[int, Link] = {}
        for ls in links:
            link = peer.links.get(ls.link_id)
            if link is None:
                link = client_link(ls)
                if session is not None:  # first contact now, not at the next probe round
                    self._transmit.send_control(peer, session, link, _probe(link, now), now)
            link.weight, link.backup = ls.weight, ls.backup
            table[ls.link_id] = link
        peer.links = table
        self.refresh_mask(peer, now)
        if session is not None:
            self.announce_links(peer, session, now)
            peer.links_announce_due = now + LINKS_ANNOUNCE_INTERVAL_S

    def refresh_mask(self, peer: Peer, now: float) -> None:
        """The link mask announced in every packet (see reorder): the usable
        links that carried data within MASK_LINGER_S."""
        mask = 0
        for link in usable_links(list(peer.links.values())):
            if link.link_id < wire.MASKABLE_LINKS and now - link.last_data_sent < MASK_LINGER_S:
                mask |= 1 << link.link_id
        peer.link_mask = mask

    def _apply_link_table(
        self, peer: Peer, infos: tuple[control.LinkInfo, ...], now: float
    ) -> None:
        """Server: the client's link table.  A link it no longer lists was
        removed by a reload there: it leaves our schedule too."""
        listed = {info.link_id for info in infos}
        for link_id in [x for x in peer.links if x not in listed]:
            link = peer.links.pop(link_id)
            self._outbox.event(logging.INFO, f"link {link.name} removed by the client")
            self._retire(peer, link, now)
        for info in infos:
            known = peer.links.get(info.link_id)
            if known is None:
                # New, or an id used again after a removal: start afresh,
                # keeping the return address its probes may have taught us.
                draining = peer.retired.pop(info.link_id, None)
                known = peer.links[info.link_id] = self._server_link(
                    peer, info.link_id, info.name, None if draining is None else draining[0].path)
            known.name, known.weight, known.backup = info.name, info.weight, info.backup
        self.refresh_mask(peer, now)

    def _retire(self, peer: Peer, link: Link, now: float) -> None:
        """`link` (already out of `peer.links`) leaves for good.  Its last
        message is a final MARKER: once the peer has it, nothing older is in
        flight there and its reorder buffer stops waiting on the link."""
        peer.scheduler.forget(link.link_id)
        session = peer.current
        if session is not None and link.path is not None:
            self._transmit.send_control(peer, session, link, control.Marker(final=True), now)
        peer.retired[link.link_id] = (link, now + LINK_DRAIN_S)
        self.refresh_mask(peer, now)
        self.refresh_mtu(peer)  # the link may have been the narrowest

    def _expire_retired(self, peer: Peer, now: float) -> None:
        for link_id, (link, until) in list(peer.retired.items()):
            if now >= until:
                del peer.retired[link_id]
                if self.spec.role is Role.CLIENT and link.path is not None:
                    self._outbox.closed_sockets.append(link.path[0])

    # -- control messages ---------------------------------------------------

    def handle_control(self, peer: Peer, session: Session, link: Link, counter: int,
                       plaintext: bytes, now: float) -> None:
        """An authenticated CONTROL message on `link` (control counter `counter`)."""
        try:
            message, next_data_counter, features = control.decode_with_features(plaintext)
        except control.ControlError as exc:
            self._outbox.drops[f"control_{exc}"] += 1
            return
        session.peer_features |= features
        session.reorder.note_progress(link.link_id, next_data_counter, now)
        if isinstance(message, control.Marker) and message.final:
            session.reorder.forget_link(link.link_id, now)
        if peer.links.get(link.link_id) is not link and isinstance(
            message, control.Probe | control.ProbeAck
        ):
            return  # a removed link, draining: its health no longer matters
        send_control = self._transmit.send_control
        if isinstance(message, control.Probe):
            send_control(peer, session, link, control.ProbeAck(message.probe_id), now)
            if message.up_srtt_us is not None:
                self._link_changed(peer, link, now,
                                   link.health.on_peer_up(now, message.up_srtt_us / 1e6))
                if link.up:
                    self._egress.flush_queue(peer, now)
            if link.health.state is LinkState.UNKNOWN and not link.health.outstanding:
                # First contact on this link: probe back now rather than in 200 ms.
                send_control(peer, session, link, _probe(link, now), now)
        elif isinstance(message, control.ProbeAck):
            self._link_changed(peer, link, now, link.health.on_ack(message.probe_id, now))
            if link.health.min_rtt.draining:
                self._refresh_min_rtt(peer, link, now)
            if link.up:
                self._egress.flush_queue(peer, now)
        elif isinstance(message, control.Feedback):
            self._on_feedback(peer, message, now)
        elif isinstance(message, control.Repair):
            self._egress.repair(peer, session, message.counters, now, message.overdue)
        elif isinstance(message, control.PmtuProbe):
            send_control(peer, session, link, control.PmtuAck(message.probe_id), now)
        elif isinstance(message, control.PmtuAck):
            if link.pmtu is not None:
                link.pmtu.on_ack(message.probe_id, now)
                self._pmtu_published(peer, link)
        elif (isinstance(message, control.Links) and self.spec.role is Role.SERVER
              and session is peer.current and counter > peer.links_seen):
            peer.links_seen = counter
            self._apply_link_table(peer, message.links, now)

    def _on_feedback(self, peer: Peer, feedback: control.Feedback, now: float) -> None:
        sent_at = None if feedback.clock_us is None else feedback.clock_us / 1e6
        # Each link's queue allowance is in proportion to its rate against
        # the fastest's (see window).
        fastest = max((other.est.delivery_max_bps for other in peer.links.values()
                       if other.up), default=0.0)
        for report in feedback.reports:
            link = peer.links.get(report.link_id)
            if link is None:
                continue
            # Widen the 32-bit sequence to our unbounded per-link counter.
            last = link.next_link_seq - 1
            highest = last - ((last - report.highest_link_seq) & 0xFFFFFFFF)
            if highest > link.est.highest_reported and highest >= link.woke_seq:
                # Data gets through: alive, even if its probes drown (but
                # only what was sent since the link woke from idle counts:
                # the idle probes it reports may be older than its death).
                self._link_changed(peer, link, now, link.health.on_progress(
                    now, queue_delay_s(report.owd_us, report.owd_min_us)))
            est, window = link.est, link.window
            progressed = est.on_report(report.rx_packets, report.rx_bytes, highest,
                                       report.owd_us, report.owd_min_us, now,
                                       link.health.srtt_s, report.owd_low_us, window.used,
                                       sent_at)
            window.on_report(highest, now, progressed, est.standing_queue_s(now),
                             link.health.min_rtt_s, est.delivery_max_bps, est.delivery_bps,
                             est.delivery_spread,
                             est.delivery_max_bps / fastest if fastest > 0 else 1.0)
        # The peer is alive (it reports): a link whose data it never saw is dead.
        for link in peer.links.values():
            if link.up and link.est.stalled(now, link.health.least_rtt_s,
                                            link.window.oldest_unacked()):
                link.window.forget()
                self._link_changed(peer, link, now, link.health.on_stall(now))
        self._egress.flush_queue(peer, now)  # the reports opened the links' windows

    def request_repair(self, peer: Peer, session: Session, now: float) -> None:
        """Ask the peer again for the data messages `session`'s reorder
        buffer found lost or overdue (see reorder), over the link with the
        shortest round trip (for overdue ones, not the link they wait on: it
        is late or silent): the bond waits for the answer."""
        reorder = session.reorder
        up = [x for x in peer.links.values() if x.up and x.path is not None]
        for wanted, overdue in ((reorder.repair_wanted, False), (reorder.repair_overdue, True)):
            counters = tuple(wanted)
            wanted.clear()
            waited_on = [x for x in up if overdue and x.link_id == reorder.overdue_link]
            target = shortest_rtt_avoiding(up, waited_on)
            if target is None:
                continue  # nothing reaches the peer: the gaps wait out the repair time
            step = control.MAX_REPAIR_COUNTERS
            for i in range(0, len(counters), step):
                self._transmit.send_control(
                    peer, session, target, control.Repair(counters[i:i + step], overdue), now)

    def _send_feedback(self, peer: Peer, session: Session, now: float) -> None:
        reports = []
        for link in peer.links.values():
            owd = session.skew.take_owd_us(link.link_id)
            if owd is None or link.rx_highest_link_seq < 0:
                continue
            # What the peer sends us on this link (probe acks, reports) waits
            # behind this queue: the link's health counts it (see links).
            link.health.reverse_queue_s = queue_delay_s(owd[0], owd[1])
            reports.append(control.LinkReport(
                link.link_id, link.counters.rx_packets, link.counters.rx_bytes,
                link.rx_highest_link_seq, owd[0], owd[1], owd[2]))
        # Over a link that just delivered data to us: the fastest link by
        # probes may be the one that has just been blackholed, and feedback
        # lost there would also hide that link's stall from the peer.  A
        # report of nothing (none delivered) over the link last seen to
        # reach the peer (its latest ack or report of our data).
        up = [x for x in peer.links.values() if x.up]
        delivering = [x for x in up if x.counters.rx_packets > x.rx_packets_at_feedback]
        for link in peer.links.values():
            link.rx_packets_at_feedback = link.counters.rx_packets
        target: Link | None
        if delivering:
            target = min(delivering, key=lambda x: x.health.srtt_s or 0.0)
        else:
            target = max(up, key=lambda x: x.health.last_ack_time, default=None)
        if target is not None:
            self._transmit.send_control(peer, session, target, control.Feedback(
                tuple(reports), max(round(now * 1e6), 0)), now)

    # -- health -------------------------------------------------------------

    def send_failed(self, peers: list[Peer], sock: int, addr: Address, now: float) -> None:
        """The OS refused a send on (sock, addr): its link is down now."""
        for peer in peers:
            for link in peer.links.values():
                if link.path == (sock, addr):
                    link.counters.send_errors += 1
                    self._link_changed(peer, link, now, link.health.on_send_error(now))

    def _link_changed(
        self, peer: Peer, link: Link, now: float, new_state: LinkState | None
    ) -> None:
        if new_state is None:
            return
        back_from_down = new_state is LinkState.UP and link.health.previous is LinkState.DOWN
        if back_from_down:
            # Probes sent while down were never reported; rates are stale.
            link.est.restart()
            link.window.restart()
            if link.pmtu is not None:
                link.pmtu.confirm_soon(now)  # the path may have changed while down
        self.refresh_mask(peer, now)
        if new_state in (LinkState.DOWN, LinkState.STALE):
            # What it carried lately and the peer did not report goes out
            # again on the others (only once per message: a link that
            # stalls and then dies re-sends nothing twice).
            self._egress.resend_recent(peer, link, now)
            self._egress.flush_queue(peer, now)
        self.refresh_mtu(peer)
        rtt = link.health.srtt_s
        detail = f" (rtt {rtt * 1000:.1f} ms)" if rtt is not None else ""
        if new_state is LinkState.STALE:
            detail = ": data unanswered beyond its round trip, out of the schedule until it " \
                     "delivers again"
        level = logging.WARNING if new_state is LinkState.DOWN else logging.INFO
        self._outbox.event(level, f"link {link.name} is {new_state.value}{detail}")

    # -- path MTU (see pmtu) --------------------------------------------------

    def datagram_too_big(self, peers: list[Peer], sock: int, addr: Address, size: int,
                         now: float) -> None:
        """The OS refused to send a `size`-byte datagram on (sock, addr)."""
        for peer in peers:
            for link in peer.links.values():
                if link.path == (sock, addr) and link.pmtu is not None:
                    link.pmtu.on_too_big(size + _udp_ip_header_size(link), now)
                    self._pmtu_published(peer, link)

    def _pmtu_poll(self, peer: Peer, session: Session, link: Link, now: float) -> None:
        search = link.pmtu
        if search is not None and search.resting(link.last_data_sent):
            return  # confirmed (or a larger size looked for) once data comes
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
            payload = control.encode_pmtu_probe(
                probe_id, size - _udp_ip_header_size(link) - wire.TRANSPORT_OVERHEAD,
                session.send_counter)
            self._transmit.send(peer, session, link, wire.MessageType.CONTROL, [payload], now,
                                reuse_seq=True)
        elif link.est.loss > pmtu.LOSS_SIGNAL:
            search.confirm_soon(now)
        self._pmtu_published(peer, link)

    def _pmtu_published(self, peer: Peer, link: Link) -> None:
        notes = [] if link.pmtu is None else link.pmtu.take_notes()
        for note in notes:
            self._outbox.event(logging.INFO, f"link {link.name}: {note}")
        if notes:
            self.refresh_mtu(peer)

    def refresh_mtu(self, peer: Peer) -> None:
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
            self._outbox.event(
                logging.INFO if mtu == tunnel_mtu else logging.WARNING,
                f"tunnel mtu {mtu} (TUN {tunnel_mtu})" + (
                    "" if mtu == tunnel_mtu else
                    ": larger packets get ICMP too big or are fragmented"))


def client_link(spec: LinkSpec) -> Link:
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


def _probe(link: Link, now: float) -> control.Probe:
    """A probe of `link` sent now.  It says the link works both ways (see
    control: an idle server learns its links' state from the client's
    probes) when we hold it up and our previous probe came back: fresh
    evidence, so a link that just broke one way is not vouched for by
    probes sent after the break."""
    health = link.health
    vouch = health.state is LinkState.UP and health.answered() and health.probes_acked > 0
    probe_id = health.start_probe(now, probe_is_clean(link, now))
    space_drain_probes(link, now)
    srtt = health.srtt_s
    if not vouch or srtt is None:
        return control.Probe(probe_id)
    return control.Probe(probe_id, min(int(srtt * 1e6), 2**32 - 1))
