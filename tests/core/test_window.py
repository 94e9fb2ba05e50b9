"""A link's window (stripe.window), driven report by report."""

from __future__ import annotations

import pytest

from stripe.estimator import FEEDBACK_INTERVAL_S
from stripe.window import (
    INITIAL_CWND_BYTES,
    LOSS_PAUSE_S,
    SHRINK_MEMORY_S,
    WINDOW_GAIN,
    LinkWindow,
    queue_cap_s,
    variability_queue_s,
)

RTT_S = 0.05
GAP_S = FEEDBACK_INTERVAL_S  # the report gap the window assumes: the pipe stays put


def _after(spread: float, queue_s: float, now_bps: float, best_bps: float = 20e6,
           share: float = 1.0) -> LinkWindow:
    """A window after one report without a queue and one with `queue_s` of
    it, the link delivering `now_bps` (its best lately `best_bps`, `share`
    of the fastest link's)."""
    window = LinkWindow()
    window.on_report(0, 1.0, True, 0.0, RTT_S, best_bps, best_bps, spread, share)
    window.on_report(0, 1.0 + GAP_S, True, queue_s, RTT_S, best_bps, now_bps, spread, share)
    return window


def test_without_a_queue_the_window_is_the_gain_window_and_never_shrinks() -> None:
    pipe = RTT_S + GAP_S
    gain_window = WINDOW_GAIN * 20e6 / 8 * pipe
    assert gain_window > INITIAL_CWND_BYTES
    window = _after(0.4, 0.0, 2e6)
    assert window.cwnd_bytes == pytest.approx(gain_window)
    # A flow that sends less (slow start, a pause) says nothing about the link.
    window.on_report(0, 1.0 + 2 * GAP_S, True, 0.0, RTT_S, 2e6, 2e6, 0.4)
    assert window.cwnd_bytes == pytest.approx(gain_window)


def test_a_standing_queue_cuts_the_window_of_a_link_whose_capacity_varies() -> None:
    """A cellular-like link (its delivery varies by 40 %) with 200 ms of queue
    at half its best rate: the window is what it delivers now over the pipe
    plus its cap, a bounded backlog."""
    spread = 0.4
    window = _after(spread, 0.2, 10e6)
    cap = queue_cap_s(RTT_S, spread, GAP_S)
    assert 0.2 > cap > variability_queue_s(RTT_S, 0.0, GAP_S) == 0.0
    assert window.cwnd_bytes == pytest.approx(10e6 / 8 * (RTT_S + GAP_S + cap))


def test_after_a_cut_for_a_queue_a_slow_link_grows_back_with_what_it_delivers() -> None:
    """A cellular link at a tenth of the fastest link's rate fell from 20
    to 1 Mbit/s under a queue: once the queue is gone, its window is not
    the gain over its best rate of the last second (20 Mbit/s: seconds of
    queue at 1) but over what it delivers, growing as it delivers more;
    0.9 s after the last cut (a second, less its share), the best rate
    again (by then the estimator's best is after the cut)."""
    spread, share = 0.4, 0.1
    window = _after(spread, 0.2, 1e6, share=share)
    cut = window.cwnd_bytes
    assert cut < 1e6 / 8 * 0.5
    window.on_report(0, 1.0 + 2 * GAP_S, True, 0.0, RTT_S, 20e6, 1e6, spread, share)
    pipe = RTT_S + window.report_gap_s
    assert window.cwnd_bytes == pytest.approx(max(cut, WINDOW_GAIN * 1e6 / 8 * pipe))
    window.on_report(0, 1.0 + 3 * GAP_S, True, 0.0, RTT_S, 20e6, 3e6, spread, share)
    pipe = RTT_S + window.report_gap_s
    assert window.cwnd_bytes == pytest.approx(WINDOW_GAIN * 3e6 / 8 * pipe)
    later = 1.0 + GAP_S + SHRINK_MEMORY_S * (1 - share) + 0.001
    window.on_report(0, later, True, 0.0, RTT_S, 20e6, 3e6, spread, share)
    pipe = RTT_S + window.report_gap_s
    assert window.cwnd_bytes == pytest.approx(WINDOW_GAIN * 20e6 / 8 * pipe)


