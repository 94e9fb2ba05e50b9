"""Per-link estimates from the peer's feedback: loss, delay, delivery rate.

Theory of operation
-------------------
The receiver of a data stream reports, every `FEEDBACK_INTERVAL_S` while
data flows, for each link: packets and bytes received so far, the highest
per-link sequence seen, and the link's one-way delay (smoothed and its
windowed minimum), both in the receiver's frame (its clock minus ours: the
unknown offset is the same for every link, so links compare fairly).

From two successive reports of a link the sender derives:

- delivery rate: bytes that arrived / time between reports;
- loss: 1 - packets received / packets sent up to the reported sequence
  (a link is FIFO, so everything below the highest seen either arrived or
  is lost);
- queueing delay: smoothed one-way delay minus its minimum;
- stall: data sent long ago is still unreported while nothing new arrives
  on the link, although the peer is alive (it sends reports): the link is
  dead, typically blackholed upstream.

`rate_bps` is the capacity the adaptive scheduler assumes for the link.
While the link shows a standing queue it is saturated, so what arrives is
its capacity: `rate_bps` becomes a little less than the best delivery rate
of the last second (a little less, so the queue drains).  While the link
is busy and shows no queue, `rate_bps` grows by `PROBE_GAIN` per report
(probing for more).  Only ratios between links and the time a packet takes
to go through matter to the scheduler; the inner TCP decides how much
traffic there is.

Empty state: no report, no loss, no queue, `rate_bps = INITIAL_RATE_BPS`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FEEDBACK_INTERVAL_S = 0.05
INITIAL_RATE_BPS = 10e6
MIN_RATE_BPS = 64e3
MAX_RATE_BPS = 40e9
PROBE_GAIN = 1.15
DRAIN_FACTOR = 0.95
BUSY_FRACTION = 0.8  # delivering >= 80 % of the assumed rate: the link is in use
DELIVERY_WINDOW_S = 1.0  # capacity = best delivery sample over this window
# Queueing delay thresholds, never below what a few full-size packets take
# to serialize at the link's rate (5.6 ms each at 2 Mbit/s): data packets
# always look that much "queued" next to the small probes that set the
# minimum.
QDELAY_HIGH_S = 0.015  # a standing queue: the link is saturated
QDELAY_HIGH_PACKETS = 4
QDELAY_LOW_S = 0.005  # no queue to speak of
QDELAY_LOW_PACKETS = 2
FULL_PACKET_BITS = 1500 * 8
LOSS_GAIN = 0.25
DELIVERY_GAIN = 0.5
# A link whose data goes unacknowledged this long while the peer keeps
# reporting is taken out of the schedule before probes would notice.
STALL_MIN_S = 0.10
STALL_RTT_MULTIPLE = 2.0  # of the link's minimum RTT, plus two report intervals
MAX_TRACKED_SENDS = 65536


@dataclass(slots=True)
class LinkEstimator:
    rate_bps: float = INITIAL_RATE_BPS
    delivery_bps: float = 0.0
    delivery_max_bps: float = 0.0
    loss: float = 0.0
    qdelay_s: float = 0.0
    owd_min_us: int | None = None  # receiver frame; compare between links only
    reports: int = 0
    last_progress: float = 0.0  # when a report last showed new packets arriving
    # Last report, to difference the next one against.
    _rx_packets: int = 0
    _rx_bytes: int = 0
    _highest_seq: int = -1
    _report_time: float = 0.0
    _delivery_samples: deque[tuple[float, float]] = field(default_factory=deque)
    # Send times of data packets not yet covered by a report (stall detection).
    unacked: deque[tuple[int, float]] = field(default_factory=deque)

    def on_send(self, link_seq: int, now: float) -> None:
        unacked = self.unacked
        unacked.append((link_seq, now))
        if len(unacked) > MAX_TRACKED_SENDS:
            unacked.popleft()

    def on_report(self, rx_packets: int, rx_bytes: int, highest_seq: int, owd_us: int,
                  owd_min_us: int, now: float) -> None:
        unacked = self.unacked
        while unacked and unacked[0][0] <= highest_seq:
            unacked.popleft()
        if highest_seq > self._highest_seq or self.reports == 0:
            self.last_progress = now
        self.owd_min_us = owd_min_us
        self.qdelay_s = max(owd_us - owd_min_us, 0) / 1e6
        if self.reports == 0 or rx_packets < self._rx_packets or highest_seq < self._highest_seq:
            self._remember(rx_packets, rx_bytes, highest_seq, now)
            self.reports += 1
            return
        dt = now - self._report_time
        if dt < FEEDBACK_INTERVAL_S * 0.5:
            return  # too close to the last one for a rate sample
        sent = highest_seq - self._highest_seq
        received = rx_packets - self._rx_packets
        if sent > 0:
            sample = min(max(1.0 - received / sent, 0.0), 1.0)
            self.loss += LOSS_GAIN * (sample - self.loss)
        delivery = (rx_bytes - self._rx_bytes) * 8 / dt
        self.delivery_bps += DELIVERY_GAIN * (delivery - self.delivery_bps)
        self._remember(rx_packets, rx_bytes, highest_seq, now)
        self.reports += 1
        samples = self._delivery_samples  # decreasing values: the front is the max
        while samples and samples[-1][1] <= delivery:
            samples.pop()
        samples.append((now, delivery))
        while now - samples[0][0] > DELIVERY_WINDOW_S:
            samples.popleft()
        self.delivery_max_bps = samples[0][1]
        self._adapt_rate()

    def _adapt_rate(self) -> None:
        packet_s = FULL_PACKET_BITS / self.rate_bps
        high = max(QDELAY_HIGH_S, QDELAY_HIGH_PACKETS * packet_s)
        low = max(QDELAY_LOW_S, QDELAY_LOW_PACKETS * packet_s)
        if self.qdelay_s > high and self.delivery_max_bps > MIN_RATE_BPS:
            self.rate_bps = max(self.delivery_max_bps * DRAIN_FACTOR, MIN_RATE_BPS)
        elif self.qdelay_s < low and self.delivery_bps >= BUSY_FRACTION * self.rate_bps:
            self.rate_bps = min(self.rate_bps * PROBE_GAIN, MAX_RATE_BPS)

    @property
    def highest_reported(self) -> int:
        return self._highest_seq

    def _remember(self, rx_packets: int, rx_bytes: int, highest_seq: int, now: float) -> None:
        self._rx_packets, self._rx_bytes = rx_packets, rx_bytes
        self._highest_seq, self._report_time = highest_seq, now

    def stalled(self, now: float, min_rtt_s: float | None) -> bool:
        """Data sent long ago on this link is still not reported received, and
        nothing new has arrived on it for as long (a queued link still shows
        progress; a dead one does not)."""
        if not self.unacked:
            return False
        limit = max(STALL_MIN_S,
                    STALL_RTT_MULTIPLE * (min_rtt_s or 0.0) + 2 * FEEDBACK_INTERVAL_S)
        return now - self.unacked[0][1] > limit and now - self.last_progress > limit

    def forget_unacked(self) -> None:
        self.unacked.clear()

    def restart(self) -> None:
        """The link is back after an outage: what we learnt before is stale
        (a rate measured while it was dying, a queue long drained)."""
        self.unacked.clear()
        self.rate_bps = INITIAL_RATE_BPS
        self.qdelay_s = 0.0
        self.loss = 0.0
        self._delivery_samples.clear()
        self.delivery_max_bps = 0.0
        self.reports = 0  # the next report only sets the baseline
