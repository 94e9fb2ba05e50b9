"""The runner end to end on a tiny plan: raw JSON, results.md, plots (needs root)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.bench.bench_support import needs_lab

from bench import REPO_ROOT
from bench.runner import Options, publish_latest, run
from bench.scenarios import resolve
from bench.systems.stripe import StripeTree

pytestmark = needs_lab


def test_run_writes_results(tmp_path: Path) -> None:
    opts = Options(resolve(["equal"]), repeat=2, seconds=2, systems=["link0", "ecmp"], out=tmp_path)
    out = run(opts)
    raws = sorted((out / "raw" / "equal").glob("*.json"))
    assert [p.name for p in raws] == [
        "ecmp-tcp-default-r1.json",
        "ecmp-tcp-default-r2.json",
        "link0-tcp-default-r1.json",
        "link0-tcp-default-r2.json",
    ]
    record = json.loads(raws[-1].read_text())
    assert record["error"] is None and 3.5 < record["goodput_mbit"] < 5.0
    assert record["link_share"][0] > 0.99
    results = (out / "results.md").read_text()
    assert "| link0 | tcp | default |" in results and "2/2" in results
    assert (out / "plots" / "bars-equal.png").stat().st_size > 1000
    assert (out / "plots" / "goodput-equal-tcp-default.png").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scenarios"] == ["equal"]
    other = tmp_path / "latest" / "other"
    other.mkdir(parents=True)
    (other / "results.md").write_text("another report")
    latest = publish_latest(out, tmp_path / "latest" / "equal")
    assert (latest / "results.md").exists() and (latest / "plots").is_dir()
    assert not (latest / "work").exists()  # logs and configs with keys stay out
    assert (other / "results.md").read_text() == "another report"  # untouched


def test_run_with_another_stripe_tree(tmp_path: Path) -> None:
    """An A/A run: this checkout's stripe and a copy of it as --stripe-tree copy=DIR."""
    copy = tmp_path / "copy"
    shutil.copytree(REPO_ROOT / "stripe", copy / "stripe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    opts = Options(resolve(["equal"]), repeat=1, seconds=2, systems=["stripe"],
                   schedulers=["adaptive"], stripe_trees=[StripeTree(copy, "copy")],
                   out=tmp_path / "out")
    out = run(opts)
    raws = sorted((out / "raw" / "equal").glob("*.json"))
    assert [p.name for p in raws] == [
        "stripe-adaptive-tcp-default-r1.json",
        "stripe-adaptive@copy-tcp-default-r1.json",
    ]
    for raw in raws:
        record = json.loads(raw.read_text())
        assert record["error"] is None and record["goodput_mbit"] > 5.0, record["error"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stripe_trees"]["copy"]["stripe"] == str(copy / "stripe" / "__init__.py")
    assert "| stripe-adaptive@copy |" in (out / "results.md").read_text()
