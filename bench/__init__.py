"""stripe's benchmark and demo harness.

Builds network-namespace labs (client, server, N shaped links, optionally a
middle namespace running a userspace link emulator), runs iperf3 across plain
links, ECMP, kernel MPTCP and the stripe tunnel, and reports the results.
Entry point: ``python -m bench``.

Layout: :mod:`bench.lab` (namespaces, links, processes, traffic),
:mod:`bench.systems` (what is compared), :mod:`bench.report` (summaries,
tables, plots), :mod:`bench.attack` (the attack bench); at the top the
command line (``__main__``), the runner and one measurement (``runner``,
``measure``), the scenario presets, the demo, profiling, and the
micro-benchmarks ``offload_cost`` and ``guard_cost``, and ``sockets``
(a helper the control channels share).
"""

from pathlib import Path

# The checkout the bench runs from: where ``python -m bench...`` subprocesses
# (the emulator, the attacker, the current tree's stripe) import from.
REPO_ROOT = Path(__file__).resolve().parent.parent
