"""What every system compared offers: :class:`System`, started on a built
lab, says where iperf3 must send (:class:`Target`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lab import Lab


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
