"""The kernel's own ways over the lab's links: one plain link, ECMP routes
across all of them, and in-kernel MPTCP (``mptcpize run``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.lab import ECMP_CLIENT_ADDR, ECMP_SERVER_ADDR, Lab, mptcp_available
from bench.systems.base import System, Target


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
