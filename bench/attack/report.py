"""results.md, summary.json and the one-line summary of ``python -m bench attack``.

Works on the phase records as JSON (``PhaseRecord.to_json()``), so a results
directory's raw files can be re-read and re-reported.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.attack.flood import KINDS
from bench.attack.records import PHASES, PhaseRecord

# The server's drop reasons that only authenticated datagrams (or its own
# TUN) can cause: an attacker datagram counted here would have passed the
# AEAD check. Every other reason is a drop before authentication.
AUTHENTICATED_DROPS = frozenset(
    {"late", "spoofed_source", "bad_inner_packet", "queue_full", "no_route", "bad_tun_packet",
     "too_big"}
)  # fmt: skip
# Shown first in the tables, when they occur; other reasons follow.
KEY_DROPS = (
    "replay",
    "bad_tag",
    "unknown_session",
    "short",
    "unknown_type",
    "bad_mac1",
    "handshake_cookie_sent",
    "handshake_rate_limited",
    "unknown_peer",
    "bad_handshake",
)
TARGET_RATIO = 0.8  # issue 5: attacked goodput >= 80 % of unattacked


@dataclass
class PhaseSummary:
    phase: str
    runs: int
    ok_runs: int
    goodput_median: float
    goodput_min: float
    goodput_max: float
    cpu_percent: dict[str, float]  # median per process
    flood_pps: dict[str, float]  # median per kind, as counted by the attacker
    flood_pps_total: float | None
    flood_mbit: float | None  # UDP payload megabits per second, all kinds
    drops: dict[str, float]  # median increase per reason


def flood_rates(flood: dict[str, Any]) -> tuple[dict[str, float], float, float] | None:
    """Per kind datagrams/s, all datagrams/s, payload Mbit/s; None without a result."""
    sent, sizes, elapsed = flood.get("sent"), flood.get("bytes"), flood.get("elapsed_s")
    if not isinstance(sent, dict) or not isinstance(sizes, dict) or not elapsed:
        return None
    seconds = float(elapsed)
    pps = {k: round(n / seconds, 1) for k, n in sent.items()}
    return (
        pps,
        round(sum(sent.values()) / seconds, 1),
        round(sum(sizes.values()) * 8 / 1e6 / seconds, 2),
    )


def accounting(record: dict[str, Any]) -> dict[str, Any]:
    """Where an attacked flow's attacker datagrams went.

    ``counted``: the server's drops of unauthenticated datagrams plus
    receive-buffer overflows and veth drops (datagrams the server never
    read). Each datagram the server reads either authenticates or is dropped
    with one reason, so counted >= sent means none of them was taken, and
    the server accepting no more authenticated datagrams than the client sent
    says the same from the other side.
    """
    flood = record.get("flood") or {}
    sent = sum((flood.get("sent") or {}).values())
    unauthenticated = sum(
        n for k, n in record.get("drops", {}).items() if k not in AUTHENTICATED_DROPS
    )
    counted = unauthenticated + record.get("socket_drops", 0) + record.get("veth_drops", 0)
    return {
        "attacker_sent": sent,
        "unauthenticated_drops": unauthenticated,
        "counted": counted,
        "accounted_percent": round(100 * min(counted, sent) / sent, 2) if sent else None,
        "authenticated_ok": record.get("server_accepted", 0) <= record.get("client_sent", 0),
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def summarize(records: list[dict[str, Any]]) -> list[PhaseSummary]:
    out = []
    for phase in PHASES:
        rows = [r for r in records if r["phase"] == phase]
        if not rows:
            continue
        # A flow that failed (the tunnel died under the flood, iperf3 timed
        # out) counts with what it carried, 0 if nothing: leaving it out
        # would report x1.00 for an attack that killed two flows of three.
        good = [r.get("goodput_mbit") or 0.0 for r in rows] or [0.0]
        processes = sorted({p for r in rows for p in r.get("cpu_percent", {})})
        rates = [x for x in (flood_rates(r.get("flood") or {}) for r in rows) if x is not None]
        kinds = [k for k in KINDS if any(k in pps for pps, _, _ in rates)]
        reasons = {k for r in rows for k in r.get("drops", {})}
        out.append(
            PhaseSummary(
                phase,
                len(rows),
                sum(1 for r in rows if not r.get("error")),
                round(_median(good), 3),
                round(min(good), 3),
                round(max(good), 3),
                {p: _median([r["cpu_percent"].get(p, 0.0) for r in rows]) for p in processes},
                {k: _median([pps.get(k, 0.0) for pps, _, _ in rates]) for k in kinds},
                _median([total for _, total, _ in rates]) if rates else None,
                _median([mbit for _, _, mbit in rates]) if rates else None,
                {k: _median([r.get("drops", {}).get(k, 0) for r in rows]) for k in reasons},
            )
        )
    return out


def goodput_ratio(summaries: list[PhaseSummary]) -> float | None:
    by_phase = {s.phase: s for s in summaries}
    base, hit = by_phase.get("unattacked"), by_phase.get("attacked")
    if base is None or hit is None or not base.goodput_median:
        return None
    return round(hit.goodput_median / base.goodput_median, 3)


def compact(n: float) -> str:
    """12345 -> 12.3k, 2500000 -> 2.50M: counts that fit in a table cell."""
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:g}"


def _ordered_drops(drops: dict[str, float]) -> list[tuple[str, float]]:
    keys = [k for k in KEY_DROPS if drops.get(k)] + sorted(
        k for k in drops if k not in KEY_DROPS and drops[k]
    )
    return [(k, drops[k]) for k in keys]


def _drops_cell(drops: dict[str, float]) -> str:
    return ", ".join(f"{k} {compact(v)}" for k, v in _ordered_drops(drops)) or "none"


def _cpu(s: PhaseSummary, process: str) -> str:
    value = s.cpu_percent.get(process)
    return "-" if value is None else f"{value:.0f}"


@dataclass
class Verdict:
    ratio: float | None
    ratio_met: bool | None
    accounted: bool | None  # every attacked flow: counted >= attacker sent
    authenticated_ok: bool  # every flow: server accepted <= client sent
    worst_accounted_percent: float | None = None
    notes: list[str] = field(default_factory=list)


def verdict(records: list[dict[str, Any]], summaries: list[PhaseSummary]) -> Verdict:
    ratio = goodput_ratio(summaries)
    attacked = [accounting(r) for r in records if r["phase"] == "attacked" and r.get("flood")]
    percents = [a["accounted_percent"] for a in attacked if a["accounted_percent"] is not None]
    v = Verdict(
        ratio,
        None if ratio is None else ratio >= TARGET_RATIO,
        None if not percents else all(p >= 100 for p in percents),
        all(accounting(r)["authenticated_ok"] for r in records),
        min(percents) if percents else None,
    )
    socket_drops = any(r.get("socket_drops") for r in records if r["phase"] == "attacked")
    if socket_drops and v.accounted is False:
        v.notes.append(
            "the server's socket overflowed during the attack: those drops are counted per "
            "socket buffer entry, which with UDP GRO may be a train of datagrams, so the "
            "accounting can fall short of 100 % without any datagram being accepted"
        )
    return v


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else "yes" if value else "NO"


def results_markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    summaries = summarize(records)
    v = verdict(records, summaries)
    opts = meta.get("options", {})
    mix = ", ".join(f"{k} {w}" for k, w in (opts.get("mix") or {}).items() if w)
    pps = opts.get("flood_pps") or 0
    lines = [
        "# stripe under attack (issue 5)",
        "",
        f"Command: `{meta.get('command', '?')}`  ",
        f"Started (UTC): {meta.get('started', '?')}; load average at the end: "
        f"{meta.get('load_average', '?')}  ",
        f"Lab `{meta.get('prefix', '?')}*`: client and server joined by {opts.get('links')} "
        f"veth pair(s), tbf {opts.get('rate_mbit')} Mbit/s each way on each; stripe "
        f"(scheduler {opts.get('scheduler')}) with the server on one wildcard UDP port; an "
        "attacker namespace with its own unshaped veth to the server. Each repeat: one "
        f"iperf3 TCP flow of {opts.get('seconds')} s without attack, then one with the "
        "attacker flooding the server's port from just before the flow until it ends. "
        f"Replay material: {meta.get('captured', '?')} of the client's datagrams captured on "
        "the server's side of its links during a warm-up flow. Flood mix (weights): "
        f"{mix or '?'}"
        + (f", spoofed from {opts['sources']:,} addresses in turn, "
           f"{opts.get('source_burst', 1)} datagrams from each in a row" if opts.get("sources")
           else "")
        + "; rate: "
        + (f"paced to {pps:g} pkt/s" if pps else "as fast as one Python process sends")
        + f"; bounded at {meta.get('flood_max_packets', '?')} datagrams and "
        f"{meta.get('flood_budget_s', '?')} s per flow.",
        "",
        "| phase | goodput Mbit/s median [min-max] | x unattacked | server CPU % "
        "| client CPU % | attacker CPU % | flood pkt/s by kind | flood pkt/s, Mbit/s "
        "| server drops (median per flow) | runs ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        ratio = "1.00" if s.phase == "unattacked" else "-" if v.ratio is None else f"{v.ratio:.2f}"
        kinds = " / ".join(f"{k} {compact(x)}" for k, x in s.flood_pps.items()) or "-"
        total = (
            "-"
            if s.flood_pps_total is None
            else f"{compact(s.flood_pps_total)}, {s.flood_mbit or 0:.1f}"
        )
        lines.append(
            f"| {s.phase} | {s.goodput_median:.2f} [{s.goodput_min:.2f}-{s.goodput_max:.2f}] "
            f"| {ratio} | {_cpu(s, 'stripe-server')} | {_cpu(s, 'stripe-client')} "
            f"| {_cpu(s, 'flood')} | {kinds} | {total} | {_drops_cell(s.drops)} "
            f"| {s.ok_runs}/{s.runs} |"
        )
    lines += [
        "",
        f"- Goodput attacked / unattacked: {'-' if v.ratio is None else f'{v.ratio:.2f}'} "
        f"(issue 5 asks >= {TARGET_RATIO:.2f}: {_yes_no(v.ratio_met)}).",
        "- No attacker datagram reached the server's TUN: every one is counted as a drop "
        f"before authentication: {_yes_no(v.accounted)}"
        + (
            ""
            if v.worst_accounted_percent is None
            else f" (worst flow: {v.worst_accounted_percent:g} % accounted)"
        )
        + "; the server accepted no more authenticated datagrams than the client sent, "
        f"in every flow: {_yes_no(v.authenticated_ok)}.",
    ]
    lines += [f"- Note: {n}." for n in v.notes]
    lines += ["", "## Per flow", ""]
    lines += per_flow_table(records)
    lines += ["", *COLUMNS_DOC]
    return "\n".join(lines) + "\n"


def _blocked_cell(r: dict[str, Any]) -> str:
    blocked, kernel = r.get("blocked_sources"), r.get("filtered_sources")
    if blocked is None:
        return "-"
    return f"{blocked:,}" + (f" ({kernel:,} in the kernel)" if kernel != blocked else "")


def per_flow_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| repeat | phase | goodput Mbit/s | server CPU s (%) | attacker sent | "
        "counted: unauthenticated drops + socket + veth | accounted % "
        "| client sent / server accepted | blocked sources after | all server drops | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        a = accounting(r)
        cpu_s = r.get("cpu_seconds", {}).get("stripe-server")
        cpu_p = r.get("cpu_percent", {}).get("stripe-server")
        cpu = "-" if cpu_s is None else f"{cpu_s:.2f} ({cpu_p:.0f})"
        sent = compact(a["attacker_sent"]) if r.get("flood") else "-"
        counted = (
            f"{compact(a['unauthenticated_drops'])} + {r.get('socket_drops', 0)} "
            f"+ {r.get('veth_drops', 0)}"
        )
        percent = "-" if a["accounted_percent"] is None else f"{a['accounted_percent']:g}"
        error = (r.get("error") or "").splitlines()[0][:80] if r.get("error") else ""
        lines.append(
            f"| {r['repeat']} | {r['phase']} | {r['goodput_mbit']:.2f} | {cpu} | {sent} "
            f"| {counted} | {percent} | {r.get('client_sent', 0)} / "
            f"{r.get('server_accepted', 0)} | {_blocked_cell(r)} "
            f"| {_drops_cell(r.get('drops', {}))} | {error} |"
        )
    return lines


COLUMNS_DOC = [
    "## Columns",
    "",
    "- **goodput**: iperf3's receiver-side rate of the one TCP flow through the tunnel.",
    "- **x unattacked**: median attacked goodput over median unattacked goodput.",
    "- **blocked sources after**: the sources the server's guard held blocked when the phase "
    "ended (`stripe status`, `source_guard`), and how many of them its kernel filter held.",
    "- **CPU %**: utime+stime (`/proc/PID/stat`, all threads) of the stripe server, the "
    "stripe client and the attacker over the flow, per wall second (100 = one core).",
    "- **flood pkt/s, Mbit/s**: what the attacker itself counted as sent (the kernel "
    "accepted the `sendto`), per second of its sending, per kind and in all; Mbit/s of "
    "UDP payload.",
    "- **server drops**: the increase of the server's drop counters (`stripe status "
    "--json`) over the phase, read before the attacker starts and 0.5 s after it stops.",
    "- **counted**: the attacker's datagrams the server accounts for: its drops of "
    "unauthenticated datagrams (every reason but "
    + ", ".join(sorted(AUTHENTICATED_DROPS))
    + "), plus the server namespace's UDP receive-buffer overflows and the drops on the "
    "attacker's veth pair (datagrams the server never read). **accounted %** = counted / "
    "attacker sent (capped at 100; the client's own rare drops add to it).",
    "- **client sent / server accepted**: authenticated datagrams the client's links sent "
    "and the server's links took (`tx_packets` / `rx_packets` in `stripe status`): an "
    "accepted attacker datagram could make the second exceed the first.",
]


def summary_line(records: list[dict[str, Any]], out: Path) -> str:
    summaries = summarize(records)
    v = verdict(records, summaries)
    by_phase = {s.phase: s for s in summaries}
    base, hit = by_phase.get("unattacked"), by_phase.get("attacked")
    parts = ["attack:"]
    if base and hit:
        ratio = "-" if v.ratio is None else f"{v.ratio:.2f}"
        parts.append(
            f"goodput {base.goodput_median:.1f} Mbit/s unattacked, {hit.goodput_median:.1f} "
            f"attacked (x{ratio}, >= {TARGET_RATIO:.2f}: {_yes_no(v.ratio_met)});"
        )
        if hit.flood_pps_total is not None:
            parts.append(
                f"flood {hit.flood_pps_total:,.0f} pkt/s ({hit.flood_mbit or 0:.1f} Mbit/s);"
            )
        parts.append(
            f"server CPU {_cpu(base, 'stripe-server')} % -> {_cpu(hit, 'stripe-server')} %;"
        )
    parts.append(f"attacker datagrams all dropped: {_yes_no(v.accounted and v.authenticated_ok)};")
    parts.append(f"results: {out / 'results.md'}")
    return " ".join(parts)


def write_report(out: Path, records: list[PhaseRecord], meta: dict[str, Any]) -> None:
    rows = [r.to_json() for r in records]
    summaries = summarize(rows)
    v = verdict(rows, summaries)
    summary = {
        "phases": [asdict(s) for s in summaries],
        "goodput_ratio": v.ratio,
        "verdict": asdict(v),
        "accounting": [accounting(r) | {"repeat": r["repeat"]} for r in rows
                       if r["phase"] == "attacked"],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(results_markdown(rows, meta))
