"""Where a tunnel's time goes: py-spy on each of its processes during a run (issue 7).

``python -m bench profile SCENARIO`` (or ``run --profile``) attaches
``py-spy record`` to the stripe server and client once the tunnel is up and
stops it (SIGINT, which makes py-spy write its file) when the flow ends.
py-spy samples from outside the process 100 times a second, stacks
aggregated per function (``--function``), with ``--nonblocking`` (it never
pauses stripe) unless ``--native`` is asked for (C frames: libc's write,
OpenSSL; py-spy must pause the process to unwind them, which lowers
stripe's throughput a lot). Samples of threads waiting in the kernel (epoll)
are left out, so the shares are of the time the process was busy. For each
process the run's ``profiles/<scenario>/<run>/`` gets the raw collapsed
stacks (``<process>.collapsed``, flamegraph.pl's input format), the top
functions by own and total time (``<process>.txt``) and a flame graph
(``<process>.svg``, drawn with matplotlib: width = share of samples,
callers below callees).
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lab import CommandError, Lab, Proc
from bench.systems import Target, TunnelSystem

PY_SPY = "py-spy"
PY_SPY_MISSING = "py-spy not found: pip install py-spy (it is in stripe's dev extras)"
SAMPLE_RATE_HZ = 100
STOP_GRACE_S = 15.0  # py-spy writes its file after SIGINT; large with --native
TOP_N = 40
# Flame graph: frames narrower than this share of all samples are not drawn.
MIN_FRAME_SHARE = 0.002

Stacks = dict[tuple[str, ...], int]


def py_spy_path() -> str | None:
    """py-spy next to this Python (the venv's, pip-installed) or on PATH."""
    beside = Path(sys.executable).with_name(PY_SPY)
    return str(beside) if beside.exists() else shutil.which(PY_SPY)


def parse_collapsed(text: str) -> Stacks:
    """``frame;frame;frame count`` lines (root first) -> samples per stack."""
    stacks: Stacks = defaultdict(int)
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks[tuple(stack.split(";"))] += int(count)
    return dict(stacks)


@dataclass(frozen=True)
class FunctionTime:
    function: str
    self_samples: int  # the function itself was running
    total_samples: int  # it was anywhere on the stack (counted once per sample)


def top_functions(stacks: Stacks, n: int = TOP_N) -> list[FunctionTime]:
    """Functions by own time, then by total time (recursion counted once)."""
    own: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for stack, count in stacks.items():
        own[stack[-1]] += count
        for frame in set(stack):
            total[frame] += count
    ranked = sorted(total, key=lambda f: (-own[f], -total[f], f))
    return [FunctionTime(f, own[f], total[f]) for f in ranked[:n]]


def top_text(stacks: Stacks, title: str, n: int = TOP_N) -> str:
    samples = sum(stacks.values())
    lines = [
        f"{title}: {samples} samples ({SAMPLE_RATE_HZ} Hz while busy; waiting in the "
        "kernel is not sampled)",
    ]
    if samples:
        lines += ["", f"{'self %':>7} {'total %':>7}  function (file:first line)"]
        for ft in top_functions(stacks, n):
            own, total = 100 * ft.self_samples / samples, 100 * ft.total_samples / samples
            lines.append(f"{own:7.1f} {total:7.1f}  {ft.function}")
    return "\n".join(lines) + "\n"


@dataclass
class Frame:
    """A node of the call tree: samples that passed through this call path."""

    name: str
    samples: int = 0
    children: dict[str, Frame] = field(default_factory=dict)


def call_tree(stacks: Stacks) -> Frame:
    root = Frame("all")
    for stack, count in stacks.items():
        root.samples += count
        node = root
        for name in stack:
            node = node.children.setdefault(name, Frame(name))
            node.samples += count
    return root


def flame_boxes(
    root: Frame, min_share: float = MIN_FRAME_SHARE
) -> list[tuple[float, int, float, str]]:
    """(x, depth, width, name) per drawn frame; x and width as shares of all samples."""
    boxes: list[tuple[float, int, float, str]] = []
    total = root.samples
    if not total:
        return boxes

    def place(node: Frame, x: float, depth: int) -> None:
        width = node.samples / total
        if width < min_share:
            return
        boxes.append((x, depth, width, node.name))
        for child in sorted(node.children.values(), key=lambda c: c.name):
            place(child, x, depth + 1)
            x += child.samples / total

    place(root, 0.0, 0)
    return boxes


def _colour(name: str) -> tuple[float, float, float]:
    """A stable warm colour per function, as flame graphs usually have."""
    h = hashlib.blake2s(name.encode(), digest_size=2).digest()
    return (0.85 + 0.15 * h[0] / 255, 0.35 + 0.45 * h[1] / 255, 0.15)


def write_flame_svg(stacks: Stacks, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    boxes = flame_boxes(call_tree(stacks))
    depth = max((d for _, d, _, _ in boxes), default=0) + 1
    fig, ax = plt.subplots(figsize=(16, 0.28 * depth + 1.2))
    for x, d, width, name in boxes:
        ax.add_patch(
            Rectangle((x, d), width, 0.95, facecolor=_colour(name), edgecolor="white", lw=0.3)
        )
        # A 6.5 pt character is about 0.004 of a 16-inch-wide axis.
        chars = int(width / 0.004)
        if chars >= 4:
            label = name if len(name) <= chars else name[: chars - 2] + ".."
            ax.text(x + 0.002, d + 0.45, label, fontsize=6.5, va="center", clip_on=True)
    ax.set(xlim=(0, 1), ylim=(0, depth), title=title, xlabel="share of samples")
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


@dataclass
class Profiled(TunnelSystem):
    """A tunnel system with py-spy attached to each of its processes."""

    inner: TunnelSystem
    out_dir: Path
    native: bool = False
    samplers: list[tuple[Proc, Path]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def start(self, lab: Lab, workdir: Path) -> Target:
        target = self.inner.start(lab, workdir)
        self.pair = self.inner.pair
        spy = py_spy_path()
        if spy is None:
            raise CommandError(PY_SPY_MISSING)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for proc in self.pair.processes() if self.pair else []:
            raw = self.out_dir / f"{proc.name}.collapsed"
            cmd = [
                spy,
                "record",
                "--pid",
                str(proc.pid),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--rate",
                str(SAMPLE_RATE_HZ),
                "--function",
                # py-spy cannot unwind C frames without pausing the process.
                *(["--native"] if self.native else ["--nonblocking"]),
            ]
            log = self.out_dir / f"{proc.name}.py-spy.log"
            self.samplers.append((Proc(f"py-spy-{proc.name}", cmd, None, log), raw))
        return target

    def stop(self) -> None:
        try:
            for sampler, _ in self.samplers:
                sampler.stop(STOP_GRACE_S, signal.SIGINT)
        finally:
            self.inner.stop()
            self.pair = None
        for sampler, raw in self.samplers:
            self.written += self._render(sampler, raw)
        self.samplers = []

    def _render(self, sampler: Proc, raw: Path) -> list[Path]:
        process = sampler.name.removeprefix("py-spy-")
        if not raw.exists():
            note = self.out_dir / f"{process}.txt"
            note.write_text(f"py-spy wrote nothing; its log:\n{sampler.tail()}\n")
            return [note]
        stacks = parse_collapsed(raw.read_text(errors="replace"))
        txt, svg = self.out_dir / f"{process}.txt", self.out_dir / f"{process}.svg"
        txt.write_text(top_text(stacks, process))
        write_flame_svg(stacks, svg, f"{process}: {sum(stacks.values())} samples (py-spy)")
        return [raw, txt, svg]

    def status(self) -> dict[str, Any]:
        return self.inner.status()
