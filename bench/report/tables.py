"""results.md, summary.json and PNG plots for one results directory."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.report.analysis import (
    Record,
    Summary,
    failover_metrics,
    single_link_goodput,
    summarize,
    system_order,
)
from bench.report.reallinks import RealSummary, links_lines, notes, overview, real_summaries
from bench.report.reallinks import scenario_table as real_table
from bench.scenarios import FAILOVER_CUT_S, FAILOVER_RESTORE_S, SCENARIOS, describe_link


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _shares(s: Summary) -> str:
    return " / ".join(f"{100 * x:.0f}" for x in s.link_share) if s.link_share else "-"


def _median_or_none(values: list[float | None]) -> float | None:
    """Median when most runs have a value; None ('never') when most do not."""
    known = [v for v in values if v is not None]
    if not known or len(known) * 2 < len(values):
        return None
    return statistics.median(known)


def _median_max(values: list[float | None]) -> str:
    """'median [max]' to 0.1 s of the runs that have a value; '-' without."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{statistics.median(known):.1f} [{max(known):.1f}]"


def _role(process: str) -> str:
    """``stripe-server`` / ``wireguard-go-client`` -> ``server`` / ``client``."""
    for system in ("stripe-", "wireguard-go-"):
        if process.startswith(system):
            return process.removeprefix(system)
    return process


def _per_role(values: dict[str, float], digits: int, sep: str = " / ") -> str:
    return sep.join(f"{_role(k)} {v:.{digits}f}" for k, v in values.items()) or "-"


def ratio_to(summaries: list[Summary], s: Summary, system: str) -> float | None:
    """``s``'s median goodput over ``system``'s in the same scenario, flow and cc."""
    key = (s.scenario, system, s.flow, s.cc)
    for other in summaries:
        if (other.scenario, other.system, other.flow, other.cc) == key and other.goodput_median:
            return round(s.goodput_median / other.goodput_median, 2)
    return None


def _udp_loss(s: Summary) -> str:
    loss = _fmt(s.lost_percent_median)
    where = s.udp_drop_percent
    if not where:
        return loss
    return f"{loss} ({where.get('iperf3', 0):.2f} / {where.get('tunnel', 0):.2f})"


