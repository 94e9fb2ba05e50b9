"""Active queue management at the sending edge: keep the links' buffers short.

A loss-based inner TCP (cubic, reno) grows its window until a buffer
overflows.  The buffers that overflow are the links' own (a modem's, an
ISP's shaper), seconds deep on some uplinks, out of our reach: a standing
queue there delays every packet of the bond, a ping's or a game's too.
stripe cannot manage those queues, but it measures them: every
link's queueing delay comes back in the peer's feedback (`estimator`).  When
the bond has held a standing queue for a while, stripe drops (or, for an
ECN-capable packet, marks CE) one inner packet before sending it, and the
inner TCP backs off as it would at a CoDel router.

The bond's queue is what a packet waited at the sending edge for room in a
link's window (see `window`), plus the smallest of its usable links'
queues, each less the one packet of serialization a data packet always
shows next to the probes that set the link's minimum delay: the adaptive
scheduler fills a link with a longer base delay only once the faster links
hold a queue as long as part of the difference (`scheduler.SKEW_WEIGHT`),
and a bond with one link still idle has room to grow into.  So a queue the
scheduler needs to use every link never counts, a standing queue on all of
them does.

The control law is CoDel's (RFC 8289): nothing until the queue has stayed
above the target for a whole interval; then one drop, and the next ones at
interval / sqrt(count) while it stays above.  The sojourn times are the
peer's measurements, older by a report interval and a one-way delay than
CoDel's own would be; the interval (100 ms, or the slowest link's round trip
plus a report interval) is longer than that lag, and the inner TCP needs a
round trip to answer a drop anyway.  The target is the configured one (5 ms)
or half the slowest link's round trip, whichever is more
(`SINGLE_FLOW_QUEUE_RTTS`), plus what the links need because their
capacity varies (`VARIABILITY_ALLOWANCE_SCALE`): on a fixed-rate line
nothing, on a cellular link the swings of a round trip, which a drop would
only turn into lost throughput.

Empty state: not dropping, no queue seen above target, count 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from .estimator import FEEDBACK_INTERVAL_S, FULL_PACKET_BITS
from .links import Link
from .window import variability_queue_s

DEFAULT_TARGET_S = 0.005
INTERVAL_S = 0.100
# The queue a bond whose capacity varies keeps on purpose, over what its
# windows keep (see `window.variability_queue_s`): the inner flow's own
# standing queue rides on top of the swings, so it may reach this much more
# before a signal.  Measured on two LTE traces (docs/bench.md, "Queue
# management on links that swing"): every window cut of one cubic flow came
# from a drop here, and after each the flow spent seconds regrowing
# while the links had room; 4 cost 6-11 % of the throughput against no queue
# management at all, 16 about 1 %, and a ping's delay did not change (sparse
# flows skip the sending edge's queue, where the flow's own standing queue
# is).  On fixed-rate lines the allowance is nil and this changes nothing.
VARIABILITY_ALLOWANCE_SCALE = 16.0
# A loss-based TCP halves (reno) or cuts by 30 % (cubic) its window at a
# drop; the links stay busy through that only if the queue it drops from
# holds that much of a round trip: (1 - 0.7) / 0.7 = 0.43 for cubic.  A
# fixed few-ms target starves a long-delay bond (docs/design.md has the
# measurement); the latency win is on links whose buffers are deep next to
# their delay, where this changes nothing.
SINGLE_FLOW_QUEUE_RTTS = 0.5
# CoDel's memory: a new dropping state within this many intervals of the
# last one resumes near the drop rate the last one ended at.
COUNT_MEMORY_INTERVALS = 16

_ECN_MASK = 0x03
_ECN_CE = 0x03


@dataclass(frozen=True, slots=True)
class BondQueue:
    """What queue management needs to know of the bond's links now."""

    queue_s: float  # the standing queue (see module doc)
    base_rtt_s: float  # the longest minimum RTT among the links (0: none measured)
    # The queue the links need because their capacity varies (the smallest
    # of theirs, see `window.variability_queue_s`): not a standing queue to
    # drain, or a cellular bond would lose throughput at each swing.
    allowance_s: float = 0.0

    def after_waiting(self, waited_s: float) -> BondQueue:
        """The queue a packet meets that already waited `waited_s` at the
        sending edge for room on a link."""
        return BondQueue(self.queue_s + waited_s, self.base_rtt_s, self.allowance_s)


