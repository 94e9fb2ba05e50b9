"""A link's congestion window: how much it may have in flight, clocked by its own reports.

Theory of operation
-------------------
Each link carries data only while what it has in flight (sent, and not yet
covered by a report from the peer) is below its window.  So every link is
clocked by its own feedback, as each subflow of an MPTCP connection is by
its own ACKs: a link whose capacity drops fills its window and stops taking
packets within a round trip, whatever its rate estimate still says, and a
link whose capacity grows drains its window faster and takes more.  When
every window is full the inner packets wait at the sending edge (`egress`),
where queue management sees them.

The window is sized from what the link is measured to deliver (`estimator`),
over its pipe: its minimum round trip plus the time between the peer's
reports (a packet that arrived waits up to that long before a report covers
it, and the link must not run dry while it waits):

- normally at least `WINDOW_GAIN` x the best delivery rate of the last
  second x the pipe: room for the link to show it can carry more (the
  delivery it then shows raises the window again, so a link that got ten
  times faster is used ten times more within a few seconds, as in BBR's
  probing); it never shrinks without a queue to show for it, so a flow
  that sent little for a while (slow start, a pause) finds it as it was;
  but after a cut for a standing queue (below) what the link delivers now
  stands for its best rate for a while: the best of the last second is
  the rate it just showed it no longer has, and a window back at once to
  that (a cellular link fallen from 4 to 0.6 Mbit/s: 40 kB, half a second
  of queue) puts packets behind it that hold the whole bond up at the
  peer's reorder buffer.  The window then grows back by the gain over
  each report's delivery, as fast as the link shows it can carry more.
  For up to a second, in proportion to how much slower than the fastest
  link it is, as its queue cap is (below): a slow link's refill brings
  the bond little and holds it up, while the fastest link, or one alone,
  is the bond's throughput and snaps back as before;
- while the link holds a standing queue above `queue_cap_s`, what it
  delivers now times the pipe plus that cap: a link whose capacity dropped
  keeps a bounded backlog, not the seconds of buffer a modem has.

The cap follows how much the link's capacity varies (`estimator`'s
delivery spread, measured while the link is busy): a fixed-rate line needs
little queue to stay busy and gets QUEUE_CAP_MIN_S; a cellular link whose
capacity swings within a round trip keeps a queue in proportion, or it
would run dry at every swing.  But that queue makes the link's packets
late whenever its rate falls after they were given to it, and the peer's
reorder buffer holds the whole bond's behind them: so a link keeps it in
proportion to its rate against the fastest link's.  A link that carries a
tenth of the bond keeps a tenth of the queue (running dry at a swing costs
the bond little; its late packets cost the inner flow a loss event each);
the fastest link, or one alone, keeps all of it.

A loss on the link while it holds a queue (the peer asked for a packet it
carried again, see `reorder`: its buffer overflowed) is evidence too: the
window drops to what the link delivers times the pipe, and keeps no room
to probe for LOSS_PAUSE_S, as a TCP subflow halves its window and grows it
again slowly.  Without the loss repair the inner flow backed off at such a
loss; with it, nothing else would stop a window that overflows the link's
buffer on every probe.  A loss without a queue (a radio's, random) says
nothing about the window.

Nothing changes on a report without new packets: a silent link's health is
`links`'s business, and a window cut on no evidence would leave it useless
when it comes back.

Only data (and its copies) counts: control messages are small, and the
peer reports only while data arrives, so probes on an idle link would fill
a window that nothing empties.  For the same reason a window whose reports
stop coming (the last ones lost, the peer's data path gone) must not stay
full: after `REPORT_TIMEOUT_RTTS` round trips without one, what it had in
flight is written off (`expire`), as a TCP sender's retransmission timer
does, and the link takes data again; or nothing would ever be sent, and so
nothing reported, again.

Empty state: nothing in flight, the window at INITIAL_CWND_BYTES.
Invariant: `inflight_bytes` is the sum of the sizes in `unacked`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .estimator import DELIVERY_WINDOW_S, FEEDBACK_INTERVAL_S

WINDOW_GAIN = 1.5
QUEUE_CAP_MIN_S = 0.010
# Queue per unit of capacity variation, in round trips (see queue_cap_s),
# counting the variation above what report timing alone shows on a
# fixed-rate line (a few percent: a packet more or less per bucket).
VARIABILITY_QUEUE_RTTS = 4.0
SPREAD_NOISE = 0.1
DEFAULT_RTT_S = 0.1  # before the first RTT sample
CWND_MIN_BYTES = 4 * 1500
INITIAL_CWND_BYTES = 128 * 1500
MAX_TRACKED_SENDS = 65536
# The time between the peer's reports is measured (a peer may report at
# another pace than ours), within these bounds.
REPORT_GAP_MIN_S = 0.005
REPORT_GAP_MAX_S = 0.2
# The window counts as used when at least this full at a send.
USED_SHARE = 0.8
# No report for this many round trips (plus report gaps) while data is in
# flight: it is written off.
REPORT_TIMEOUT_RTTS = 3.0
REPORT_TIMEOUT_MIN_S = 0.2
# After a loss with a queue: no room to probe for this long (see the module doc).
LOSS_PAUSE_S = 2.0
# After a cut for a standing queue, the window grows from what the link
# delivers, not from its best rate of the last second, for at most as long
# as that best may still be from before the cut (less the closer the link
# is to the fastest: see the module doc).
SHRINK_MEMORY_S = DELIVERY_WINDOW_S
# A queue above this at a loss makes it a congestion loss.
LOSS_QUEUE_S = QUEUE_CAP_MIN_S


def variability_queue_s(min_rtt_s: float | None, delivery_spread: float,
                        report_gap_s: float = FEEDBACK_INTERVAL_S) -> float:
    """The queue a link needs to stay busy through the swings of its
    capacity: its relative swing over a feedback loop's worth of time."""
    loop = (DEFAULT_RTT_S if min_rtt_s is None else min_rtt_s) + report_gap_s
    return VARIABILITY_QUEUE_RTTS * max(delivery_spread - SPREAD_NOISE, 0.0) * loop


