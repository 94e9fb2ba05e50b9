"""Synthetic link traces in mahimahi's format, seeded and documented, so the
real-links scenarios run without recorded traces.

Cellular model (`cellular`): a Markov-modulated Poisson process with outages.

* The rate is at one of ``len(CELLULAR_LEVELS)`` levels, fixed multiples of
  the trace's mean rate (0.2, 0.4, 0.7, 1.05, 1.5 and 2.2 times it, before
  the scaling below).  It stays at a level for an
  exponentially distributed time (mean ``CELLULAR_DWELL_S``), then moves to
  a neighbouring level, up or down with probability 1/2 (from the lowest or
  highest level always inward): a random walk, so capacity changes by a
  factor of 1.5-2 about every second and by 10x within a few seconds, as
  in the recorded LTE traces (their 1 s rates' autocorrelation is 0.7-0.9
  at a 1 s lag and 0.2-0.8 at 5 s; the model's, median over seeds, 0.83
  and 0.30).  The first level is drawn from
  the walk's stationary distribution.
* Within a level of rate R, delivery opportunities (1500 bytes each) form a
  Poisson process of rate R / 12000 bit per ms: mahimahi lines at whole
  milliseconds, several per millisecond when several fall into it.
* Outages: a Poisson process, on average one every ``CELLULAR_OUTAGE_EVERY_S``,
  each silent (no opportunity) for a uniform ``CELLULAR_OUTAGE_S`` range, as
  the recorded traces have gaps of 0.5-1.7 s about once in their 140 s.
* The level path is scaled so that the trace's mean (outages included)
  is exactly ``mean_mbit``; the Poisson draws add about 0.3 % of noise.

With these parameters the 1 s windows of a 140 s trace have, relative to
its mean, a 10th percentile of 0.31, a median of 0.92 and a 90th
percentile of 1.87 (medians over seeds 1-20; per seed 0.25-0.38,
0.71-1.07 and 1.56-2.43), as the four LTE traces in ``../shared/traces``
(0.25-0.39, 0.84-0.97 and 1.75-1.94; see their README and
`tests/bench/test_bench_synthetic.py`).

Starlink model (`starlink`): the rate and the base delay are constant for
``STARLINK_STEP_S`` (15 s, the published reconfiguration interval of the
satellite scheduler) and drawn afresh, uniformly in their ranges, at each
step; each step begins with an outage (both directions, the queue
flushed) of a uniform 50-300 ms.  Opportunities within a step are Poisson
at the step's rate.

Handover schedule (`handover_outages`): per link, outages of a uniform 1-3 s
at moments drawn every uniform 10-30 s (the first within 5-15 s), pushed
later where needed so that no two links are ever silent at once (with
``HANDOVER_GUARD_S`` between them).

Everything draws from ``random.Random(seed)``: the same seed gives the same
file, byte for byte.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.lab.linkmodel import OPPORTUNITY_BYTES, Outage

OPPORTUNITY_BITS = OPPORTUNITY_BYTES * 8

CELLULAR_LEVELS = (0.2, 0.4, 0.7, 1.05, 1.5, 2.2)  # x the mean, before scaling
CELLULAR_DWELL_S = 1.0
CELLULAR_OUTAGE_EVERY_S = 70.0
CELLULAR_OUTAGE_S = (0.3, 1.5)
CELLULAR_SECONDS = 140.0  # as long as the recorded LTE traces

STARLINK_STEP_S = 15.0
STARLINK_OUTAGE_S = (0.05, 0.3)

HANDOVER_EVERY_S = (10.0, 30.0)
HANDOVER_FIRST_S = (5.0, 15.0)
HANDOVER_LENGTH_S = (1.0, 3.0)
HANDOVER_GUARD_S = 1.0


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of constant rate: [start_s, end_s) at ``mbit`` (0: silent)."""

    start_s: float
    end_s: float
    mbit: float


