"""From the links to the TUN: the one parsing boundary for untrusted datagrams.

Every datagram from the network enters here, alone or in a train read at
once from one source (a GRO train), and takes the same path:

1. the source guard (`guard`): a source that sent nothing but junk lately
   is blocked, its transport datagrams dropped unread (its handshake
   messages pass, and one that authenticates lifts the block);
2. the type byte: handshake messages go to `sessions`; anything that is
   not a transport message (DATA, CONTROL, DATA_COPY) is dropped;
3. the transport header (fixed layout, see `wire`): reserved mask bits
   must be zero, the receiver index must name a live session;
4. `Session.open`: counter range, replay window, AEAD; only now is the
   datagram trusted;
5. the link it came on (the server learns or follows the return path),
   its per-link counters; a NEXT session becomes CURRENT on its first
   packet;
6. CONTROL to `linkctl`; DATA and DATA_COPY: the inner packet is checked
   (a whole IPv4/IPv6 packet, its source among the peer's allowed_ips)
   and pushed into the session's reorder buffer, which releases packets in
   counter order to the outbox (those it finds lost, it asks the peer for
   again: a REPAIR message, see `reorder`).

Each failure drops the datagram and counts a reason in `Outbox.drops`; no
state changes before step 4.  One delay sample per link per train: its
datagrams arrived together, so the newest one carries the news.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import routing, wire
from .estimator import FIRST_FEEDBACK_DELAY_S
from .guard import SourceGuard, source_key
from .linkctl import LinkControl, repair_wait_s
from .links import Link
from .outbox import Address, Outbox
from .peer import Peer
from .reorder import HOLD_MAX_S
from .session import DecryptError, Session
from .sessions import HANDSHAKE_TYPES, Sessions
from .spec import EndpointSpec

# The reorder hold is derived again from the measured skew at most this often.
HOLD_UPDATE_INTERVAL_S = 0.01
# The addresses of live links, which the guard never blocks, are gathered
# again at most this often (only when the guard is about to block one).
LIVE_PATHS_REFRESH_S = 1.0

_CONTROL = wire.MessageType.CONTROL.value
_COPY = wire.MessageType.DATA_COPY.value
_TRANSPORT_TYPES = frozenset((wire.MessageType.DATA.value, _CONTROL, _COPY))


@dataclass(slots=True)
class _LinkRun:
    """The datagrams of a train on one (session, link): the link, and the
    newest one's send time, the link's one delay sample for the train."""

    session: Session
    link: Link
    sent_us: int = 0


class Ingress:
    """Datagrams to TUN packets, for every peer.  `routes` maps inner
    addresses to peers (the spoofed-source check); the endpoint replaces it
    when peers or their allowed_ips change."""

    def __init__(self, spec: EndpointSpec, outbox: Outbox, sessions: Sessions,
                 links: LinkControl, routes: routing.AllowedIPs[Peer]) -> None:
        self.spec = spec
        self.routes = routes
        self.guard = SourceGuard()
        self._outbox = outbox
        self._sessions = sessions
        self._links = links
        self._live_paths: frozenset[str] = frozenset()
        self._live_paths_due = float("-inf")
        self.blocked_handshakes = 0  # handshake messages read from blocked sources

    def receive_datagrams(self, sock: int, datagrams: Sequence[bytes], addr: Address,
                          now: float) -> None:
        """Datagrams from one source, read at once on socket `sock`."""
        host = addr[0]
        guard, drops = self.guard, self._outbox.drops
        if guard.blocked(host, now):
            datagrams = self._while_blocked(sock, datagrams, addr, now)
            if not datagrams:
                return
        junk = 0
        authenticated = False
        unpack = wire.TRANSPORT_HEADER.unpack_from
        table = self._sessions.table
        runs: dict[tuple[int, int], _LinkRun] = {}
        touched_sessions: list[tuple[Peer, Session]] = []
        touched = self._outbox.touched
        # A train is nearly always one session's datagrams on one link: what
        # depends only on those (the lookups, the peer's bookkeeping) is done
        # when they change, not per datagram.  -1: nothing authenticated yet,
        # or a handshake or control message may have changed what we know.
        current = current_link_id = -1
        peer: Peer | None = None
        session: Session | None = None
        run: _LinkRun | None = None
        data_noted = False
        for data in datagrams:
            if len(data) < wire.TRANSPORT_OVERHEAD or data[0] not in _TRANSPORT_TYPES:
                outcome = self._receive_handshake(sock, data, addr, now)
                if outcome is None:
                    junk += 1
                authenticated = authenticated or bool(outcome)
                current = -1  # a handshake may have replaced sessions
                continue
            mtype, link_id, link_mask, receiver, counter, link_seq, sent_us, gap = unpack(data)
            if link_mask & ~wire.LINK_MASK_BITS:
                drops["bad_flags"] += 1
                junk += 1
                continue
            # Unknown sessions and duplicates count against the source too:
            # from an address that authenticated lately (a real client
            # talking to a server that restarted, a redundant copy arriving
            # second) they cost nothing, since the guard trusts it, and a
            # client of a restarted server that does get blocked handshakes
            # through the block and so lifts it (see guard).
            if receiver == current:
                owner, opener = peer, session
            else:
                found = table.get(receiver)
                if found is None:
                    drops["unknown_session"] += 1
                    junk += 1
                    continue
                owner, opener = found
            assert owner is not None and opener is not None
            try:
                plaintext = opener.open(mtype, counter, data, now)
            except DecryptError as exc:
                drops[exc.reason] += 1
                junk += 1
                continue
            # Authenticated from here on.
            authenticated = True
            if receiver != current:
                peer, session = owner, opener
                current, current_link_id, data_noted = receiver, -1, False
                touched[id(peer)] = peer
                if session is peer.next_session:
                    self._sessions.promote(peer, session, now)
                if not touched_sessions or touched_sessions[-1][1] is not session:
                    touched_sessions.append((peer, session))
            assert peer is not None and session is not None
            if link_id != current_link_id:
                key = (receiver, link_id)
                run = runs.get(key)
                if run is None:
                    run = runs[key] = _LinkRun(
                        session, self._links.learn_path(peer, link_id, sock, addr, now))
                current_link_id = link_id
            assert run is not None
            link = run.link
            link.note_received(len(data), link_seq, now)
            run.sent_us = sent_us
            if mtype == _CONTROL:
                self._links.handle_control(peer, session, link, counter, plaintext, now)
                current = -1  # it may have changed the peer's links or sessions
            else:
                if not data_noted:
                    self._data_arrived(peer, session, now)
                    data_noted = True
                self._accept_data(peer, session, link, link_mask, counter, gap, plaintext,
                                  now, mtype == _COPY)
        for newest in runs.values():
            newest.session.skew.sample(newest.link.link_id, newest.sent_us, now)
        for touched_peer, touched_session in touched_sessions:
            self.drain(touched_peer, touched_session, now)
        if authenticated:
            guard.succeeded(host, now)
        if junk:
            guard.failed(host, now, junk, self._on_live_path)

    def drain(self, peer: Peer, session: Session, now: float) -> None:
        """What `session`'s reorder buffer released goes to the TUN, and
        what it found lost is asked of the peer again."""
        reorder = session.reorder
        if reorder.ready:
            self._outbox.deliveries.extend(reorder.ready)
            reorder.ready.clear()
        if reorder.repair_wanted or reorder.repair_overdue:
            self._links.request_repair(peer, session, now)

    def _while_blocked(self, sock: int, datagrams: Sequence[bytes], addr: Address,
                       now: float) -> Sequence[bytes]:
        """Datagrams from a blocked source: handshake messages are handled
        (never blocked, see guard), the rest dropped unread, until a handshake
        authenticates: that clears the block, and what follows it in the
        train is returned for the usual path.  Junk (what does not name a
        session we have, a handshake that counts as junk) renews the
        block when it ends (see guard): a real
        client's datagrams (behind a spoofed address, or naming the
        session of a server that restarted) only until its handshake."""
        drops = self._outbox.drops
        table = self._sessions.table
        junk = False
        for i, data in enumerate(datagrams):
            if data and data[0] in HANDSHAKE_TYPES:
                self.blocked_handshakes += 1
                outcome = self._receive_handshake(sock, data, addr, now)
                if outcome:
                    self.guard.succeeded(addr[0], now)
                    return datagrams[i + 1:]
                junk = junk or outcome is None
                continue
            drops["blocked_source"] += 1
            junk = junk or not (len(data) >= wire.TRANSPORT_OVERHEAD
                                and data[0] in _TRANSPORT_TYPES
                                and wire.TRANSPORT_HEADER.unpack_from(data)[3] in table)
        if junk:
            self.guard.still_sending(addr[0])
        return ()

    def _on_live_path(self, key: str, now: float) -> bool:
        """Is source `key` (see guard.source_key) where a link of a peer
        with a live session leads?  Such a source is never blocked.  Asked
        only when the guard would block; the answer comes from a set of those
        sources made again at most every LIVE_PATHS_REFRESH_S (a path learnt
        since then has just authenticated, so the guard trusts it anyway)."""
        if now >= self._live_paths_due:
            self._live_paths_due = now + LIVE_PATHS_REFRESH_S
            self._live_paths = frozenset(
                source_key(link.path[1][0]) for peer in self._sessions.peers
                if peer.current is not None or peer.next_session is not None
                for link in peer.links.values() if link.path is not None)
        return key in self._live_paths

    def _receive_handshake(self, sock: int, data: bytes, addr: Address,
                           now: float) -> bool | None:
        """A datagram that is not a well-formed transport message: a
        handshake message (True if it authenticated) or junk (None, counted)."""
        try:
            if wire.peek_type(data).value not in HANDSHAKE_TYPES:
                raise wire.WireError("short")  # a transport type without room for its header
            return self._sessions.receive(sock, data, addr, now,
                                          self.guard.trusted(addr[0], now))
        except wire.WireError as exc:
            self._outbox.drops[exc.reason] += 1
            return None

    def _data_arrived(self, peer: Peer, session: Session, now: float) -> None:
        """Authenticated data from `peer` under `session` (once per train:
        nothing here changes within the same `now`): the peer is busy, owes
        feedback, and the reorder hold follows the measured skew."""
        self._links.data_seen(peer, now)
        feedback = peer.feedback
        feedback.data_at = now
        if not feedback.data_since:
            feedback.data_since = True
            feedback.due = max(feedback.due, now + FIRST_FEEDBACK_DELAY_S)
        if now >= session.hold_update_due:
            session.hold_update_due = now + HOLD_UPDATE_INTERVAL_S
            reorder = session.reorder
            if self.spec.reorder_hold_s is None:
                reorder.hold_s = min(session.skew.hold_s(now) + reorder.late_bonus(now),
                                     HOLD_MAX_S)
            reorder.repair_wait_s = repair_wait_s(peer, session) if self.spec.loss_repair else 0.0

    def _accept_data(self, peer: Peer, session: Session, link: Link, link_mask: int,
                     counter: int, flow_gap: int, plaintext: bytes, now: float,
                     copy: bool) -> None:
        """An authenticated data message (`copy`: a DATA_COPY, redundancy, a
        re-send or a repair, which came before its original): check the
        inner packet, reorder it (behind the previous message of its flow,
        `flow_gap` counters back: see `flows`)."""
        payload: bytes | None = None  # an invalid packet still fills its reorder slot
        if not wire.inner_packet_valid(plaintext):
            self._outbox.drops["bad_inner_packet"] += 1
        else:
            source = routing.source(plaintext)
            if source == peer.last_good_source or self.routes.lookup(source) is peer:
                peer.last_good_source = source  # most packets: same source as the last one
                payload = plaintext
            else:
                self._outbox.drops["spoofed_source"] += 1  # not one of this peer's addresses
        if session.reorder.push(counter, payload, link.link_id, now, link_mask, copy, flow_gap):
            if copy:
                peer.copies.copies_first += 1
        elif not copy:
            link.counters.late_packets += 1  # its link held the bond up
