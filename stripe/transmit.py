"""The seal seam: every transport datagram leaves the core through `Transmitter.send`.

Data runs, redundant and re-sent copies, probes, feedback, markers, link
tables and path MTU probes are all sealed by the peer's current session and
queued here, so what sending means for a link is written once:

- the link's sequence numbers advance (one per datagram), which the peer's
  feedback reports back, and the estimator learns what was sent when;
- a link that carries data joins the peer's link mask before the header is
  sealed (the receiver's loss inference must wait for it) and owes a tail
  marker once it goes quiet;
- data runs are remembered for a short while, to be re-sent if the link
  dies under them (`links.RecentSends`);
- the link's byte and packet counters, then the outbox.

Handshake messages are not sealed by a session; `sessions` queues them on
the outbox directly.
"""

from __future__ import annotations

from . import control, wire
from .links import Link, RecentRun
from .offload import complete_partial
from .outbox import Outbox
from .peer import Peer
from .session import Session

_DATA = wire.MessageType.DATA
_CONTROL = wire.MessageType.CONTROL


class Transmitter:
    """`partial_csum`: inner packets may come with partial TCP/UDP checksums
    (see `offload`); we tell every peer we take them, and complete them for
    a peer whose session has not said it takes them."""

    __slots__ = ("_features", "_outbox", "partial_csum")

    def __init__(self, outbox: Outbox, partial_csum: bool = False) -> None:
        self._outbox = outbox
        self.partial_csum = partial_csum
        self._features = control.FEATURE_REPAIR | (
            control.FEATURE_PARTIAL_CSUM if partial_csum else 0)

    def send(
        self, peer: Peer, session: Session, link: Link, mtype: wire.MessageType,
        payloads: list[bytes], now: float, copy_of: int = -1, reuse_seq: bool = False,
        flow_gap: int = wire.FLOW_IN_ORDER,
    ) -> list[bytes]:
        """Seal `payloads` as `mtype` messages on `link` (see `Session.seal`)
        and queue them.  `reuse_seq`: the datagram takes the link's last
        sequence number again and is not tracked (a path MTU probe: it is
        meant to get lost now and then, and a gap in the sequence would count
        as data loss, and a stall, in the link's estimates).  `flow_gap`: a
        DATA_COPY's (see `Session.seal`)."""
        path = link.path
        assert path is not None
        self._outbox.touched[id(peer)] = peer
        if mtype is not _CONTROL:
            if self.partial_csum and not session.peer_features & control.FEATURE_PARTIAL_CSUM:
                # A peer that did not say it takes partial checksums (an older
                # version, a TUN without offload, or not said yet this session).
                payloads = [complete_partial(p) for p in payloads]
            peer.keep_busy(now)
            link.last_data_sent = now
            link.marker_due = True
            if link.link_id < wire.MASKABLE_LINKS:
                peer.link_mask |= 1 << link.link_id
        seq = link.next_link_seq - 1 if reuse_seq else link.next_link_seq
        if mtype is _DATA:
            link.recent.add(RecentRun(now, session, session.send_counter, seq, payloads))
        datagrams = session.seal(mtype, link.link_id, peer.link_mask, seq, payloads, now,
                                 copy_of, flow_gap)
        sock, addr = path
        out = self._outbox.datagrams
        size = 0
        for datagram in datagrams:
            size += len(datagram)
            out.append((sock, datagram, addr))
        counters = link.counters
        counters.tx_packets += len(datagrams)
        counters.tx_bytes += size
        if not reuse_seq:
            last = link.next_link_seq = seq + len(datagrams)
            if mtype is not _CONTROL:
                # All sent at `now`: the newest stands for the run in stall
                # detection, and the run's bytes count against the window.
                link.window.on_send(last - 1, now, size)
                link.est.note_data(last - 1)
        return datagrams

    def send_control(self, peer: Peer, session: Session, link: Link,
                     message: control.ControlMessage, now: float) -> None:
        payload = control.encode(message, session.send_counter, self._features)
        self.send(peer, session, link, _CONTROL, [payload], now)
