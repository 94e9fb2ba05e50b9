"""What one phase of the attack bench measured: the record the runner writes
(``raw/r<k>-<phase>.json``) and the report reads back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("unattacked", "attacked")


@dataclass
class PhaseRecord:
    """One flow of one repeat, attacked or not."""

    repeat: int
    phase: str  # "unattacked" | "attacked"
    seconds: float
    wall_s: float = 0.0
    goodput_mbit: float = 0.0
    retransmits: int | None = None
    # Over the flow: stripe-server, stripe-client and (attacked) flood.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # server's counters' increase
    socket_drops: int = 0  # receive-buffer overflows in the server namespace
    veth_drops: int = 0  # on the attacker's veth pair, both ends
    client_sent: int = 0  # authenticated datagrams the client sent (links' tx_packets)
    server_accepted: int = 0  # authenticated datagrams the server took (links' rx_packets)
    flood: dict[str, Any] = field(default_factory=dict)  # bench.attack.flood's result
    blocked_sources: int | None = None  # the server's guard, when the phase ended
    filtered_sources: int | None = None  # ... of which in its kernel filter
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
