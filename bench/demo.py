"""``python -m bench demo``: the issue-2 demo in the classic two-device lab.

devicea (client) and deviceb (server) joined by veth0/veth1 (10.0.0.0/30)
and veth2/veth3 (10.1.0.0/30), each shaped with tbf to 5 Mbit/s in both
directions; one iperf3 TCP flow over one plain link, an ECMP route, and the
stripe tunnel started from configs/a.toml (server) and configs/b.toml (client).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from bench import REPO_ROOT
from bench.lab import (
    CommandError,
    Flow,
    Lab,
    LabNames,
    LinkSpec,
    ensure_tools,
    tbf_args,
    terminating_signals_raise,
    uninterruptible,
)
from bench.measure import RunRecord, measure
from bench.systems import Ecmp, PlainLink, Stripe, System

DEMO_RATE_MBIT = 5.0
TUNNEL_SERVER_ADDR = "10.2.0.2"


def format_table(records: list[RunRecord], n_links: int) -> str:
    header = ["system", "Mbit/s", "retransmits"] + [f"link{i} share" for i in range(n_links)]
    rows = [header]
    for r in records:
        if r.error and not r.goodput_mbit:
            rows.append([r.system, "failed", "-"] + ["-"] * n_links)
            continue
        shares = [f"{100 * s:.0f} %" for s in r.link_share] or ["-"] * n_links
        rows.append(
            [
                r.system,
                f"{r.goodput_mbit:.2f}",
                "-" if r.retransmits is None else str(r.retransmits),
                *shares,
            ]
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(seconds: float, cc: str | None, log_level: str) -> int:
    ensure_tools(["ip", "tc", "iperf3", "ping"])
    configs = [REPO_ROOT / "configs" / name for name in ("a.toml", "b.toml")]
    missing = [str(c) for c in configs if not c.exists()]
    if missing:
        print(f"demo: missing {missing}; run it from a checkout of the repository", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="stripe-demo-"))
    # Their keys are inline, so stripe wants them private (a checkout makes
    # them readable by all): the demo runs private copies.
    private = []
    for config in configs:
        copy = workdir / config.name
        shutil.copyfile(config, copy)
        copy.chmod(0o600)
        private.append(copy)
    configs = private
    lab = Lab(
        LabNames.classic(), (LinkSpec.symmetric(DEMO_RATE_MBIT),) * 2, workdir, topology="local"
    )
    systems: list[System] = [
        PlainLink(0),
        Ecmp(),
        Stripe("stripe", configs[0], configs[1], TUNNEL_SERVER_ADDR, log_level),
    ]
    records: list[RunRecord] = []
    with terminating_signals_raise():
        try:
            print(
                f"demo: building devicea <-> deviceb, 2 links x {DEMO_RATE_MBIT:g} Mbit/s "
                f"(logs in {workdir})",
                flush=True,
            )
            lab.up()
            for system in systems:
                print(
                    f"demo: {system.name}: one iperf3 TCP flow, {seconds:g} s"
                    f"{f', cc {cc}' if cc else ''} ...",
                    flush=True,
                )
                record = measure(lab, system, Flow(), seconds, cc, workdir / system.name)
                records.append(record)
                if record.error:
                    print(f"demo: {system.name} failed: {record.error}", file=sys.stderr)
        except CommandError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 2
        finally:
            with uninterruptible():
                lab.down()
    print()
    burst, queue = (
        tbf_args(DEMO_RATE_MBIT, lab.queue_ms)[4],
        tbf_args(DEMO_RATE_MBIT, lab.queue_ms)[6],
    )
    print(
        f"one iperf3 TCP flow, {seconds:g} s, cc {cc or 'system default'}; links: tbf "
        f"{DEMO_RATE_MBIT:g} Mbit/s (burst {burst} B, latency {queue}) on every veth egress"
    )
    print(format_table(records, 2))
    by_name = {r.system: r for r in records if not r.error}
    if "link0" in by_name and "stripe" in by_name and by_name["link0"].goodput_mbit:
        # The two links are identical, so twice link 0 stands for their sum.
        share = by_name["stripe"].goodput_mbit / (2 * by_name["link0"].goodput_mbit)
        print(f"stripe carried {share:.2f} of the two plain links' sum (2 x link0)")
    return 1 if any(r.error for r in records) else 0