def poisson_opportunities(segments: Iterable[Segment], rng: random.Random) -> list[int]:
    """Opportunity times (whole ms, ascending) of a Poisson process whose
    rate follows ``segments``."""
    times: list[int] = []
    for seg in segments:
        if seg.mbit <= 0:
            continue
        per_s = seg.mbit * 1e6 / OPPORTUNITY_BITS
        t = seg.start_s + rng.expovariate(per_s)
        while t < seg.end_s:
            times.append(int(t * 1000))
            t += rng.expovariate(per_s)
    return times


def _level_path(seconds: float, rng: random.Random) -> list[tuple[float, float, int]]:
    """(start_s, end_s, level index) of the random walk over the levels."""
    n = len(CELLULAR_LEVELS)
    # Stationary distribution of the reflecting walk: the ends half as likely.
    weights = [1.0 if i in (0, n - 1) else 2.0 for i in range(n)]
    level = rng.choices(range(n), weights)[0]
    path = []
    t = 0.0
    while t < seconds:
        end = min(seconds, t + rng.expovariate(1 / CELLULAR_DWELL_S))
        path.append((t, end, level))
        t = end
        if level == 0:
            level = 1
        elif level == n - 1:
            level = n - 2
        else:
            level += rng.choice((-1, 1))
    return path


def _random_gaps(seconds: float, every_s: float, length_s: tuple[float, float],
                 rng: random.Random) -> list[tuple[float, float]]:
    """(start_s, end_s) of silences, a Poisson process of mean gap ``every_s``."""
    gaps = []
    t = rng.expovariate(1 / every_s)
    while t < seconds:
        end = min(seconds, t + rng.uniform(*length_s))
        gaps.append((t, end))
        t = end + rng.expovariate(1 / every_s)
    return gaps


def _cut(segments: list[Segment], gaps: Sequence[tuple[float, float]]) -> list[Segment]:
    """``segments`` with the ``gaps`` silent."""
    out = []
    for seg in segments:
        pieces = [seg]
        for lo, hi in gaps:
            next_pieces = []
            for p in pieces:
                if hi <= p.start_s or lo >= p.end_s:
                    next_pieces.append(p)
                    continue
                if p.start_s < lo:
                    next_pieces.append(Segment(p.start_s, lo, p.mbit))
                if hi < p.end_s:
                    next_pieces.append(Segment(hi, p.end_s, p.mbit))
            pieces = next_pieces
        out += pieces
    return out


def cellular_segments(mean_mbit: float, seconds: float, seed: int | str) -> list[Segment]:
    """The cellular model's rate over time, its mean exactly ``mean_mbit``."""
    if mean_mbit <= 0 or seconds <= 0:
        raise ValueError("a cellular trace needs a positive mean rate and length")
    rng = random.Random(f"cellular:{seed}")
    path = _level_path(seconds, rng)
    gaps = _random_gaps(seconds, CELLULAR_OUTAGE_EVERY_S, CELLULAR_OUTAGE_S, rng)
    raw = _cut([Segment(a, b, CELLULAR_LEVELS[i]) for a, b, i in path], gaps)
    carried = sum((s.end_s - s.start_s) * s.mbit for s in raw)
    scale = mean_mbit * seconds / carried
    return [Segment(s.start_s, s.end_s, s.mbit * scale) for s in raw]


def cellular(mean_mbit: float, seconds: float = CELLULAR_SECONDS, seed: int | str = 1) -> list[int]:
    """A cellular trace (see the module's doc): opportunity times in ms."""
    rng = random.Random(f"cellular-opportunities:{seed}")
    times = poisson_opportunities(cellular_segments(mean_mbit, seconds, seed), rng)
    return _closed(times, seconds)


def _closed(times: list[int], seconds: float) -> list[int]:
    """A trace loops at its last line: end it at its full length."""
    end_ms = max(int(seconds * 1000), times[-1] if times else 1)
    if not times or times[-1] < end_ms:
        times.append(end_ms)
    return times


