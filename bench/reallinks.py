"""The real-links scenarios' links (issue 17): LTE traces, a DSL line, a
Starlink-like satellite link, handovers and bufferbloat, built for one lab
from a `TraceLibrary` (recorded traces, or synthetic stand-ins).

Choices, and why:

* Cellular queue: ``LTE_QUEUE_MS`` = 300 ms at the trace's mean rate (deep,
  as the issue asks: 200-500 ms).  Base delay ``LTE_DELAY_MS`` = 20 ms each
  way (a 40 ms idle round trip, typical of LTE); the rest of the delay is
  the queue, which grows as the trace's rate falls: 300 ms at the mean is
  about 1 s at the 10th percentile of the rate.
* DSL: 10 Mbit/s each way, 20 ms each way, a 100 ms buffer (the issue's).
* Bloat: two 10 Mbit/s lines with 500 ms buffers (the issue's), 5 ms each
  way (a nearby server: the base round trip is 10 ms, the rest is queue).
* Starlink: the rate and the base delay change every 15 s (the published
  reconfiguration interval), each step beginning with a 50-300 ms outage
  that flushes the queue (the loss bursts measured at the 15 s
  boundaries).  Starlink's own 50-200 Mbit/s down and 5-20 up are scaled
  down to ``STARLINK_DOWN_MBIT`` 20-60 and ``STARLINK_UP_MBIT`` 4-12: the
  Python emulator and stripe share this 2-core machine, and at the lab's
  1500-byte frames 60 Mbit/s is ~5000 packets/s through each; the rate
  *changes* (up to 3x at a step) are what the scenario tests.  Base delay
  ``STARLINK_DELAY_MS`` 10-30 ms each way (a 20-60 ms round trip), queue 100
  ms at the link's mean rate (the dish's buffer is modest).  Its partner is the
  Verizon LTE trace, the slower one: a satellite link with LTE as backup.
* Handover: the two LTE links of ``lte-pair``, each silent for 1-3 s at
  moments every 10-30 s, never both at once (`synthetic.handover_outages`);
  the queue is kept through the silence (the base station holds, and with
  X2 forwarding hands over, what waited), so the link comes back with a
  burst and a large delay, not with losses.
* 3G (``lte-3g``, outside the ``real-links`` suite): a slow second link,
  the synthetic cellular model at ``SLOW_CELL_DOWN_MBIT`` 1.2 down and
  ``SLOW_CELL_UP_MBIT`` 0.5 up (no 3G trace is shipped), 60 ms each way
  and a 500 ms queue, beside the Verizon trace: a bond whose second link
  is four times slower and farther away, where using it can cost more
  than it adds.
* ADSL (``adsl-pair``, outside the suite): two asymmetric lines, the
  commonest thing people bond, ``ADSL_LINES`` 16 down / 1 up and 8 down /
  0.8 up Mbit/s (ADSL2+ on a short and a longer loop), 10 and 15 ms each
  way, a 100 ms buffer down (the DSLAM) and a 500 ms one up (the modem's,
  bufferbloat where it hurts most).  The narrow uplink carries the
  download's ACKs, each with a tunnel's 70 bytes of headers: a download
  can be short of uplink, and an upload has ~1.8 Mbit/s for all of it.
* Van (``van``, outside the suite): four LTE modems, as in a vehicle
  bonding one SIM of each carrier: the two recorded traces and two
  synthetic cellular links (``VAN_SYNTHETIC``, means 7 up / 12 down and 3 up
  / 8 down Mbit/s, 30 and 40 ms each way: other carriers, farther cores),
  each with the LTE queue.  What two links do not show: four rates
  swinging independently, so at nearly every moment some link is in a
  fade, and the receiver's order waits on the slowest of four.
* Delay step (``delay-step``, outside the suite): two fixed lines,
  ``DELAY_STEP_MBIT`` 10 Mbit/s, 10 ms each way and a 100 ms buffer, and
  after ``DELAY_STEP_AT_S`` 20 s link 1's base delay grows to
  ``DELAY_STEP_MS`` 60 ms each way (a route change, a handover to a
  farther cell or core, a satellite's reconfiguration, larger than
  Starlink's 10-30 ms draws): a link that must be re-measured, not
  remembered.
* ``lte-dsl`` pairs the DSL line with T-Mobile's trace (whose rate swings
  around the line's), ``lte-pair`` is T-Mobile + Verizon.

Generated schedules (Starlink, handovers) cover ``horizon_s`` of the trace
clock, which restarts before each run: the runner passes the run length
plus a margin.
"""

