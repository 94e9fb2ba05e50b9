"""The inner packets waiting at the sending edge, and the sparse flows that skip them.

A peer's packets wait here while it has no session yet or every link's
window is full (see `window`), first in first out, at most `maxlen` (the
oldest goes when it is full); queue management (`aqm`) keeps the wait
short for the flows that fill it.

The limit is in time, not a fixed count: it must not act before queue
management does, or drop-tail in bursts replaces queue management as the
inner flows' signal (a cubic flow that loses a burst at the edge cuts its
window and leaves the links idle while it regrows).  Queue management lets
a queue stand for its target and waits an interval before it acts; on a
bond whose capacity swings that is hundreds of milliseconds (`aqm`), and
a fixed 256 packets drain in 70 ms at 40 Mbit/s.  So when the queue is
full the owner asks `limit_for` again: what the bond sends in that time at
its estimated rate, at least QUEUE_MIN_PACKETS (what a slow bond, or one
not measured yet, keeps) and at most QUEUE_MAX_PACKETS (memory: ~1.4 MB of
full packets per peer, only while its links are full; WireGuard's per-peer
queue is 1,024 packets too).

A flow that sends little (a ping, DNS, a call's audio, a game's updates)
should not wait behind a bulk flow's backlog: as in fq_codel (RFC 8290),
whose "new flows" go first, a packet whose flow has nothing waiting here
and that has sent under SPARSE_FLOW_BYTES this way in the current
SPARSE_INTERVAL_S is sent at once, on the link where it arrives first,
even past a full window by its few bytes (`may_skip`).  A flow that sends
more than that waits in line like any other, and since nothing of a flow
skips while some of it waits, a flow's packets never overtake each other.
SPARSE_PEER_BYTES bounds what all of a peer's flows skip per interval, so
many small flows cannot overfill the windows either.

Under load, which link would deliver a packet first changes faster than the
peer's feedback can tell (a cellular link's queue grows and drains within a
round trip), so a skipping packet of at most SPARSE_COPY_MAX_BYTES (a ping,
a DNS query, a game's or a call's packet) also goes as a DATA_COPY on the
usable link with the lowest RTT among the others (as `duplicate_below`
does for every small packet when configured): it arrives by whichever link
is first, the receiver drops the other as a duplicate.  So does a small
packet of a sparse flow that is not TCP when nothing waits (`egress`):
the direction that carries only a download's ACKs is not loaded, but its
links' delays swing all the same (a cellular uplink's fades), and a ping,
a DNS query or a voice packet has nothing behind it to cover its delay or
loss, where a TCP ACK has the next ACK (so ACKs, most of the small packets
there, are not copied: they would double that direction's packets).  At
most twice the sparse budget, a few hundred kbit/s.

Flows are `flows.flow_bucket`'s buckets (two flows sharing one are one
flow here: they wait for each other, which is only what all did before).

Empty state: nothing waiting, no skips this interval.
Invariant: `_waiting[b]` is the number of queued packets of bucket b
(absent when none).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .estimator import FULL_PACKET_BITS

QUEUE_MIN_PACKETS = 256
QUEUE_MAX_PACKETS = 1024
SPARSE_INTERVAL_S = 0.100
SPARSE_FLOW_BYTES = 3000  # two full packets, or a ping every few ms
SPARSE_PEER_BYTES = 16384  # ~1.3 Mbit/s of skipping per peer
# A skipping packet this small also goes as a copy on a second link.
SPARSE_COPY_MAX_BYTES = 256


@dataclass(slots=True)
class SendQueue:
    maxlen: int = QUEUE_MIN_PACKETS
    # (packet, when it was queued, its flow bucket)
    _items: deque[tuple[bytes, float, int]] = field(default_factory=deque)
    _waiting: dict[int, int] = field(default_factory=dict)
    _interval_start: float = float("-inf")
    _skipped: dict[int, int] = field(default_factory=dict)  # bucket -> bytes this interval
    _skipped_total: int = 0
    skips: int = 0  # packets sent past the queue, for status

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.maxlen

    def push(self, packet: bytes, now: float, bucket: int) -> bool:
        """Queue `packet`; True if the oldest packet was dropped to make room
        (one at most: a queue above a lowered `maxlen` drains as it sends)."""
        items, waiting = self._items, self._waiting
        dropped = len(items) >= self.maxlen
        if dropped:
            self._forget(items.popleft()[2])
        items.append((packet, now, bucket))
        waiting[bucket] = waiting.get(bucket, 0) + 1
        return dropped

    def peek(self) -> tuple[bytes, float]:
        """The oldest packet and when it was queued (the queue is not empty)."""
        packet, since, _bucket = self._items[0]
        return packet, since

    def pop(self) -> bytes:
        packet, _since, bucket = self._items.popleft()
        self._forget(bucket)
        return packet

    def may_skip(self, bucket: int, size: int, now: float) -> bool:
        """May a packet of `size` bytes of flow `bucket` go past the queue
        now?  Counted as skipped if so (see the module doc)."""
        if bucket in self._waiting or not self.sparse(bucket, size, now):
            return False
        self.skips += 1
        return True

    def sparse(self, bucket: int, size: int, now: float) -> bool:
        """Is flow `bucket` still sparse with `size` more bytes this interval
        (and the peer's sparse flows within theirs)?  The bytes count if so."""
        if now - self._interval_start >= SPARSE_INTERVAL_S:
            self._interval_start = now
            self._skipped.clear()
            self._skipped_total = 0
        used = self._skipped.get(bucket, 0) + size
        if used > SPARSE_FLOW_BYTES or self._skipped_total + size > SPARSE_PEER_BYTES:
            return False
        self._skipped[bucket] = used
        self._skipped_total += size
        return True

    def _forget(self, bucket: int) -> None:
        waiting = self._waiting
        left = waiting[bucket] - 1
        if left:
            waiting[bucket] = left
        else:
            del waiting[bucket]


def limit_for(rate_bps: float, hold_s: float) -> int:
    """How many packets the queue may hold for a bond sending `rate_bps`
    whose queue management lets `hold_s` stand (see the module doc): that
    many seconds of full packets, within [QUEUE_MIN_PACKETS, QUEUE_MAX_PACKETS]."""
    packets = int(rate_bps * hold_s / FULL_PACKET_BITS)
    return min(max(packets, QUEUE_MIN_PACKETS), QUEUE_MAX_PACKETS)
