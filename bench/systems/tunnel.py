"""A tunnel under test: one server process and one client process in a lab
(:class:`TunnelPair`), and the system that runs one (:class:`TunnelSystem`).

stripe and the wireguard-go baseline share this: readiness by pinging the
server's tunnel address, logs for error messages, and per-process CPU
seconds and peak RSS for the efficiency figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.lab import CommandError, Proc, run
from bench.systems.base import System

READY_TIMEOUT_S = 15.0


@dataclass
class TunnelPair:
    """A tunnel's server in ``server_ns`` and client in ``client_ns``.

    Subclasses start the two processes in :meth:`start`; the base stops
    them by PID and measures them.
    """

    client_ns: str
    server_ns: str
    workdir: Path
    server: Proc | None = field(default=None, init=False)
    client: Proc | None = field(default=None, init=False)

    def start(self) -> None:
        raise NotImplementedError

    def processes(self) -> list[Proc]:
        return [p for p in (self.server, self.client) if p is not None]

    def wait_ready(self, peer_addr: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Ping the server's tunnel address until it answers, else fail with the logs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = self.dead()
            if dead:
                raise CommandError(f"{dead}\n{self.logs()}")
            ping = run(["ping", "-c1", "-W1", peer_addr], ns=self.client_ns, check=False)
            if ping.returncode == 0:
                return
            time.sleep(0.2)
        raise CommandError(
            f"no ping reply from {peer_addr} through the tunnel within {timeout_s:g}s\n"
            + self.logs()
        )

    def dead(self) -> str | None:
        """Which process exited (it must not, while the pair is up), else None."""
        for proc in self.processes():
            if not proc.alive():
                return f"{proc.name} exited ({proc.popen.returncode}); see {proc.log}"
        return None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} log ({p.log}) ---\n{p.tail(40)}" for p in self.processes())

    def cpu_seconds(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in self.processes()}

    def peak_rss_mb(self) -> dict[str, float]:
        peaks = {p.name: p.peak_rss_mb() for p in self.processes()}
        return {name: mb for name, mb in peaks.items() if mb is not None}

    def stop(self) -> None:
        for proc in (self.client, self.server):
            if proc is not None:
                proc.stop()


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