from __future__ import annotations

import dataclasses
import functools

from bench.lab import Direction, LinkSpec
from bench.lab.synthetic import handover_outages, starlink
from bench.lab.traces import TraceLibrary

LTE_QUEUE_MS = 300.0
LTE_DELAY_MS = 20.0
DSL_MBIT = 10.0
DSL_DELAY_MS = 20.0
DSL_QUEUE_MS = 100.0
BLOAT_MBIT = 10.0
BLOAT_DELAY_MS = 5.0
BLOAT_QUEUE_MS = 500.0
STARLINK_DOWN_MBIT = (20.0, 60.0)
STARLINK_UP_MBIT = (4.0, 12.0)
STARLINK_DELAY_MS = (10.0, 30.0)
STARLINK_QUEUE_MS = 100.0
# A 3G (HSPA) link: slow, variable, a long base delay and a deep buffer.
# No recorded trace is shipped: the synthetic cellular model at these means.
SLOW_CELL_DOWN_MBIT = 1.2
SLOW_CELL_UP_MBIT = 0.5
SLOW_CELL_DELAY_MS = 60.0
SLOW_CELL_QUEUE_MS = 500.0
# ADSL lines: (down Mbit/s, up Mbit/s, one-way delay ms); their buffers.
ADSL_LINES = ((16.0, 1.0, 10.0), (8.0, 0.8, 15.0))
ADSL_DOWN_QUEUE_MS = 100.0
ADSL_UP_QUEUE_MS = 500.0
DELAY_STEP_MBIT = 10.0
DELAY_STEP_QUEUE_MS = 100.0
DELAY_STEP_BEFORE_MS = 10.0
DELAY_STEP_MS = 60.0
DELAY_STEP_AT_S = 20.0
TMOBILE = "TMobile-LTE-short"
VERIZON = "Verizon-LTE-short"
# The van's two further modems: (name, up Mbit/s, down Mbit/s, one-way delay ms).
VAN_SYNTHETIC = (("lte-c", 7.0, 12.0, 30.0), ("lte-d", 3.0, 8.0, 40.0))


def lte(library: TraceLibrary, carrier: str) -> LinkSpec:
    """An LTE link replaying ``carrier``'s traces (``.up`` client -> server)."""
    directions = []
    for suffix in ("up", "down"):
        path, source = library.cellular(f"{carrier}.{suffix}")
        directions.append(Direction(delay_ms=LTE_DELAY_MS, trace=path,
                                    queue_ms=LTE_QUEUE_MS, source=source))
    return LinkSpec(directions[0], directions[1])


def fixed_line(mbit: float, delay_ms: float, queue_ms: float) -> LinkSpec:
    """A constant-rate line, emulated (no tbf), the same both ways."""
    return asymmetric_line(mbit, mbit, delay_ms, queue_ms, queue_ms)


def asymmetric_line(down_mbit: float, up_mbit: float, delay_ms: float,
                    down_queue_ms: float, up_queue_ms: float) -> LinkSpec:
    """A constant-rate line, emulated (no tbf), with its own rate and buffer each way."""
    return LinkSpec(_constant(up_mbit, delay_ms, up_queue_ms),
                    _constant(down_mbit, delay_ms, down_queue_ms))


def _constant(mbit: float, delay_ms: float, queue_ms: float) -> Direction:
    return Direction(delay_ms=delay_ms, emulated_mbit=mbit, queue_ms=queue_ms,
                     source=f"constant {mbit:g} Mbit/s")


