"""Handshakes and the life of every session, for every peer.

Theory of operation
-------------------
The client initiates (Noise IKpsk2, see `handshake`) on one link, retries on
the next link with backoff, rekeys every REKEY_AFTER_S and initiates again
when the server has said nothing for longer than its probes' cadence allows
(`LinkControl.silence_allowance`: it may have restarted and lost its
state).  The server answers initiations from configured peers; under load
it first asks for a cookie (see `cookie`).

A peer holds at most one session in each slot: PENDING (the client's
initiation in flight: keys not known yet), NEXT (the server's new session
before the client used it), CURRENT (what we send with) and PREVIOUS (the
one before, still accepted while packets sealed under it are in flight).
GONE is a session whose index left the table: a packet for it counts as
`unknown_session`.  Every move between slots is one row here:

    slot      event                                          slot afterwards
    --        client: handshake due (start, retry, rekey,    PENDING (a new index;
              silence, a packet waiting)                     an older PENDING is GONE)
    PENDING   client: its response authenticated             CURRENT
    --        server: initiation accepted, no CURRENT        CURRENT
    --        server: initiation accepted, a CURRENT         NEXT (an older NEXT is GONE)
    NEXT      server: first authenticated packet under it    CURRENT
    CURRENT   a new session becomes CURRENT                  PREVIOUS (an older PREVIOUS
                                                             is GONE)
    PREVIOUS  PREVIOUS_SESSION_KEEP_S without a packet,      GONE
              or REJECT_AFTER_S old
    CURRENT   REJECT_AFTER_S old (no rekey came)             GONE
    NEXT      REJECT_AFTER_S old (the client never used it)  GONE
    any       the peer is removed by a reload                GONE

As WireGuard does, the server keeps sending under CURRENT until the client
proves it has the new keys (its first packet under NEXT): a response lost
on the way must not leave the server sending under keys the client never
got.

Expiry runs on a timer: a session that goes GONE takes its keys with it
whether or not traffic comes.

Nothing changes before a message authenticates: an initiation moves state
only after its Noise message verified and its timestamp grew past the
peer's last one (a replayed initiation cannot reset a session).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import steering, wire
from .cookie import (
    CookieChecker,
    CookieJar,
    CookieReplyBudget,
    HandshakeLimiter,
    reply_receiver_index,
)
from .egress import Egress
from .guard import source_key
from .handshake import (
    AcceptedInitiation,
    PendingInitiation,
    UnknownPeer,
    read_initiation,
    write_response,
)
from .linkctl import LinkControl
from .noise import NoiseError, public_from_private
from .outbox import Address, Outbox
from .peer import Peer
from .session import REJECT_AFTER_S, REKEY_AFTER_S, Session
from .spec import EndpointSpec, PeerSpec, Role

HANDSHAKE_RETRY_S = 1.0
HANDSHAKE_RETRY_MAX_S = 8.0
PREVIOUS_SESSION_KEEP_S = 10.0

_INIT = wire.MessageType.HANDSHAKE_INIT.value
_RESP = wire.MessageType.HANDSHAKE_RESP.value
_COOKIE_REPLY = wire.MessageType.COOKIE_REPLY.value
HANDSHAKE_TYPES = frozenset((_INIT, _RESP, _COOKIE_REPLY))


class Sessions:
    """The session table (receiver index -> peer and session) and the
    handshakes that fill it.

    `table` is read directly by `ingress` on every datagram; only this class
    writes it.  Indices are random 32-bit numbers (`random_index`), unique
    among the live sessions."""

    def __init__(self, spec: EndpointSpec, outbox: Outbox, links: LinkControl, egress: Egress,
                 wall_offset: float, random_index: Callable[[], int],
                 random_bytes: Callable[[int], bytes]) -> None:
        self.spec = spec
        self.table: dict[int, tuple[Peer, Session]] = {}
        self.peers: list[Peer] = []
        self._outbox = outbox
        self._links = links
        self._egress = egress
        self._wall_offset = wall_offset
        self._random_index = random_index
        self._peer_by_key: dict[bytes, Peer] = {}
        self._psk_for: dict[bytes, bytes | None] = {}
        public_key = public_from_private(spec.private_key)
        self._mac1_key = wire.mac1_key(public_key)
        self._limiter = HandshakeLimiter()
        self._cookies = CookieChecker(public_key, random_bytes)
        self._reply_budget = CookieReplyBudget()
        self._random_bytes = random_bytes

    # -- peers ---------------------------------------------------------------

    def add_peer(self, peer_spec: PeerSpec, peer: Peer) -> None:
        peer.handshake.cookie_jar = CookieJar(peer_spec.public_key)
        self.peers.append(peer)
        self._peer_by_key[peer_spec.public_key] = peer
        self._psk_for[peer_spec.public_key] = peer_spec.preshared_key

    def peer_for(self, public_key: bytes) -> Peer:
        return self._peer_by_key[public_key]

    def respec_peer(self, peer: Peer, peer_spec: PeerSpec) -> None:
        """A reload kept the peer with a new spec (allowed_ips, psk)."""
        peer.spec = peer_spec
        self._psk_for[peer_spec.public_key] = peer_spec.preshared_key

    def drop_peer(self, peer: Peer) -> None:
        """A peer removed by a reload: its sessions end now."""
        for session in peer.sessions():
            self.table.pop(session.local_index, None)
        self.peers.remove(peer)
        del self._peer_by_key[peer.spec.public_key]
        del self._psk_for[peer.spec.public_key]

    # -- timers ----------------------------------------------------------------

    def next_timer(self, peer: Peer) -> float | None:
        due: list[float] = []
        if self.spec.role is Role.CLIENT:
            due.append(peer.handshake.due)
            if peer.current is not None and peer.handshake.pending is None:
                # Not left to other timers: an idle link that is down is
                # probed rarely (see links), so nothing else may wake us.
                due.append(self._silent_after(peer, peer.current) + 1e-6)
        if peer.previous is not None:
            due.append(peer.previous.last_received + PREVIOUS_SESSION_KEEP_S)
        # Keys are forgotten when they expire, whether or not traffic comes.
        due += [session.created + REJECT_AFTER_S for session in peer.sessions()]
        return min(due, default=None)

    def _silent_after(self, peer: Peer, current: Session) -> float:
        """Client: when the server's silence calls for a new handshake."""
        counted_from, allowance = self._links.silence_allowance(peer)
        return max(current.last_received, current.created, counted_from) + allowance

    def on_timer(self, peer: Peer, now: float) -> None:
        if self.spec.role is Role.CLIENT:
            self._client_timers(peer, now)
        self._expire(peer, now)

    def rekey(self, peer: Peer, now: float) -> None:
        """Client: a new handshake now, as every REKEY_AFTER_S, unless one
        is on its way; the current session serves until it completes."""
        if self.spec.role is Role.CLIENT and peer.handshake.pending is None:
            self._initiate(peer, now)

    def wake(self, peer: Peer, now: float) -> None:
        """Client: a packet waits for a session: initiate now unless one is
        on its way."""
        if self.spec.role is Role.CLIENT and peer.handshake.pending is None:
            self._outbox.touch(peer)
            peer.handshake.due = min(peer.handshake.due, now)

    def _client_timers(self, peer: Peer, now: float) -> None:
        current, handshake = peer.current, peer.handshake
        if current is not None:
            silent = now > self._silent_after(peer, current)
            rekey = current.needs_rekey(now)
            if not silent and not rekey:
                if handshake.pending is None:
                    handshake.due = current.created + REKEY_AFTER_S
                    return
            elif handshake.pending is None:
                reason = "rekey" if rekey else "no answer from the server"
                self._outbox.event(logging.INFO, f"new handshake ({reason})")
                self._initiate(peer, now)
                return
        if now >= handshake.due:
            self._initiate(peer, now)

    def _expire(self, peer: Peer, now: float) -> None:
        prev = peer.previous
        if prev is not None and (
            now - prev.last_received >= PREVIOUS_SESSION_KEEP_S or prev.expired(now)
        ):
            self.table.pop(prev.local_index, None)
            peer.previous = None
        cur = peer.current
        if cur is not None and cur.expired(now):
            self.table.pop(cur.local_index, None)
            peer.current = None
            self._outbox.event(logging.WARNING, "session expired without a rekey")
        unused = peer.next_session
        if unused is not None and unused.expired(now):  # the client never used it
            self.table.pop(unused.local_index, None)
            peer.next_session = None

    # -- handshake messages --------------------------------------------------

    def receive(self, sock: int, data: bytes, addr: Address, now: float,
                trusted: bool = False) -> bool | None:
        """A handshake datagram (type byte in HANDSHAKE_TYPES).  True if it
        authenticated; None if it counts against its source as junk (a bad
        mac1, or an initiation left unanswered beyond the cookie budget: a
        flood of them is then blocked like any other junk).  Malformed ones
        raise wire.WireError.  `trusted`: its source authenticated recently
        (the guard says so)."""
        mtype = data[0]
        if mtype == _INIT:
            return self._receive_init(sock, data, addr, now, trusted)
        if mtype == _RESP:
            return self._receive_resp(data, now)
        self._receive_cookie_reply(data, now)
        return False

    def receive_handoff(self, sock: int, data: bytes, addr: Address, now: float) -> bool:
        """An initiation another worker read and passed to us, its owner
        (see `steering`).  That worker admitted it (its load, cookies and
        rate limits apply at the door); here it is read again and answered."""
        return bool(self._receive_init(sock, data, addr, now, trusted=True, admitted=True))

    def _draw(self) -> float:
        """Uniform in [0, 1), from the endpoint's random source."""
        return int.from_bytes(self._random_bytes(4), "big") / 2**32

    def _initiate(self, peer: Peer, now: float) -> None:
        self._outbox.touch(peer)
        handshake = peer.handshake
        links = list(peer.links.values())
        up = [link for link in links if link.up]
        pool = up or links
        link = pool[handshake.attempts % len(pool)]
        jar = handshake.cookie_jar
        if jar is not None and jar.fresh(now) and jar.link_id is not None:
            # A cookie is valid only from the source it was made for: retry
            # on that link (another link's mac2 would fail and fetch another
            # cookie, forever, while the server stays under load).
            cookie_link = peer.links.get(jar.link_id)
            if cookie_link is not None and cookie_link.path is not None:
                link = cookie_link
        pending = PendingInitiation(
            self.spec.private_key, peer.spec.public_key, peer.spec.preshared_key,
            self._new_index(), link.link_id, now + self._wall_offset,
            mac2=None if jar is None else (lambda covered: jar.mac2(covered, now)),
        )
        pending.sent_at = now
        handshake.pending = pending
        retry = min(HANDSHAKE_RETRY_S * 2 ** max(handshake.attempts - 2, 0),
                    HANDSHAKE_RETRY_MAX_S)
        handshake.attempts += 1
        handshake.due = now + retry
        assert link.path is not None
        self._outbox.send(link.path[0], pending.datagram, link.path[1])

    def _receive_resp(self, data: bytes, now: float) -> bool:
        drops = self._outbox.drops
        if self.spec.role is not Role.CLIENT:
            drops["unexpected_handshake"] += 1
            return False
        resp = wire.decode_handshake_resp(data)
        peer = next((p for p in self.peers if p.handshake.pending is not None
                     and p.handshake.pending.sender_index == resp.receiver_index), None)
        pending = None if peer is None else peer.handshake.pending
        if peer is None or pending is None:
            drops["unknown_session"] += 1
            return False
        handshake = peer.handshake
        self._outbox.touch(peer)
        try:
            result = pending.consume_response(resp, self._mac1_key, data)
        except NoiseError:
            drops["bad_handshake"] += 1
            return False
        session = Session(pending.sender_index, result.remote_index, result.send_key,
                          result.recv_key, created=now, initiator=True, confirmed=True)
        handshake.pending = None
        handshake.attempts = 0
        handshake.due = now + REKEY_AFTER_S
        self._install(peer, session, now)
        self._links.on_established(peer, session, resp.link_id, pending.sent_at, now)
        self._egress.flush_queue(peer, now)
        return True

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        drops = self._outbox.drops
        if self.spec.role is not Role.CLIENT:
            drops["unexpected_handshake"] += 1
            return
        receiver = reply_receiver_index(data)
        for peer in self.peers:
            pending, jar = peer.handshake.pending, peer.handshake.cookie_jar
            if pending is not None and jar is not None and pending.sender_index == receiver:
                self._outbox.touch(peer)
                if jar.consume_reply(data, pending.mac1, now):
                    jar.link_id = pending.datagram[1]  # the link id byte
                    self._outbox.event(logging.INFO,
                                       "server under load: got a cookie, retrying")
                else:
                    drops["bad_cookie_reply"] += 1
                return
        drops["unknown_session"] += 1

    def _receive_init(self, sock: int, data: bytes, addr: Address, now: float,
                      trusted: bool, admitted: bool = False) -> bool | None:
        drops = self._outbox.drops
        if self.spec.role is not Role.SERVER:
            drops["unexpected_handshake"] += 1
            return False
        init = wire.decode_handshake_init(data)
        if not wire.mac1_valid(data, wire.HANDSHAKE_INIT_MAC1_OFFSET, self._mac1_key):
            drops["bad_mac1"] += 1
            return None
        # From here on every step is cheap until the DH in read_initiation.
        # Under load, as in WireGuard (see `cookie`): no valid mac2, a cookie
        # reply (smaller than the initiation, so no amplification), within
        # the reply budget, sampled, so no source takes another's share; a
        # valid mac2, the source's token bucket.  Not under load, no
        # per-source limit.
        limiter = self._limiter
        limiter.note(now)
        if limiter.under_load() and not admitted:
            if not self._cookies.mac2_valid(data, addr, now):
                if not self._reply_budget.admit(trusted, now, self._draw):
                    drops["handshake_cookie_withheld"] += 1
                    return None
                drops["handshake_cookie_sent"] += 1
                self._outbox.send(sock, self._cookies.reply(init, addr, now), addr)
                return False
            if not limiter.allow(source_key(addr[0]), now):  # an IPv6 /64 is one source
                drops["handshake_rate_limited"] += 1
                return False
        try:
            accepted = read_initiation(init, self.spec.private_key, self._psk_for)
        except NoiseError:
            drops["bad_handshake"] += 1
            return False
        except UnknownPeer as exc:
            if exc.public_key in self.spec.foreign_peers:
                # Another worker's peer: it answers (it holds the peer's
                # state); the datagram goes there whole.
                owner = steering.owner_of(exc.public_key, self.spec.workers)
                self._outbox.handoffs.append((owner, sock, data, addr))
                return True
            drops["unknown_peer"] += 1
            return False
        peer = self._peer_by_key[accepted.peer_public]
        if accepted.timestamp <= peer.handshake.last_init_timestamp:
            drops["handshake_replay"] += 1
            return False
        return self._respond(peer, accepted, init, sock, addr, now)

    def _respond(self, peer: Peer, accepted: AcceptedInitiation, init: wire.HandshakeInit,
                 sock: int, addr: Address, now: float) -> bool:
        """The initiation proved the peer's key: answer it."""
        self._outbox.touch(peer)
        index = self._new_index()
        try:
            datagram, result = write_response(accepted, init.link_id, index, init.sender_index)
        except NoiseError:
            self._outbox.drops["bad_handshake"] += 1
            return True
        peer.handshake.last_init_timestamp = accepted.timestamp
        session = Session(index, result.remote_index, result.send_key, result.recv_key,
                          created=now, initiator=False)
        self._links.learn_path(peer, init.link_id, sock, addr, now)
        if peer.next_session is not None:
            self.table.pop(peer.next_session.local_index, None)
        if peer.current is None:
            self._install(peer, session, now)
        else:
            peer.next_session = session
            self.table[index] = (peer, session)
        self._outbox.send(sock, datagram, addr)
        return True

    # -- slots -----------------------------------------------------------------

    def promote(self, peer: Peer, session: Session, now: float) -> None:
        """Server: the first packet under NEXT came: it becomes CURRENT."""
        peer.next_session = None
        self._install(peer, session, now)

    def _install(self, peer: Peer, session: Session, now: float) -> None:
        if peer.previous is not None:
            self.table.pop(peer.previous.local_index, None)
        peer.previous = peer.current
        peer.current = session
        peer.handshake.last_completed = now
        peer.links_seen = -1
        if peer.previous is None:  # the first session: its links are probed busily at first
            peer.keep_busy(now)
        # The peer's link sequences may start again with a new session (it
        # restarted): the next datagram on each link sets the highest seen,
        # else our reports would speak of the old numbering.
        for link in peer.links.values():
            link.rx_highest_link_seq = -1
        self.table[session.local_index] = (peer, session)
        if self.spec.reorder_hold_s is not None:
            session.reorder.hold_s = self.spec.reorder_hold_s
        if peer.links_announce_due == float("inf"):
            peer.links_announce_due = now
        self._outbox.event(logging.INFO, f"session {session.local_index:08x} established")

    def _new_index(self) -> int:
        while True:
            index = self._random_index() & 0xFFFFFFFF
            if self.spec.workers > 1:  # the kernel steers by the worker it names
                index = steering.session_index(self.spec.worker, index)
            if index not in self.table:
                return index

