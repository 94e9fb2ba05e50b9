"""Per-link estimates from the peer's feedback: loss, delay, delivery rate.

Theory of operation
-------------------
The receiver of a data stream reports, every `FEEDBACK_INTERVAL_S` while
data flows (the first report 2 ms after data starts or resumes, see
`FIRST_FEEDBACK_DELAY_S`), for each link: packets and bytes
received so far, the highest per-link sequence seen, and the link's one-way
delay (smoothed and its windowed minimum), both in the receiver's frame (its
clock minus ours: the unknown offset is the same for every link, so links
compare fairly).

From two successive reports of a link the sender derives:

- delivery rate: bytes that arrived / time between reports (the busy
  check), and over at least `DELIVERY_SPAN_S` (the capacity samples: a
  single report interval holds too few packets of a slow link).  The time
  is the receiver's: each report says when it was sent, on its clock; a
  report that waited in a queue on its way, or that overtook another,
  would otherwise divide seconds' worth of bytes by milliseconds;
- loss: 1 - packets received / packets sent up to the reported sequence
  (a link is FIFO, so everything below the highest seen either arrived or
  is lost);
- queueing delay: smoothed one-way delay minus its minimum;
- stall: data sent long ago is still unreported while nothing new arrives
  on the link, although the peer is alive (it sends reports): the link is
  dead, typically blackholed upstream.

How much the link's delivery varies while it is busy (`DeliverySpread`)
sizes the queue its window keeps (see `window`).

`rate_bps` is the capacity the adaptive scheduler assumes for the link.
While the link shows a standing queue it is saturated, so what arrives is
its capacity: `rate_bps` becomes a little less than the best delivery rate
of the last second (a little less, so the queue drains).  While the link
is busy and shows no queue, and has not been saturated for
`SATURATED_MEMORY_S`, `rate_bps` grows by `PROBE_GAIN` (probing for
more); a link seen delivering more than assumed, without a queue, is
assumed to carry what it delivered (a measurement, not a probe).  Without
that memory every pause of the inner TCP would look like spare capacity,
the probe would overfill the link, and its tail drops would cost the flow
a window cut each.
Either step is taken at most once per feedback loop (the link's RTT plus a
report interval): reports in between describe packets sent before the step
(a cut may follow sooner if the queue is still growing).
Reports can arrive out of order (each goes over the fastest link of the
moment): one older than the last is old news and changes nothing.
A report that shows no new packet on the link carries no new delay either
(the peer repeats its smoothed value): the queue last heard of keeps
draining instead of being renewed.
Only ratios between links and the time a packet takes to go through matter
to the scheduler; the inner TCP decides how much traffic there is.

Empty state: no report, no loss, no queue, `rate_bps = INITIAL_RATE_BPS`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Short enough that a link's window (see below) need not cover much more
# than its round trip; a report is a few dozen bytes per link.
FEEDBACK_INTERVAL_S = 0.02
# The first report after a pause in the data waits this long: the answer to
# that data (an ICMP echo reply, a TCP ACK) is usually ready within a
# millisecond, and a report due at once would leave ahead of it (the shell
# runs due timers before it reads the TUN again) and be handled ahead of it
# at the far end, delaying it.
FIRST_FEEDBACK_DELAY_S = 0.002
INITIAL_RATE_BPS = 10e6
MIN_RATE_BPS = 64e3
MAX_RATE_BPS = 40e9
PROBE_GAIN = 1.15
DRAIN_FACTOR = 0.98
BUSY_FRACTION = 0.8  # delivering >= 80 % of the assumed rate: the link is in use
DELIVERY_WINDOW_S = 1.0  # capacity = best delivery sample over this window
DELIVERY_SPAN_S = 0.25  # each delivery sample spans at least this long
# A link seen saturated this recently has a measured capacity: a moment
# without a queue (the inner TCP paused) is no reason to probe above it.
SATURATED_MEMORY_S = 1.0
SATURATED_CUT = 0.7
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
# A queue reported this recently (with new packets behind it) still stands.
QUEUE_FRESH_S = 3 * FEEDBACK_INTERVAL_S


def queue_delay_s(owd_us: int, floor_us: int) -> float:
    """A link's queueing delay, in seconds: a one-way delay (µs, in the
    receiver's frame) above that link's floor in the same frame."""
    return max(owd_us - floor_us, 0) / 1e6


SPREAD_BUCKET_S = 0.1
SPREAD_GAIN = 1 / 8
SPREAD_MEAN_GAIN = 1 / 4
SPREAD_MAX = 2.0
SPREAD_UNKNOWN = 0.3


@dataclass(slots=True)
class DeliverySpread:
    """How much a busy link's delivery rate varies: the smoothed relative
    deviation of its rate over SPREAD_BUCKET_S buckets from their running
    mean, counting only buckets throughout which the link was busy (else
    the variation is the sender's, not the link's).  A fixed-rate line
    shows a few percent (report timing); a cellular link tens of percent.

    Empty state: no bucket, spread SPREAD_UNKNOWN (a link is assumed to vary
    like a cellular one until measured steadier)."""

    spread: float = SPREAD_UNKNOWN
    _bytes: int = 0
    _seconds: float = 0.0
    _busy: bool = True
    _mean_bps: float = 0.0
    _samples: int = 0

    def add(self, delivered_bytes: int, seconds: float, busy: bool) -> None:
        self._bytes += delivered_bytes
        self._seconds += seconds
        self._busy = self._busy and busy
        if self._seconds < SPREAD_BUCKET_S:
            return
        rate = self._bytes * 8 / self._seconds
        if self._mean_bps <= 0:
            self._mean_bps = rate
        else:
            if self._busy:
                deviation = min(abs(rate - self._mean_bps) / self._mean_bps, SPREAD_MAX)
                # The plain mean of the first samples, then a moving one: the
                # assumed spread holds only until there is a measured one.
                self._samples += 1
                gain = max(SPREAD_GAIN, 1 / self._samples)
                self.spread += gain * (deviation - self.spread)
            self._mean_bps += SPREAD_MEAN_GAIN * (rate - self._mean_bps)
        self._bytes, self._seconds, self._busy = 0, 0.0, True


@dataclass(slots=True)
class LinkEstimator:
    rate_bps: float = INITIAL_RATE_BPS
    delivery_bps: float = 0.0
    delivery_max_bps: float = 0.0
    _spread: DeliverySpread = field(default_factory=lambda: DeliverySpread())
    loss: float = 0.0
    qdelay_s: float = 0.0
    qdelay_at: float = 0.0  # when qdelay_s was reported
    # The lowest queueing delay of the report interval: the queue no packet
    # escaped (`qdelay_s`, a mean, also carries the link's jitter).
    standing_qdelay_s: float = 0.0
    owd_min_us: int | None = None  # receiver frame; compare between links only
    reports: int = 0
    last_progress: float = 0.0  # when a report last showed new packets arriving
    # Last report, to difference the next one against.
    _rx_packets: int = 0
    _rx_bytes: int = 0
    _highest_seq: int = -1
    _data_seq: int = -1  # link sequence of the newest data packet sent
    _report_time: float = 0.0  # when the last report was sent (see `_report`'s clock)
    _delivery_samples: deque[tuple[float, float]] = field(default_factory=deque)
    _saturated_at: float = -1e9  # when a report last showed a standing queue
    _stepped_at: float = -1e9  # when rate_bps last changed
    _cut_qdelay_s: float = 0.0  # the queue that made the last cut
    _history: deque[tuple[float, int]] = field(default_factory=deque)  # (report clock, rx_bytes)
    def note_data(self, link_seq: int) -> None:
        """Data left on the link up to `link_seq`."""
        self._data_seq = link_seq

    @property
    def delivery_spread(self) -> float:
        """How much what the link delivers varies while busy (see DeliverySpread)."""
        return self._spread.spread

    def on_report(self, rx_packets: int, rx_bytes: int, highest_seq: int, owd_us: int,
                  owd_min_us: int, now: float, rtt_s: float | None = None,
                  owd_low_us: int | None = None, busy: bool = False,
                  sent_at: float | None = None) -> bool:
        """A report of the link (`busy`: its window was nearly full at a send
        since the last one; `sent_at`: the peer's clock when it sent the
        report, None if it does not say); True if it shows new packets
        arriving."""
        if highest_seq < self._highest_seq or (highest_seq == self._highest_seq
                                               and rx_packets < self._rx_packets):
            # Overtaken by a newer one (each report goes on the fastest link
            # of the moment, so one sent on a queued link arrives after
            # later ones): old news.  Taken as a baseline, the next report's
            # bytes since it, over the short time since it arrived, made
            # rates of several times the link's.
            return False
        progressed = highest_seq > self._highest_seq or self.reports == 0
        self._report(rx_packets, rx_bytes, highest_seq, owd_us, owd_min_us, now, rtt_s,
                     owd_low_us, busy, now if sent_at is None else sent_at)
        return progressed

    def _report(self, rx_packets: int, rx_bytes: int, highest_seq: int, owd_us: int,
                owd_min_us: int, now: float, rtt_s: float | None,
                owd_low_us: int | None, busy: bool, clock: float) -> None:
        """`clock`: when the report was sent, on the peer's clock if it says
        (else when it arrived): bytes delivered are divided by the time
        they took to arrive there, not by the spacing of the reports' own
        arrivals, which a queue on their way bunches up."""
        self.owd_min_us = owd_min_us
        if highest_seq > self._highest_seq or self.reports == 0:
            self.last_progress = now
            self.qdelay_s = queue_delay_s(owd_us, owd_min_us)
            low = owd_us if owd_low_us is None else owd_low_us
            self.standing_qdelay_s = queue_delay_s(low, owd_min_us)
            self.qdelay_at = now
        # else: nothing arrived on the link since the last report, so its
        # delay is the peer's old smoothed value, not news: the queue we
        # last heard of keeps draining (`queue_left_s`).  Taken as news, one
        # delayed early probe kept an idle link "queued" for over a second.
        if self.reports == 0 or rx_packets < self._rx_packets or clock < self._report_time:
            # (a new baseline: the peer's counters or its clock restarted)
            self._history.clear()
            self._history.append((clock, rx_bytes))
            self._remember(rx_packets, rx_bytes, highest_seq, clock)
            self.reports += 1
            return
        dt = clock - self._report_time
        if dt < FEEDBACK_INTERVAL_S * 0.5:
            return  # too close to the last one for a rate sample
        sent = highest_seq - self._highest_seq
        received = rx_packets - self._rx_packets
        if sent > 0:
            sample = min(max(1.0 - received / sent, 0.0), 1.0)
            self.loss += LOSS_GAIN * (sample - self.loss)
        # The smoothed rate (is the link busy?) follows every report, so
        # probing is not held back by a long sample's lag.
        recent = (rx_bytes - self._rx_bytes) * 8 / dt
        self._spread.add(rx_bytes - self._rx_bytes, dt, busy)
        self.delivery_bps += DELIVERY_GAIN * (recent - self.delivery_bps)
        self._remember(rx_packets, rx_bytes, highest_seq, clock)
        self.reports += 1
        # Capacity: delivery over the last DELIVERY_SPAN_S or more, not since the last
        # report: one report interval holds a handful of packets on a slow
        # link (8 at 2 Mbit/s), so its sample is off by a packet in either
        # direction, and the max over a window of such samples overestimates
        # the link by 10-15 %, which is a standing queue.
        history = self._history
        history.append((clock, rx_bytes))
        while len(history) > 2 and clock - history[1][0] >= DELIVERY_SPAN_S:
            history.popleft()
        then, bytes_then = history[0]
        if clock - then < DELIVERY_SPAN_S * 0.5:
            return
        delivery = (rx_bytes - bytes_then) * 8 / (clock - then)
        samples = self._delivery_samples  # decreasing values: the front is the max
        while samples and samples[-1][1] <= delivery:
            samples.pop()
        samples.append((clock, delivery))
        while clock - samples[0][0] > DELIVERY_WINDOW_S:
            samples.popleft()
        self.delivery_max_bps = samples[0][1]
        self._adapt_rate(now, rtt_s or 0.0, delivery)

    def _adapt_rate(self, now: float, rtt_s: float, delivery_bps: float) -> None:
        packet_s = FULL_PACKET_BITS / self.rate_bps
        high = max(QDELAY_HIGH_S, QDELAY_HIGH_PACKETS * packet_s)
        low = max(QDELAY_LOW_S, QDELAY_LOW_PACKETS * packet_s)
        # One step per feedback loop (the link's RTT plus a report interval):
        # the reports that follow a change still describe packets sent
        # before it: probing on each of them overshoots the link, cutting on
        # each cuts a draining link several times over.  A queue still growing is the
        # exception: the last cut was not enough (a new link assumed at
        # INITIAL_RATE_BPS, ten times too fast, must come down at once).
        settled = now - self._stepped_at >= rtt_s + FEEDBACK_INTERVAL_S
        if self.qdelay_s > high and self.delivery_max_bps > MIN_RATE_BPS:
            if settled or self.qdelay_s > self._cut_qdelay_s:
                # What it delivers now, saturated, is its capacity; never
                # below SATURATED_CUT of the old rate in one step: a queue in
                # the first moments of a flow meets delivery samples that
                # still include the idle time before it.  (Not the best
                # sample of the last second: at a capacity that dropped it is
                # stale, and with reports every few tens of ms the best of
                # many noisy samples sits above the link.)
                self.rate_bps = max(delivery_bps * DRAIN_FACTOR,
                                    self.rate_bps * SATURATED_CUT, MIN_RATE_BPS)
                self._stepped_at = now
                self._cut_qdelay_s = self.qdelay_s
            self._saturated_at = now
        elif delivery_bps * DRAIN_FACTOR > self.rate_bps and self.qdelay_s < low:
            # It carried more than we assumed, without a queue: a measurement
            # (a window bigger than what the rate fills lets it show).
            self.rate_bps = min(delivery_bps * DRAIN_FACTOR, MAX_RATE_BPS)
            self._stepped_at = now
        elif (settled and self.qdelay_s < low
              and self.delivery_bps >= BUSY_FRACTION * self.rate_bps
              and now - self._saturated_at > SATURATED_MEMORY_S):
            self.rate_bps = min(self.rate_bps * PROBE_GAIN, MAX_RATE_BPS)
            self._stepped_at = now

    def queue_left_s(self, now: float) -> float:
        """What is left at `now` of the queue last reported: it drains at the
        link's pace, and what we sent since is the scheduler's own account.
        Without this a link that once showed a queue and then got nothing
        would keep looking queued (no data, no new report) and stay unused."""
        return self._drained(self.qdelay_s, now)

    def _drained(self, queue_s: float, now: float) -> float:
        """What is left of a queue of `queue_s` reported at `qdelay_at`,
        drained at the link's pace since."""
        return max(queue_s - (now - self.qdelay_at), 0.0)

    def standing_queue_s(self, now: float) -> float:
        """The queue the link holds, for queue management (`aqm`): the
        lowest delay above the minimum that every packet of the last report
        interval met, while reports keep showing new packets (we keep
        refilling it, so it is not draining), else what is left of it.  The
        lowest, not the mean: jitter alone lifts the mean above the minimum
        with no queue at all.  Nor `queue_left_s`: it drops by up to a report
        interval between two reports of a saturated link, so a standing
        queue would come and go between reports."""
        if now - self.qdelay_at <= QUEUE_FRESH_S:
            return self.standing_qdelay_s
        return self._drained(self.standing_qdelay_s, now)

    @property
    def in_flight_packets(self) -> int:
        """Packets sent on the link up to the newest data packet that the
        peer has not reported yet (control messages in between count too;
        none once all data is reported, whatever probes went after it)."""
        return max(self._data_seq - self._highest_seq, 0)

    @property
    def highest_reported(self) -> int:
        return self._highest_seq

    def _remember(self, rx_packets: int, rx_bytes: int, highest_seq: int, now: float) -> None:
        self._rx_packets, self._rx_bytes = rx_packets, rx_bytes
        self._highest_seq, self._report_time = highest_seq, now

    def stalled(self, now: float, min_rtt_s: float | None, oldest_unacked: float | None) -> bool:
        """Data sent long ago on this link (at `oldest_unacked`) is still not
        reported received, and nothing new has arrived on it for as long (a
        queued link still shows progress; a dead one does not)."""
        if oldest_unacked is None:
            return False
        # The round trip and the queue the link was last seen to hold: data
        # behind a deep queue is late, not lost.
        expected = (min_rtt_s or 0.0) + self.qdelay_s
        limit = max(STALL_MIN_S, STALL_RTT_MULTIPLE * expected + 2 * FEEDBACK_INTERVAL_S)
        return now - oldest_unacked > limit and now - self.last_progress > limit

    def restart(self) -> None:
        """The link is back after an outage: what we learnt before is stale
        (a rate measured while it was dying, a queue long drained)."""
        self.rate_bps = INITIAL_RATE_BPS
        self.qdelay_s = self.standing_qdelay_s = 0.0
        self.loss = 0.0
        self._delivery_samples.clear()
        self._history.clear()
        self.delivery_max_bps = 0.0
        self._saturated_at = self._stepped_at = -1e9
        self._cut_qdelay_s = 0.0
        self.reports = 0  # the next report only sets the baseline