def adsl_pair(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    return tuple(asymmetric_line(down, up, delay, ADSL_DOWN_QUEUE_MS, ADSL_UP_QUEUE_MS)
                 for down, up, delay in ADSL_LINES)


def lte_pair(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    return lte(library, TMOBILE), lte(library, VERIZON)


def lte_dsl(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    return lte(library, TMOBILE), fixed_line(DSL_MBIT, DSL_DELAY_MS, DSL_QUEUE_MS)


def handover(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    links = lte_pair(library, horizon_s)
    schedules = handover_outages(len(links), horizon_s, library.seed)
    return tuple(LinkSpec(link.up, link.down, outages)
                 for link, outages in zip(links, schedules, strict=True))


def starlink_link(library: TraceLibrary, horizon_s: float) -> LinkSpec:
    plan = starlink(horizon_s, library.seed, STARLINK_UP_MBIT, STARLINK_DOWN_MBIT,
                    STARLINK_DELAY_MS)
    directions = []
    for suffix, rates in (("up", plan.up_mbit), ("down", plan.down_mbit)):
        source = (f"synthetic Starlink, {min(rates):g}-{max(rates):g} Mbit/s in "
                  f"{plan.step_s:g} s steps, seed {library.seed}")
        path, source = library.generated(
            f"starlink.{suffix}", functools.partial(plan.trace, suffix), source
        )
        queue_bytes = int(sum(rates) / len(rates) * 1e6 / 8 * STARLINK_QUEUE_MS / 1000)
        directions.append(Direction(delay_ms=plan.delay_steps[0][1], trace=path,
                                    queue_bytes=queue_bytes, delay_steps=plan.delay_steps,
                                    source=source))
    return LinkSpec(directions[0], directions[1], plan.outages)


def starlink_lte(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    return starlink_link(library, horizon_s), lte(library, VERIZON)


def synthetic_cell(library: TraceLibrary, name: str, up_mbit: float, down_mbit: float,
                   delay_ms: float, queue_ms: float, what: str) -> LinkSpec:
    """A cellular link with no recorded trace: the synthetic cellular model
    at these means (``what`` it stands for goes into the provenance)."""
    directions = []
    for suffix, mean in (("up", up_mbit), ("down", down_mbit)):
        path, source = library.synthetic_cellular(f"{name}.{suffix}", mean, what)
        directions.append(Direction(delay_ms=delay_ms, trace=path, queue_ms=queue_ms,
                                    source=source))
    return LinkSpec(directions[0], directions[1])


def slow_cell(library: TraceLibrary) -> LinkSpec:
    """A 3G-like link: synthetic cellular traces at SLOW_CELL_*_MBIT."""
    return synthetic_cell(library, "3g", SLOW_CELL_UP_MBIT, SLOW_CELL_DOWN_MBIT,
                          SLOW_CELL_DELAY_MS, SLOW_CELL_QUEUE_MS, "3G-like")


def lte_3g(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    return lte(library, VERIZON), slow_cell(library)


def van(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    return (*lte_pair(library, horizon_s),
            *(synthetic_cell(library, name, up, down, delay, LTE_QUEUE_MS, "LTE-like")
              for name, up, down, delay in VAN_SYNTHETIC))


def bloat(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    line = fixed_line(BLOAT_MBIT, BLOAT_DELAY_MS, BLOAT_QUEUE_MS)
    return line, line


def delay_step(library: TraceLibrary, horizon_s: float) -> tuple[LinkSpec, ...]:
    line = fixed_line(DELAY_STEP_MBIT, DELAY_STEP_BEFORE_MS, DELAY_STEP_QUEUE_MS)
    steps = ((DELAY_STEP_AT_S, DELAY_STEP_MS),)
    farther = LinkSpec(dataclasses.replace(line.up, delay_steps=steps),
                       dataclasses.replace(line.down, delay_steps=steps))
    return line, farther
