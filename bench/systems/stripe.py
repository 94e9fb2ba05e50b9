"""stripe as a system compared: its commands (keys, config checks, status) and
its server and client processes in a lab."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.lab import CommandError, Lab, Proc, in_ns, run
from bench.systems.base import Target
from bench.systems.tunnel import TunnelPair, TunnelSystem


def stripe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stripe", *args]


def stripe_available() -> bool:
    return (REPO_ROOT / "stripe" / "__main__.py").exists()


def genkey() -> str:
    return run(stripe_cmd("genkey"), timeout_s=20, cwd=REPO_ROOT).stdout.strip()


def pubkey(private: str) -> str:
    proc = subprocess.run(
        stripe_cmd("pubkey"),
        input=private + "\n",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise CommandError(f"stripe pubkey failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def check_config(path: Path, ns: str) -> tuple[bool, str]:
    """``stripe check -c`` inside ``ns``, where the config's interfaces exist:
    does this stripe accept this config (e.g. its scheduler)?"""
    proc = subprocess.run(
        in_ns(ns, stripe_cmd("check", "-c", str(path))),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=REPO_ROOT,
    )
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


@dataclass
class StripePair(TunnelPair):
    """A stripe server in ``server_ns`` and client in ``client_ns``."""

    server_config: Path = Path()
    client_config: Path = Path()
    log_level: str = "info"

    def start(self) -> None:
        self.server = Proc(
            "stripe-server",
            stripe_cmd("--log-level", self.log_level, "server", "-c", str(self.server_config)),
            self.server_ns,
            self.workdir / "stripe-server.log",
            cwd=REPO_ROOT,
        )
        self.client = Proc(
            "stripe-client",
            stripe_cmd("--log-level", self.log_level, "client", "-c", str(self.client_config)),
            self.client_ns,
            self.workdir / "stripe-client.log",
            cwd=REPO_ROOT,
        )


@dataclass
class Stripe(TunnelSystem):
    """The tunnel, from ready-made config files (demo) or generated ones (suite)."""

    label: str
    server_config: Path
    client_config: Path
    tunnel_server_addr: str
    log_level: str = "info"
    pair: StripePair | None = field(default=None, init=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    def start(self, lab: Lab, workdir: Path) -> Target:
        self.pair = StripePair(
            lab.names.client_ns,
            lab.names.server_ns,
            workdir,
            server_config=self.server_config,
            client_config=self.client_config,
            log_level=self.log_level,
        )
        self.pair.start()
        self.pair.wait_ready(self.tunnel_server_addr)
        return Target(self.tunnel_server_addr)

    def status(self, server_first: bool = False) -> dict[str, Any]:
        """``stripe status --json`` of both ends: per-link RTT, loss, drops.

        The two are read one after the other, the client first unless
        ``server_first`` (the order matters when comparing their counters)."""
        out: dict[str, Any] = {}
        if self.pair is None:
            return out
        ends = [
            ("client", self.client_config, self.pair.client_ns),
            ("server", self.server_config, self.pair.server_ns),
        ]
        # The control socket's name carries the namespace: ask from inside it.
        for role, config, ns in reversed(ends) if server_first else ends:
            proc = subprocess.run(
                in_ns(ns, stripe_cmd("status", "-c", str(config), "--json")),
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                cwd=REPO_ROOT,
            )
            try:
                out[role] = json.loads(proc.stdout)
            except json.JSONDecodeError:
                out[role] = {"error": (proc.stderr or proc.stdout).strip()[:300]}
        return out
