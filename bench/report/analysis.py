"""Pure summaries of run records: medians and ranges, reference, failover timing.

Records are the JSON dicts that ``measure.RunRecord.to_json`` produces, with
``scenario`` and ``repeat`` added by the runner.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

# Failover: "steady on the remaining link" means two consecutive seconds at
# >= 80 % of what that link alone carries; "using both again" means link 1
# carrying >= 50 % of what it carries alone, for two consecutive seconds.
STEADY_FRACTION = 0.8
BOTH_AGAIN_FRACTION = 0.5
CONSECUTIVE_S = 2
SURVIVAL_TAIL_S = 2
# The same at the receiver's 100 ms reports (when the run has them):
# "recovered" is half a second averaging >= 80 % of the remaining link's
# rate (a mean: bbr's single 100 ms reports swing by a third around its
# rate); a "stall" is a run of reports below a quarter of it, the longest
# one after the cut counted (what the inner flow felt of the link's death).
RECOVERED_S = 0.5
STALL_FRACTION = 0.25


@dataclass
class Summary:
    scenario: str
    system: str
    flow: str
    cc: str | None
    runs: int
    ok_runs: int
    goodput_median: float
    goodput_min: float
    goodput_max: float
    retransmits_median: float | None
    lost_percent_median: float | None
    link_share: list[float]
    packets_per_s_median: float
    cpu_percent: dict[str, float]
    # Per process: median Mbit per CPU-second, largest peak RSS of any run (MB).
    mbit_per_cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # UDP: medians of the receive-buffer drops as % of datagrams sent, at
    # iperf3's socket (the measurement's loss) and at the tunnel's sockets.
    udp_drop_percent: dict[str, float] = field(default_factory=dict)
    share_of_reference: float | None = None
    rtt_idle_ms: float | None = None
    rtt_loaded_ms: float | None = None
    rtt_loaded_p95_ms: float | None = None
    failover: dict[str, Any] = field(default_factory=dict)
    # stripe's receiving end (server), medians per run: lost, late, ...
    receiver_reorder: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def mbit_per_cpu_second(megabits: float | None, cpu_seconds: dict[str, float]) -> dict[str, float]:
    """Per-core efficiency of each process: the megabits the receiver got per
    CPU-second that process used (= Mbit/s per fully busy core)."""
    if not megabits:
        return {}
    return {name: round(megabits / cpu, 1) for name, cpu in cpu_seconds.items() if cpu > 0}


def udp_drop_percent(record: Record) -> dict[str, float]:
    """Receive-buffer drops of a UDP run in % of datagrams sent: at iperf3's
    socket (``iperf3``) and at the tunnel's own sockets (``tunnel``)."""
    drops, packets = record.get("udp_drops") or {}, record.get("udp_packets")
    if not packets or "all" not in drops:
        return {}
    tunnel = drops.get("tunnel_sockets", 0)
    return {
        "iperf3": round(100 * (drops["all"] - tunnel) / packets, 3),
        "tunnel": round(100 * tunnel / packets, 3),
    }


def system_order(system: str) -> tuple[int, str]:
    """Plain links by index, then ECMP, MPTCP, wireguard-go, then stripe's schedulers."""
    if system.startswith("link") and system[4:].isdigit():
        return (0, f"{int(system[4:]):03d}")
    return ({"ecmp": 1, "mptcp": 2, "wireguard-go": 3}.get(system, 4), system)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def group_key(r: Record) -> tuple[str, str, str, str]:
    return (r["scenario"], r["system"], r["flow"], r.get("cc") or "")


def summarize(records: list[Record]) -> list[Summary]:
    groups: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    out: list[Summary] = []
    for (scenario, system, flow, cc), rs in groups.items():
        ok = [r for r in rs if not r.get("error")]
        base = ok or rs
        goodputs = [float(r["goodput_mbit"]) for r in base]
        n_links = max((len(r.get("link_share", [])) for r in base), default=0)
        shares = [
            round(statistics.median(r["link_share"][i] for r in base if r.get("link_share")), 4)
            if any(r.get("link_share") for r in base)
            else 0.0
            for i in range(n_links)
        ]
        cpu_names = {k for r in base for k in r.get("cpu_percent", {})}
        out.append(
            Summary(
                scenario=scenario,
                system=system,
                flow=flow,
                cc=cc or None,
                runs=len(rs),
                ok_runs=len(ok),
                goodput_median=round(statistics.median(goodputs), 3),
                goodput_min=round(min(goodputs), 3),
                goodput_max=round(max(goodputs), 3),
                retransmits_median=_median(
                    [r["retransmits"] for r in base if r.get("retransmits") is not None]
                ),
                lost_percent_median=_median(
                    [r["lost_percent"] for r in base if r.get("lost_percent") is not None]
                ),
                link_share=shares,
                packets_per_s_median=statistics.median(r.get("packets_per_s", 0) for r in base),
                cpu_percent={
                    k: statistics.median(r["cpu_percent"].get(k, 0.0) for r in base)
                    for k in sorted(cpu_names)
                },
                mbit_per_cpu_s=_per_process(base, "mbit_per_cpu_s", statistics.median),
                peak_rss_mb=_per_process(base, "peak_rss_mb", max),
                udp_drop_percent=_per_process(
                    [{"drops": udp_drop_percent(r)} for r in base], "drops", statistics.median, 3
                ),
                rtt_idle_ms=_median([r["rtt_idle_ms"] for r in base if r.get("rtt_idle_ms")]),
                rtt_loaded_ms=_median([r["rtt_loaded_ms"] for r in base if r.get("rtt_loaded_ms")]),
                rtt_loaded_p95_ms=_median(
                    [r["rtt_loaded_p95_ms"] for r in base if r.get("rtt_loaded_p95_ms")]),
                receiver_reorder=_reorder_medians(base),
                errors=sorted({str(r["error"])[:200] for r in rs if r.get("error")}),
            )
        )
    _add_reference(out)
    return out