def measure_bond(links: Collection[Link], now: float) -> BondQueue:
    """The bond's standing queue: the smallest of its links' measured
    queues, each less one full packet's serialization time at its rate; its
    base RTT, the longest of the links' minimum RTTs; and its allowance."""
    queue = allowance = math.inf
    base_rtt = 0.0
    for link in links:
        est = link.est
        left = est.standing_queue_s(now) - FULL_PACKET_BITS / est.rate_bps
        queue = min(queue, left)
        rtt = link.health.min_rtt_s
        allowance = min(allowance, variability_queue_s(rtt, est.delivery_spread,
                                                       link.window.report_gap_s))
        if rtt is not None and rtt > base_rtt:
            base_rtt = rtt
    if queue == math.inf:
        return BondQueue(0.0, 0.0)
    return BondQueue(max(queue, 0.0), base_rtt, allowance)


@dataclass(slots=True)
class CoDel:
    """CoDel's state machine over measured sojourn times (see module doc)."""

    target_s: float = DEFAULT_TARGET_S  # the configured floor (see `target_for`)
    dropping: bool = False
    first_above: float | None = None  # when the queue may start to be dropped from
    drop_next: float = 0.0
    count: int = 0
    last_count: int = 0
    # What it did: packets dropped, and ECN-capable packets marked instead.
    drops: int = 0
    marks: int = 0

    def target_for(self, bond: BondQueue) -> float:
        """The queue to allow: the configured target, or what a single
        loss-based flow needs to keep the links busy, if more; plus the
        queue the links keep because their capacity varies."""
        return (max(self.target_s, SINGLE_FLOW_QUEUE_RTTS * bond.base_rtt_s)
                + VARIABILITY_ALLOWANCE_SCALE * bond.allowance_s)

    @staticmethod
    def interval_for(base_rtt_s: float) -> float:
        """Long enough for the inner TCP to have heard of the last drop."""
        return max(INTERVAL_S, base_rtt_s + FEEDBACK_INTERVAL_S)

    def acts_after_s(self, bond: BondQueue) -> float:
        """How much queue may build before the first signal: the target,
        then a whole interval above it (what the sending edge must hold,
        see `sendqueue`)."""
        return self.target_for(bond) + self.interval_for(bond.base_rtt_s)

    def should_signal(self, bond: BondQueue, now: float) -> bool:
        """A packet leaves now with the bond as measured: drop (or mark) it?
        The caller counts what it did in `drops` or `marks`."""
        interval = self.interval_for(bond.base_rtt_s)
        above = self._above_long_enough(bond.queue_s, self.target_for(bond),
                                        interval, now)
        if self.dropping:
            if not above:
                self.dropping = False
                return False
            if now < self.drop_next:
                return False
            self.count += 1
            self.drop_next = self._next_drop(self.drop_next, interval)
            return True
        if not above:
            return False
        self.dropping = True
        # Back into dropping soon after the last episode: resume close to the
        # rate that episode ended at rather than from one drop an interval.
        delta = self.count - self.last_count
        recent = now - self.drop_next < COUNT_MEMORY_INTERVALS * interval
        self.count = delta if delta > 1 and recent else 1
        self.last_count = self.count
        self.drop_next = self._next_drop(now, interval)
        return True

    def _above_long_enough(self, queue_s: float, target_s: float, interval_s: float,
                           now: float) -> bool:
        if queue_s < target_s:
            self.first_above = None
            return False
        if self.first_above is None:
            self.first_above = now + interval_s
            return False
        return now >= self.first_above

    def _next_drop(self, since: float, interval_s: float) -> float:
        return since + interval_s / math.sqrt(self.count)


def mark_ce(packet: bytes) -> bytes | None:
    """`packet` with its ECN field set to CE (congestion experienced), or
    None if it is not ECN-capable (Not-ECT: it must be dropped instead) or
    not an IP packet.  IPv4's header checksum is updated incrementally
    (RFC 1624); IPv6 has none."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        tos = packet[1]
        if tos & _ECN_MASK == 0:
            return None
        new_tos = tos | _ECN_CE
        # Updated, not recomputed (`offload.checksum`): a header that arrived
        # corrupt must stay detectably corrupt.  The checksum covers 16-bit
        # words; byte 1 is the low byte of word 0.
        old_word = (packet[0] << 8) | tos
        new_word = (packet[0] << 8) | new_tos
        checksum = (packet[10] << 8) | packet[11]
        total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        checksum = ~total & 0xFFFF
        return (packet[:1] + bytes((new_tos,)) + packet[2:10]
                + checksum.to_bytes(2, "big") + packet[12:])
    if version == 6 and len(packet) >= 40:
        # Traffic class straddles bytes 0 and 1; ECN is its low two bits,
        # bits 4-5 of byte 1.
        if (packet[1] >> 4) & _ECN_MASK == 0:
            return None
        return packet[:1] + bytes((packet[1] | (_ECN_CE << 4),)) + packet[2:]
    return None
