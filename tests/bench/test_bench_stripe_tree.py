"""``--stripe-tree LABEL=DIR``: parsing, naming, the environment that makes
``python -m stripe`` run that tree's code, and the systems in the results."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import REPO_ROOT
from bench.__main__ import build_parser, options_from
from bench.measure import RunRecord
from bench.report.tables import results_markdown
from bench.runner import count_runs
from bench.systems.stripe import CURRENT_TREE, StripeTree, stripe_cmd


def _fake_tree(root: Path) -> Path:
    """A checkout whose stripe says which one it is."""
    (root / "stripe").mkdir(parents=True)
    (root / "stripe" / "__init__.py").write_text("")
    (root / "stripe" / "__main__.py").write_text("print('stripe from', __file__)\n")
    return root


def _options(*argv: str) -> Any:
    parser = build_parser()
    return options_from(parser.parse_args(["run", "equal", *argv]), parser)


def test_parse_label_and_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = StripeTree.parse(f"old={_fake_tree(tmp_path / 'wt')}")
    assert tree == StripeTree(tmp_path / "wt", "old")
    monkeypatch.chdir(tmp_path)
    assert StripeTree.parse("v0-1_A=wt/") == StripeTree(tmp_path / "wt", "v0-1_A")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("old", "expected LABEL=DIR"),
        ("old=", "expected LABEL=DIR"),
        ("=DIR", "a label is"),
        ("a/b=DIR", "a label is"),
        ("-old=DIR", "a label is"),
        ("old@x=DIR", "a label is"),
        ("x" * 17 + "=DIR", "a label is"),
    ],
)
def test_parse_refuses_bad_labels_and_forms(tmp_path: Path, text: str, message: str) -> None:
    _fake_tree(tmp_path / "DIR")
    with pytest.raises(ValueError, match=message):
        StripeTree.parse(text.replace("DIR", str(tmp_path / "DIR")))


def test_parse_refuses_a_dir_without_stripe(tmp_path: Path) -> None:
    (tmp_path / "stripe").mkdir()  # a package without __main__.py is not enough
    with pytest.raises(ValueError, match=r"no stripe/__main__\.py"):
        StripeTree.parse(f"old={tmp_path}")
    with pytest.raises(ValueError, match=r"no stripe/__main__\.py"):
        StripeTree.parse(f"old={tmp_path / 'missing'}")


def test_system_names() -> None:
    old = StripeTree(REPO_ROOT, "old")
    assert CURRENT_TREE.system_name("adaptive") == "stripe-adaptive"
    assert old.system_name("adaptive") == "stripe-adaptive@old"
    assert old.system_name("adaptive:queue_target_ms=0") == "stripe-adaptive:queue_target_ms=0@old"


def test_the_tree_runs_its_own_stripe_not_the_installed_one(tmp_path: Path) -> None:
    tree = StripeTree(_fake_tree(tmp_path / "wt"), "old")
    assert Path(tree.stripe_file()) == tmp_path / "wt" / "stripe" / "__init__.py"
    # From another directory too: the processes run with the tree as cwd,
    # and PYTHONPATH alone puts it first.
    out = subprocess.run(stripe_cmd(), capture_output=True, text=True, check=True,
                         cwd="/", env=tree.env()).stdout
    assert out.strip() == f"stripe from {tmp_path / 'wt' / 'stripe' / '__main__.py'}"
    assert tree.describe()["stripe"] == str(tmp_path / "wt" / "stripe" / "__init__.py")
    assert Path(CURRENT_TREE.stripe_file()) == REPO_ROOT / "stripe" / "__init__.py"


def test_cli_collects_trees_and_counts_their_runs(tmp_path: Path) -> None:
    a, b = _fake_tree(tmp_path / "a"), _fake_tree(tmp_path / "b")
    plain = _options("--schedulers", "adaptive,weighted", "--repeat", "2")
    both = _options("--schedulers", "adaptive,weighted", "--repeat", "2",
                    "--stripe-tree", f"old={a}", "--stripe-tree", f"older={b}")
    assert [(t.label, t.path) for t in both.stripe_trees] == [("old", a), ("older", b)]
    # 2 variants x 2 more trees x 2 repeats.
    assert count_runs(both) == count_runs(plain) + 2 * 2 * 2


@pytest.mark.parametrize(
    ("trees", "message"),
    [
        (["old=/nonexistent/dir"], "not a checkout of stripe"),
        (["o/ld={a}"], "a label is"),
        (["old={a}", "old={a}"], "label 'old' given twice"),
    ],
)
def test_cli_refuses_bad_trees(
    tmp_path: Path, trees: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _fake_tree(tmp_path / "a")
    with pytest.raises(SystemExit):
        _options(*[x for tree in trees for x in ("--stripe-tree", tree.format(a=a))])
    err = capsys.readouterr().err
    assert "--stripe-tree: " in err and message in err, err


def test_results_show_tree_systems_like_any_other() -> None:
    records = [
        RunRecord(system, "tcp", None, 20, goodput_mbit=rate, link_share=[0.5, 0.5]).to_json()
        | {"scenario": "equal", "repeat": 1}
        for system, rate in [("link0", 4.7), ("link1", 4.7), ("stripe-adaptive", 9.1),
                             ("stripe-adaptive@old", 8.2)]
    ]
    meta = {"command": "x", "stripe_trees": {"old": {"dir": "/src/old", "commit": "abc1234"}}}
    text = results_markdown(records, meta)
    assert "`stripe-*@old`: stripe from /src/old (commit abc1234)" in text
    rows = [line for line in text.splitlines() if line.startswith("| stripe-adaptive")]
    assert any("| stripe-adaptive@old |" in row and "8.20" in row for row in rows), rows
    assert any("| stripe-adaptive |" in row and "9.10" in row for row in rows), rows
