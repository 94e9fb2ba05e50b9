"""The link model the emulator runs (`bench.lab.linkmodel`), as pure code:
trace parsing, mahimahi's delivery opportunities, the drop-tail queue,
outages, Gilbert-Elliott burst loss (fixed seeds), delay steps."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.lab.linkmodel import (
    OPPORTUNITY_BYTES,
    Bottleneck,
    GilbertElliott,
    Outage,
    Steps,
    Trace,
    TraceError,
)


def _trace_file(tmp_path: Path, text: str, name: str = "t.trace") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_a_good_trace(tmp_path: Path) -> None:
    trace = Trace.load(_trace_file(tmp_path, "0\n3\n3\n\n7\n10\n"))
    assert trace.times_ms == (0, 3, 3, 7, 10) and trace.period_ms == 10
    assert trace.name == "t.trace"
    # 5 opportunities of 1500 bytes every 10 ms.
    assert trace.mean_rate_bps == 5 * 1500 * 8 * 100


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("1\n2\nx3\n", 3, "whole number"),
        ("1\n2\n-4\n", 3, "whole number"),
        ("1\n2.5\n", 2, "whole number"),
        ("5\n9\n7\n", 3, "comes before"),
        ("1\n\u00b2\n", 2, "whole number"),  # a superscript digit is no digit here
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, text: str, line: int, why: str) -> None:
    path = _trace_file(tmp_path, text)
    with pytest.raises(TraceError, match=why) as info:
        Trace.load(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_silences_within_a_horizon_loop_with_the_trace_and_stop_at_it() -> None:
    # Opportunities at 100, 150 and 600 ms, looping every 600 ms: silent
    # 0-100, 150-600, then 600-700 and 750-1200 on the second loop.
    trace = Trace((100, 150, 600), 600)
    assert trace.silences(1000, 100) == [(0, 100), (150, 450), (600, 100), (750, 250)]
    assert trace.silences(1000, 300) == [(150, 450)]  # the last one cut at 1000: 250
    assert trace.silences(1300, 300) == [(150, 450), (750, 450)]
    assert Trace.constant(12.0).silences(5000, 2) == []


@pytest.mark.parametrize("text", ["", "\n\n", "0\n0\n0\n"])
def test_a_trace_without_a_positive_time_is_refused(tmp_path: Path, text: str) -> None:
    path = _trace_file(tmp_path, text)
    with pytest.raises(TraceError, match="no delivery opportunity after 0 ms") as info:
        Trace.load(path)
    assert str(path) in str(info.value)


def test_opportunities_loop_at_the_period() -> None:
    trace = Trace((2, 5, 10, 10), 10)
    assert [trace.opportunity_ms(i) for i in range(6)] == [2, 5, 10, 10, 12, 15]
    assert trace.opportunities_between(0, 10) == 2  # the two at 10 ms are not before 10
    assert trace.opportunities_between(0, 10.5) == 4
    assert trace.opportunities_between(10, 20) == 4  # 10, 10, 12, 15
    assert trace.opportunities_between(0, 100) == 10 * 4 - 2
    # count_before(t) is the index of the first opportunity at or after t.
    for t in (0, 2, 3, 10, 11, 20, 25):
        first = trace.count_before(t)
        assert trace.opportunity_ms(first) >= t
        assert first == 0 or trace.opportunity_ms(first - 1) < t


def test_one_packet_per_ms_is_12_mbit() -> None:
    assert Trace(tuple(range(1, 1001)), 1000).mean_rate_bps == 12e6
    constant = Trace.constant(12)
    assert len(constant.times_ms) == 1000 and constant.mean_rate_bps == 12e6
    assert Trace.constant(6).opportunities_between(0, 1000) == 500


def _packets(bottleneck: Bottleneck, until: float) -> list[tuple[float, object]]:
    """Serve every millisecond up to `until` (seconds), as the emulator would."""
    gone = []
    for ms in range(int(until * 1000) + 1):
        gone += bottleneck.serve(ms / 1000)
    return gone


def test_packets_leave_at_opportunities_in_order() -> None:
    b = Bottleneck(Trace((10, 20, 30, 40), 40), queue_bytes=10 * 1500)
    for i in range(3):
        assert b.offer(0.0, 1500, i) is None
    assert b.backlog_bytes == 4500 and b.next_time() == 0.010
    assert [(round(t, 3), item) for t, item in _packets(b, 0.05)] == [
        (0.01, 0), (0.02, 1), (0.03, 2)]
    assert b.next_time() is None


def test_small_packets_share_an_opportunity_and_big_ones_span_two() -> None:
    b = Bottleneck(Trace((10, 20, 30), 30), queue_bytes=10_000)
    b.offer(0.0, 500, "a")
    b.offer(0.0, 1000, "b")
    b.offer(0.0, 2000, "c")  # 2000 bytes: 1500 at 20 ms, the rest at 30 ms
    assert [(round(t, 3), item) for t, item in _packets(b, 0.03)] == [
        (0.01, "a"), (0.01, "b"), (0.03, "c")]


def test_opportunities_of_an_empty_queue_are_lost() -> None:
    b = Bottleneck(Trace((10, 20, 30, 40), 40), queue_bytes=10_000)
    assert _packets(b, 0.025) == []
    b.offer(0.025, 1500, "late")  # 10 and 20 ms passed unused
    assert [(round(t, 3), i) for t, i in _packets(b, 0.05)] == [(0.03, "late")]


def test_drop_tail_in_bytes() -> None:
    b = Bottleneck(Trace((1000,), 1000), queue_bytes=3000)
    assert [b.offer(0.0, 1400, i) for i in range(3)] == [None, None, "queue_drop"]
    assert b.offer(0.0, 200, "small") is None  # 2800 + 200 fits
    assert b.backlog_bytes == 3000


def test_a_saturated_bottleneck_delivers_its_capacity() -> None:
    rng = random.Random(3)
    trace = Trace(tuple(sorted(rng.randrange(1, 1000) for _ in range(700))), 1000)
    b = Bottleneck(trace, queue_bytes=100 * 1500)
    delivered = 0
    for ms in range(3000):
        now = ms / 1000
        while b.offer(now, 1500, ms) is None:
            pass
        delivered += len(b.serve(now)) * 1500
    assert delivered == b.capacity_bytes(0, 2.9995) == 3 * 700 * OPPORTUNITY_BYTES


def test_restart_replays_the_trace_from_its_start() -> None:
    b = Bottleneck(Trace((10, 20), 1000), queue_bytes=10_000)
    b.restart(5.0)
    b.offer(5.0, 1500, "x")
    assert b.next_time() == pytest.approx(5.010)
    assert [(round(t, 3), i) for t, i in b.serve(6.0)] == [(5.01, "x")]


def test_capacity_excludes_outages() -> None:
    trace = Trace.constant(12)  # at 1, 2, ... 1000 ms of each second
    b = Bottleneck(trace, 10_000, (Outage(1.0, 0.5), Outage(3.0, 1.0, flush=True)))
    assert b.capacity_bytes(0, 1) == 999 * 1500
    assert b.capacity_bytes(1, 2) == 500 * 1500
    assert b.capacity_bytes(0, 5) == (4999 - 500 - 1000) * 1500


def test_overlapping_outages_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Bottleneck(Trace.constant(1), 3000, (Outage(1.0, 1.0), Outage(1.5, 1.0)))


def test_an_outage_that_keeps_the_queue_delays_it() -> None:
    b = Bottleneck(Trace.constant(12), 100 * 1500, (Outage(0.0, 0.5),))
    for i in range(10):
        assert b.offer(0.1, 1500, i) is None  # queued, not refused
    assert b.serve(0.499) == []
    gone = b.serve(0.52)
    assert [i for _, i in gone] == list(range(10))
    assert min(t for t, _ in gone) >= 0.5 and b.flushed == 0


def test_an_outage_that_flushes_drops_what_waits_and_what_comes() -> None:
    b = Bottleneck(Trace((500, 1000), 1000), 100 * 1500, (Outage(0.2, 0.5, flush=True),))
    for i in range(5):
        b.offer(0.1, 1500, i)
    assert b.offer(0.3, 1500, "during") == "outage_drop"
    assert b.serve(0.8) == []  # the opportunity at 500 ms falls in the outage
    assert b.flushed == 5 and b.backlog_bytes == 0
    assert b.offer(0.8, 1500, "after") is None
    assert [i for _, i in b.serve(1.0)] == ["after"]


def test_gilbert_elliott_bursts_with_a_fixed_seed() -> None:
    rng = random.Random(7)
    ge = GilbertElliott(p=0.01, r=0.25)  # bursts of 4 packets on average, 1 in 26 packets bad
    lost = [ge.lose(rng) for _ in range(200_000)]
    rate = sum(lost) / len(lost)
    assert rate == pytest.approx(0.01 / (0.01 + 0.25), rel=0.1)
    bursts = []
    run = 0
    for x in lost:
        if x:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    assert sum(bursts) / len(bursts) == pytest.approx(1 / 0.25, rel=0.1)
    # Same seed, same losses.
    again = GilbertElliott(p=0.01, r=0.25)
    rng = random.Random(7)
    assert [again.lose(rng) for _ in range(1000)] == lost[:1000]


def test_gilbert_elliott_loses_in_good_state_too() -> None:
    rng = random.Random(1)
    ge = GilbertElliott(p=0.0, r=1.0, loss_good=0.02, loss_bad=1.0)  # never bad
    rate = sum(ge.lose(rng) for _ in range(100_000)) / 100_000
    assert rate == pytest.approx(0.02, rel=0.1)


def test_steps() -> None:
    steps = Steps(0.020, ((15.0, 0.030), (30.0, 0.012)))
    assert [steps.at(t) for t in (0.0, 14.99, 15.0, 29.0, 30.0, 99.0)] == [
        0.020, 0.020, 0.030, 0.030, 0.012, 0.012]
    with pytest.raises(ValueError):
        Steps(0.0, ((2.0, 1.0), (1.0, 1.0)))
