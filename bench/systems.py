"""The systems compared: plain links, ECMP, kernel MPTCP, wireguard-go, and stripe.

Each system is started on a built lab and says where iperf3 must send
(address, source address, a wrapper such as ``mptcpize run``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lab import ECMP_CLIENT_ADDR, ECMP_SERVER_ADDR, Lab, mptcp_available
from bench.sh import in_ns
from bench.stripe_run import REPO_ROOT, StripePair, stripe_cmd
from bench.tunnel import TunnelPair
from bench.wireguard_go import TUNNEL_SERVER_ADDR as WG_SERVER_ADDR
from bench.wireguard_go import WIREGUARD_GO, WireguardGoPair


@dataclass(frozen=True)
class Target:
    address: str
    bind: str | None = None
    # The server must answer UDP from the address the client sent to; with
    # ECMP routing would otherwise pick the outgoing link's address.
    server_bind: str | None = None
    wrapper: tuple[str, ...] = ()


class System:
    """Base: a way of carrying the flow from the client to the server namespace."""

    name = "system"

    def start(self, lab: Lab, workdir: Path) -> Target:
        raise NotImplementedError

    def stop(self) -> None:
        """Undo :meth:`start`; the lab itself stays up."""

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of each of the system's own processes, by name."""
        return {}

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of each of the system's processes, MB."""
        return {}

    def problem(self) -> str | None:
        """Why the system is broken now (a process died), else None."""
        return None

    def status(self) -> dict[str, Any]:
        """The system's own view at the end of a run (for the raw record)."""
        return {}


@dataclass
class PlainLink(System):
    index: int

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"link{self.index}"

    def start(self, lab: Lab, workdir: Path) -> Target:
        return Target(lab.names.links[self.index].server_addr)


class Ecmp(System):
    name = "ecmp"

    def start(self, lab: Lab, workdir: Path) -> Target:
        return Target(ECMP_SERVER_ADDR, bind=ECMP_CLIENT_ADDR, server_bind=ECMP_SERVER_ADDR)


class Mptcp(System):
    name = "mptcp"

    @staticmethod
    def unavailable_reason() -> str | None:
        if not mptcp_available():
            return "kernel MPTCP not enabled (net.mptcp.enabled != 1)"
        if shutil.which("mptcpize") is None:
            return "mptcpize not installed (Debian package mptcpd)"
        return None

    def start(self, lab: Lab, workdir: Path) -> Target:
        return Target(lab.names.links[0].server_addr, wrapper=("mptcpize", "run"))


class TunnelSystem(System):
    """A tunnel run as a server and a client process (stripe, wireguard-go)."""

    pair: TunnelPair | None = None

    def stop(self) -> None:
        if self.pair is not None:
            self.pair.stop()
            self.pair = None

    def cpu_seconds(self) -> dict[str, float]:
        return self.pair.cpu_seconds() if self.pair is not None else {}

    def peak_rss_mb(self) -> dict[str, float]:
        return self.pair.peak_rss_mb() if self.pair is not None else {}

    def problem(self) -> str | None:
        if self.pair is None:
            return None
        dead = self.pair.dead()
        return f"{dead} during the run" if dead else None


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


class WireguardGo(TunnelSystem):
    """Userspace WireGuard (Debian's wireguard-go), single path over link 0."""

    name = "wireguard-go"
    pair: WireguardGoPair | None = None

    @staticmethod
    def unavailable_reason() -> str | None:
        if shutil.which(WIREGUARD_GO) is None:
            return "wireguard-go not installed (Debian package wireguard-go)"
        return None

    def start(self, lab: Lab, workdir: Path) -> Target:
        self.pair = WireguardGoPair(
            lab.names.client_ns, lab.names.server_ns, workdir, names=lab.names
        )
        self.pair.start()
        self.pair.wait_ready(WG_SERVER_ADDR)
        return Target(WG_SERVER_ADDR)
