"""The real-links scenarios' figures (issue 17), from the run records' ``real``
dicts (`bench.realrun`): stalls, ping percentiles, trace capacity, stripe's
link transitions, and their section of results.md.

Definitions:

* A *stall* is a run of consecutive receiver bins (iperf3's 100 ms
  intervals; 1 s if the run had no finer ones) within the run's length,
  each carrying less than ``STALL_FRACTION`` of their mean; its length is
  the bins'.
* *Beyond the outage* (runs with outages: handover, Starlink): for each
  outage of any link, the stalls that overlap it (within one bin), and how
  far the last of them ends after the outage ends (0 if none does); the
  worst over the run's outages (a link alone: over its own).  Outages are
  on the trace clock, which restarts at the mark right before the flow;
  the receiver's bins are placed on it by the flow's start
  (`bench.realrun.flow_start_s`, to 100 ms).
* Ping: 50th and 95th percentile (nearest rank) of the RTTs of the replies
  during the flow (every 0.2 s); a ping with no reply counts in ``lost``.
* Capacity: the mean over the flow's seconds of the trace capacity of the
  links the system may use (each link alone: its own; otherwise all), in
  the flow's direction, in IP-level Mbit/s as mahimahi counts.
* Wire: the bytes every link carried both ways at the client (frames, as
  the interfaces count them) over the flow's length, in Mbit/s: what the
  system put on the links for its goodput; *goodput per wire byte* is the
  goodput over that, so a tunnel's headers (and its feedback, and the
  ACKs' headers) show there, and how fully it fills the links in the wire
  rate (against MPTCP's in the same run, which fills them to their
  buffers).
* A UDP stream (a fixed rate, iperf3 -b, UDP payload): *deliverable* is
  what the links the system may use could carry of it, second by second:
  the mean over the flow's seconds of the smaller of the offer and their
  trace capacity, less the UDP and IP headers (28 bytes a datagram) but
  no tunnel's: so a tunnel's own headers show as a shortfall where the
  links were full.  Loss (datagrams sent and not received) and jitter
  (RFC 3550's interarrival jitter) are iperf3's receiver's.
* Link transitions: stripe's per-link ``downs``/``ups`` counters from
  ``stripe status --json`` at the end of the run, client and server added,
  if that stripe reports them (``-`` otherwise).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.lab.iperf import udp_payload_share
from bench.report.analysis import Record, Summary, system_order

STALL_FRACTION = 0.05


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank ``q``-th percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def receiver_bins(record: Record) -> tuple[list[float], float]:
    """The receiver's goodput bins (Mbit/s) and their length (s), over the
    run's length (the receiver's intervals go on while the last data drains)."""
    if record.get("bins_mbit") and record.get("bin_s"):
        bins, bin_s = list(record["bins_mbit"]), float(record["bin_s"])
    else:
        bins, bin_s = list(record.get("per_second_mbit", [])), 1.0
    seconds = float(record.get("seconds") or 0)
    return (bins[:round(seconds / bin_s)] if seconds else bins), bin_s


def stalls(bins: list[float], bin_s: float,
           fraction: float = STALL_FRACTION) -> list[tuple[float, float]]:
    """(start_s, length_s) of each run of bins under ``fraction`` of their
    mean (all of them if nothing came at all)."""
    if not bins:
        return []
    threshold = fraction * sum(bins) / len(bins)
    stalled = [v < threshold or v == threshold == 0 for v in bins]
    out: list[tuple[float, float]] = []
    start: int | None = None
    for i, stop in enumerate([*stalled, False]):
        if stop and start is None:
            start = i
        elif not stop and start is not None:
            out.append((round(start * bin_s, 3), round((i - start) * bin_s, 3)))
            start = None
    return out


def longest_stall_s(record: Record) -> float:
    return max((length for _, length in stalls(*receiver_bins(record))), default=0.0)


def stall_beyond_outages_s(record: Record) -> float | None:
    """The longest a stall lasted past the end of the outage it overlaps
    (see the module's doc); None if the run had no outage."""
    real = record.get("real") or {}
    outages = real.get("outages") or []
    alone = _link_alone(record)
    if alone is not None:
        # A link alone suffers only its own outages.
        outages = [o for o in outages if int(o[0]) == alone]
    if not outages:
        return None
    bins, bin_s = receiver_bins(record)
    runs = stalls(bins, bin_s)
    offset = float(real.get("flow_offset_s", 0.0))
    worst = 0.0
    for _link, start, duration, *_ in outages:
        lo, hi = start - offset, start - offset + duration
        for s, length in runs:
            if s < hi + bin_s and s + length > lo - bin_s:
                worst = max(worst, s + length - hi)
    return round(worst, 3)


def _link_alone(record: Record) -> int | None:
    """``i`` for the system ``link<i>`` (one link alone), else None."""
    system = str(record.get("system", ""))
    return int(system[4:]) if _is_plain_link(system) else None


def _is_plain_link(system: str) -> bool:
    return system.startswith("link") and system[4:].isdigit()


def ping_stats(record: Record) -> dict[str, float | int | None]:
    real = record.get("real") or {}
    rtts = [rtt for _, rtt in real.get("ping", [])]
    sent = int(real.get("ping_sent") or 0)
    return {"p50": percentile(rtts, 50), "p95": percentile(rtts, 95),
            "lost": max(0, sent - len(rtts)) if sent else None}


def capacity_mbit(record: Record) -> float | None:
    """Mean trace capacity over the flow of the links this system may use."""
    real = record.get("real") or {}
    links = real.get("links") or []
    alone = _link_alone(record)
    if alone is not None:
        links = links[alone:alone + 1]
    offset = float(real.get("flow_offset_s", 0.0))
    first = int(offset)
    last = first + max(1, round(float(record.get("seconds", 0))))
    total = 0.0
    for link in links:
        series = link.get("capacity_mbit")
        if not series:
            return None
        window = series[first:last]
        total += sum(window) / len(window) if window else 0.0
    return round(total, 3) if links else None


def is_udp(flow: str) -> bool:
    return flow.startswith("udp")


def deliverable_mbit(record: Record) -> float | None:
    """Of a UDP stream's offer, what the links this system may use could
    carry, as UDP payload (see the module's doc); None if not a UDP stream
    over traced links."""
    real = record.get("real") or {}
    offer = real.get("udp_offer_mbit")
    payload = real.get("udp_payload_bytes")
    links = real.get("links") or []
    if not offer or not payload or not links:
        return None
    alone = _link_alone(record)
    if alone is not None:
        links = links[alone:alone + 1]
    series = [link.get("capacity_mbit") for link in links]
    if not all(series):
        return None
    first = int(float(real.get("flow_offset_s", 0.0)))
    last = first + max(1, round(float(record.get("seconds", 0))))
    share = udp_payload_share(payload)
    per_second = [min(offer, share * sum(s[t] for s in series if t < len(s)))
                  for t in range(first, min(last, max(len(s) for s in series)))]
    return round(sum(per_second) / len(per_second), 3) if per_second else None


def wire_mbit(record: Record) -> float | None:
    """Every link's bytes both ways at the client over the flow, Mbit/s."""
    carried = record.get("link_bytes") or []
    seconds = float(record.get("seconds") or 0)
    if not carried or seconds <= 0:
        return None
    return round(sum(carried) * 8 / seconds / 1e6, 3)


def link_transitions(record: Record) -> dict[str, list[int]] | None:
    """Per link, stripe's ``downs`` and ``ups`` (client + server), if reported."""
    status = record.get("system_status") or {}
    per_link: dict[str, list[int]] = {"downs": [], "ups": []}
    seen = False
    for role in ("client", "server"):
        try:
            links = status[role]["peers"][0]["links"]
        except (KeyError, IndexError, TypeError):
            continue
        for i, link in enumerate(links):
            for key in ("downs", "ups"):
                value = link.get(key)
                if isinstance(value, int):
                    seen = True
                    counts = per_link[key]
                    counts.extend([0] * (i + 1 - len(counts)))
                    counts[i] += value
    return per_link if seen else None


@dataclass
class RealSummary:
    """One system, flow (direction) and cc of a real-links scenario, over its runs."""

    scenario: str
    system: str
    flow: str
    cc: str | None
    runs: int
    goodput_median: float
    goodput_min: float
    goodput_max: float
    share_of_reference: float | None = None
    ratio_to_mptcp: float | None = None
    capacity_mbit: float | None = None  # median over runs
    wire_mbit: float | None = None  # median over runs
    ping_p50_ms: float | None = None  # medians over runs
    ping_p95_ms: float | None = None
    ping_lost: int | None = None  # all runs
    longest_stall_s: float = 0.0  # worst run
    stall_beyond_outage_s: float | None = None  # worst run
    downs: list[int] | None = None  # per link, all runs
    ups: list[int] | None = None
    # A UDP stream: its offer, what the links could carry of it, the share
    # iperf3 lost and its jitter (medians over runs).
    udp_offer_mbit: float | None = None
    deliverable_mbit: float | None = None
    lost_percent: float | None = None
    jitter_ms: float | None = None
    errors: list[str] = field(default_factory=list)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def _add_counts(total: list[int] | None, more: list[int]) -> list[int]:
    total = list(total or [])
    total.extend([0] * (len(more) - len(total)))
    return [t + (more[i] if i < len(more) else 0) for i, t in enumerate(total)]


def real_summaries(records: list[Record], summaries: list[Summary]) -> list[RealSummary]:
    """A `RealSummary` per (scenario, system, flow, cc) of the real-links records."""
    groups: dict[tuple[str, str, str, str], list[Record]] = defaultdict(list)
    for r in records:
        if r.get("real"):
            groups[(r["scenario"], r["system"], r["flow"], r.get("cc") or "")].append(r)
    by_key = {(s.scenario, s.system, s.flow, s.cc or ""): s for s in summaries}
    out = []
    for key, rs in groups.items():
        base = by_key.get(key)
        if base is None:
            continue
        ok = [r for r in rs if not r.get("error")] or rs
        summary = RealSummary(
            key[0], key[1], key[2], key[3] or None, len(rs),
            base.goodput_median, base.goodput_min, base.goodput_max,
            share_of_reference=base.share_of_reference,
            capacity_mbit=_median([capacity_mbit(r) for r in ok]),
            wire_mbit=_median([wire_mbit(r) for r in ok]),
            ping_p50_ms=_median([ping_stats(r)["p50"] for r in ok]),
            ping_p95_ms=_median([ping_stats(r)["p95"] for r in ok]),
            longest_stall_s=max(longest_stall_s(r) for r in ok),
            udp_offer_mbit=_median([(r.get("real") or {}).get("udp_offer_mbit") for r in ok]),
            deliverable_mbit=_median([deliverable_mbit(r) for r in ok]),
            lost_percent=base.lost_percent_median,
            jitter_ms=_median([r.get("jitter_ms") for r in ok]),
            errors=base.errors,
        )
        lost = [ping_stats(r)["lost"] for r in ok]
        summary.ping_lost = sum(int(v) for v in lost if v is not None) if any(
            v is not None for v in lost) else None
        beyond = [b for b in (stall_beyond_outages_s(r) for r in ok) if b is not None]
        summary.stall_beyond_outage_s = max(beyond) if beyond else None
        for r in ok:
            counts = link_transitions(r)
            if counts is not None:
                summary.downs = _add_counts(summary.downs, counts["downs"])
                summary.ups = _add_counts(summary.ups, counts["ups"])
        out.append(summary)
    for s in out:
        mptcp = next((m for m in out if (m.scenario, m.system, m.flow, m.cc)
                      == (s.scenario, "mptcp", s.flow, s.cc)), None)
        if mptcp is not None and mptcp.goodput_median:
            s.ratio_to_mptcp = round(s.goodput_median / mptcp.goodput_median, 2)
    # Scenarios and ccs in the order they ran; upload first.
    scenarios = list(dict.fromkeys(r["scenario"] for r in records))
    ccs = list(dict.fromkeys(r.get("cc") or "" for r in records))
    return sorted(out, key=lambda s: (scenarios.index(s.scenario), s.flow.endswith("-down"),
                                      ccs.index(s.cc or ""), system_order(s.system)))


def reference_mbit(rows: list[RealSummary]) -> float | None:
    """The sum of each link alone (same scenario, flow, cc), if all were run."""
    plain = [s for s in rows if _is_plain_link(s.system)]
    # `summarize` gives plain links a share only when every link ran alone.
    if not plain or any(s.share_of_reference is None for s in plain):
        return None
    return round(sum(s.goodput_median for s in plain), 2)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _wire(s: RealSummary) -> str:
    if not s.wire_mbit:
        return "-"
    return f"{s.wire_mbit:.2f} ({s.goodput_median / s.wire_mbit:.3f})"


def _transitions(s: RealSummary) -> str:
    if s.downs is None:
        return "-"
    ups = s.ups or []
    return " · ".join(f"{d}/{ups[i] if i < len(ups) else 0}" for i, d in enumerate(s.downs))


def flow_direction(flow: str) -> str:
    """A real-links flow label as the report says it: "upload", "download",
    or with its number of parallel flows ("upload, 4 flows")."""
    way = _way(flow)
    if flow.startswith("tcp-x"):
        return f"{way}, {flow.split('-')[1][1:]} flows"
    if is_udp(flow):
        return f"{way}, UDP"
    return way


def _way(flow: str) -> str:
    return "download" if flow.endswith("-down") else "upload"


def flow_slug(flow: str) -> str:
    """`flow_direction` as a file name's part: "upload", "upload-4flows",
    "upload-udp"."""
    return flow_direction(flow).replace(", ", "-").replace(" ", "").lower()


def overview(rows: list[RealSummary]) -> list[str]:
    """One line per scenario, direction and cc of a TCP flow: the reference,
    MPTCP and each stripe variant as Mbit/s (x reference, x MPTCP); then
    the UDP streams (`udp_overview`)."""
    stripes = sorted({s.system for s in rows if s.system.startswith("stripe")},
                     key=system_order)
    lines = [
        "## Real links: TCP, one flow unless said, median Mbit/s (x reference, x MPTCP), "
        "p95 ping ms",
        "",
        "| scenario | direction | cc | reference (sum of links alone) | lowest p95 ping of a "
        "link alone "
        "| " + " | ".join(["MPTCP", *stripes]) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(stripes),
    ]
    groups: dict[tuple[str, str, str | None], list[RealSummary]] = defaultdict(list)
    for s in rows:
        if not is_udp(s.flow):
            groups[(s.scenario, s.flow, s.cc)].append(s)
    for (scenario, flow, cc), group in groups.items():
        by_system = {s.system: s for s in group}
        alone = [s.ping_p95_ms for s in group
                 if s.system.startswith("link") and s.ping_p95_ms is not None]
        cells = []
        for name in ["mptcp", *stripes]:
            row = by_system.get(name)
            if row is None:
                cells.append("")
                continue
            ratios = _fmt(row.share_of_reference)
            if name != "mptcp":
                ratios += f", {_fmt(row.ratio_to_mptcp)}"
            cells.append(f"{row.goodput_median:.2f} ({ratios}), {_fmt(row.ping_p95_ms, 0)}")
        lines.append(
            f"| {scenario} | {flow_direction(flow)} | {cc or 'default'} | "
            f"{_fmt(reference_mbit(group))} | {_fmt(min(alone, default=None), 0)} | "
            + " | ".join(cells) + " |"
        )
    tcp = [*lines, ""] if groups else []
    return [*tcp, *udp_overview(rows, stripes)]


def _of_deliverable(s: RealSummary) -> str:
    return _fmt(s.goodput_median / s.deliverable_mbit) if s.deliverable_mbit else "-"


def _udp_cell(s: RealSummary) -> str:
    """goodput (x deliverable), loss %, p95 ping."""
    return (f"{s.goodput_median:.2f} ({_of_deliverable(s)}), {_fmt(s.lost_percent, 1)} %, "
            f"{_fmt(s.ping_p95_ms, 0)}")


def udp_overview(rows: list[RealSummary], stripes: list[str]) -> list[str]:
    """One line per scenario and direction with a UDP stream: its offer,
    what the links could carry of it, the best link alone and each stripe
    variant; nothing if no UDP stream ran."""
    udp = [s for s in rows if is_udp(s.flow)]
    if not udp:
        return []
    lines = [
        "## Real links: a UDP stream at a fixed rate, median Mbit/s of UDP payload "
        "(x deliverable), loss, p95 ping ms",
        "",
        "| scenario | direction | offered | deliverable over all links | best link alone | "
        + " | ".join(stripes) + " |",
        "|---|---|---|---|---|" + "---|" * len(stripes),
    ]
    groups: dict[tuple[str, str], list[RealSummary]] = defaultdict(list)
    for s in udp:
        groups[(s.scenario, s.flow)].append(s)
    for (scenario, flow), group in groups.items():
        by_system = {s.system: s for s in group}
        alone = [s for s in group if _is_plain_link(s.system)]
        best = max(alone, key=lambda s: s.goodput_median, default=None)
        everything = next((by_system[n] for n in stripes if n in by_system), None)
        cells = [_udp_cell(by_system[n]) if n in by_system else "" for n in stripes]
        lines.append(
            f"| {scenario} | {_way(flow)} "
            f"| {_fmt(group[0].udp_offer_mbit)} "
            f"| {_fmt(everything.deliverable_mbit if everything else None)} "
            f"| {best.system + ': ' + _udp_cell(best) if best else '-'} | "
            + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def scenario_table(rows: list[RealSummary]) -> list[str]:
    """Per direction and cc: every system, the reference, the ratios, ping,
    stalls and link transitions."""
    lines = [
        "| direction | cc | system | goodput Mbit/s | x reference | x MPTCP | trace capacity "
        "Mbit/s | wire Mbit/s (goodput per wire byte) | ping p50 / p95 ms (lost) "
        "| longest stall s | beyond outage s | link downs/ups | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str | None], list[RealSummary]] = defaultdict(list)
    for s in rows:
        if not is_udp(s.flow):
            groups[(s.flow, s.cc)].append(s)
    if not groups:
        lines = []
    for (flow, cc), group in groups.items():
        head = f"| {flow_direction(flow)} | {cc or 'default'} "
        for s in group:
            lost = "" if s.ping_lost is None else f" ({s.ping_lost})"
            lines.append(
                head + f"| {s.system} | {s.goodput_median:.2f} [{s.goodput_min:.2f}-"
                f"{s.goodput_max:.2f}] | {_fmt(s.share_of_reference)} | {_fmt(s.ratio_to_mptcp)} "
                f"| {_fmt(s.capacity_mbit)} | {_wire(s)} | {_fmt(s.ping_p50_ms, 0)} / "
                f"{_fmt(s.ping_p95_ms, 0)}{lost} | {s.longest_stall_s:.1f} "
                f"| {_fmt(s.stall_beyond_outage_s, 1)} | {_transitions(s)} | {s.runs} |"
            )
        reference = reference_mbit(group)
        if reference is not None:
            lines.append(head + f"| **reference** (sum of links alone) | {reference:.2f} "
                         "| 1.00 | | | | | | | | |")
    return [*lines, *udp_table(rows)]


def udp_table(rows: list[RealSummary]) -> list[str]:
    """The UDP streams: per direction, every system's goodput against its
    offer and what its links could carry, loss, ping and link transitions."""
    udp = [s for s in rows if is_udp(s.flow)]
    if not udp:
        return []
    lines = [
        "",
        "| direction | system | offered Mbit/s | deliverable Mbit/s | goodput Mbit/s "
        "| x deliverable | loss % | jitter ms | wire Mbit/s (goodput per wire byte) "
        "| ping p50 / p95 ms (lost) | link downs/ups | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in udp:
        lost = "" if s.ping_lost is None else f" ({s.ping_lost})"
        lines.append(
            f"| {_way(s.flow)} | {s.system} | {_fmt(s.udp_offer_mbit)} "
            f"| {_fmt(s.deliverable_mbit)} | {s.goodput_median:.2f} [{s.goodput_min:.2f}-"
            f"{s.goodput_max:.2f}] | {_of_deliverable(s)} | {_fmt(s.lost_percent, 1)} "
            f"| {_fmt(s.jitter_ms, 1)} | {_wire(s)} "
            f"| {_fmt(s.ping_p50_ms, 0)} / {_fmt(s.ping_p95_ms, 0)}{lost} "
            f"| {_transitions(s)} | {s.runs} |"
        )
    return lines


def links_lines(meta: dict[str, Any], scenario: str) -> list[str]:
    """Where each link's rate came from (recorded trace or synthetic, seed)."""
    links = meta.get("links", {}).get(scenario, [])
    if not links:
        return []
    out = ["Where each link's rate comes from (up: client to server):", ""]
    for i, link in enumerate(links):
        up, down = link.get("up"), link.get("down")
        out.append(f"- link{i}: {up}" if up == down else f"- link{i}: up {up}; down {down}")
    return [*out, ""]


def notes() -> list[str]:
    return [
        "",
        "Goodput: iperf3 receiver, median [min-max] over the runs. x reference: of the sum of "
        "each link alone (same direction and cc). Trace capacity: the mean of the links' "
        "trace capacity over the flow (each link alone: its own), IP level. Wire: every "
        "link's bytes both ways at the client (frames) over the flow, median over runs; in "
        "brackets the goodput per wire byte (a tunnel's headers show there). Ping: through "
        "the system during the flow (stripe: the tunnel; a link alone: that link; MPTCP: "
        "link 0), medians over runs; lost = no reply. Stalls: runs of 100 ms bins under "
        f"{100 * STALL_FRACTION:g} % of the run's mean goodput, worst run; beyond outage: how "
        "long a stall lasted past the end of the outage it overlaps (runs with outages). "
        "Link downs/ups: stripe status, client + server, per link, all runs (- : not "
        "reported). A UDP stream: offered at a fixed rate (UDP payload); deliverable: what the "
        "links the system may use could carry of it second by second (their trace capacity "
        "less UDP/IP headers, no tunnel's); loss and jitter (RFC 3550's interarrival "
        "jitter, median over runs): iperf3's receiver.",
        "",
    ]
