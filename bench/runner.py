"""``python -m bench run``: scenarios x systems x flows x cc x repeats.

For each scenario one lab is built (fresh ``sb<hex>`` prefix) and every
system runs in it, repeats interleaved so slow drifts of a shared machine
spread over all systems. Each run's record is written as JSON at once, so a
crash or Ctrl-C keeps what was measured; the lab is always torn down.

Repeats, run length, congestion controls, stripe variants and directions
are the options' where given, else the scenario's own defaults (the
real-links scenarios: 60 s, both directions, `REAL_SCHEDULERS`), else the
suite's (`Plan`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.lab import (
    CommandError,
    Direction,
    Lab,
    LabNames,
    LinkSpec,
    ensure_tools,
    mptcp_available,
    new_prefix,
    terminating_signals_raise,
    uninterruptible,
)
from bench.lab.iperf import (
    DOWNLOAD,
    IPV4_UDP_HEADERS,
    UDP_PAYLOAD_BYTES,
    Flow,
    udp_payload_share,
)
from bench.lab.linkmodel import Trace
from bench.lab.traces import TraceLibrary, default_traces_dir
from bench.measure import Event, RunRecord, measure, measure_latency
from bench.profile import PY_SPY_MISSING, Profiled, py_spy_path
from bench.scenarios import FAILOVER_CUT_S, FAILOVER_RESTORE_S, Scenario, describe_link
from bench.status_trace import Traced
from bench.systems import Ecmp, Mptcp, PlainLink, Stripe, System, WireguardGo
from bench.systems.stripe import CURRENT_TREE, StripeTree, check_config, stripe_available
from bench.systems.stripe_config import (
    DEFAULT_VARIANT,
    EXAMPLE_VARIANT,
    TUNNEL_MTU,
    TUNNEL_SERVER_ADDR,
    Keys,
    StripeSettings,
    write_configs,
)
from bench.systems.wireguard_go import WIREGUARD_GO

RESULTS_DIR = REPO_ROOT / "bench" / "results"
PROFILES = "profiles"
DEFAULT_SCHEDULERS = ("roundrobin", "weighted", "adaptive")
# Real links: stripe as it comes (no scheduler key) and as the example configs set it.
REAL_SCHEDULERS = (DEFAULT_VARIANT, EXAMPLE_VARIANT)
DEFAULT_REPEAT = 3
DEFAULT_SECONDS = 20.0
REAL_INTERVAL_S = 0.1  # iperf3 reports of the real-links runs: stalls in 100 ms bins
# UDP offered load: 90 % of the links' sum, so a good bond loses nothing.
UDP_OFFER_FRACTION = 0.9
# Unshaped links: offered at a fixed rate (--udp-rate; issue 7 asks for 600M)
# in datagrams that fill the tunnel's MTU exactly (a 1400-byte inner IP packet).
CEILING_UDP_MBIT = 1000.0
CEILING_UDP_LEN = TUNNEL_MTU - IPV4_UDP_HEADERS
RUN_OVERHEAD_S = 2.5  # measured: iperf3 server start, stripe handshake, teardown
# Real links add two marks, the last ping replies and the drain of deep queues.
REAL_RUN_OVERHEAD_S = 5.0


@dataclass
class Options:
    """A run's options; ``None`` (repeat, seconds, ccs, schedulers,
    directions): each scenario's default, see `Plan`."""

    scenarios: list[Scenario]
    repeat: int | None = None
    seconds: float | None = None
    ccs: list[str | None] | None = None
    flows: list[str] = field(default_factory=lambda: ["tcp"])  # tcp | udp | tcp4
    # UDP offer on unshaped (ceiling) and real links; None: CEILING_UDP_MBIT,
    # and REAL_UDP_OFFER_FRACTION of real links' mean capacity.  Shaped
    # links are offered 90 % of their sum whatever this says.
    udp_rate_mbit: float | None = None
    udp_len: int | None = None  # iperf3 -l; None: 1200 shaped, CEILING_UDP_LEN unshaped
    systems: list[str] | None = None  # name prefixes to keep; None: all
    schedulers: list[str] | None = None
    directions: list[str] | None = None  # "up" | "down" (iperf3 -R)
    # Real links: recorded traces (None: synthetic stand-ins) and the seed
    # of everything generated (synthetic traces, handovers, Starlink).
    traces: Path | None = field(default_factory=default_traces_dir)
    seed: int = 1
    out: Path | None = None
    log_level: str = "info"
    impairment: str = "auto"  # auto | netem | userspace
    topology: str = "network"  # network | local (see bench.lab)
    # stripe under py-spy (bench.profile): "off"; "all" its runs (the profile
    # command); "extra": one more run per stripe system and flow after the
    # repeats, profiled and kept out of the figures (run --profile).
    profile: str = "off"
    profile_native: bool = False
    # Each stripe run's ends polled every 100 ms (bench.status_trace).
    trace_status: bool = False
    # Other checkouts of stripe (--stripe-tree): each scheduler variant also
    # runs from each of them, as the system stripe-<variant>@<label>.
    stripe_trees: list[StripeTree] = field(default_factory=list)
    # --latest: publish the report as bench/results/latest/<this> (None: don't).
    publish_as: str | None = None


