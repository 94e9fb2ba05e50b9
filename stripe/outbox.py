"""What the core hands to the shell, pulled after every input.

The core never performs I/O: every part of it that wants something done
outside (a datagram sent, a packet written to the TUN, a socket closed, a
line logged) puts it here, and the driver takes it all after each input
(`Endpoint.datagrams_to_send` and friends).  Untrusted input that is dropped
is counted here too, under a short reason name, so one table holds every
drop whatever part of the core made it.

`touched` collects the peers an input may have given a new timer (see
`Endpoint.get_timer`): every part that changes a peer's state marks it
here, and the endpoint recomputes only their deadlines.

Empty state: nothing queued, no drops, nothing touched.  Invariant: each queue keeps the
order things were put in (datagrams of one link leave in link-sequence
order, packets reach the TUN in counter order).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

Address = tuple[str, int]
Datagram = tuple[int, bytes, Address]  # (socket index, bytes, destination)
# An initiation for another worker's peer: (worker, socket index, bytes, source).
Handoff = tuple[int, int, bytes, Address]


class Outbox:
    __slots__ = ("closed_sockets", "datagrams", "deliveries", "drops", "events", "handoffs",
                 "touched")

    def __init__(self) -> None:
        self.datagrams: list[Datagram] = []
        self.deliveries: list[bytes] = []
        self.events: list[tuple[int, str]] = []
        self.closed_sockets: list[int] = []
        self.handoffs: list[Handoff] = []
        self.drops: Counter[str] = Counter()
        self.touched: dict[int, Any] = {}  # id(peer) -> peer

    def touch(self, peer: Any) -> None:
        """`peer`'s state changed: its next timer is to be recomputed."""
        self.touched[id(peer)] = peer

    def send(self, sock: int, datagram: bytes, addr: Address) -> None:
        """Queue a datagram that is ready to go (sealed, or a handshake message)."""
        self.datagrams.append((sock, datagram, addr))

    def event(self, level: int, message: str) -> None:
        """A line for the log (`logging` level)."""
        self.events.append((level, message))

    def take_datagrams(self) -> list[Datagram]:
        out, self.datagrams = self.datagrams, []
        return out

    def take_deliveries(self) -> list[bytes]:
        out, self.deliveries = self.deliveries, []
        return out

    def take_events(self) -> list[tuple[int, str]]:
        out, self.events = self.events, []
        return out

    def take_handoffs(self) -> list[Handoff]:
        out, self.handoffs = self.handoffs, []
        return out

    def take_closed_sockets(self) -> list[int]:
        out, self.closed_sockets = self.closed_sockets, []
        return out
