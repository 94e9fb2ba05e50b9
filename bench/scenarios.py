"""Named, documented benchmark presets (issue 3).

Each scenario fixes a lab (links with per-direction rate, delay, jitter,
loss), a test length, and its kind: ``throughput`` (goodput vs baselines),
``failover`` (link 1 cut mid-run, restored later), ``ceiling`` (unshaped,
the most stripe carries, its CPU and memory, against wireguard-go),
``latency`` (ping RTT idle and under load) or ``reallinks`` (issue 17:
links that follow LTE traces, a Starlink-like schedule, handovers or deep
buffers, built per lab by `bench.reallinks`, run both ways, with the
per-second trace capacity, carried bytes, ping RTT and stalls).
``python -m bench list`` prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import reallinks
from bench.lab import Direction, LinkSpec
from bench.lab.iperf import DOWNLOAD, UPLOAD
from bench.lab.traces import TraceLibrary

FAILOVER_CUT_S = 10.0
FAILOVER_RESTORE_S = 20.0
FAILOVER_LENGTH_S = 30.0
REAL_SECONDS = 60.0  # real links: traces vary, short runs lie
REAL_HORIZON_MARGIN_S = 30.0  # generated schedules run this much past the run
MakeLinks = Callable[[TraceLibrary, float], tuple[LinkSpec, ...]]


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    links: tuple[LinkSpec, ...]
    kind: str = "throughput"  # throughput | failover | ceiling | latency
    failover: str | None = None  # "down" | "blackhole"
    fixed_seconds: float | None = None  # a length the scenario itself needs
    topology: str | None = None  # forces Lab.topology (else the run's --topology)
    impairment: str | None = None  # forces Lab.impairment (else the run's --impairment)
    # Real links: the lab's links are made per run by make_links(library,
    # horizon_s); `links` then only describes them (trace names, no files).
    make_links: MakeLinks | None = field(default=None, compare=False)
    directions: tuple[str, ...] = ("",)  # "" (client sends, unnamed), UPLOAD, DOWNLOAD
    # What a run of this scenario does unless --repeat/--cc/--seconds say otherwise.
    default_repeat: int | None = None
    default_ccs: tuple[str, ...] | None = None
    default_seconds: float | None = None

    def links_for(self, library: TraceLibrary, seconds: float) -> tuple[LinkSpec, ...]:
        """The links of a lab that runs ``seconds`` per run."""
        if self.make_links is None:
            return self.links
        return self.make_links(library, seconds + REAL_HORIZON_MARGIN_S)

    @property
    def shaped_sum_mbit(self) -> float | None:
        rates = [s.up.rate_mbit for s in self.links]
        if any(r is None for r in rates):
            return None
        return sum(r for r in rates if r is not None)


def _sym(rate: float | None, delay_ms: float = 0.0, loss: float = 0.0) -> LinkSpec:
    return LinkSpec.symmetric(rate, delay_ms=delay_ms, loss=loss)


def _real(name: str, doc: str, make_links: MakeLinks, ccs: tuple[str, ...] = ("cubic",),
          repeat: int = 1) -> Scenario:
    """A real-links scenario: both directions, 60 s runs, its own defaults."""
    return Scenario(
        name, doc, make_links(TraceLibrary.describing(), REAL_SECONDS), kind="reallinks",
        make_links=make_links, directions=(UPLOAD, DOWNLOAD), default_repeat=repeat,
        default_ccs=ccs, default_seconds=REAL_SECONDS,
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "equal", "2 x 5 Mbit/s, no added delay (the classic teql/ECMP lab)", (_sym(5), _sym(5))
        ),
        Scenario("unequal-rate", "8 + 2 Mbit/s, no added delay", (_sym(8), _sym(2))),
        Scenario(
            "unequal-delay",
            "2 x 10 Mbit/s, 10 ms and 40 ms one-way delay",
            (_sym(10, 10), _sym(10, 40)),
        ),
        Scenario(
            "long-delay",
            "2 x 10 Mbit/s, 20 ms and 300 ms one-way delay (a terrestrial line beside a "
            "geostationary satellite)",
            (_sym(10, 20), _sym(10, 300)),
        ),
        Scenario(
            "lossy",
            "2 x 10 Mbit/s, link 1 drops 2 % of packets each way at random",
            (_sym(10), _sym(10, loss=0.02)),
        ),
        Scenario(
            "failover-down",
            "2 x 5 Mbit/s, 30 s; link 1's interfaces set down at 10 s, up at 20 s",
            (_sym(5), _sym(5)),
            kind="failover",
            failover="down",
            fixed_seconds=FAILOVER_LENGTH_S,
        ),
        Scenario(
            "failover-blackhole",
            "2 x 5 Mbit/s, 30 s; link 1 silently drops everything from 10 s to 20 s "
            "(nftables ingress drop at both ends, interfaces stay up)",
            (_sym(5), _sym(5)),
            kind="failover",
            failover="blackhole",
            fixed_seconds=FAILOVER_LENGTH_S,
        ),
        Scenario(
            "four-links",
            "10 + 5 + 3 + 2 Mbit/s with 5 / 15 / 30 / 50 ms one-way delay",
            (_sym(10, 5), _sym(5, 15), _sym(3, 30), _sym(2, 50)),
        ),
        Scenario(
            "ceiling-1",
            "1 unshaped veth link: the most stripe carries, and its CPU",
            (_sym(None),),
            kind="ceiling",
            topology="local",
        ),
        Scenario(
            "ceiling-2",
            "2 unshaped veth links: the most stripe carries, and its CPU",
            (_sym(None), _sym(None)),
            kind="ceiling",
            topology="local",
        ),
        Scenario(
            "ceiling-8",
            "8 unshaped veth links: the most stripe carries over many links, its CPU and "
            "peak memory (issue 7: RSS under 80 MB per process)",
            (_sym(None),) * 8,
            kind="ceiling",
            topology="local",
        ),
        Scenario(
            "ceiling-lossy",
            "2 unshaped veth links, each dropping 1 % of packets each way at random "
            "(nftables, segmentation offloads off); the plain link 0 has the same loss: no loss "
            "amplification through the tunnel",
            (_sym(None, loss=0.01), _sym(None, loss=0.01)),
            kind="ceiling",
            topology="local",
            impairment="nftables",
        ),
        Scenario(
            "lossy-fast",
            "2 x 200 Mbit/s, each dropping 1 % of packets each way at random (nftables, "
            "segmentation offloads off): loss amplification at rates a plain link is limited by "
            "its rate, not by a CPU (each plain link alone has the same loss)",
            (_sym(200, loss=0.01), _sym(200, loss=0.01)),
            topology="local",
            impairment="nftables",
        ),
        Scenario(
            "lossy-one",
            "1 x 200 Mbit/s dropping 1 % of packets each way at random (nftables, segmentation "
            "offloads off): the same link with and without the tunnel, the direct test of loss "
            "amplification (issue 7)",
            (_sym(200, loss=0.01),),
            topology="local",
            impairment="nftables",
        ),
        Scenario(
            "latency",
            "2 x 5 Mbit/s: ping RTT idle and under one saturating TCP flow",
            (_sym(5), _sym(5)),
            kind="latency",
        ),
        _real("lte-pair", "two LTE links replaying the T-Mobile and Verizon traces "
              "(300 ms queues, 20 ms each way)", reallinks.lte_pair, ("cubic", "bbr"), 3),
        _real("lte-dsl", "the T-Mobile LTE trace and a fixed 10 Mbit/s line with 20 ms each "
              "way and a 100 ms buffer", reallinks.lte_dsl),
        _real("handover", "the two LTE links of lte-pair, each silent for 1-3 s (queue kept) "
              "every 10-30 s, never both at once", reallinks.handover),
        _real("starlink", "a Starlink-like link (rate 20-60 down / 4-12 up Mbit/s and 10-30 ms "
              "each way, drawn every 15 s, a 50-300 ms outage flushing its queue at each step) "
              "and the Verizon LTE trace", reallinks.starlink_lte),
        _real("lte-3g", "the Verizon LTE trace and a slow 3G-like link (synthetic, 1.2 down "
              "/ 0.5 up Mbit/s mean, 60 ms each way, 500 ms queue)", reallinks.lte_3g),
        _real("van", "four LTE modems: the T-Mobile and Verizon traces and two synthetic LTE "
              "links (7 up / 12 down and 3 up / 8 down Mbit/s mean, 30 and 40 ms each way)",
              reallinks.van),
        _real("bloat", "two fixed 10 Mbit/s lines with 500 ms buffers, 5 ms each way",
              reallinks.bloat),
        _real("delay-step", "two fixed 10 Mbit/s lines, 10 ms each way, 100 ms buffers; "
              "link 1's base delay grows to 60 ms each way 20 s in (a route change, a "
              "handover to a farther cell)", reallinks.delay_step),
        _real("adsl-pair", "two ADSL lines, 16 down / 1 up and 8 down / 0.8 up Mbit/s, 10 and "
              "15 ms each way, 100 ms buffers down and 500 ms up", reallinks.adsl_pair),
    )
}
# Real-links scenarios run on their own, outside the suite (which keeps to
# about 90 minutes): `lte-3g`, a bond whose second link is much slower,
# `van`, four cellular links, `adsl-pair`, two lines whose uplink is a
# tenth of their downlink, and `delay-step`, a line whose base delay grows.
EXTRA_REAL_LINKS = ("lte-3g", "van", "adsl-pair", "delay-step")
REAL_LINKS = tuple(name for name, s in SCENARIOS.items()
                   if s.kind == "reallinks" and name not in EXTRA_REAL_LINKS)

# Names that expand to several presets.
ALIASES: dict[str, tuple[str, ...]] = {
    "failover": ("failover-down", "failover-blackhole"),
    "ceiling": ("ceiling-1", "ceiling-2", "ceiling-8", "ceiling-lossy"),
    "real-links": REAL_LINKS,
    # The fixed-link suite; the real-links suite is run on its own (~90 min).
    "all": tuple(name for name, s in SCENARIOS.items() if s.kind != "reallinks"),
}


def resolve(names: list[str]) -> list[Scenario]:
    """Scenario presets for command-line names, aliases expanded, in order."""
    out: list[Scenario] = []
    for name in names:
        expanded = ALIASES.get(name, (name,))
        for n in expanded:
            if n not in SCENARIOS:
                known = ", ".join([*SCENARIOS, *ALIASES])
                raise KeyError(f"unknown scenario {n!r}; known: {known}")
            if SCENARIOS[n] not in out:
                out.append(SCENARIOS[n])
    return out


def describe_link(spec: LinkSpec) -> str:
    def one(d: Direction) -> str:
        if d.trace is not None:
            parts = [f"trace {Path(d.trace).name}"]
        elif d.emulated_mbit is not None:
            parts = [f"{d.emulated_mbit:g} Mbit/s (emulated)"]
        else:
            parts = [f"{d.rate_mbit:g} Mbit/s" if d.rate_mbit else "unshaped"]
        if d.queue_ms is not None:
            parts.append(f"{d.queue_ms:g} ms queue")
        if d.queue_bytes is not None:
            parts.append(f"{d.queue_bytes // 1000} kB queue")
        if d.delay_steps:
            delays = [ms for _, ms in d.delay_steps]
            parts.append(f"{min(delays):g}-{max(delays):g} ms")
        elif d.delay_ms:
            parts.append(f"{d.delay_ms:g} ms")
        if d.jitter_ms:
            parts.append(f"+-{d.jitter_ms:g} ms")
        if d.loss:
            parts.append(f"{100 * d.loss:g} % loss")
        return " ".join(parts)

    up, down = one(spec.up), one(spec.down)
    text = up if up == down else f"up {up} / down {down}"
    if spec.outages:
        flush = "flushed" if all(o.flush for o in spec.outages) else "kept"
        text += f"; {len(spec.outages)} outages (queue {flush})"
    return text