def test_after_a_cut_for_a_queue_the_fastest_link_takes_its_best_rate_again() -> None:
    """The fastest link (or one alone) is the bond's throughput: once its
    queue is gone, the gain over its best rate of the last second at once."""
    window = _after(0.4, 0.2, 1e6)
    window.on_report(0, 1.0 + 2 * GAP_S, True, 0.0, RTT_S, 20e6, 1e6, 0.4)
    pipe = RTT_S + window.report_gap_s
    assert window.cwnd_bytes == pytest.approx(WINDOW_GAIN * 20e6 / 8 * pipe)


def test_a_slower_link_keeps_its_queue_in_proportion_to_its_rate_against_the_fastest() -> None:
    """A cellular-like link at a tenth of the fastest link's rate may keep a
    tenth of the variability queue (its late packets hold the whole bond
    up); the fastest keeps all of it; a fixed line gets the floor either way."""
    spread = 0.4
    full = queue_cap_s(RTT_S, spread, GAP_S)
    assert queue_cap_s(RTT_S, spread, GAP_S, 1.0) == full
    assert queue_cap_s(RTT_S, spread, GAP_S, 0.1) == pytest.approx(max(0.1 * full, 0.010))
    assert queue_cap_s(RTT_S, 0.0, GAP_S, 0.1) == queue_cap_s(RTT_S, 0.0, GAP_S) == 0.010
    window = LinkWindow()
    window.on_report(0, 1.0, True, 0.0, RTT_S, 2e6, 2e6, spread, 0.1)
    window.on_report(0, 1.0 + GAP_S, True, 0.2, RTT_S, 2e6, 1e6, spread, 0.1)
    cap = queue_cap_s(RTT_S, spread, GAP_S, 0.1)
    assert cap < full
    assert window.cwnd_bytes == pytest.approx(max(1e6 / 8 * (RTT_S + GAP_S + cap), 4 * 1500))


def test_a_loss_with_a_queue_cuts_the_window_and_pauses_probing() -> None:
    """A repaired loss while the link held a queue (its buffer overflowed):
    the window drops to delivery x pipe, no gain on top for LOSS_PAUSE_S,
    one cut per round trip; a loss without a queue (random) changes nothing."""
    pipe = RTT_S + GAP_S
    bdp = 10e6 / 8 * pipe
    window = _after(0.0, 0.0, 10e6, 10e6)
    assert window.cwnd_bytes == pytest.approx(max(WINDOW_GAIN * bdp, INITIAL_CWND_BYTES))
    window.cwnd_bytes = 3 * bdp  # grown by probing
    window.on_loss(2.0, 0.001, RTT_S, 10e6)  # no queue: a random loss
    assert window.cwnd_bytes == pytest.approx(3 * bdp) and window.losses == 0
    window.on_loss(2.0, 0.030, RTT_S, 10e6)
    assert window.cwnd_bytes == pytest.approx(bdp) and window.losses == 1
    window.on_loss(2.0 + RTT_S / 2, 0.030, RTT_S, 10e6)  # the same overflow
    assert window.losses == 1
    # Reports without a queue during the pause: no room to probe ...
    window.on_report(0, 2.0 + GAP_S, True, 0.0, RTT_S, 10e6, 10e6, 0.0)
    assert window.cwnd_bytes == pytest.approx(10e6 / 8 * (RTT_S + window.report_gap_s))
    # ... and after it, the gain again.
    window.on_report(0, 2.0 + LOSS_PAUSE_S + 0.01, True, 0.0, RTT_S, 10e6, 10e6, 0.0)
    assert window.cwnd_bytes == pytest.approx(
        WINDOW_GAIN * 10e6 / 8 * (RTT_S + window.report_gap_s))
