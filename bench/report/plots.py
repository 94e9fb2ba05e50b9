"""PNG plots with matplotlib (Agg backend, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report.analysis import Record, Summary, system_order
from bench.report.realplots import real_plots
from bench.scenarios import FAILOVER_CUT_S, FAILOVER_RESTORE_S, SCENARIOS


def _representative(records: list[Record]) -> Record:
    """The repeat whose goodput is the median one: plots show a typical run."""
    ordered = sorted(records, key=lambda r: float(r.get("goodput_mbit", 0.0)))
    return ordered[len(ordered) // 2]


def _mark_failover(ax: Any, scenario: str) -> None:
    scen = SCENARIOS.get(scenario)
    if scen is not None and scen.kind == "failover":
        ax.axvspan(FAILOVER_CUT_S, FAILOVER_RESTORE_S, color="red", alpha=0.08, label="link 1 cut")


def _slug(*parts: str | None) -> str:
    return "-".join(p for p in parts if p).replace("/", "_")


def make_plots(directory: Path, records: list[Record], summaries: list[Summary]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    groups: dict[tuple[str, str, str], dict[str, list[Record]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        # Real links have their own plots (bench.report.realplots).
        if r.get("per_second_mbit") and r["flow"] != "ping" and not r.get("real"):
            groups[(r["scenario"], r["flow"], r.get("cc") or "default")][r["system"]].append(r)

    for (scenario, flow, cc), by_system in groups.items():
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for system, rs in by_system.items():
            series = _representative(rs)["per_second_mbit"]
            ax.plot(range(1, len(series) + 1), series, label=system, marker=".")
        _mark_failover(ax, scenario)
        ax.set(
            title=f"{scenario}: goodput over time ({flow}, cc {cc})",
            xlabel="second",
            ylabel="Mbit/s (receiver)",
        )
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        name = _slug("goodput", scenario, flow, cc) + ".png"
        fig.tight_layout()
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
        made.append(name)

        stripes = {s: rs for s, rs in by_system.items() if s.startswith("stripe")}
        if stripes:
            fig, axes = plt.subplots(
                len(stripes), 1, figsize=(9, 3 * len(stripes)), squeeze=False, sharex=True
            )
            for ax, (system, rs) in zip(axes[:, 0], stripes.items(), strict=True):
                rows = _representative(rs).get("link_series_mbit", [])
                n_links = max((len(row) for row in rows), default=0)
                for i in range(n_links):
                    ax.plot(
                        [t + 1 for t in range(len(rows))],
                        [row[i] for row in rows],
                        label=f"link{i}",
                    )
                _mark_failover(ax, scenario)
                ax.set(title=f"{system}: per-link send rate", ylabel="Mbit/s")
                ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
                ax.grid(alpha=0.3)
                ax.legend(fontsize="small")
            axes[-1, 0].set_xlabel("second")
            name = _slug("links", scenario, flow, cc) + ".png"
            fig.tight_layout()
            fig.savefig(directory / name, dpi=100)
            plt.close(fig)
            made.append(name)

    real = {r["scenario"] for r in records if r.get("real")}
    by_scenario: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        if s.flow != "ping" and s.scenario not in real:
            by_scenario[s.scenario].append(s)
    for scenario, unordered in by_scenario.items():
        rows = sorted(unordered, key=lambda s: (system_order(s.system), s.flow, s.cc or ""))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        labels = [f"{s.system}\n{s.flow} {s.cc or ''}".strip() for s in rows]
        medians = [s.goodput_median for s in rows]
        err = [
            [m - s.goodput_min for m, s in zip(medians, rows, strict=True)],
            [s.goodput_max - m for m, s in zip(medians, rows, strict=True)],
        ]
        colors = ["tab:orange" if s.system.startswith("stripe") else "tab:blue" for s in rows]
        bars = ax.bar(range(len(rows)), medians, yerr=err, color=colors, capsize=3)
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in medians], fontsize="small", padding=2)
        kinds = {(s.flow, s.cc) for s in rows}
        plain = [s for s in rows if s.system.startswith("link")]
        # The reference line only means something when all bars share one flow and cc.
        if len(kinds) == 1 and plain and plain[0].share_of_reference is not None:
            reference = sum(s.goodput_median for s in plain)
            ax.axhline(
                reference,
                color="tab:green",
                linestyle=":",
                label=f"sum of plain links alone {reference:.1f} Mbit/s",
            )
        scen = SCENARIOS.get(scenario)
        if scen is not None and scen.shaped_sum_mbit:
            ax.axhline(
                scen.shaped_sum_mbit,
                color="gray",
                linestyle="--",
                label=f"links' configured sum {scen.shaped_sum_mbit:g} Mbit/s",
            )
        if ax.get_legend_handles_labels()[0]:
            ax.set_ylim(top=ax.get_ylim()[1] * 1.2)
            ax.legend(fontsize="small", loc="upper left", ncol=2)
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize="small")
        ax.set(title=f"{scenario}: goodput vs baselines (median, min-max)", ylabel="Mbit/s")
        ax.grid(axis="y", alpha=0.3)
        name = _slug("bars", scenario) + ".png"
        fig.tight_layout()
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made + real_plots(directory, records)