@dataclass(frozen=True, slots=True)
class StarlinkPlan:
    """One Starlink-like link: per step its rates each way and its base
    delay (one way, ms), and the outages that begin each step but the first."""

    step_s: float
    up_mbit: tuple[float, ...]
    down_mbit: tuple[float, ...]
    delay_steps: tuple[tuple[float, float], ...]  # (start_s, one-way delay ms)
    outages: tuple[Outage, ...]
    seed: int | str

    def trace(self, direction: str) -> list[int]:
        """The opportunities of ``direction`` ("up" or "down"), Poisson within each step."""
        rates = self.up_mbit if direction == "up" else self.down_mbit
        segs = [Segment(k * self.step_s, (k + 1) * self.step_s, r) for k, r in enumerate(rates)]
        times = poisson_opportunities(segs, random.Random(f"starlink-{direction}:{self.seed}"))
        return _closed(times, len(rates) * self.step_s)


def starlink(
    seconds: float,
    seed: int | str,
    up_mbit: tuple[float, float],
    down_mbit: tuple[float, float],
    delay_ms: tuple[float, float],
    step_s: float = STARLINK_STEP_S,
    outage_s: tuple[float, float] = STARLINK_OUTAGE_S,
) -> StarlinkPlan:
    """A Starlink-like link for ``seconds`` (see the module's doc)."""
    rng = random.Random(f"starlink:{seed}")
    steps = max(1, math.ceil(seconds / step_s))
    ups = tuple(round(rng.uniform(*up_mbit), 2) for _ in range(steps))
    downs = tuple(round(rng.uniform(*down_mbit), 2) for _ in range(steps))
    delays = tuple((k * step_s, round(rng.uniform(*delay_ms), 1)) for k in range(steps))
    outages = tuple(
        Outage(k * step_s, round(rng.uniform(*outage_s), 3), flush=True) for k in range(1, steps)
    )
    return StarlinkPlan(step_s, ups, downs, delays, outages, seed)


def handover_outages(
    n_links: int,
    seconds: float,
    seed: int | str,
    every_s: tuple[float, float] = HANDOVER_EVERY_S,
    length_s: tuple[float, float] = HANDOVER_LENGTH_S,
    first_s: tuple[float, float] = HANDOVER_FIRST_S,
    guard_s: float = HANDOVER_GUARD_S,
) -> list[tuple[Outage, ...]]:
    """Per link, its handover outages within ``seconds`` (queue kept), never
    two links at once (see the module's doc)."""
    rng = random.Random(f"handover:{seed}")
    next_start = [rng.uniform(*first_s) for _ in range(n_links)]
    out: list[list[Outage]] = [[] for _ in range(n_links)]
    busy_until = -math.inf
    while True:
        link = min(range(n_links), key=lambda i: next_start[i])
        start = max(next_start[link], busy_until + guard_s)
        if start >= seconds:
            break
        length = round(rng.uniform(*length_s), 3)
        out[link].append(Outage(round(start, 3), length, flush=False))
        busy_until = start + length
        next_start[link] = start + rng.uniform(*every_s)
    return [tuple(o) for o in out]


def write_trace(path: Path, times_ms: Sequence[int]) -> Path:
    """Write opportunity times as a mahimahi trace file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t}\n" for t in times_ms), encoding="ascii")
    return path


def window_rates_mbit(times_ms: Sequence[int], window_s: float = 1.0) -> list[float]:
    """The rate of each whole ``window_s`` window of a trace, Mbit/s."""
    if not times_ms:
        return []
    window_ms = window_s * 1000
    count = int(times_ms[-1] // window_ms)
    bins = [0] * count
    for t in times_ms:
        i = int(t // window_ms)
        if i < count:
            bins[i] += 1
    return [b * OPPORTUNITY_BITS / 1e6 / window_s for b in bins]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0 < q <= 100)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]
