"""A short chaos run (28 s, seven kinds of fault) in a real lab (needs root):
the scenario's mechanics, and what must hold even in a short run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.bench_support import needs_lab

from bench.chaos import schedule
from bench.chaos.runner import PREFIX, ChaosOptions, run_chaos
from bench.lab import list_namespaces

pytestmark = needs_lab

SECONDS = 28.0


def test_a_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    before = {ns for ns in list_namespaces() if ns.startswith(PREFIX)}
    out = run_chaos(ChaosOptions(seconds=SECONDS, seed=1, out=tmp_path / "chaos"))
    record = json.loads((out / "chaos.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    print((out / "results.md").read_text())
    assert record.get("error") is None
    assert {ns for ns in list_namespaces() if ns.startswith(PREFIX)} == before
    kinds = {f["kind"] for f in record["faults"]}
    assert kinds >= {schedule.DOWN, schedule.RESTART, schedule.BLACKHOLE, schedule.ADD,
                     schedule.ROAM, schedule.LOSS, schedule.REMOVE}
    assert [f for f in record["faults"] if "error" in f] == []
    assert record["replays_captured"] > 0
    assert summary["transfer"]["intact"], summary["transfer"]
    assert summary["connections_reset"] == 0
    assert summary["logs"]["tracebacks"] == 0, summary["logs"]
    assert summary["unnamed_drop_reasons"] == []
    assert record["stripe_problem"] is None
    assert summary["roams"] and all(r["followed"] for r in summary["roams"]), summary["roams"]
    assert (out / "plots" / "chaos-goodput.png").exists()