def _per_process(
    records: list[Record], key: str, combine: Callable[[list[float]], float], digits: int = 1
) -> dict[str, float]:
    """One value per name (a process, a place) from the runs' ``key`` dicts."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for name, value in (r.get(key) or {}).items():
            values[name].append(float(value))
    return {name: round(combine(v), digits) for name, v in sorted(values.items())}


REORDER_KEYS = ("lost", "late", "inferred_releases", "deadline_releases", "ahead", "max_held")


def _reorder_medians(records: list[Record]) -> dict[str, float]:
    """Medians of the server's reorder counters (``stripe status``), if recorded."""
    per_key: dict[str, list[float]] = defaultdict(list)
    for r in records:
        try:
            reorder = r["system_status"]["server"]["peers"][0]["reorder"]
        except (KeyError, IndexError, TypeError):
            continue
        for key in REORDER_KEYS:
            if isinstance(reorder.get(key), int | float):
                per_key[key].append(float(reorder[key]))
    return {k: statistics.median(v) for k, v in per_key.items()}


def _add_reference(summaries: list[Summary]) -> None:
    """Share of the reference: goodput / sum of each plain link alone (same flow, cc).

    Only when every link of the scenario was measured alone: a partial sum
    would flatter everything compared with it.
    """
    ref: dict[tuple[str, str, str | None], float] = defaultdict(float)
    seen: dict[tuple[str, str, str | None], int] = defaultdict(int)
    n_links: dict[str, int] = defaultdict(int)
    for s in summaries:
        n_links[s.scenario] = max(n_links[s.scenario], len(s.link_share))
        if s.system.startswith("link") and s.system[4:].isdigit():
            ref[(s.scenario, s.flow, s.cc)] += s.goodput_median
            seen[(s.scenario, s.flow, s.cc)] += 1
    for s in summaries:
        key = (s.scenario, s.flow, s.cc)
        if ref.get(key) and seen[key] == n_links[s.scenario]:
            s.share_of_reference = round(s.goodput_median / ref[key], 3)


def single_link_goodput(summaries: list[Summary], scenario: str, index: int) -> float | None:
    for s in summaries:
        if s.scenario == scenario and s.system == f"link{index}" and s.flow == "tcp":
            return s.goodput_median
    return None


def _first_sustained(series: list[float], start: int, threshold: float) -> int | None:
    for t in range(max(0, start), len(series) - CONSECUTIVE_S + 1):
        if all(v >= threshold for v in series[t : t + CONSECUTIVE_S]):
            return t
    return None


def failover_metrics(
    record: Record,
    cut_s: float,
    restore_s: float,
    remaining_link_mbit: float,
    cut_link_mbit: float,
    cut_link: int = 1,
) -> dict[str, Any]:
    """Did the flow survive the cut, and how long did recovery take (1 s
    resolution; to 100 ms as well if the run has the receiver's 100 ms
    reports, see `_fine_failover`)?

    ``per_second_mbit[t]`` is the receiver's goodput in second [t, t+1);
    ``link_series_mbit[t][i]`` is what link i sent in that second.
    """
    series: list[float] = record.get("per_second_mbit", [])
    cut, restore = int(cut_s), int(restore_s)
    # Survived: the connection lived to the end and was delivering again in
    # its last seconds (a stall that recovers before the end still counts).
    tail = series[-SURVIVAL_TAIL_S:]
    survived = not record.get("error") and bool(tail) and max(tail) > 0
    steady = _first_sustained(series, cut, STEADY_FRACTION * remaining_link_mbit)
    link_tx = [row[cut_link] for row in record.get("link_series_mbit", []) if len(row) > cut_link]
    both = _first_sustained(link_tx, restore, BOTH_AGAIN_FRACTION * cut_link_mbit)
    return {
        "survived": survived,
        "cut_to_steady_s": None if steady is None or steady >= restore else steady - cut,
        "restore_to_both_s": None if both is None else both - restore,
        "per_second_mbit": series,
    } | _fine_failover(record, cut_s, restore_s, remaining_link_mbit)


def _fine_failover(
    record: Record, cut_s: float, restore_s: float, remaining_link_mbit: float
) -> dict[str, float | None]:
    """From the receiver's sub-second reports, if the run has them: the
    cut (when it was made, if the run recorded it) to half a second
    averaging `STEADY_FRACTION` of the remaining link's rate, and the longest stall
    between the cut and the restore (both to the report's length)."""
    bins: list[float] = record.get("bins_mbit") or []
    bin_s = record.get("bin_s")
    if not bins or not bin_s:
        return {"cut_to_recovered_s": None, "stall_s": None}
    events = record.get("events") or []
    cut_at = float(events[0][0]) if events else cut_s
    first, last = int(cut_at / bin_s), min(int(restore_s / bin_s), len(bins))
    need = round(RECOVERED_S / bin_s)
    recovered = next((k for k in range(first, last - need + 1) if sum(bins[k:k + need])
                      >= need * STEADY_FRACTION * remaining_link_mbit), None)
    stall = longest = 0
    for v in bins[first:last]:
        stall = stall + 1 if v < STALL_FRACTION * remaining_link_mbit else 0
        longest = max(longest, stall)
    return {
        "cut_to_recovered_s": None if recovered is None else round(
            max(recovered * bin_s - cut_at, 0.0), 2),
        "stall_s": round(longest * bin_s, 2),
    }
