"""Per-second plots of the real-links runs: one PNG per scenario, direction
and congestion control, with for each of MPTCP and stripe's variants (or
the links alone, if neither ran) its typical run (the median goodput):
each link's trace capacity (dashed) and what it carried (solid), the flow's
goodput (black), outages shaded, and below it the ping RTT of each reply
(log scale).  Time is seconds from the trace restart right before the flow.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from bench.report.analysis import Record, system_order
from bench.report.reallinks import flow_direction, flow_slug

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive")


def _representative(records: list[Record]) -> Record:
    ordered = sorted(records, key=lambda r: float(r.get("goodput_mbit", 0.0)))
    return ordered[len(ordered) // 2]


def _shown(by_system: dict[str, list[Record]]) -> list[str]:
    systems = sorted(by_system, key=system_order)
    chosen = [s for s in systems if s == "mptcp" or s.startswith("stripe")]
    return chosen or systems


def _draw(top: Any, bottom: Any, record: Record) -> None:
    real = record["real"]
    offset = float(real.get("flow_offset_s", 0.0))
    for i, link in enumerate(real.get("links", [])):
        color = COLORS[i % len(COLORS)]
        capacity = link.get("capacity_mbit") or []
        carried = link.get("carried_mbit") or []
        if capacity:
            top.step(range(len(capacity) + 1), [*capacity, capacity[-1]], where="post",
                     color=color, linestyle="--", linewidth=1, alpha=0.8,
                     label=f"link{i} capacity")
        if carried:
            top.plot([k + 0.5 for k in range(len(carried))], carried, color=color,
                     linewidth=1.6, label=f"link{i} carried")
    goodput = record.get("per_second_mbit") or []
    top.plot([offset + k + 0.5 for k in range(len(goodput))], goodput, color="black",
             linewidth=2, label="flow goodput")
    for link, start, duration, *_ in real.get("outages", []):
        top.axvspan(start, start + duration, color=COLORS[int(link) % len(COLORS)], alpha=0.12)
    top.set_ylim(bottom=0, top=top.get_ylim()[1] * 1.1)
    top.set_ylabel("Mbit/s")
    top.grid(alpha=0.3)
    ping = real.get("ping") or []
    if ping:
        bottom.plot([t for t, _ in ping], [rtt for _, rtt in ping], ".", color="tab:gray",
                    markersize=3)
        bottom.set_yscale("log")
        bottom.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        bottom.yaxis.set_major_formatter(ScalarFormatter())
        bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_ylabel("ping RTT ms")
    bottom.grid(alpha=0.3, which="both")


def real_plots(directory: Path, records: list[Record]) -> list[str]:
    """The PNGs (see the module's doc); their file names."""
    groups: dict[tuple[str, str, str], dict[str, list[Record]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        if r.get("real") and not r.get("error"):
            groups[(r["scenario"], r["flow"], r.get("cc") or "default")][r["system"]].append(r)
    made = []
    directory.mkdir(parents=True, exist_ok=True)
    for (scenario, flow, cc), by_system in groups.items():
        systems = _shown(by_system)
        fig, axes = plt.subplots(
            2 * len(systems), 1, figsize=(11, 3.6 * len(systems)), sharex=True, squeeze=False,
            gridspec_kw={"height_ratios": [2, 1] * len(systems)},
        )
        for k, system in enumerate(systems):
            record = _representative(by_system[system])
            top, bottom = axes[2 * k, 0], axes[2 * k + 1, 0]
            _draw(top, bottom, record)
            top.set_title(f"{system}: {record.get('goodput_mbit', 0):.2f} Mbit/s "
                          f"(run {record.get('repeat', '?')})", fontsize="medium")
        axes[0, 0].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes[-1, 0].set_xlabel("seconds from the trace restart")
        fig.suptitle(f"{scenario}, {flow_direction(flow)}, cc {cc}")
        fig.tight_layout()
        # "upload", with parallel flows "upload-4flows", a UDP stream "upload-udp"
        title = flow_slug(flow)
        name = f"real-{scenario}-{title}-{cc}.png"
        fig.savefig(directory / name, dpi=90)
        plt.close(fig)
        made.append(name)
    return made
