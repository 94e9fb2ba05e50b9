"""The link estimator alone, fed synthetic peer reports on a fake clock:
capacity from delivery samples, when it probes, how a reported queue ages."""

from __future__ import annotations

import itertools
import random

import msgpack
import pytest

from stripe import control
from stripe.estimator import (
    FEEDBACK_INTERVAL_S,
    SATURATED_CUT,
    SATURATED_MEMORY_S,
    LinkEstimator,
)

DATAGRAM = 1442  # a full tunnel datagram
OWD_MIN_US = 50_000


class Reporter:
    """The receiving end of one saturated link: whole datagrams arrive at
    `rate_bps`; reports leave every FEEDBACK_INTERVAL_S and reach the sender
    with `jitter_s` of random delay (as feedback does over a real link).
    `rtt_s`: the link RTT the sender knows (None: unknown)."""

    def __init__(self, est: LinkEstimator, rate_bps: float, jitter_s: float, seed: int = 7):
        self.est, self.rate_bps, self.jitter_s = est, rate_bps, jitter_s
        self.rng = random.Random(seed)
        self.t = 0.0
        self.seq = 0
        self.rtt_s: float | None = None

    def run(self, seconds: float, qdelay_s: float) -> None:
        for _ in range(round(seconds / FEEDBACK_INTERVAL_S)):
            self.report(qdelay_s)

    def report(self, qdelay_s: float) -> None:
        """One report interval later, the link showing `qdelay_s` of queue."""
        self.t += FEEDBACK_INTERVAL_S
        packets = int(self.t * self.rate_bps / 8 / DATAGRAM)  # whole datagrams only
        arrival = self.t + self.rng.uniform(0, self.jitter_s)
        self.est.on_report(packets, packets * DATAGRAM, packets - 1,
                           OWD_MIN_US + int(qdelay_s * 1e6), OWD_MIN_US, arrival, self.rtt_s)


@pytest.mark.parametrize("rate_bps", [2e6, 10e6, 100e6])
def test_saturated_link_capacity_within_a_few_percent(rate_bps: float) -> None:
    # Per-report samples at 2 Mbit/s hold 8 or 9 datagrams over 45-55 ms:
    # their maximum overestimates the link by >10 %, and a scheduler that
    # believes it keeps a standing queue on the slow link and overflows it.
    est = LinkEstimator(rate_bps=rate_bps)
    reporter = Reporter(est, rate_bps, jitter_s=0.005)
    reporter.run(3.0, qdelay_s=0.030)
    assert 0.93 * rate_bps <= est.rate_bps <= 1.0 * rate_bps, est.rate_bps / rate_bps


def test_no_probing_soon_after_a_standing_queue() -> None:
    est = LinkEstimator(rate_bps=5e6)
    reporter = Reporter(est, 5e6, jitter_s=0.0)
    reporter.run(2.0, qdelay_s=0.030)
    measured = est.rate_bps
    # The inner TCP pauses for a moment: no queue, the link still busy.  The
    # rate may follow what the link is seen to deliver, never probe above it.
    reporter.run(SATURATED_MEMORY_S * 0.8, qdelay_s=0.0)
    assert measured <= est.rate_bps <= 5e6
    # Busy without a queue for longer: the link may have grown, probe.
    reporter.run(SATURATED_MEMORY_S, qdelay_s=0.0)
    assert est.rate_bps > measured


def test_first_queue_does_not_collapse_the_rate() -> None:
    # The first report with a queue comes while the delivery window still
    # holds the idle start of the flow.
    est = LinkEstimator(rate_bps=10e6)
    reporter = Reporter(est, 1e6, jitter_s=0.0)  # only 1 Mbit/s arrived so far
    reporter.run(0.3, qdelay_s=0.0)
    before = est.rate_bps
    reporter.run(FEEDBACK_INTERVAL_S, qdelay_s=0.050)
    assert est.rate_bps == pytest.approx(before * SATURATED_CUT)


def test_reported_queue_drains_while_nothing_is_sent() -> None:
    est = LinkEstimator()
    reporter = Reporter(est, 2e6, jitter_s=0.0)
    reporter.run(0.5, qdelay_s=0.030)
    at = reporter.t
    assert est.queue_left_s(at) == pytest.approx(0.030, abs=1e-4)
    assert est.queue_left_s(at + 0.020) == pytest.approx(0.010, abs=1e-4)
    assert est.queue_left_s(at + 0.100) == 0.0


def test_a_report_without_new_packets_does_not_renew_the_queue() -> None:
    # An idle link hears one probe a while; between probes the peer repeats
    # its old smoothed delay.  That is no news: the queue it once showed
    # must drain on schedule, not be renewed by each repeat.
    est = LinkEstimator()
    est.on_report(1, 100, 0, OWD_MIN_US, OWD_MIN_US, 0.0)
    est.on_report(2, 200, 1, OWD_MIN_US + 60_000, OWD_MIN_US, 0.05)  # a delayed probe
    assert est.queue_left_s(0.05) == pytest.approx(0.060)
    for i in range(2, 6):  # no packet since: the same highest sequence
        est.on_report(2, 200, 1, OWD_MIN_US + 60_000, OWD_MIN_US, 0.05 * i)
    assert est.queue_left_s(0.25) == 0.0
    # A new packet brings news again.
    est.on_report(3, 300, 2, OWD_MIN_US + 20_000, OWD_MIN_US, 0.30)
    assert est.queue_left_s(0.30) == pytest.approx(0.020)


