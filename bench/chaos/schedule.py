"""The chaos run's fault schedule: what happens when, drawn from a seed.

Pure code (no lab, no clock): `make_plan` lays the faults end to end after
a warm-up, each followed by a recovery gap, so every stall is attributable
to one fault.  A run of at least `LONG_RUN_S` gets every kind of fault once
(in a seeded order; the reload that adds the spare link comes before the
one that removes a link) and is then filled with more link faults (down,
blackhole, loss burst, rate step) at random places; a shorter run (the
CI's) takes short faults in a fixed order of importance until its time is
used up.

Links: the lab has `n_links`; the client starts with all but the last (the
*spare*), which a reload adds; another reload later removes one of the
others.  A fault on a link only ever picks a link the client has then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DOWN = "down"  # both endpoint veths of a link down, then up
BLACKHOLE = "blackhole"  # everything arriving on a link dropped, interfaces up
LOSS = "loss"  # Gilbert-Elliott burst loss on a link, both ways
RATE = "rate"  # a link's rate stepped, both ways, then back
ROAM = "roam"  # the client's address on a link changes (instant)
ADD = "add"  # stripe reload with the spare link added (instant)
REMOVE = "remove"  # stripe reload with a link removed (instant)
RESTART = "restart"  # the server: SIGTERM, started again
FLOOD = "flood"  # garbage and replayed datagrams at the server
KINDS = (DOWN, BLACKHOLE, LOSS, RATE, ROAM, ADD, REMOVE, RESTART, FLOOD)
LINK_KINDS = frozenset({DOWN, BLACKHOLE, LOSS, RATE, ROAM, REMOVE})
# Faults that stop every path for their duration: the stall they cause is
# theirs, only what lasts beyond it counts against stripe.
BLOCKING_KINDS = frozenset({RESTART})
FILLERS = (DOWN, BLACKHOLE, LOSS, RATE)
SHORT_ORDER = (DOWN, RESTART, BLACKHOLE, ADD, ROAM, LOSS, REMOVE, RATE, FLOOD)

LONG_RUN_S = 300.0
BASE_RATE_MBIT = 10.0
RATE_STEPS_MBIT = (2.0, 4.0, 20.0)
SERVER_RESTART_WITHIN_S = 2.0


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a run's phases and faults last, (low, high) seconds."""

    warmup_s: float
    tail_s: float
    gap_s: tuple[float, float]
    duration_s: dict[str, tuple[float, float]]


