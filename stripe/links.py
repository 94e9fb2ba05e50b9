"""One link's health, RTT and counters, as seen by one endpoint.

Theory of operation
-------------------
While its peer has data (sent or received within `peer.IDLE_AFTER_S`), a
link is probed every `PROBE_INTERVAL_S`: a PROBE control message that the
peer answers at once with a PROBE_ACK on the same link.  An acknowledged
probe proves the path works both ways and yields an RTT sample (smoothed as
in RFC 6298).

Idle links are cheap: while its peer has no data, a link is `idle`.  The
client probes it every `IDLE_PROBE_INTERVAL_S`; the server does not probe
an idle link that is up at all, the client's probes arriving on it being
its evidence (`last_heard`).  An idle link is dead after
`LINK_DEAD_AFTER_IDLE_S` without evidence.  When data starts again, every
link wakes (`set_idle(False)`): it is probed at once and is `suspect` until
an ack, a report of new data or any datagram arriving on it shows it still
works; its silence is
counted from the wake-up, so a link that died while idle is DOWN within
`dead_after_s()` of the first packet, and the sender meanwhile puts data
on the links already verified, or on two suspect links at once (see
`egress`), so no packet depends on one link that may have died unseen.

The peer's feedback is evidence too: a report showing new data arriving
on the link proves it works, even while probes drown in its queue.

States (one transition function, `LinkHealth.update`):

    UNKNOWN --ack--> UP                          (first contact: no hysteresis)
    UP --data unanswered beyond its expected delay--> STALE
    UP or STALE --no evidence for dead_after_s()--> DOWN
    UP or STALE --send error (interface down)--> DOWN
    STALE --an ack, or a report of new data--> UP  (nothing lost: estimates kept)
    DOWN --RECOVER_ACKS consecutive acks--> UP     (hysteresis: no flapping storms)

STALE is a link that went quiet under data for longer than its round trip
and queue explain, while the peer is alive: a cellular link in a fade, a
path blackholed upstream.  It leaves the schedule at once (its recent data
is re-sent elsewhere, see `egress.resend_recent`) but is not called dead:
a fade of a few hundred ms is ordinary on a cellular link, and the moment
it delivers again it is back, its estimates intact.

DOWN needs longer silence: `dead_after_s()` grows with the measured RTT and
the queues the link was last seen to hold, ours (the peer's report) and
the peer's towards us (the one-way delay of what arrives on it), so a link
with a deep queue either way (probes or their acks wait behind seconds of
data) is not declared dead, while an idle or lightly loaded one is within
a second.  A STALE link, already out of
the schedule, waits at least LINK_DEAD_AFTER_STALE_S (1 s) and its queues:
a fade is not a death.  Only UP links carry data; the
scheduler decides which of them.  Every transition is counted (`ups`,
`downs`, `stalls`) for status and metrics.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from typing import TYPE_CHECKING

from .estimator import LinkEstimator
from .minrtt import MinRtt
from .pmtu import PmtuSearch
from .reorder import HOLD_MAX_S
from .window import LinkWindow

if TYPE_CHECKING:
    from .session import Session

PROBE_INTERVAL_S = 0.2
# While the peer has no data: the client's probe interval, and the silence
# after which an idle link is dead.  Below the client's re-handshake after
# silence (linkctl.REHANDSHAKE_AFTER_SILENCE_S) with a probe to spare.
# What it costs: each idle link's probe and answer, on the server a whole
# wake-up each (~0.14 ms of CPU; 1,000 clients on two links at 3 s: 8-13 %
# of a core on the development VMs, see docs/scaling.md), on a cellular
# link a radio wake-up.  What it buys:
# an idle link's death shown within 2.5 intervals; data never waits for it
# (waking probes every link at once, see the module's docstring).
IDLE_PROBE_INTERVAL_S = 3.0
LINK_DEAD_AFTER_IDLE_S = 2.5 * IDLE_PROBE_INTERVAL_S
# An idle link that is not up (DOWN, UNKNOWN) and whose probes go
# unanswered is probed ever more rarely: 3, 6, 12 s.  A peer that cannot
# answer (gone, or an overloaded server whose socket drops what it cannot
# read) then gets less to read, not more, so an overload can drain instead
# of feeding itself (see docs/scaling.md).  Anything heard on the link, or
# data waking the peer, probes it at once again.
IDLE_PROBE_BACKOFF_STEPS = 2
LINK_DEAD_AFTER_MIN_S = 0.45
# Without a queue; a link's measured queues add twice themselves (its
# probes, their acks and data wait behind them), up to
# LINK_DEAD_AFTER_QUEUED_MAX_S in all.
LINK_DEAD_AFTER_MAX_S = 0.9
LINK_DEAD_AFTER_QUEUED_MAX_S = 3.0
# A STALE link is already out of the schedule, so DOWN need not hurry: it
# waits for at least this much silence, if the link has delivered since it
# woke from idle.  A fade of most of a second is ordinary on a cellular
# link (the LTE traces in ../shared/traces go silent for 0.7 s, and for
# 1.4-1.7 s), and a false DOWN costs what STALE does not: RECOVER_ACKS
# probes (~0.6 s) before the link carries data again, its rate estimate and
# window started over.  So the floor is TCP's cautious one (RFC 6298's
# minimum RTO).  A link still UP when it goes silent (nobody reports the
# data it lost: it carried all of it, or the peer is gone) has only DOWN to
# take it out of the schedule, and keeps the shorter bound.
LINK_DEAD_AFTER_STALE_S = 1.0
RECOVER_ACKS = 3
MAX_OUTSTANDING_PROBES = 16


class LinkState(Enum):
    UNKNOWN = "unknown"
    UP = "up"
    STALE = "stale"
    DOWN = "down"


_NOT_UP = (LinkState.DOWN, LinkState.UNKNOWN)


@dataclass(slots=True)
class LinkCounters:
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    send_errors: int = 0
    # Data received after the reorder buffer had given its slot up (see
    # reorder): this link held the bond up, and the inner flow saw a gap.
    late_packets: int = 0


@dataclass(slots=True)
class LinkHealth:
    """Probe bookkeeping and up/down state of one link.

    Empty state: UNKNOWN, busy (not idle), no probes outstanding, no RTT
    sample.  Invariants: `outstanding` holds at most MAX_OUTSTANDING_PROBES
    entries; `good_acks` counts consecutive acks only while DOWN; `suspect`
    only while UP and busy.  `idle_probes`: this end probes the link while
    idle (the client); False: it relies on the peer's probes (the server).
    """

    state: LinkState = LinkState.UNKNOWN
    srtt_s: float | None = None
    rttvar_s: float = 0.0
    min_rtt: MinRtt = field(default_factory=MinRtt)
    last_ack_time: float = float("-inf")
    last_acked_sent: float = float("-inf")  # send time of the newest probe acked
    next_probe_time: float = 0.0
    next_probe_id: int = 0
    outstanding: dict[int, float] = field(default_factory=dict)
    good_acks: int = 0
    probes_sent: int = 0
    probes_acked: int = 0
    # The queue the link held at the last evidence (the peer's report), and
    # the one in front of the peer's datagrams to us (our own measure of
    # their one-way delay): a probe's ack and the peer's reports wait there.
    queue_s: float = 0.0
    reverse_queue_s: float = 0.0
    # Transitions: UP -> STALE, -> DOWN, DOWN -> UP (the first UP is not one).
    stalls: int = 0
    downs: int = 0
    ups: int = 0
    previous: LinkState = LinkState.UNKNOWN  # the state before the last change
    idle: bool = False
    idle_probes: bool = True
    suspect: bool = False  # woke from idle, not heard from since
    woke_at: float = float("-inf")
    last_heard: float = float("-inf")  # the newest authenticated datagram on the link
    last_probe_time: float = float("-inf")
    keep_busy: bool = False  # probed at the busy pace even while idle (see linkctl)
    # Outstanding probes sent with no queue of ours in front of them (see minrtt).
    clean_probes: set[int] = field(default_factory=set)

    @property
    def min_rtt_s(self) -> float | None:
        return self.min_rtt.value_s

    @min_rtt_s.setter
    def min_rtt_s(self, value: float | None) -> None:
        self.min_rtt.value_s = self.min_rtt.least_s = value

    @property
    def least_rtt_s(self) -> float | None:
        """The least round trip of all time (the stall limit's: see minrtt)."""
        return self.min_rtt.least_s

    def set_keep_busy(self, keep: bool) -> None:
        if keep != self.keep_busy:
            self.keep_busy = keep
            self._repace()

    def _repace(self) -> None:
        """The probe interval changed: the next probe follows the last one by it."""
        interval = self.probe_interval_s()
        self.next_probe_time = (float("inf") if interval is None
                                else self.last_probe_time + interval)

    def probe_interval_s(self) -> float | None:
        """How often this end probes the link now (None: not at all).

        Busy: the busy pace.  Idle: a path MTU search under way (it needs
        small probes answered, see pmtu) or a link coming back from DOWN
        (its RECOVER_ACKS acks) at the busy pace too, but clocked by the
        acks (the next probe only once the last was answered, the idle pace
        otherwise: under overload, probes that go unanswered must not come
        five times a second); a link that is up every IDLE_PROBE_INTERVAL_S
        (the client; the server relies on the client's probes), one that
        is not backed off by its unanswered probes
        (IDLE_PROBE_BACKOFF_STEPS)."""
        if not self.idle:
            return PROBE_INTERVAL_S
        state = self.state
        recovering = state is LinkState.DOWN and self.good_acks > 0
        if (self.keep_busy or recovering) and self.answered():
            return PROBE_INTERVAL_S
        if state is LinkState.UP or state is LinkState.STALE:
            return IDLE_PROBE_INTERVAL_S if self.idle_probes or self.keep_busy else None
        return IDLE_PROBE_INTERVAL_S * float(2 ** min(self.misses, IDLE_PROBE_BACKOFF_STEPS))

    @property
    def misses(self) -> int:
        """Probes in a row that went unanswered before the newest: those
        still outstanding (an ack forgets the older ones), less the newest."""
        return max(len(self.outstanding) - 1, 0)

    def answered(self) -> bool:
        """The newest probe came back (or none was sent yet)."""
        return self.last_acked_sent >= self.last_probe_time

    def set_idle(self, idle: bool, now: float) -> None:
        """The peer's data stopped (idle) or started again (busy): see the
        module's theory of operation."""
        if idle == self.idle:
            return
        self.idle = idle
        if idle:
            self.suspect = False
            self._repace()
        else:
            # Heard from at this very moment (the datagram that woke us came
            # on it): not suspect, and probed at the usual pace.
            self.woke_at = now
            self.suspect = self.state is LinkState.UP and self.last_heard < now
            heard = self.state is LinkState.UP and not self.suspect
            self.next_probe_time = now + PROBE_INTERVAL_S if heard else now

    def heard(self, now: float) -> None:
        """An authenticated datagram arrived on the link: a suspect link is
        no longer (the path works, at least towards us, and its own probe
        may wait for the usual pace)."""
        self.last_heard = now
        if self.idle and self.state in _NOT_UP and self.good_acks == 0 and (
                self.next_probe_time > now + PROBE_INTERVAL_S):
            # The peer's probe on a link we hold down (or have not seen
            # work yet): it may be back; see now, whatever the backoff.
            self.next_probe_time = now
        if self.suspect:
            self.suspect = False
            if self.next_probe_time <= now:
                self.next_probe_time = now + PROBE_INTERVAL_S

    def dead_after_s(self) -> float:
        """Silence (no ack, no report of new data) after which a busy link is
        DOWN: an RTO-like bound on its RTT, at least LINK_DEAD_AFTER_STALE_S
        once it is STALE and was heard since it woke, plus twice its queues
        both ways."""
        if self.srtt_s is None:
            return LINK_DEAD_AFTER_MIN_S
        bound = PROBE_INTERVAL_S + 2 * self.srtt_s + 4 * self.rttvar_s
        least, most = LINK_DEAD_AFTER_MIN_S, LINK_DEAD_AFTER_MAX_S
        if self.state is LinkState.STALE and max(self.last_ack_time,
                                                 self.last_heard) >= self.woke_at:
            least = most = LINK_DEAD_AFTER_STALE_S
        # The queues lengthen the whole range, not only its top: probes and
        # acks wait behind a queue that just grew before the RTT shows it.
        queued = 2 * (self.queue_s + self.reverse_queue_s)
        return min(max(bound, least + queued), most + queued, LINK_DEAD_AFTER_QUEUED_MAX_S)

    def probe_due(self, now: float) -> bool:
        return now >= self.next_probe_time

    def start_probe(self, now: float, clean: bool = False) -> int:
        """Book a probe sent now; returns its id.  `clean`: no data of ours
        is queued in front of it (see minrtt)."""
        probe_id = self.next_probe_id
        self.next_probe_id = (probe_id + 1) & 0xFFFFFFFF
        self.outstanding[probe_id] = now
        if len(self.outstanding) > MAX_OUTSTANDING_PROBES:
            del self.outstanding[next(iter(self.outstanding))]
        if clean:
            self.clean_probes.add(probe_id)
            if len(self.clean_probes) > MAX_OUTSTANDING_PROBES:
                self.clean_probes.intersection_update(self.outstanding)
        self.last_probe_time = now  # before the interval: this one is not answered yet
        interval = self.probe_interval_s()
        self.next_probe_time = float("inf") if interval is None else now + interval
        self.probes_sent += 1
        return probe_id

    def on_ack(self, probe_id: int, now: float) -> LinkState | None:
        """A probe came back.  Returns the new state if it changed."""
        sent = self.outstanding.pop(probe_id, None)
        if sent is None:
            return None  # unknown or expired probe: ignore, do not trust
        # Older probes still outstanding were lost or overtaken: forget them.
        for stale in [k for k, t in self.outstanding.items() if t < sent]:
            del self.outstanding[stale]
        clean = probe_id in self.clean_probes
        if self.clean_probes:
            self.clean_probes.intersection_update(self.outstanding)
        self.probes_acked += 1
        self.last_acked_sent = max(self.last_acked_sent, sent)
        rtt = max(now - sent, 0.0)
        self.min_rtt.sample(rtt, now, clean)
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = rtt, rtt / 2
        else:
            self.rttvar_s += 0.25 * (abs(self.srtt_s - rtt) - self.rttvar_s)
            self.srtt_s += 0.125 * (rtt - self.srtt_s)
        self.last_ack_time = now
        self.suspect = False
        changed = self.update(now, acked=True)
        if self.idle:
            self._repace()  # the ack-clocked pace goes on (see probe_interval_s)
        return changed

    def on_peer_up(self, now: float, srtt_s: float) -> LinkState | None:
        """The peer's probe says it holds the link up: its probes reach us and
        our answers reach it, so the link works both ways.  As good as an
        ack of ours for a link we have not seen work (UNKNOWN -> UP) or hold
        DOWN (one of its RECOVER_ACKS, and our own probe now), with the
        peer's RTT until we measure one: an idle server need not probe its
        clients' links to know them (see docs/scaling.md).  Returns the new
        state if it changed."""
        state = self.state
        if state is not LinkState.UNKNOWN and state is not LinkState.DOWN:
            return None
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = srtt_s, srtt_s / 2
            self.min_rtt.sample(srtt_s, now, clean=False)
        changed = self.update(now, acked=True)
        if self.state is LinkState.UP:
            self.last_ack_time = max(self.last_ack_time, now)
        elif self.idle:
            self.next_probe_time = min(self.next_probe_time, now)
        return changed

    def on_send_error(self, now: float) -> LinkState | None:
        return self.update(now, send_failed=True)

    def on_progress(self, now: float, queue_s: float) -> LinkState | None:
        """The peer reports new data received on this link, which holds
        `queue_s` of queue: the path works, even if probes are being lost in
        a full queue.  Returns the new state if it changed (a STALE link is
        back)."""
        self.queue_s = queue_s
        self.suspect = False
        if self.state in (LinkState.UP, LinkState.STALE) and now > self.last_ack_time:
            self.last_ack_time = now
        return self.update(now, progressed=True)

    def on_stall(self, now: float) -> LinkState | None:
        """Data on this link goes unanswered beyond its expected delay while
        the peer is alive: out of the schedule now (STALE), DOWN only if the
        silence lasts."""
        return self.update(now, stalled=True)

    def update(
        self, now: float, *, acked: bool = False, send_failed: bool = False,
        stalled: bool = False, progressed: bool = False,
    ) -> LinkState | None:
        """The one transition function.  Returns the new state if it changed."""
        old = self.state
        if old is LinkState.UNKNOWN:
            if acked:
                self.state = LinkState.UP
        elif old in (LinkState.UP, LinkState.STALE):
            if send_failed or now > self.dead_at():
                self.state = LinkState.DOWN
                self.good_acks = 0
                self.suspect = False
            elif old is LinkState.UP and stalled:
                self.state = LinkState.STALE
            elif old is LinkState.STALE and (acked or progressed):
                self.state = LinkState.UP
        elif old is LinkState.DOWN:
            if acked:
                self.good_acks += 1
                if self.good_acks >= RECOVER_ACKS:
                    self.state = LinkState.UP
            elif send_failed:
                self.good_acks = 0
        new = self.state
        if new is old:
            return None
        if new is not LinkState.UP:
            self.suspect = False
        if self.idle:
            self._repace()  # a server's idle link that is not UP is probed again
        self.previous = old
        if new is LinkState.STALE:
            self.stalls += 1
        elif new is LinkState.DOWN:
            self.downs += 1
        elif old is LinkState.DOWN:
            self.ups += 1
        return new

    def dead_at(self) -> float:
        """When an UP or STALE link is DOWN unless evidence comes: busy, the
        last ack (or the wake-up: the silence of an idle link is not held
        against it) plus `dead_after_s()`; idle, the last ack or datagram
        heard on it plus LINK_DEAD_AFTER_IDLE_S."""
        if self.idle:
            return max(self.last_ack_time, self.last_heard) + LINK_DEAD_AFTER_IDLE_S
        return max(self.last_ack_time, self.woke_at) + self.dead_after_s()

    def next_check_time(self) -> float:
        """When `update` could next change the state without new input."""
        if self.state in (LinkState.UP, LinkState.STALE):
            return min(self.next_probe_time, self.dead_at() + 1e-6)
        return self.next_probe_time


# Data a link took and the peer has not reported when the link goes down is
# sent again on the others (see `egress.resend_recent`).  Only recent
# packets are worth it: the receiver holds a gap for 20 ms or the links'
# skew plus jitter (see `reorder`), and asks for what the gap lacks itself
# (a REPAIR); a copy later than that is dropped as late and, on a full
# link, takes a newer packet's place in its queue: RESEND_WINDOW_S, at most
# RESEND_MAX_PACKETS.  Older ones too if the peer cannot know it lacks them:
# sent after anything another link delivered (a tail), so no gap shows them.
RESEND_WINDOW_S = 0.05
RESEND_MAX_PACKETS = 512
# The packets are kept longer for the peer's REPAIR requests (see
# `egress.repair`): a loss on a link is found when the link's next packet
# arrives, and asked for over the fastest link, so a link's one-way delay
# plus the fastest one's: as long as the receiver's hold may wait for a
# link, or a request from behind a slow link's deep queue asks for what is
# gone (over a 3G link with 800 ms of queue, two thirds of the requests at
# 0.5 s, a tenth at 1 s).  Bounded in packets too, so memory stays flat at
# any rate (at most ~1.5 MB of packets per busy link: 12 ms' worth at a
# gigabit, where the round trips are that short too), and purged on a
# timer once too old, so no plaintext stays on an idle link.
KEEP_S = HOLD_MAX_S
KEEP_MAX_PACKETS = 1024


@dataclass(slots=True)
class RecentRun:
    sent: float
    session: Session
    first_counter: int
    first_link_seq: int
    packets: list[bytes]
    epoch: int = 0  # see RecentSends


_epoch_of = attrgetter("epoch")
_first_counter_of = attrgetter("first_counter")


@dataclass(slots=True)
class RecentSends:
    """The runs of data packets a link carried lately (within KEEP_S, at
    most KEEP_MAX_PACKETS), oldest first.

    A run's `epoch` goes up by one each time a run of another session
    than the one before is added, so the runs are in (epoch, first counter)
    order and `find` looks a counter up by bisection: what a REPAIR costs
    is then a few steps per counter asked, not a walk over every run kept
    (a peer asking for the oldest counters again and again made each
    request walk all 1,024 runs of every link: ~0.3 ms a link)."""

    runs: deque[RecentRun] = field(default_factory=deque)
    packets: int = 0
    _epoch: int = 0

    def add(self, run: RecentRun) -> None:
        runs = self.runs
        if runs and runs[-1].session is not run.session:
            self._epoch += 1
        run.epoch = self._epoch
        runs.append(run)
        self.packets += len(run.packets)
        horizon = run.sent - KEEP_S
        while len(runs) > 1 and (self.packets > KEEP_MAX_PACKETS or runs[0].sent < horizon):
            self.packets -= len(runs.popleft().packets)

    def purge_due(self) -> float | None:
        """When every run held is too old to send again (plaintext is not kept
        longer than that, even on a link that carries nothing more)."""
        return self.runs[-1].sent + KEEP_S if self.runs else None

    def purge(self, now: float) -> None:
        """Forget the runs too old to send again."""
        runs, horizon = self.runs, now - KEEP_S
        while runs and runs[0].sent <= horizon:
            self.packets -= len(runs.popleft().packets)

    def find(self, session: Session, wanted: list[int]) -> dict[int, bytes]:
        """The packets this link keeps of `session`'s data counters
        `wanted` (sorted), by counter."""
        found: dict[int, bytes] = {}
        runs = self.runs
        end = len(runs)
        while end:  # each epoch, newest first: nearly always the only one
            newest = runs[end - 1]
            start = bisect_left(runs, newest.epoch, 0, end, key=_epoch_of)
            if newest.session is session:
                lo = start
                for counter in wanted:  # ascending: each search starts at the last run found
                    i = bisect_right(runs, counter, lo, end, key=_first_counter_of) - 1
                    if i >= lo:
                        lo = i
                        run = runs[i]
                        offset = counter - run.first_counter
                        if offset < len(run.packets):
                            found[counter] = run.packets[offset]
            end = start
        return found

    def latest(self, since: float) -> list[RecentRun]:
        """Those sent at or after `since`, the newest RESEND_MAX_PACKETS of
        them (whole runs).  All stay kept: the peer may still ask for the
        older ones (a REPAIR), and a message sent again has had its one
        copy, which `Session.can_copy` tells."""
        runs: list[RecentRun] = []
        packets = 0
        for run in reversed(self.runs):
            if run.sent < since or packets + len(run.packets) > RESEND_MAX_PACKETS:
                break
            runs.append(run)
            packets += len(run.packets)
        runs.reverse()
        return runs


@dataclass(slots=True)
class Link:
    """A link of a session: identity, where to send, health and counters.

    `path` is (socket index, remote address) or None while the server has
    not yet heard from the client on this link.
    """

    link_id: int
    name: str
    weight: int = 1
    backup: bool = False
    path: tuple[int, tuple[str, int]] | None = None
    health: LinkHealth = field(default_factory=LinkHealth)
    counters: LinkCounters = field(default_factory=LinkCounters)
    est: LinkEstimator = field(default_factory=LinkEstimator)
    window: LinkWindow = field(default_factory=LinkWindow)
    next_link_seq: int = 0
    woke_seq: int = 0  # next_link_seq when the link woke from idle (see linkctl.wake)
    last_data_sent: float = float("-inf")
    marker_due: bool = False  # data sent since the last tail marker
    rx_highest_link_seq: int = -1  # 32-bit, from the peer's headers
    rx_packets_at_feedback: int = 0  # rx_packets when we last sent feedback
    recent: RecentSends = field(default_factory=RecentSends)

    def note_received(self, size: int, link_seq: int, now: float) -> None:
        """An authenticated datagram of `size` bytes arrived on this link."""
        self.health.heard(now)
        counters = self.counters
        counters.rx_packets += 1
        counters.rx_bytes += size
        highest = self.rx_highest_link_seq
        if ((link_seq - highest) & 0xFFFFFFFF) < 2**31 or highest < 0:  # newer, mod 2**32
            self.rx_highest_link_seq = link_seq
    pmtu: PmtuSearch | None = None  # path MTU probing, when enabled (see pmtu)

    @property
    def up(self) -> bool:
        return self.health.state is LinkState.UP and self.path is not None
