"""Skip markers for bench tests that need root and tools."""

from __future__ import annotations

import os
import shutil

import pytest

NEEDED_TOOLS = ("ip", "tc", "ethtool", "iperf3", "ping")


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {missing}"
    return None


needs_lab = pytest.mark.skipif(lab_skip_reason() is not None, reason=lab_skip_reason() or "")