def queue_cap_s(min_rtt_s: float | None, delivery_spread: float,
                report_gap_s: float = FEEDBACK_INTERVAL_S, share: float = 1.0) -> float:
    """The standing queue a link may hold: more the more its capacity
    varies, in proportion to its `share` (its best delivery rate over the
    fastest link's; see the module doc)."""
    variability = variability_queue_s(min_rtt_s, delivery_spread, report_gap_s)
    return max(QUEUE_CAP_MIN_S, min(share, 1.0) * variability)


@dataclass(slots=True)
class LinkWindow:
    cwnd_bytes: float = INITIAL_CWND_BYTES
    inflight_bytes: int = 0
    report_gap_s: float = FEEDBACK_INTERVAL_S
    # Sends not yet covered by a report: (link sequence of the send's last
    # datagram, send time, bytes).
    unacked: deque[tuple[int, float, int]] = field(default_factory=deque)
    # The window was (nearly) full at a send since the last report: the
    # link was busy, what it delivered is what it can carry.
    used: bool = False
    losses: int = 0  # congestion losses that cut the window (see on_loss)
    # When the newest send a report covered left: the peer has what this
    # link carried until then (see egress.resend_recent).
    reported_sent_at: float = float("-inf")
    # While the link drains to measure its minimum RTT (see minrtt): what
    # it may have in flight, whatever its window.
    drain_cap_bytes: float = float("inf")
    _reported_at: float | None = None
    _cut_at: float = float("-inf")  # the last cut for a loss
    _shrunk_at: float = float("-inf")  # the last cut for a standing queue

    def has_room(self) -> bool:
        return self.inflight_bytes < self.cwnd_bytes and self.inflight_bytes < self.drain_cap_bytes

    def room_bytes(self) -> float:
        return min(self.cwnd_bytes, self.drain_cap_bytes) - self.inflight_bytes

    def on_send(self, link_seq: int, now: float, size: int) -> None:
        """Datagrams up to `link_seq`, `size` bytes in all, left at `now`."""
        unacked = self.unacked
        unacked.append((link_seq, now, size))
        self.inflight_bytes += size
        if len(unacked) > MAX_TRACKED_SENDS:
            self.inflight_bytes -= unacked.popleft()[2]
        if self.inflight_bytes >= USED_SHARE * self.cwnd_bytes:
            self.used = True

    def oldest_unacked(self) -> float | None:
        """When the oldest send not yet covered by a report left."""
        return self.unacked[0][1] if self.unacked else None

    def on_report(self, highest_seq: int, now: float, progressed: bool, queue_s: float,
                  min_rtt_s: float | None, delivery_max_bps: float, delivery_bps: float,
                  delivery_spread: float, share: float = 1.0) -> None:
        """A report covers everything up to `highest_seq`.  `progressed`: it
        shows new packets arriving, `queue_s` of standing queue on the link,
        which delivers `delivery_bps` now and `delivery_max_bps` at best
        lately, varying by `delivery_spread`; `share`: that best rate over
        the fastest link's."""
        unacked = self.unacked
        while unacked and unacked[0][0] <= highest_seq:
            _seq, sent, size = unacked.popleft()
            self.inflight_bytes -= size
            self.reported_sent_at = sent
        if self._reported_at is not None:
            gap = min(max(now - self._reported_at, REPORT_GAP_MIN_S), REPORT_GAP_MAX_S)
            self.report_gap_s += (gap - self.report_gap_s) / 8
        self._reported_at = now
        self.used = False
        if not progressed or delivery_max_bps <= 0:
            return
        pipe = (DEFAULT_RTT_S if min_rtt_s is None else min_rtt_s) + self.report_gap_s
        gain = WINDOW_GAIN if now >= self._cut_at + LOSS_PAUSE_S else 1.0
        window = gain * delivery_max_bps / 8 * pipe
        share = min(share, 1.0)
        cap = queue_cap_s(min_rtt_s, delivery_spread, self.report_gap_s, share)
        if queue_s > cap and delivery_bps > 0:
            # Evidence the window is too big for the link now: shrink it.
            self.cwnd_bytes = max(min(window, delivery_bps / 8 * (pipe + cap)), CWND_MIN_BYTES)
            self._shrunk_at = now
        else:
            if now < self._shrunk_at + SHRINK_MEMORY_S * (1.0 - share):
                # The best rate of the last second is one the link just
                # showed it no longer has: grow back with what it delivers
                # (see the module doc).
                window = gain * delivery_bps / 8 * pipe
            # Without a queue, what the link delivered says how much more it
            # may take, never less: a flow that sent little (slow start, an
            # application pause) says nothing about the link.
            self.cwnd_bytes = max(self.cwnd_bytes, window, CWND_MIN_BYTES)

    def on_loss(self, now: float, queue_s: float, min_rtt_s: float | None,
                delivery_max_bps: float) -> None:
        """The peer found a packet of this link lost, while the link held a
        standing queue of `queue_s`: see the module doc."""
        if queue_s < LOSS_QUEUE_S or delivery_max_bps <= 0:
            return
        rtt = DEFAULT_RTT_S if min_rtt_s is None else min_rtt_s
        if now < self._cut_at + rtt:
            return  # one cut per round trip: the losses of one overflow
        pipe = rtt + self.report_gap_s
        self.cwnd_bytes = max(min(self.cwnd_bytes, delivery_max_bps / 8 * pipe), CWND_MIN_BYTES)
        self._cut_at = now
        self.losses += 1

    def expire(self, now: float, srtt_s: float | None) -> bool:
        """Write off what is in flight if no report covered any of it for
        too long; True if it did (the link has room again)."""
        if not self.unacked:
            return False
        rtt = DEFAULT_RTT_S if srtt_s is None else srtt_s
        timeout = max(REPORT_TIMEOUT_RTTS * (rtt + self.report_gap_s), REPORT_TIMEOUT_MIN_S)
        heard = self.unacked[0][1] if self._reported_at is None else max(
            self._reported_at, self.unacked[0][1])
        if now - heard < timeout:
            return False
        self.forget()
        return True

    def forget(self) -> None:
        """What was in flight will never be reported (the link died)."""
        self.unacked.clear()
        self.inflight_bytes = 0

    def restart(self) -> None:
        """The link is back after an outage: start afresh."""
        self.forget()
        self.cwnd_bytes = INITIAL_CWND_BYTES
        self.used = False
