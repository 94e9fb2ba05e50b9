"""Cryptokey routing: which peer owns an inner IP address.

As in WireGuard, each peer has a list of allowed networks.  A packet from the
TUN goes to the peer whose network is the longest match for its destination;
a packet from a peer is accepted only if its source lies in that peer's
networks, so one client cannot speak with another's tunnel address.

Empty state: no networks; every lookup answers None.
Invariant: a network maps to exactly one peer (the last one inserted).
"""

from __future__ import annotations

import ipaddress
from typing import Generic, TypeVar

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedIPs(Generic[T]):
    __slots__ = ("_v4", "_v6")

    def __init__(self) -> None:
        # prefix length -> {network address as int: owner}, longest first.
        self._v4: list[tuple[int, int, dict[int, T]]] = []
        self._v6: list[tuple[int, int, dict[int, T]]] = []

    def insert(self, network: Network, owner: T) -> None:
        table = self._v4 if network.version == 4 else self._v6
        bits = 32 if network.version == 4 else 128
        mask = ((1 << network.prefixlen) - 1) << (bits - network.prefixlen)
        for length, _mask, entries in table:
            if length == network.prefixlen:
                entries[int(network.network_address)] = owner
                return
        table.append((network.prefixlen, mask, {int(network.network_address): owner}))
        table.sort(key=lambda entry: -entry[0])

    def lookup(self, address: bytes) -> T | None:
        """`address`: 4 or 16 raw bytes."""
        table = self._v4 if len(address) == 4 else self._v6
        value = int.from_bytes(address, "big")
        for _length, mask, entries in table:
            owner = entries.get(value & mask)
            if owner is not None:
                return owner
        return None


def destination(packet: bytes) -> bytes:
    """Raw destination address of a (validated) IPv4/IPv6 packet."""
    return packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]


def source(packet: bytes) -> bytes:
    return packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]