@pytest.mark.parametrize("rtt_s", [0.0, 0.1, 0.3])
def test_one_rate_step_per_feedback_loop(rtt_s: float) -> None:
    # Reports within a round trip of a cut still describe packets sent at
    # the old rate: cutting again on each compounds 0.7 x 0.7 x ... far below
    # the link.  One step per round trip plus a report interval.
    est = LinkEstimator(rate_bps=10e6)
    reporter = Reporter(est, 1e6, jitter_s=0.0)
    reporter.run(0.3, qdelay_s=0.0)
    reporter.rtt_s = rtt_s
    steps = []
    rate = est.rate_bps
    for _ in range(round(1.0 / FEEDBACK_INTERVAL_S)):  # a second of standing queue
        reporter.report(0.050)
        if est.rate_bps != rate:
            steps.append(reporter.t)
            rate = est.rate_bps
    loop = rtt_s + FEEDBACK_INTERVAL_S
    assert steps, "a standing queue must cut the rate"
    assert all(b - a >= loop - 1e-9 for a, b in itertools.pairwise(steps)), steps
    assert len(steps) >= min(3, int(1.0 / loop) - 1), steps  # and it does keep cutting


def test_a_growing_queue_cuts_again_at_once() -> None:
    # A link assumed ten times faster than it is: its queue grows report
    # after report, and each one cuts without waiting out the loop.
    est = LinkEstimator(rate_bps=10e6)
    reporter = Reporter(est, 1e6, jitter_s=0.0)
    reporter.run(0.3, qdelay_s=0.0)
    reporter.rtt_s = 0.2
    rates = []
    for i in range(1, 5):
        reporter.report(i * 0.020)
        rates.append(est.rate_bps)
    assert rates == pytest.approx([10e6 * SATURATED_CUT ** k for k in range(1, 5)])


def test_a_report_overtaken_by_newer_ones_is_old_news() -> None:
    # Reports go on whichever link is fastest at the moment, so one sent on
    # a link with a deep queue arrives after later ones.  Taken as a
    # counter reset and baseline, the next reports' bytes since it, over the
    # short time since it arrived, made rates several times the link's.
    rate_bps = 10e6
    est = LinkEstimator(rate_bps=rate_bps)
    sent = []
    for i in range(1, 200):  # 4 s of reports, every 25th held 0.4 s on the way
        t = i * FEEDBACK_INTERVAL_S
        packets = int(t * rate_bps / 8 / DATAGRAM)
        sent.append((t + (0.4 if i % 25 == 0 else 0.01), packets))
    highest = []
    for arrival, packets in sorted(sent):
        est.on_report(packets, packets * DATAGRAM, packets - 1, OWD_MIN_US + 10_000,
                      OWD_MIN_US, arrival, 0.05)
        highest.append(est.highest_reported)
        assert est.delivery_max_bps <= 1.1 * rate_bps, est.delivery_max_bps / rate_bps
    assert highest == sorted(highest)
    assert est.delivery_max_bps >= 0.9 * rate_bps


def _bunched_reports(rate_bps: float) -> list[tuple[float, float, int]]:
    """(arrival, sent, packets) of 4 s of reports sent every interval over a
    path whose queue fills to 0.3 s every half second and drains over the
    next 0.35 s: they arrive in order, but those sent while it drains
    arrive six times closer together than they left."""
    out = []
    for i in range(1, 200):
        t = i * FEEDBACK_INTERVAL_S
        packets = int(t * rate_bps / 8 / DATAGRAM)
        queue = 0.3 * max(0.0, 1.0 - (t % 0.5) / 0.35)
        out.append((t + 0.01 + queue, t, packets))
    assert [a for a, _, _ in out] == sorted(a for a, _, _ in out)
    return out


@pytest.mark.parametrize("peer_clock", [True, False])
def test_delivery_is_measured_on_the_receivers_clock(peer_clock: bool) -> None:
    # Without it the bytes of a quarter second, reported by reports that
    # left a quarter second apart, are divided by the few tens of ms between
    # their arrivals.
    rate_bps = 10e6
    est = LinkEstimator(rate_bps=rate_bps)
    peak = 0.0
    for arrival, sent, packets in _bunched_reports(rate_bps):
        est.on_report(packets, packets * DATAGRAM, packets - 1, OWD_MIN_US + 10_000,
                      OWD_MIN_US, arrival, 0.05, sent_at=sent if peer_clock else None)
        peak = max(peak, est.delivery_max_bps)
    if peer_clock:
        assert 0.9 * rate_bps <= peak <= 1.1 * rate_bps, peak / rate_bps
    else:
        assert peak > 1.5 * rate_bps  # what the receiver's clock is for


def test_feedback_carries_the_receivers_clock_and_reads_a_report_without_it() -> None:
    report = control.LinkReport(1, 10, 12_000, 9, 5_300, 5_000, 5_100)
    for clock in (None, 0, 123_456_789_012):
        feedback = control.Feedback((report,), clock)
        assert control.decode(control.encode(feedback, 7))[0] == feedback
    for bad in (-1, "now", -(2**63), 1.5):
        body = {"t": 4, "l": [[1, 10, 12_000, 9, 5_300, 5_000, 5_100]], "c": bad, "d": 7}
        with pytest.raises(control.ControlError, match="bad_integer"):
            control.decode(msgpack.packb(body))
