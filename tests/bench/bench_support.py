"""Skip markers and lab set-up for bench tests that need root and tools."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

from bench.lab import Lab, LabNames, list_namespaces, new_prefix

NEEDED_TOOLS = ("ip", "tc", "ethtool", "iperf3", "ping")


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {missing}"
    return None


# The marks of a module whose tests build labs (``pytestmark = needs_lab``):
# they need root, so they are integration tests, skipped where they cannot run.
needs_lab = [
    pytest.mark.integration,
    pytest.mark.skipif(lab_skip_reason() is not None, reason=lab_skip_reason() or ""),
]


def fresh_names(n_links: int) -> LabNames:
    """Lab names with the bench tests' own ``hb`` prefix (runs use ``sb``)."""
    return LabNames.for_prefix("hb" + new_prefix()[2:], n_links)


@contextlib.contextmanager
def lab_running(lab: Lab) -> Iterator[Lab]:
    """Build ``lab``, hand it out, always tear it down, then check nothing is left."""
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    prefix = lab.names.client_ns.removesuffix("cli")
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix)]