def ceiling_table(rows: list[Summary]) -> list[str]:
    """Unshaped links: goodput against the kernel and wireguard-go, and what each
    tunnel process spends on it (CPU, Mbit per CPU-second, peak memory)."""
    lines = [
        "",
        "Efficiency: x link0 / x wireguard-go = median goodput over theirs (same flow, cc); "
        "UDP loss % = iperf3's, then in brackets the receive-buffer overflows in the server "
        "namespace as % of datagrams sent: at iperf3's own socket (the measurement's loss: "
        "the receiving iperf3 did not keep up) / at the tunnel's sockets; "
        "Mbit per CPU-s = megabits received per CPU-second of that process (utime+stime "
        "while iperf3 ran: Mbit/s per fully busy core); peak RSS = largest VmHWM of any run, "
        "MB.",
        "",
        "| system | flow | cc | goodput Mbit/s | x link0 | x wireguard-go "
        "| UDP loss % (iperf3 socket / tunnel) | CPU % | Mbit per CPU-s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        procs = {k: v for k, v in s.cpu_percent.items() if k != "emulator"}
        lines.append(
            f"| {s.system} | {s.flow} | {s.cc or 'default'} | {s.goodput_median:.1f} "
            f"| {_fmt(ratio_to(rows, s, 'link0'))} | {_fmt(ratio_to(rows, s, 'wireguard-go'))} "
            f"| {_udp_loss(s)} | {_per_role(procs, 0)} "
            f"| {_per_role(s.mbit_per_cpu_s, 0)} | {_per_role(s.peak_rss_mb, 1)} |"
        )
    return lines


def failover_table(records: list[Record], summaries: list[Summary]) -> list[str]:
    lines: list[str] = []
    for name in sorted({r["scenario"] for r in records}):
        scen = SCENARIOS.get(name)
        if scen is None or scen.kind != "failover":
            continue
        link0 = single_link_goodput(summaries, name, 0) or 0.95 * (scen.links[0].up.rate_mbit or 0)
        link1 = single_link_goodput(summaries, name, 1) or 0.95 * (scen.links[1].up.rate_mbit or 0)
        lines += [
            f"### {name}: survival and recovery",
            "",
            f"Cut at {FAILOVER_CUT_S:g} s, restored at {FAILOVER_RESTORE_S:g} s. "
            f"Steady = 2 s at >= 80 % of link 0's {link0:.2f} Mbit/s; both again = link 1 "
            f"sending >= 50 % of its {link1:.2f} Mbit/s for 2 s (a link's rate: measured alone "
            "if it was, else 95 % of its configured rate). '-' = never within the run. "
            "From the receiver's 100 ms reports: recovered = 0.5 s averaging >= 80 % of link 0's "
            "rate, from the moment of the cut; longest stall = the longest run of reports "
            "below 25 % of it between the cut and the restore.",
            "",
        ]
        per_run: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            if r["scenario"] == name:
                m = failover_metrics(r, FAILOVER_CUT_S, FAILOVER_RESTORE_S, link0, link1)
                per_run[(r["system"], r.get("cc") or "default")].append(m)
        lines += [
            "| system | cc | survived | cut -> steady (s), median | cut -> recovered (s), "
            "median [max] | longest stall (s), median [max] | restore -> both (s), median |",
            "|---|---|---|---|---|---|---|",
        ]
        for (system, cc), ms in per_run.items():
            lines.append(
                f"| {system} | {cc} | {sum(m['survived'] for m in ms)}/{len(ms)} "
                f"| {_fmt(_median_or_none([m['cut_to_steady_s'] for m in ms]), 1)} "
                f"| {_median_max([m['cut_to_recovered_s'] for m in ms])} "
                f"| {_median_max([m['stall_s'] for m in ms])} "
                f"| {_fmt(_median_or_none([m['restore_to_both_s'] for m in ms]), 1)} |"
            )
        lines += [
            "",
            "| system | cc | repeat | survived | cut -> steady (s) | cut -> recovered (s) "
            "| longest stall (s) | restore -> both (s) | goodput per second (Mbit/s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            if r["scenario"] != name:
                continue
            m = failover_metrics(r, FAILOVER_CUT_S, FAILOVER_RESTORE_S, link0, link1)
            per_s = " ".join(f"{v:.1f}" for v in m["per_second_mbit"])
            lines.append(
                f"| {r['system']} | {r.get('cc') or 'default'} | {r['repeat']} "
                f"| {'yes' if m['survived'] else 'NO'} | {_fmt(m['cut_to_steady_s'], 0)} "
                f"| {_fmt(m['cut_to_recovered_s'], 1)} | {_fmt(m['stall_s'], 1)} "
                f"| {_fmt(m['restore_to_both_s'], 0)} | {per_s} |"
            )
        lines.append("")
    return lines


def overview_table(summaries: list[Summary]) -> list[str]:
    """Scenario x system: median goodput (share of the reference), one TCP flow."""
    rows = [s for s in summaries if s.flow == "tcp"]
    if not rows:
        return []
    systems = sorted(dict.fromkeys(s.system for s in rows), key=system_order)
    ccs = list(dict.fromkeys(s.cc for s in rows))
    lines = [
        "## Overview: one TCP flow, median Mbit/s (share of the plain links' sum)",
        "",
        "| scenario | cc | " + " | ".join(systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for scenario in dict.fromkeys(s.scenario for s in rows):
        for cc in ccs:
            cells = []
            for system in systems:
                hit = [s for s in rows if (s.scenario, s.system, s.cc) == (scenario, system, cc)]
                if not hit:
                    cells.append("")
                    continue
                share = hit[0].share_of_reference
                cells.append(
                    f"{hit[0].goodput_median:.2f}" + ("" if share is None else f" ({share:.2f})")
                )
            if any(cells):
                lines.append(f"| {scenario} | {cc or 'default'} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def results_markdown(records: list[Record], meta: dict[str, Any]) -> str:
    summaries = summarize(records)
    real = real_summaries(records, summaries)
    lines = [
        "# stripe benchmark results",
        "",
        f"Command: `{meta.get('command', '?')}`  ",
        f"Started (UTC): {meta.get('started', '?')}; load average at the end: "
        f"{meta.get('load_average', '?')}  ",
        f"Repeats: {meta.get('repeat') or 'per scenario (meta.json: plans)'}; "
        "goodput = iperf3 receiver side, median "
        "[min-max] over repeats; share = of the sum of each plain link alone (same flow "
        "and cc); link share = bytes each link carried (both directions, client side), %.",
        "",
    ]
    for label, tree in meta.get("stripe_trees", {}).items():
        lines += [
            f"`stripe-*@{label}`: stripe from {tree.get('dir')} "
            f"(commit {tree.get('commit') or '?'}), side by side with this checkout's.",
            "",
        ]
    if meta.get("profiled") == "all":
        lines += [
            "stripe ran under py-spy (sampling from outside, 100 Hz): its figures here are "
            "a little below unprofiled runs'. Profiles: see the end.",
            "",
        ]
    lines += overview_table(summaries)
    if real:
        lines += overview(real)
        if meta.get("seed") is not None:
            traces = meta.get("traces") or "none: synthetic stand-ins"
            lines += [f"Real links: traces from {traces}; seed {meta['seed']} "
                      "(synthetic traces, handovers, Starlink).", ""]
    for name in dict.fromkeys(r["scenario"] for r in records):
        scen = SCENARIOS.get(name)
        rows = sorted(
            (s for s in summaries if s.scenario == name),
            key=lambda s: (system_order(s.system), s.flow, s.cc or ""),
        )
        lines += [f"## {name}", ""]
        if scen is not None:
            links = "; ".join(f"link{i}: {describe_link(sp)}" for i, sp in enumerate(scen.links))
            lines += [f"{scen.doc}. {links}.", ""]
        how = meta.get("impairment", {}).get(name)
        if how:
            lines += [f"Links: {how}.", ""]
        skipped = meta.get("skipped", {}).get(name, {})
        for system, why in skipped.items():
            lines.append(f"- not run: {system}: {why}")
        if skipped:
            lines.append("")
        if scen is not None and scen.kind == "reallinks":
            lines += _real_section(name, real, meta)
        elif scen is not None and scen.kind == "latency":
            lines += [
                "| system | cc | RTT idle (ms) | RTT under load (ms) | under load, p95 (ms) "
                "| goodput (Mbit/s) |",
                "|---|---|---|---|---|---|",
            ]
            for s in rows:
                lines.append(
                    f"| {s.system} | {s.cc or 'default'} | {_fmt(s.rtt_idle_ms)} "
                    f"| {_fmt(s.rtt_loaded_ms)} | {_fmt(s.rtt_loaded_p95_ms)} "
                    f"| {_fmt(s.goodput_median)} |"
                )
            lines += [
                "",
                "RTTs are ping averages (and the 95th percentile of the replies under "
                "load), medians over the repeats. "
                "Ping runs 2 s after the flow starts, every 0.2 s, to the address the flow "
                "uses. ECMP hashes the ping apart from the TCP flow, so it may take the idle "
                "link.",
            ]
        else:
            lines += [
                "| system | flow | cc | goodput Mbit/s | share | retransmits | UDP loss % "
                "| link share % | pkt/s | CPU % | runs ok |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for s in rows:
                cpu = _per_role(s.cpu_percent, 0, ", ")
                lines.append(
                    f"| {s.system} | {s.flow} | {s.cc or 'default'} "
                    f"| {s.goodput_median:.2f} [{s.goodput_min:.2f}-{s.goodput_max:.2f}] "
                    f"| {_fmt(s.share_of_reference)} | {_fmt(s.retransmits_median, 0)} "
                    f"| {_fmt(s.lost_percent_median)} | {_shares(s)} "
                    f"| {s.packets_per_s_median:.0f} | {cpu} | {s.ok_runs}/{s.runs} |"
                )
        if scen is not None and scen.kind == "ceiling":
            lines += ceiling_table(rows)
        reorder = [s for s in rows if s.receiver_reorder]
        if reorder:
            lines += [
                "",
                "stripe's receiving end (server, `stripe status`), median per run: "
                + "; ".join(
                    f"{s.system} {s.flow} {s.cc or 'default'}: "
                    + ", ".join(
                        f"{k.replace('_', ' ')} {v:g}" for k, v in s.receiver_reorder.items()
                    )
                    for s in reorder
                )
                + ".",
            ]
        errors = [(s.system, e) for s in rows for e in s.errors]
        if errors:
            lines += ["", "Errors:"] + [f"- {sys_}: `{e.splitlines()[0]}`" for sys_, e in errors]
        lines.append("")
    lines += failover_table(records, summaries)
    lines += profiles_section(meta.get("profiles", []))
    # The real links' plots are in their scenarios' sections.
    plots = sorted(p for p in meta.get("plots", []) if not p.startswith("real-"))
    if plots:
        lines += ["## Plots", ""]
    for png in plots:
        lines.append(f"![{png}](plots/{png})")
    return "\n".join(lines) + "\n"


def _real_section(name: str, real: list[RealSummary], meta: dict[str, Any]) -> list[str]:
    rows = [s for s in real if s.scenario == name]
    plots = [p for p in meta.get("plots", []) if p.startswith(f"real-{name}-")]
    lines = [*links_lines(meta, name), *real_table(rows), *notes()]
    return lines + [f"![{p}](plots/{p})" for p in sorted(plots)]


def profiles_section(texts: list[str]) -> list[str]:
    """Links to each profiled process's top functions and flame graph."""
    if not texts:
        return []
    lines = [
        "## Profiles (py-spy)",
        "",
        "Per stripe process: top functions by own time (`.txt`), flame graph (`.svg`), "
        "raw collapsed stacks (`.collapsed`).",
        "",
    ]
    for txt in texts:
        stem = txt.removesuffix(".txt")
        lines.append(f"- `{stem}`: [top functions]({txt}), [flame graph]({stem}.svg)")
    return [*lines, ""]


def write_report(out: Path, records: list[Record], meta: dict[str, Any]) -> None:
    try:
        from bench.report.plots import make_plots

        meta["plots"] = make_plots(out / "plots", records, summarize(records))
    except ImportError as exc:
        meta["plots"] = []
        meta["plots_missing"] = f"matplotlib not available: {exc}"
    (out / "summary.json").write_text(json.dumps([asdict(s) for s in summarize(records)], indent=1))
    (out / "results.md").write_text(results_markdown(records, meta))