@dataclass(frozen=True)
class Plan:
    """What one scenario runs, the options' or the scenario's defaults."""

    repeat: int
    seconds: float
    ccs: list[str | None]
    schedulers: list[str]
    directions: list[str]


def plan_for(scenario: Scenario, opts: Options) -> Plan:
    ccs: list[str | None] = [None]
    if opts.ccs is not None:
        ccs = opts.ccs
    elif scenario.default_ccs:
        ccs = list(scenario.default_ccs)
    default_schedulers = REAL_SCHEDULERS if scenario.kind == "reallinks" else DEFAULT_SCHEDULERS
    return Plan(
        repeat=opts.repeat or scenario.default_repeat or DEFAULT_REPEAT,
        seconds=scenario.fixed_seconds or opts.seconds or scenario.default_seconds
        or DEFAULT_SECONDS,
        ccs=ccs,
        schedulers=opts.schedulers if opts.schedulers is not None else list(default_schedulers),
        directions=opts.directions or list(scenario.directions),
    )


class Progress:
    """One status line, rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, what: str) -> None:
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.done:
            eta = f" eta {_mmss(elapsed / self.done * (self.total - self.done))}"
        line = f"[{self.done + 1}/{self.total}] {what}  elapsed {_mmss(elapsed)}{eta}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish_one(self, note: str) -> None:
        self.done += 1
        if self.tty:
            sys.stderr.write(f"  -> {note}\n")
        else:
            sys.stderr.write(f"    -> {note}\n")
        sys.stderr.flush()


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


# Real links: a fixed-rate UDP stream (a video, a call's media, a game's
# updates) is offered at this share of the links' mean capacity over the run
# in its direction, unless --udp-rate says: more than one link of a similar
# pair carries, less than their sum, so what it loses is what the bond could
# not carry when the traces dipped, or what it lost on the way.
REAL_UDP_OFFER_FRACTION = 0.7


def flows_for(
    scenario: Scenario,
    names: list[str],
    udp_rate_mbit: float | None = None,
    udp_len: int | None = None,
    directions: list[str] | None = None,
) -> list[Flow]:
    """The flows a scenario runs, each in each of ``directions`` (default:
    the scenario's); UDP's rate: 90 % of the links' sum if they are shaped,
    else ``udp_rate_mbit`` if given, else CEILING_UDP_MBIT.  Real links:
    one TCP flow, four (`tcp4`) or a UDP stream, reported every 100 ms (as
    failover's one TCP flow); the stream's rate, unless given, follows the
    links' traces and is set once the lab knows them
    (`real_udp_offer_mbit`; 0 until then)."""
    ways = directions or list(scenario.directions)
    if scenario.kind == "latency":
        return [Flow()]
    if scenario.kind == "failover":
        return [Flow(interval_s=REAL_INTERVAL_S)]  # the stall after a cut, to 100 ms
    if scenario.kind == "reallinks":
        return [dataclasses.replace(flow, direction=way, interval_s=REAL_INTERVAL_S)
                for flow in _flows_by_name(scenario, names, udp_rate_mbit, udp_len, real=True)
                for way in ways]
    return [dataclasses.replace(flow, direction=way)
            for flow in _flows_by_name(scenario, names, udp_rate_mbit, udp_len) for way in ways]


def _flows_by_name(
    scenario: Scenario, names: list[str], udp_rate_mbit: float | None, udp_len: int | None,
    real: bool = False,
) -> list[Flow]:
    out = []
    for name in names:
        if name == "tcp":
            out.append(Flow())
        elif name == "tcp4":
            out.append(Flow(parallel=4))
        elif name == "udp":
            total = scenario.shaped_sum_mbit
            if total:
                rate = UDP_OFFER_FRACTION * total
            elif udp_rate_mbit is not None:
                rate = udp_rate_mbit
            else:  # real links: from the traces, once the lab knows them
                rate = 0.0 if real else CEILING_UDP_MBIT
            length = udp_len or (UDP_PAYLOAD_BYTES if total or real else CEILING_UDP_LEN)
            out.append(Flow("udp", 1, round(rate, 1), length))
        else:
            raise ValueError(f"unknown flow {name!r}: tcp, tcp4 or udp")
    return out


def build_systems(
    scenario: Scenario, lab: Lab, opts: Options, workdir: Path
) -> tuple[list[System], dict[str, str]]:
    """The systems to compare here, and why any were left out."""
    skipped: dict[str, str] = {}
    plan = plan_for(scenario, opts)
    systems: list[System] = [PlainLink(i) for i in range(len(lab.specs))]
    if scenario.kind == "ceiling":
        # The kernel over one unshaped veth: a reference, not a competitor.
        systems = systems[:1]
    if scenario.kind == "failover":
        # A plain link alone says nothing about failover; the failover
        # report uses each link's nominal rate as its reference.
        systems = []
    if scenario.kind == "ceiling" and _wanted(WireguardGo.name, opts):
        reason = WireguardGo.unavailable_reason()
        if reason:
            skipped[WireguardGo.name] = reason
        else:
            systems.append(WireguardGo())
    if scenario.kind != "ceiling":
        if scenario.kind != "reallinks":
            # Real links: one flow takes one link under ECMP, the plain
            # links already say what that gives.
            systems.append(Ecmp())
        if scenario.kind != "latency":
            reason = Mptcp.unavailable_reason()
            if reason:
                skipped["mptcp"] = reason
            else:
                systems.append(Mptcp())
    trees = [CURRENT_TREE, *opts.stripe_trees]
    # Per variant the current tree first, then the others: an A/B pair runs
    # back to back within each repeat.
    schedulers = _variants(plan.schedulers, skipped)
    wanted = [(sched, tree) for sched in schedulers for tree in trees
              if _wanted(tree.system_name(sched), opts)]
    if wanted and not stripe_available():
        skipped["stripe"] = "no stripe package with __main__ in this checkout"
    elif wanted:
        keys = Keys.generate()
        tun = lab.names.client_ns[:-3] + "tun"
        for sched, tree in wanted:
            # One pair of config files per variant, whichever tree runs it.
            name = tree.system_name(sched)
            try:
                server_cfg, client_cfg = write_configs(
                    workdir / "configs", lab.names, lab.specs, keys, sched, tun
                )
            except ValueError as e:  # a link setting for a link this scenario lacks
                skipped[name] = str(e)
                continue
            ok, why = check_config(client_cfg, lab.names.client_ns, tree)
            if not ok:
                skipped[name] = f"stripe check rejected it: {why}"
                continue
            systems.append(
                Stripe(name, server_cfg, client_cfg, TUNNEL_SERVER_ADDR, opts.log_level, tree)
            )
    return [s for s in systems if _wanted(s.name, opts)], skipped


def _variants(schedulers: list[str], skipped: dict[str, str]) -> list[str]:
    """The stripe variants to run: the example configs' is left out (and
    said why) when they set nothing but what the default variant runs."""
    if EXAMPLE_VARIANT not in schedulers or DEFAULT_VARIANT not in schedulers:
        return schedulers
    from stripe.config.model import DEFAULT_SCHEDULER

    example = StripeSettings.from_examples()
    if not example.same_as_default(DEFAULT_SCHEDULER):
        return schedulers
    skipped[f"stripe-{EXAMPLE_VARIANT}"] = (
        f"configs/a.toml and b.toml set what stripe-{DEFAULT_VARIANT} runs "
        f"(scheduler {DEFAULT_SCHEDULER}, stripe's default; {example.describe()}): "
        f"see stripe-{DEFAULT_VARIANT}"
    )
    return [s for s in schedulers if s != EXAMPLE_VARIANT]


def _wanted(system: str, opts: Options) -> bool:
    return opts.systems is None or any(system.startswith(k) for k in opts.systems)


def failover_events(scenario: Scenario, lab: Lab) -> list[Event]:
    if scenario.failover == "down":
        return [
            (FAILOVER_CUT_S, "link1 down", lambda: lab.set_link_up(1, False)),
            (FAILOVER_RESTORE_S, "link1 up", lambda: lab.set_link_up(1, True)),
        ]
    if scenario.failover == "blackhole":
        return [
            (FAILOVER_CUT_S, "link1 blackhole", lambda: lab.set_blackhole(1, True)),
            (FAILOVER_RESTORE_S, "link1 restored", lambda: lab.set_blackhole(1, False)),
        ]
    return []


def run_scenario(
    scenario: Scenario,
    opts: Options,
    out: Path,
    progress: Progress,
    meta: dict[str, Any],
    records: list[dict[str, Any]],
) -> None:
    """Run one scenario, appending to ``records`` as it goes (kept on Ctrl-C)."""
    prefix = new_prefix()
    workdir = out / "work" / scenario.name
    schedule = plan_for(scenario, opts)
    seconds = schedule.seconds
    library = TraceLibrary(opts.traces, workdir, opts.seed)
    links = scenario.links_for(library, seconds)
    lab = Lab(
        LabNames.for_prefix(prefix, len(links)),
        links,
        workdir,
        impairment=scenario.impairment or opts.impairment,
        topology=scenario.topology or opts.topology,
    )
    if scenario.kind == "reallinks":
        meta.setdefault("links", {})[scenario.name] = link_sources(links, seconds)
    try:
        lab.up()
        systems, skipped = build_systems(scenario, lab, opts, workdir)
        meta.setdefault("skipped", {})[scenario.name] = skipped
        meta.setdefault("impairment", {})[scenario.name] = lab.impairment_used
        sys.stderr.write(
            f"{scenario.name}: lab {prefix}* ({lab.impairment_used}); "
            f"leftovers after a crash: python -m bench cleanup {prefix}\n"
        )
        for system_name, why in skipped.items():
            sys.stderr.write(f"{scenario.name}: skipping {system_name}: {why}\n")
        plan = [
            (system, flow, cc)
            for system in systems
            for flow in _flows(scenario, opts, lab)
            # mptcpize changes only TCP sockets: its UDP run would be link0's.
            if not (isinstance(system, Mptcp) and flow.kind == "udp")
            for cc in (schedule.ccs if flow.kind == "tcp" else [None])
        ]
        extra = [p for p in plan if isinstance(p[0], Stripe)] if opts.profile == "extra" else []
        progress.total += len(plan) * schedule.repeat + len(extra) - count_runs_for(scenario, opts)
        runs = [(rep, p) for rep in range(1, schedule.repeat + 1) for p in plan]
        for rep, (system, flow, cc) in runs + [(0, p) for p in extra]:
            label = f"{system.name}-{flow.label}-{cc or 'default'}-" + (
                f"r{rep}" if rep else "profile"
            )
            progress.show(f"{scenario.name} {label} ({seconds:g} s)")
            if isinstance(system, Stripe) and (opts.profile == "all" or not rep):
                where = out / PROFILES / scenario.name / label
                system = Profiled(system, where, opts.profile_native)
            elif isinstance(system, Stripe) and opts.trace_status:
                system = Traced(system)
            record = _one_run(scenario, lab, system, flow, cc, seconds, workdir / label)
            data = record.to_json() | {"scenario": scenario.name, "repeat": rep}
            if rep:
                records.append(data)
                raw = out / "raw" / scenario.name / f"{label}.json"
            else:
                # A profiled extra: its figures are not the scenario's.
                raw = out / PROFILES / scenario.name / label / "record.json"
            raw.parent.mkdir(parents=True, exist_ok=True)
            raw.write_text(json.dumps(data, indent=1))
            progress.finish_one(_note(record))
    finally:
        with uninterruptible():
            lab.down()
        if library.sources:
            meta.setdefault("trace_sources", {})[scenario.name] = library.sources
        if lab.emulator_stats:
            (workdir / "emulator-stats.json").write_text(json.dumps(lab.emulator_stats))


def _one_run(
    scenario: Scenario,
    lab: Lab,
    system: System,
    flow: Flow,
    cc: str | None,
    seconds: float,
    run_dir: Path,
) -> RunRecord:
    try:
        waited = lab.wait_quiet()
    except CommandError as exc:
        record = RunRecord(system.name, flow.label, cc, seconds)
        record.error = str(exc)
        return record
    if scenario.kind == "latency":
        record = measure_latency(lab, system, seconds, cc, run_dir)
    else:
        events = failover_events(scenario, lab)
        record = measure(lab, system, flow, seconds, cc, run_dir, events,
                         real_links=scenario.kind == "reallinks")
        if events:
            _restore_links(lab)
    record.quiet_wait_s = round(waited, 1)
    return record


def _note(record: RunRecord) -> str:
    note = f"{record.goodput_mbit:.2f} Mbit/s"
    if record.rtt_idle_ms is not None:
        note += (f", rtt idle {record.rtt_idle_ms} ms loaded {record.rtt_loaded_ms} ms"
                 f" (p95 {record.rtt_loaded_p95_ms})")
    if record.quiet_wait_s >= 1.0:
        note += f" (waited {record.quiet_wait_s:g} s for the links to go idle first)"
    if record.error:
        note += f"  ERROR: {record.error.splitlines()[0][:120]}"
    return note


def _restore_links(lab: Lab) -> None:
    """A failover run that failed half-way must not leave link 1 cut for the next."""
    lab.set_blackhole(1, False)
    lab.set_link_up(1, True)


def link_sources(links: tuple[LinkSpec, ...], seconds: float) -> list[dict[str, str]]:
    """Where each link's rate comes from, each way, for the report, with a
    trace's silences in the first ``seconds``."""
    return [{"up": _source(s.up, seconds), "down": _source(s.down, seconds),
             "link": describe_link(s)} for s in links]


def _source(direction: Direction, seconds: float) -> str:
    described = direction.source or describe_link(LinkSpec(direction, direction))
    return described + _silences(direction, seconds)


# A trace's gaps this long are listed in the report: a link silent that long
# under load may be declared down (see `links`), so a reader can tell a
# detected outage from a false death.
SILENCE_MIN_MS = 300


def _silences(direction: Direction, seconds: float) -> str:
    if direction.trace is None:
        return ""
    found = Trace.load(direction.trace).silences(seconds * 1000, SILENCE_MIN_MS)
    head = f"; in its first {seconds:g} s"
    if not found:
        return f"{head} no silence of {SILENCE_MIN_MS / 1000:g} s or more"
    return head + " silent " + ", ".join(
        f"at {start / 1000:.1f} s for {length / 1000:.2f} s" for start, length in found)


def _flows(scenario: Scenario, opts: Options, lab: Lab | None = None) -> list[Flow]:
    """The scenario's flows; with its ``lab``, a real-links UDP stream's
    rate set from the links' traces (unless --udp-rate gave one)."""
    plan = plan_for(scenario, opts)
    flows = flows_for(scenario, opts.flows, opts.udp_rate_mbit, opts.udp_len, plan.directions)
    if lab is None or scenario.kind != "reallinks" or opts.udp_rate_mbit is not None:
        return flows
    return [dataclasses.replace(flow, udp_rate_mbit=real_udp_offer_mbit(
                lab, flow.direction != DOWNLOAD, plan.seconds, flow.udp_len))
            if flow.kind == "udp" else flow for flow in flows]


def real_udp_offer_mbit(lab: Lab, up: bool, seconds: float, payload_bytes: int) -> float:
    """A UDP stream's rate over real links, as iperf3 -b counts it (UDP
    payload): REAL_UDP_OFFER_FRACTION of the links' mean capacity (IP
    level) over the run's first ``seconds``, one way (``up``: client to
    server)."""
    n = max(1, round(seconds))
    capacity = 0.0
    for i in range(len(lab.specs)):
        series = lab.capacity_mbit(i, up, n)
        if not series:
            raise ValueError(f"link {i} has no emulated rate to size a UDP stream by: "
                             "give --udp-rate")
        capacity += sum(series) / len(series)
    return round(REAL_UDP_OFFER_FRACTION * capacity * udp_payload_share(payload_bytes), 1)


def count_runs_for(scenario: Scenario, opts: Options) -> int:
    """Runs expected before the lab says which systems are available."""
    plan = plan_for(scenario, opts)
    n_plain = {"ceiling": 1, "failover": 0}.get(scenario.kind, len(scenario.links))
    # Every scheduler variant from the current tree and each --stripe-tree
    # (the example configs' only if they differ from the default).
    n_stripe = len(_variants(plan.schedulers, {})) * (1 + len(opts.stripe_trees))
    # ceiling: wireguard-go; real links: MPTCP; others: ECMP and MPTCP.
    n_sys = n_plain + {"ceiling": 1, "reallinks": 1}.get(scenario.kind, 2) + n_stripe
    # Each repeat runs every system; a profiled extra, once per stripe system.
    per_flow = n_sys * plan.repeat + (n_stripe if opts.profile == "extra" else 0)
    total = 0
    for flow in _flows(scenario, opts):
        total += per_flow * (len(plan.ccs) if flow.kind == "tcp" else 1)
    return total


def run_overhead_s(scenario: Scenario) -> float:
    return REAL_RUN_OVERHEAD_S if scenario.kind == "reallinks" else RUN_OVERHEAD_S


def estimate_seconds(opts: Options) -> float:
    """Rough wall time: run lengths plus set-up per run, ~5 s per lab."""
    total = 0.0
    for s in opts.scenarios:
        per_run = plan_for(s, opts).seconds + run_overhead_s(s)
        total += 5 + count_runs_for(s, opts) * per_run
    return total


MIN_FITTED_SECONDS = 3.0


def fit_seconds(opts: Options, budget_s: float) -> float:
    """The run length that makes ``opts`` take about ``budget_s`` in all.

    The estimate is linear in the run length (failover's is fixed), so solve
    for it; fail when even short runs would not fit.
    """
    fixed = sum(
        5 + count_runs_for(s, opts) * ((s.fixed_seconds or 0.0) + run_overhead_s(s))
        for s in opts.scenarios
    )
    scalable = sum(count_runs_for(s, opts) for s in opts.scenarios if s.fixed_seconds is None)
    seconds = (budget_s - fixed) / scalable if scalable else opts.seconds or DEFAULT_SECONDS
    if seconds < MIN_FITTED_SECONDS:
        raise ValueError(
            f"{budget_s / 60:g} min is too short for this plan ({count_runs(opts)} runs): "
            "fewer repeats, scenarios or schedulers"
        )
    return round(min(seconds, 60.0), 1)


def count_runs(opts: Options) -> int:
    return sum(count_runs_for(s, opts) for s in opts.scenarios)


def run(opts: Options) -> Path:
    tools = ["ip", "tc", "iperf3", "ping"]
    if any(s.kind == "failover" for s in opts.scenarios):
        tools.append("nft")
    ensure_tools(tools)  # ethtool: the lab asks for it when it emulates
    if mptcp_available() and _wanted("mptcp", opts):
        # The MPTCP baseline is optional: try to install it, skip it otherwise.
        try:
            ensure_tools(["mptcpize"])
        except CommandError as exc:
            sys.stderr.write(f"bench: no MPTCP baseline: {exc}\n")
    if any(s.kind == "ceiling" for s in opts.scenarios) and _wanted(WireguardGo.name, opts):
        try:
            ensure_tools([WIREGUARD_GO])
        except CommandError as exc:
            sys.stderr.write(f"bench: no wireguard-go baseline: {exc}\n")
    if opts.profile != "off" and py_spy_path() is None:
        raise CommandError(PY_SPY_MISSING)
    # Which code each stripe-<variant>@<label> system runs (and that it is
    # that tree's own, not this environment's installed stripe).
    trees = {t.label: t.describe() for t in opts.stripe_trees if t.label}
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = opts.out or RESULTS_DIR / stamp
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "started": stamp,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "repeat": opts.repeat,
        "seconds": opts.seconds,
        "ccs": opts.ccs,
        "flows": opts.flows,
        "udp_rate_mbit": opts.udp_rate_mbit,
        "udp_len": opts.udp_len,
        "schedulers": opts.schedulers,
        "scenarios": [s.name for s in opts.scenarios],
        "plans": {s.name: dataclasses.asdict(plan_for(s, opts)) for s in opts.scenarios},
        "traces": str(opts.traces) if opts.traces else None,
        "seed": opts.seed,
        "profiled": opts.profile,
        "stripe_trees": trees,
    }
    progress = Progress(count_runs(opts))
    minutes = estimate_seconds(opts) / 60
    sys.stderr.write(
        f"bench: up to {progress.total} runs, about {minutes:.0f} min; results in {out}\n"
    )
    records: list[dict[str, Any]] = []
    with terminating_signals_raise():
        try:
            for scenario in opts.scenarios:
                run_scenario(scenario, opts, out, progress, meta, records)
        finally:
            from bench.report.tables import write_report

            meta["load_average"] = load_average()
            meta["profiles"] = sorted(
                str(p.relative_to(out)) for p in (out / PROFILES).glob("*/*/*.txt")
            )
            (out / "meta.json").write_text(json.dumps(meta, indent=1))
            if records:
                write_report(out, records, meta)
    return out


# What of a results directory is worth keeping in git: no logs, no configs
# (they hold the run's private keys), no iperf3 dumps.
PUBLISHED = ("results.md", "summary.json", "meta.json", "raw", "plots", PROFILES)


LATEST_DIR = RESULTS_DIR / "latest"
_LATEST_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def latest_name(name: str) -> str:
    """A published report's directory name under bench/results/latest
    (ValueError unless it is one plain lower-case name: no path)."""
    if not _LATEST_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain lower-case name (a-z, 0-9, '.', '_', '-')")
    return name


def publish_latest(out: Path, latest: Path) -> Path:
    """Replace the directory `latest` (bench/results/latest/<name>, for the
    README and docs) with this run's report; the other published reports
    beside it stay as they are."""
    if latest.exists():
        shutil.rmtree(latest)
    latest.mkdir(parents=True)
    for name in PUBLISHED:
        src = out / name
        if src.is_dir():
            shutil.copytree(src, latest / name)
        elif src.exists():
            shutil.copy2(src, latest / name)
    return latest


def load_average() -> str:
    """/proc/loadavg as it reads (1, 5, 15 min, running/total, last PID)."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"