# Short faults still outlast what they test (a link is out within 1 s); the
# gaps let a restarted server's handshake finish before the next fault.
SHORT = Timing(
    warmup_s=3.0, tail_s=5.0, gap_s=(2.0, 2.5),
    duration_s={DOWN: (1.5, 2.0), BLACKHOLE: (1.5, 2.0), LOSS: (1.5, 2.0), RATE: (2.0, 3.0),
                FLOOD: (3.0, 3.0)},
)  # fmt: skip
LONG = Timing(
    warmup_s=10.0, tail_s=20.0, gap_s=(8.0, 14.0),
    duration_s={DOWN: (5.0, 15.0), BLACKHOLE: (5.0, 15.0), LOSS: (5.0, 12.0),
                RATE: (15.0, 30.0), FLOOD: (30.0, 30.0)},
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: from `start_s` (since the run's start) for `duration_s`
    (0: an instant change; a restart's downtime is measured, not planned)."""

    kind: str
    start_s: float
    duration_s: float = 0.0
    link: int | None = None
    rate_mbit: float | None = None  # a rate step's rate

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def label(self) -> str:
        what = self.kind if self.link is None else f"{self.kind} link{self.link}"
        return what + (f" {self.rate_mbit:g} Mbit/s" if self.rate_mbit is not None else "")

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "start_s": self.start_s, "duration_s": self.duration_s,
                "link": self.link, "rate_mbit": self.rate_mbit, "label": self.label}


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    seed: int
    n_links: int
    faults: tuple[Fault, ...]

    @property
    def spare_link(self) -> int:
        """The link a reload adds; the client starts without it."""
        return self.n_links - 1

    @property
    def initial_links(self) -> tuple[int, ...]:
        return tuple(range(self.n_links - 1))

    def burst_windows(self, link: int) -> tuple[tuple[float, float], ...]:
        """The (start_s, duration_s) of the loss bursts on `link`."""
        return tuple((f.start_s, f.duration_s) for f in self.faults
                     if f.kind == LOSS and f.link == link)

    def to_json(self) -> dict[str, object]:
        return {"seconds": self.seconds, "seed": self.seed, "n_links": self.n_links,
                "faults": [f.to_json() for f in self.faults]}


def _kinds_long(rng: random.Random, budget_s: float, timing: Timing) -> list[tuple[str, bool]]:
    """Every kind once (True: a must), seeded order (add before remove),
    then fillers (False) at random places while the expected length fits
    `budget_s`."""
    kinds = [DOWN, BLACKHOLE, LOSS, RATE, ROAM, RESTART, FLOOD]
    rng.shuffle(kinds)
    add_at = rng.randint(0, len(kinds) // 2)
    kinds.insert(add_at, ADD)
    kinds.insert(rng.randint(add_at + 2, len(kinds)), REMOVE)
    out = [(k, True) for k in kinds]

    def expected(ks: list[tuple[str, bool]]) -> float:
        gap = sum(timing.gap_s) / 2
        return sum(sum(timing.duration_s.get(k, (0.0, 0.0))) / 2 + gap for k, _ in ks)

    while True:
        extra = (rng.choice(FILLERS), False)
        if expected([*out, extra]) > budget_s:
            return out
        out.insert(rng.randint(0, len(out)), extra)


def make_plan(seconds: float, seed: int, n_links: int = 3) -> Plan:
    """The faults of a run of `seconds` with `n_links` links (>= 3: the
    client keeps at least two after the removal), drawn from `seed`."""
    if n_links < 3:
        raise ValueError("chaos needs at least 3 links (one is added, one removed by reload)")
    rng = random.Random(seed)
    timing = LONG if seconds >= LONG_RUN_S else SHORT
    budget = seconds - timing.warmup_s - timing.tail_s
    if budget <= 0:
        raise ValueError(f"a chaos run needs more than {timing.warmup_s + timing.tail_s:g} s")
    kinds = (_kinds_long(rng, budget, timing) if timing is LONG
             else [(k, False) for k in SHORT_ORDER])
    active = list(range(n_links - 1))
    spare = n_links - 1
    faults: list[Fault] = []
    t = timing.warmup_s
    end = seconds - timing.tail_s

    def reserve(after: int) -> float:
        """The longest the musts after position `after` can take."""
        return sum(timing.duration_s.get(k, (0.0, 0.0))[1] + timing.gap_s[1]
                   for k, must in kinds[after + 1:] if must)

    for index, (kind, must) in enumerate(kinds):
        low, high = timing.duration_s.get(kind, (0.0, 0.0))
        duration = round(rng.uniform(low, high), 1)
        gap = round(rng.uniform(*timing.gap_s), 1)
        if kind == REMOVE and spare not in active:
            continue  # the removal waits for the addition (short runs)
        if not must and t + duration + reserve(index) > end:
            continue
        link: int | None = None
        rate: float | None = None
        if kind == ADD:
            active.append(spare)
            link = spare
        elif kind == REMOVE:
            link = rng.choice([i for i in active if i != spare])
            active.remove(link)
        elif kind in LINK_KINDS:
            link = rng.choice(active)
        if kind == RATE:
            rate = rng.choice(RATE_STEPS_MBIT)
        faults.append(Fault(kind, round(t, 1), duration, link, rate))
        t += duration + gap
    return Plan(seconds, seed, n_links, tuple(faults))
