"""Starting the stripe tunnel in a lab: keys, configs, processes, readiness."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Proc
from bench.sh import CommandError, in_ns, run
from bench.tunnel import TunnelPair

REPO_ROOT = Path(__file__).resolve().parent.parent


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
