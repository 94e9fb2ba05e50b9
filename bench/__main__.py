"""Command line: ``python -m bench {demo,run,profile,attack,list,cleanup}``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.attack.flood import DEFAULT_MIX, KINDS, MAX_SPOOFED_SOURCES, SPOOFED_NET, parse_mix
from bench.attack.runner import MAX_FLOOD_PACKETS, AttackOptions
from bench.chaos.runner import ChaosOptions
from bench.lab import MAX_LINKS, CommandError, cleanup_prefix
from bench.lab.iperf import DOWNLOAD, UPLOAD, parse_rate_mbit
from bench.lab.traces import DEFAULT_TRACES_DIR, NO_TRACES, traces_dir_from
from bench.runner import (
    DEFAULT_SCHEDULERS,
    LATEST_DIR,
    REAL_SCHEDULERS,
    Options,
    fit_seconds,
    latest_name,
    publish_latest,
)
from bench.runner import run as run_bench
from bench.scenarios import ALIASES, SCENARIOS, describe_link, resolve
from bench.systems.stripe import StripeTree
from bench.systems.stripe_config import split_variant
from bench.systems.wireguard_go import remove_stale_sockets

CC_CHOICES = ("cubic", "bbr")
CHAOS = "chaos"
CHAOS_SECONDS = 600.0
CHAOS_MIN_SECONDS = 30.0
QUICK_SECONDS = 4.0
PROFILE_SECONDS = 10.0
PROFILE_SCHEDULER = "adaptive"
FLOW_CHOICES = ("tcp", "tcp4", "udp")
# iperf3's UDP payload carries its 16-byte header; 65507 is the IPv4 maximum.
MIN_UDP_LEN = 16
MAX_UDP_LEN = 65507


def _need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, veths, qdiscs)")


def print_summary(out: Path) -> None:
    """The headline numbers on stdout; the full table is in results.md."""
    try:
        rows = json.loads((out / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return
    print(f"{'scenario':20} {'system':18} {'flow':14} {'cc':8} {'Mbit/s':>9} {'share':>6}")
    for r in rows:
        share = "-" if r["share_of_reference"] is None else f"{r['share_of_reference']:.2f}"
        print(
            f"{r['scenario']:20} {r['system']:18} {r['flow']:14} {r['cc'] or 'default':8} "
            f"{r['goodput_median']:9.2f} {share:>6}"
        )


def _add_run_arguments(p: argparse.ArgumentParser, profile: bool) -> None:
    """``run``'s options; ``profile`` takes the same ones with its own defaults."""
    p.add_argument(
        "scenarios", nargs="+", metavar="SCENARIO", help="preset names or aliases (see `list`)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"runs per system (default {1 if profile else 3}; real links: lte-pair 3, "
        "the others 1)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"length of each run (default {PROFILE_SECONDS if profile else 20:g}; "
        "real links 60; failover is always 30)",
    )
    p.add_argument(
        "--cc",
        default=None,
        help="comma list of TCP congestion controls, e.g. cubic,bbr (default: the system's; "
        "real links: lte-pair cubic,bbr, the others cubic)",
    )
    p.add_argument(
        "--directions",
        default=None,
        help=f"comma list of {UPLOAD} (the client sends) and {DOWNLOAD} (the server sends, "
        "iperf3 -R) (default: real links both, the others the client sending)",
    )
    p.add_argument(
        "--traces",
        default=None,
        metavar="DIR",
        help=f"recorded mahimahi traces for the real-links scenarios (default {DEFAULT_TRACES_DIR} "
        f"if it exists); `{NO_TRACES}`: synthetic stand-ins only",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the synthetic traces, handover and Starlink schedules (default 1)",
    )
    p.add_argument(
        "--flows",
        default="tcp",
        help="comma list of tcp (one flow), tcp4 (4 parallel), udp (fixed rate)",
    )
    p.add_argument(
        "--udp-rate",
        default=None,
        help="UDP offered rate on the unshaped (ceiling) and real-links scenarios, iperf3 -b "
        "syntax, e.g. 600M (default: 1000M unshaped; real links 70 %% of their mean trace "
        "capacity in the flow's direction); shaped scenarios offer 90 %% of their links' sum",
    )
    p.add_argument(
        "--udp-len",
        type=int,
        default=None,
        help="UDP payload bytes per datagram, iperf3 -l (default: 1372 on unshaped links, "
        "a full 1400-byte tunnel packet; 1200 on shaped ones)",
    )
    p.add_argument(
        "--systems",
        default="stripe" if profile else None,
        help="comma list of system name prefixes to run, e.g. link0,ecmp,wireguard-go,stripe",
    )
    p.add_argument(
        "--schedulers",
        default=PROFILE_SCHEDULER if profile else None,
        help="stripe schedulers to try, each optionally with [interface] settings "
        "(adaptive:queue_target_ms=0 is the adaptive scheduler with queue management off; "
        "a key linkN.KEY sets KEY in the client's link N: default:link1.backup=true), "
        "`default` (no scheduler key: stripe's default) or `example` (the settings of "
        "configs/a.toml and b.toml); those `stripe check` rejects are skipped (default "
        f"{','.join(DEFAULT_SCHEDULERS)}; real links {','.join(REAL_SCHEDULERS)})",
    )
    p.add_argument(
        "--stripe-tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run every scheduler variant from another checkout of stripe in DIR "
        "(e.g. a git worktree of an older commit), as the system stripe-<variant>@LABEL; "
        "repeatable",
    )
    p.add_argument("--quick", action="store_true", help="smoke mode: 4 s per system, 1 repeat")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default bench/results/<UTC timestamp>)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="pick --seconds so that the whole plan takes about this long",
    )
    p.add_argument(
        "--latest",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="also copy the report (no logs/configs) to bench/results/latest/NAME/, "
        "replacing that directory only (NAME: the scenario or alias, when only one "
        "is given)",
    )
    p.add_argument(
        "--topology",
        default="network",
        choices=("network", "local"),
        help="network: links shaped in a middle namespace (default); local: tbf on the "
        "endpoints' veths, as in the demo",
    )
    p.add_argument(
        "--impairment",
        default="auto",
        choices=("auto", "netem", "userspace"),
        help="delay/jitter/loss by netem (where the kernel has it) or by "
        "the userspace emulator (default: auto)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))

    if not profile:
        p.add_argument(
            "--profile",
            action="store_true",
            help="after the repeats, one more run of each stripe system and flow under "
            "py-spy (kept out of the figures): top functions and flame graphs in profiles/",
        )
        p.add_argument(
            "--trace-status",
            action="store_true",
            help="poll both stripe ends every 100 ms during each run (windows, in flight, "
            "queues, edge queue) into status-trace.jsonl; sum up with "
            "python -m bench.status_trace FILE",
        )
    p.add_argument(
        "--native",
        action="store_true",
        help="with profiling: also sample C frames (py-spy --native, which pauses stripe "
        "at every sample: much lower throughput while profiled)",
    )


def _add_attack_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=3, help="unattacked + attacked pairs (default 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each flow (default 10)")
    p.add_argument("--links", type=int, default=2, help="client-server links (default 2)")
    p.add_argument(
        "--rate", type=float, default=50.0, help="tbf rate of each link, Mbit/s (default 50)"
    )
    p.add_argument(
        "--flood-pps",
        type=float,
        default=0.0,
        help="attacker datagrams per second (default 0: as fast as one Python process sends)",
    )
    p.add_argument(
        "--flood-mix",
        default=",".join(f"{k}:{w}" for k, w in DEFAULT_MIX.items()),
        help=f"weights of the attacker's kinds ({', '.join(KINDS)}); default %(default)s",
    )
    p.add_argument(
        "--flood-max-packets",
        type=int,
        default=None,
        help="the attacker's packet budget per flow (default: its rate x its time "
        f"budget, or {MAX_FLOOD_PACKETS:,} unpaced)",
    )
    p.add_argument(
        "--capture",
        type=int,
        default=300,
        help="client datagrams captured for replaying (default 300)",
    )
    p.add_argument(
        "--sources",
        type=int,
        default=0,
        help=f"spoof the flood from this many IPv4 addresses ({SPOOFED_NET}; default 0: "
        "the attacker's own address)",
    )
    p.add_argument(
        "--source-burst",
        type=int,
        default=1,
        help="with --sources: datagrams from each address in a row before the next (default 1; "
        "above the guard's limit of 64, each source gets blocked)",
    )
    p.add_argument("--scheduler", default="adaptive", help="stripe scheduler (default adaptive)")
    p.add_argument("--cc", choices=CC_CHOICES, default=None, help="iperf3 -C (default: system's)")
    p.add_argument("--out", type=Path, default=None, help="results directory "
                   "(default bench/results/attack-<UTC timestamp>)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))


def attack_options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> AttackOptions:
    """``attack``'s options (exits with usage on bad values)."""
    try:
        mix = parse_mix(args.flood_mix)
    except ValueError as exc:
        parser.error(f"--flood-mix: {exc}")
    checks = [
        (args.repeat >= 1, "--repeat: at least 1"),
        (args.seconds >= 1, "--seconds: at least 1"),
        (1 <= args.links <= MAX_LINKS, f"--links: 1..{MAX_LINKS}"),
        (args.rate > 0, "--rate: a positive rate in Mbit/s"),
        (args.flood_pps >= 0, "--flood-pps: 0 (unpaced) or a positive rate"),
        (args.flood_max_packets is None or args.flood_max_packets >= 1,
         "--flood-max-packets: at least 1"),
        (args.capture >= 1, "--capture: at least 1"),
        (0 <= args.sources <= MAX_SPOOFED_SOURCES, f"--sources: 0..{MAX_SPOOFED_SOURCES}"),
        (args.source_burst >= 1, "--source-burst: at least 1"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return AttackOptions(
        repeat=args.repeat,
        seconds=args.seconds,
        links=args.links,
        rate_mbit=args.rate,
        flood_pps=args.flood_pps,
        mix=mix,
        max_packets=args.flood_max_packets,
        capture=args.capture,
        sources=args.sources,
        source_burst=args.source_burst,
        scheduler=args.scheduler,
        cc=args.cc,
        out=args.out,
        log_level=args.log_level,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="issue-2 demo: plain link vs ECMP vs stripe")
    demo.add_argument("--seconds", type=float, default=20.0)
    demo.add_argument(
        "--cc",
        choices=CC_CHOICES,
        default=None,
        help="TCP congestion control for iperf3 -C (default: system's)",
    )
    demo.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))

    _add_run_arguments(sub.add_parser("run", help="run benchmark scenarios (issue 3)"), False)
    _add_run_arguments(
        sub.add_parser(
            "profile",
            help="where stripe's time goes: a short run under py-spy (issue 7); "
            "same options as run",
        ),
        True,
    )

    _add_attack_arguments(
        sub.add_parser(
            "attack",
            help="issue 5: goodput and server CPU while an attacker replays, forges and "
            "floods handshakes",
        )
    )

    cl = sub.add_parser(
        "clients",
        help="issue 19: N simulated clients (2 links each) against one stripe server: "
        "connect time, handshakes/s, server CPU and RSS idle and with M sending, fairness",
    )
    cl.add_argument("--clients", default="100", help="comma list of N, e.g. 100,500,1000")
    cl.add_argument("--sending", type=int, default=8, help="M clients that send (default 8)")
    cl.add_argument("--workers", type=int, default=2, help="load generator processes (2-4)")
    cl.add_argument("--rate-mbit", type=float, default=20.0,
                    help="offered rate of each sending client (default 20)")
    cl.add_argument("--idle-seconds", type=float, default=20.0)
    cl.add_argument("--send-seconds", type=float, default=10.0)
    cl.add_argument("--worker-nice", type=int, default=0,
                    help="run the load generators at this niceness (e.g. 10: the server "
                    "gets the CPU first on a machine they share)")
    cl.add_argument("--server-workers", type=int, default=1,
                    help="the server's `workers` (default 1)")
    cl.add_argument("--prefix", default="cy", help="namespace and interface name prefix")
    cl.add_argument("--out", default=None, help="results directory (default "
                    "bench/results/clients-<time>)")

    wk = sub.add_parser(
        "workers",
        help="issue 19: a server's processing rate with workers = 1 and 2, side by side "
        "(sealed blasts from C clients, then one client alone)",
    )
    wk.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    wk.add_argument("--clients", type=int, default=8, help="clients sending at once (default 8)")
    wk.add_argument("--repeat", type=int, default=3)
    wk.add_argument("--seconds", type=float, default=4.0, help="the blast's length (default 4)")
    wk.add_argument("--rate-kpps", type=float, default=400.0,
                    help="offered datagrams per second, thousands (default 400: above what "
                    "the server takes)")
    wk.add_argument("--inner-bytes", type=int, default=100, help="inner packet size (default 100)")
    wk.add_argument("--no-single", action="store_true", help="skip the one-client runs")
    wk.add_argument("--prefix", default="cw", help="namespace and interface name prefix")
    wk.add_argument("--out", default=None, help="results directory (default "
                    "bench/results/workers-<time>)")

    sub.add_parser("list", help="list scenario presets")

    clean = sub.add_parser(
        "cleanup", help="delete leftover namespaces (and wireguard-go sockets) with a prefix"
    )
    clean.add_argument(
        "prefix",
        help="namespace name prefix: sb1a2b for one run's leftovers, sb for every bench "
        "run's, sa for every attack bench's (only when none is running)",
    )

    return parser


def options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    """Runner options from ``run``'s arguments (exits with usage on bad values)."""
    try:
        scenarios = resolve(args.scenarios)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    quick = args.quick
    profile = "all" if args.command == "profile" else "extra" if args.profile else "off"
    default_seconds = QUICK_SECONDS if quick else PROFILE_SECONDS if profile == "all" else None
    try:
        traces = traces_dir_from(args.traces)
    except ValueError as exc:
        parser.error(f"--traces: {exc}")
    opts = Options(
        scenarios=scenarios,
        repeat=args.repeat or (1 if quick or profile == "all" else None),
        seconds=args.seconds or default_seconds,
        ccs=[c or None for c in args.cc.split(",")] if args.cc else None,
        flows=args.flows.split(","),
        systems=args.systems.split(",") if args.systems else None,
        schedulers=[s for s in args.schedulers.split(",") if s] if args.schedulers else None,
        directions=args.directions.split(",") if args.directions else None,
        traces=traces,
        seed=args.seed,
        out=args.out,
        log_level=args.log_level,
        impairment=args.impairment,
        topology=args.topology,
        profile=profile,
        profile_native=args.native,
        trace_status=getattr(args, "trace_status", False),
    )
    for way in opts.directions or []:
        if way not in (UPLOAD, DOWNLOAD):
            parser.error(f"--directions: {way!r} is not {UPLOAD} or {DOWNLOAD}")
    for variant in opts.schedulers or []:
        try:
            split_variant(variant)
        except ValueError as exc:
            parser.error(f"--schedulers: {exc}")
    for text in args.stripe_tree:
        try:
            tree = StripeTree.parse(text)
        except ValueError as exc:
            parser.error(f"--stripe-tree: {exc}")
        if any(t.label == tree.label for t in opts.stripe_trees):
            parser.error(f"--stripe-tree: label {tree.label!r} given twice")
        opts.stripe_trees.append(tree)
    if args.latest is not None:
        # Checked before the run: a bad name must not cost an hour's results.
        name = args.latest
        if not name:
            if len(args.scenarios) != 1:
                parser.error("--latest: name the published report when more than one "
                             "scenario is given, e.g. --latest main")
            name = args.scenarios[0]
        try:
            opts.publish_as = latest_name(name)
        except ValueError as exc:
            parser.error(f"--latest: {exc}")
    if args.native and profile == "off":
        parser.error("--native goes with profiling (--profile or the profile command)")
    if args.minutes:
        if args.seconds:
            parser.error("--minutes and --seconds exclude each other")
        try:
            opts.seconds = fit_seconds(opts, args.minutes * 60)
        except ValueError as exc:
            parser.error(str(exc))
    for cc in opts.ccs or []:
        if cc is not None and cc not in CC_CHOICES:
            parser.error(f"--cc: {cc!r} is not one of {', '.join(CC_CHOICES)}")
    for flow in opts.flows:
        if flow not in FLOW_CHOICES:
            parser.error(f"--flows: {flow!r} is not one of {', '.join(FLOW_CHOICES)}")
    if args.udp_rate is not None:
        try:
            opts.udp_rate_mbit = parse_rate_mbit(args.udp_rate)
        except ValueError as exc:
            parser.error(f"--udp-rate: {exc}")
    if args.udp_len is not None:
        if not MIN_UDP_LEN <= args.udp_len <= MAX_UDP_LEN:
            parser.error(f"--udp-len: {args.udp_len} is not in {MIN_UDP_LEN}..{MAX_UDP_LEN}")
        opts.udp_len = args.udp_len
    return opts


def chaos_options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ChaosOptions:
    """``run chaos``'s options: its length, seed, output and log level; the
    suite's other options do not apply to it."""
    if args.scenarios != [CHAOS]:
        parser.error("chaos runs alone: `python -m bench run chaos [--seconds S] [--seed N]`")
    if args.seconds and args.minutes:
        parser.error("--minutes and --seconds exclude each other")
    seconds = args.seconds or (args.minutes * 60 if args.minutes else CHAOS_SECONDS)
    if seconds < CHAOS_MIN_SECONDS:
        parser.error(f"chaos: at least {CHAOS_MIN_SECONDS:g} s")
    return ChaosOptions(seconds=seconds, seed=args.seed, out=args.out, log_level=args.log_level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        _need_root()
        from bench.demo import run_demo

        return run_demo(args.seconds, args.cc, args.log_level)
    if args.command == "list":
        for s in SCENARIOS.values():
            print(f"{s.name:20} {s.kind:10} {s.doc}")
            for i, spec in enumerate(s.links):
                print(f"{'':20} {'':10}   link{i}: {describe_link(spec)}")
        print(f"{CHAOS:20} {'chaos':10} 10 min (--seconds/--minutes) of seeded faults under a "
              "TCP transfer, UDP and ping (docs/bench.md#chaos)")
        print("aliases: " + "; ".join(f"{k} = {' '.join(v)}" for k, v in ALIASES.items()))
        return 0
    if args.command == "run" and CHAOS in args.scenarios:
        _need_root()
        from bench.chaos.runner import run_chaos

        out = run_chaos(chaos_options_from(args, parser))
        summary = json.loads((out / "summary.json").read_text())
        print(f"chaos: {'passed' if summary['passed'] else 'FAILED'}; results: "
              f"{out / 'results.md'}")
        return 0 if summary["passed"] else 1
    if args.command in ("run", "profile"):
        _need_root()
        opts = options_from(args, parser)
        out = run_bench(opts)
        print_summary(out)
        print(f"results: {out / 'results.md'}")
        if opts.publish_as is not None:
            published = publish_latest(out, LATEST_DIR / opts.publish_as)
            print(f"published: {published / 'results.md'}")
        return 0
    if args.command == "attack":
        _need_root()
        from bench.attack.report import summary_line
        from bench.attack.runner import run_attack

        out = run_attack(attack_options_from(args, parser))
        records = sorted((out / "raw").glob("r*-*.json"))
        print(summary_line([json.loads(p.read_text()) for p in records], out))
        return 0
    if args.command == "clients":
        _need_root()
        import time as _time

        from bench.clients.run import ClientsOptions, run_clients, write_report

        out_dir = Path(args.out or f"bench/results/clients-{_time.strftime('%Y%m%d-%H%M%S')}")
        rows = []
        for n in [int(x) for x in args.clients.split(",")]:
            copts = ClientsOptions(n, args.sending, max(1, min(args.workers, 4)),
                                  args.rate_mbit * 1e6, args.idle_seconds, args.send_seconds,
                                  args.prefix, out_dir, worker_nice=args.worker_nice,
                                  server_workers=args.server_workers)
            rows.append(run_clients(copts))
            print(json.dumps(rows[-1]))
            write_report(rows, out_dir)
        print(f"results: {out_dir / 'results.md'}")
        return 0
    if args.command == "workers":
        _need_root()
        import time as _time

        from bench.clients.rate import RateOptions, run_rates

        ropts = RateOptions([int(x) for x in args.workers.split(",")], args.clients,
                            args.repeat, args.seconds, args.rate_kpps * 1000, args.inner_bytes,
                            not args.no_single, args.prefix,
                            Path(args.out or f"bench/results/workers-"
                                             f"{_time.strftime('%Y%m%d-%H%M%S')}"))
        run_rates(ropts)
        print(f"results: {ropts.out / 'results.md'}")
        return 0
    if args.command == "cleanup":
        _need_root()
        # Namespaces first: that ends their wireguard-go, whose sockets go next.
        gone = cleanup_prefix(args.prefix) + remove_stale_sockets(args.prefix)
        print("removed: " + (" ".join(gone) if gone else "nothing"))
        return 0
    return 2


def entry() -> int:
    try:
        return main()
    except KeyboardInterrupt:
        # The labs tear themselves down in their finally blocks.
        print("bench: interrupted; everything it created was removed", file=sys.stderr)
        return 130
    except CommandError as exc:
        # A tool or the lab failed (already torn down): one clear message.
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(entry())
