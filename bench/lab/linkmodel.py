"""What a real access link does to packets, as pure code the emulator runs.

A lane is one direction of one link.  Its bottleneck is modelled as in
mahimahi (Winstein, Sivaraman, Balakrishnan, NSDI 2013): a drop-tail queue
emptied only at *delivery opportunities*, each of which may carry 1500
bytes; the opportunities come from a trace (one line per opportunity, its
millisecond; several lines with the same millisecond are several
opportunities; the trace loops at its end) or from a constant rate.  Bytes
of an opportunity that finds the queue empty are lost, a packet larger than
what is left of one continues in the next.  So the delay a packet sees is
the queue in front of it at the link's current capacity: bufferbloat needs
no extra delay setting, only a deep queue.

On top of the bottleneck: random loss or Gilbert-Elliott burst loss before
the queue, outages (no opportunities, both directions, the queue kept or
flushed), and a propagation delay after it, fixed or stepping (`Steps`) (`emulator`).

Everything takes `now` (seconds, any monotonic origin) and the trace's own
clock starts at `restart(now)`, so a run can replay a trace from its start.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

OPPORTUNITY_BYTES = 1500


class TraceError(ValueError):
    """A trace file that is not in mahimahi's format (the message names file and line)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Delivery opportunities, in ms from the start, looping every `period_ms`."""

    times_ms: tuple[int, ...]
    period_ms: int
    name: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a mahimahi trace; TraceError naming the file and line if malformed."""
        times: list[int] = []
        with open(path, encoding="ascii", errors="replace") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if not text:
                    continue
                if not (text.isascii() and text.isdigit()):
                    raise TraceError(f"{path}:{number}: expected a whole number of "
                                     f"milliseconds, got {text[:40]!r}")
                value = int(text)
                if times and value < times[-1]:
                    raise TraceError(f"{path}:{number}: {value} ms comes before the "
                                     f"previous line's {times[-1]} ms")
                times.append(value)
        if not times or times[-1] <= 0:
            raise TraceError(f"{path}: no delivery opportunity after 0 ms: not a trace")
        return cls(tuple(times), times[-1], Path(path).name)

    @classmethod
    def constant(cls, rate_mbit: float, period_ms: int = 1000) -> Trace:
        """Evenly spread opportunities for `rate_mbit` (rounded to whole
        opportunities per `period_ms`)."""
        count = max(round(rate_mbit * 1e6 / 8 / OPPORTUNITY_BYTES * period_ms / 1000), 1)
        times = tuple(1 + (i * period_ms) // count for i in range(count))
        return cls(times, period_ms, f"{rate_mbit:g} Mbit/s")

    @property
    def mean_rate_bps(self) -> float:
        return len(self.times_ms) * OPPORTUNITY_BYTES * 8 / (self.period_ms / 1000)

    def opportunities_between(self, start_ms: float, end_ms: float) -> int:
        """How many opportunities fall in [start_ms, end_ms) (trace clock, looped)."""
        return self.count_before(end_ms) - self.count_before(start_ms)

    def count_before(self, t_ms: float) -> int:
        """How many opportunities come before `t_ms`: the index of the first
        at or after it."""
        loops, rest = divmod(t_ms, self.period_ms)
        if rest == 0 and loops > 0:
            # Opportunities at the loop's last millisecond (== period) are
            # at `t_ms` itself, not before it.
            loops, rest = loops - 1, self.period_ms
        return int(loops) * len(self.times_ms) + bisect.bisect_left(self.times_ms, rest)

    def opportunity_ms(self, index: int) -> int:
        """The trace time of opportunity number `index` (counting across loops)."""
        loops, i = divmod(index, len(self.times_ms))
        return loops * self.period_ms + self.times_ms[i]

    def silences(self, horizon_ms: float, min_ms: float) -> list[tuple[int, int]]:
        """The stretches of at least `min_ms` without an opportunity in the
        first `horizon_ms` (trace clock, looped), as (start_ms, length_ms),
        the last cut at the horizon: a trace's own outages, to set beside
        the link downs a run counted."""
        found = []
        before, index = 0, 0
        while before < horizon_ms:
            at = self.opportunity_ms(index)
            end = min(at, horizon_ms)
            if end - before >= min_ms:
                found.append((before, int(end - before)))
            before, index = at, index + 1
        return found


@dataclass(slots=True)
class GilbertElliott:
    """Two-state burst loss: GOOD loses `loss_good`, BAD loses `loss_bad`;
    per packet, GOOD turns BAD with probability `p`, BAD turns GOOD with `r`
    (mean burst length 1/r packets)."""

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0
    bad: bool = False

    def lose(self, rng: random.Random) -> bool:
        self.bad = rng.random() < (1.0 - self.r if self.bad else self.p)
        return rng.random() < (self.loss_bad if self.bad else self.loss_good)


@dataclass(frozen=True, slots=True)
class Steps:
    """A value that steps at given times of the trace clock: `initial` until
    the first `(start_s, value)` step, then each step's value until the next
    (e.g. a satellite link's base delay, which changes at reconfigurations)."""

    initial: float
    steps: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        starts = [start for start, _ in self.steps]
        if starts != sorted(starts):
            raise ValueError(f"steps out of order: {starts}")

    def at(self, t_s: float) -> float:
        i = bisect.bisect_right(self.steps, t_s, key=lambda step: step[0]) - 1
        return self.initial if i < 0 else self.steps[i][1]


@dataclass(frozen=True, slots=True)
class Outage:
    start_s: float  # from the trace clock's start
    duration_s: float
    flush: bool = False  # drop what waits when it starts, and what arrives during it

    def covers(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


@dataclass(slots=True)
class Bottleneck:
    """One lane's queue and its delivery opportunities.

    Empty state: nothing queued, the trace clock at 0 from `restart`.
    Invariants: packets leave in arrival order; the queue never holds more
    than `queue_bytes`; no opportunity is used twice; outages do not overlap
    (ValueError otherwise).  `flushed` counts the queued packets a flushing
    outage dropped (arrivals it refuses are `offer`'s "outage_drop").
    """

    trace: Trace
    queue_bytes: int
    outages: tuple[Outage, ...] = ()
    t0: float = 0.0
    flushed: int = 0
    _queue: deque[tuple[int, object]] = field(default_factory=deque)
    _backlog: int = 0
    _next: int = 0  # index of the next unused opportunity
    _head_left: int = 0  # bytes of the head packet still to send (0: not started)
    _starts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outages = tuple(sorted(self.outages, key=lambda o: o.start_s))
        for before, after in zip(self.outages, self.outages[1:], strict=False):
            if after.start_s < before.start_s + before.duration_s:
                raise ValueError(f"outages overlap: {before} and {after}")
        self._starts = [o.start_s for o in self.outages]

    def restart(self, now: float) -> None:
        """The trace starts again at `now`; what waits stays queued."""
        self.t0 = now
        self._next = 0

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    def _clock_ms(self, now: float) -> float:
        return (now - self.t0) * 1000

    def _outage(self, t_s: float) -> Outage | None:
        i = bisect.bisect_right(self._starts, t_s) - 1
        if i >= 0 and self.outages[i].covers(t_s):
            return self.outages[i]
        return None

    def offer(self, now: float, size: int, item: object) -> str | None:
        """A packet of `size` bytes arrives: None if queued, else why it was
        dropped ("queue_drop", "outage_drop")."""
        outage = self._outage(now - self.t0)
        if outage is not None and outage.flush:
            return "outage_drop"
        if self._backlog + size > self.queue_bytes:
            return "queue_drop"
        if not self._queue:
            # Opportunities that passed while the queue was empty are lost.
            self._next = max(self._next, self.trace.count_before(self._clock_ms(now)))
        self._queue.append((size, item))
        self._backlog += size
        return None

    def serve(self, now: float) -> list[tuple[float, object]]:
        """Use every opportunity up to `now`: the packets that left, each with
        the time of the opportunity that finished it."""
        gone: list[tuple[float, object]] = []
        queue, clock = self._queue, self._clock_ms(now)
        while queue:
            at_ms = self.trace.opportunity_ms(self._next)
            if at_ms > clock:
                break
            self._next += 1
            at = self.t0 + at_ms / 1000
            outage = self._outage(at_ms / 1000)
            if outage is not None:
                if outage.flush:
                    self._drop_all()
                continue
            budget = OPPORTUNITY_BYTES
            while queue and budget > 0:
                size, item = queue[0]
                left = self._head_left or size
                used = min(left, budget)
                budget -= used
                if used < left:
                    self._head_left = left - used
                    break
                self._head_left = 0
                queue.popleft()
                self._backlog -= size
                gone.append((at, item))
        return gone

    def _drop_all(self) -> None:
        self.flushed += len(self._queue)
        self._queue.clear()
        self._backlog = 0
        self._head_left = 0

    def next_time(self) -> float | None:
        """When `serve` next has something to do (None: nothing queued)."""
        if not self._queue:
            return None
        return self.t0 + self.trace.opportunity_ms(self._next) / 1000

    def capacity_bytes(self, start_s: float, end_s: float) -> int:
        """The trace's capacity over [start_s, end_s) of its clock, outages excluded."""
        total = self.trace.opportunities_between(start_s * 1000, end_s * 1000)
        for outage in self.outages:
            lo = max(start_s, outage.start_s)
            hi = min(end_s, outage.start_s + outage.duration_s)
            if hi > lo:
                total -= self.trace.opportunities_between(lo * 1000, hi * 1000)
        return total * OPPORTUNITY_BYTES
