"""Starting the stripe tunnel in a lab: keys, configs, processes, readiness."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Proc
from bench.sh import CommandError, in_ns, run

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 15.0


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
class StripePair:
    """A stripe server in ``server_ns`` and client in ``client_ns``."""

    client_ns: str
    server_ns: str
    server_config: Path
    client_config: Path
    workdir: Path
    log_level: str = "info"
    server: Proc | None = None
    client: Proc | None = None

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

    def wait_ready(self, peer_addr: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Ping the server's tunnel address until it answers, else fail with the logs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in (self.server, self.client):
                if proc is not None and not proc.alive():
                    raise CommandError(f"{proc.name} exited early:\n{self.logs()}")
            ping = run(["ping", "-c1", "-W1", peer_addr], ns=self.client_ns, check=False)
            if ping.returncode == 0:
                return
            time.sleep(0.2)
        raise CommandError(
            f"no ping reply from {peer_addr} through the tunnel within {timeout_s:g}s\n"
            + self.logs()
        )

    def logs(self) -> str:
        parts = []
        for proc in (self.server, self.client):
            if proc is not None:
                parts.append(f"--- {proc.name} log ({proc.log}) ---\n{proc.tail(40)}")
        return "\n".join(parts)

    def cpu_seconds(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in (self.server, self.client) if p is not None}

    def stop(self) -> None:
        for proc in (self.client, self.server):
            if proc is not None:
                proc.stop()
