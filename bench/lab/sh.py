"""Running commands, inside namespaces or not, and making sure tools exist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Debian package that provides each external tool the bench calls.
TOOL_PACKAGES: dict[str, str] = {
    "ip": "iproute2",
    "tc": "iproute2",
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "ethtool": "ethtool",
    "nft": "nftables",
    "mptcpize": "mptcpd",
    "wireguard-go": "wireguard-go",
}


class CommandError(RuntimeError):
    """A command the bench needed failed; the message carries its stderr."""


def in_ns(ns: str | None, cmd: Sequence[str]) -> list[str]:
    """Prefix ``cmd`` so that it runs inside network namespace ``ns``."""
    if ns is None:
        return list(cmd)
    return ["ip", "netns", "exec", ns, *cmd]


def run(
    cmd: Sequence[str],
    ns: str | None = None,
    check: bool = True,
    timeout_s: float = 30.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded in time) and capture its output."""
    full = in_ns(ns, cmd)
    try:
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"timed out after {timeout_s}s: {' '.join(full)}") from exc
    if check and proc.returncode != 0:
        raise CommandError(
            f"command failed ({proc.returncode}): {' '.join(full)}\n{proc.stderr.strip()}"
        )
    return proc


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def ensure_tools(tools: Sequence[str], install: bool = True) -> None:
    """Install the Debian packages of missing tools, or say exactly what is missing.

    The demo must work on a fresh machine, so by default it installs with
    apt-get; when that is impossible the error names the packages.
    """
    missing = missing_tools(tools)
    if not missing:
        return
    packages = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
    hint = f"missing tools {missing}: install with `apt-get install -y {' '.join(packages)}`"
    if not install or shutil.which("apt-get") is None:
        raise CommandError(hint)
    print(f"bench: installing {' '.join(packages)} with apt-get ...", file=sys.stderr)
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    first = run([*env_cmd, "apt-get", "install", "-y", *packages], check=False, timeout_s=600)
    if first.returncode != 0:
        # A fresh machine may have no package lists yet.
        run([*env_cmd, "apt-get", "update"], check=False, timeout_s=600)
        run([*env_cmd, "apt-get", "install", "-y", *packages], check=False, timeout_s=600)
    still = missing_tools(tools)
    if still:
        raise CommandError(hint + " (apt-get did not succeed)")
