"""What an endpoint is asked to be: its role, keys, peers and links.

The config layer (`stripe.config`) turns a TOML file into an `EndpointSpec`;
the core (`endpoint`) runs one; a reload (`reconfig`) compares two.  These
types live apart from all three so that none of them imports another just
for a type.  All are frozen: a change is a new spec, planned and applied
as a whole.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from .aqm import DEFAULT_TARGET_S

Address = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A configured link.  On the client, socket index == link_id."""

    link_id: int
    name: str
    weight: int = 1
    backup: bool = False
    remote: Address | None = None
    # Where the shell binds the link's socket (interface, source, port).
    # Opaque here; on reload a change means a new socket, so a new link.
    binding: str = ""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    public_key: bytes
    preshared_key: bytes | None = None
    # Inner addresses this peer may use (cryptokey routing, see `routing`).
    allowed_ips: tuple[Network, ...] = (
        ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    role: Role
    private_key: bytes
    peers: tuple[PeerSpec, ...]
    links: tuple[LinkSpec, ...] = ()
    scheduler: str = "adaptive"
    reorder_hold_s: float | None = None  # None: derived from measured skew
    tunnel_mtu: int | None = None  # the TUN's MTU; None: no limit (see pmtu)
    pmtu_probe: bool = False  # probe each link's path MTU (needs tunnel_mtu)
    # Redundancy: data packets of at most this many bytes, or with one of
    # these DSCP values, also go out as a DATA_COPY on a second link.
    duplicate_below: int = 0
    duplicate_dscp: frozenset[int] = frozenset()
    # Queue management (see `aqm`): the standing queue the bond may keep
    # before inner packets are dropped or ECN-marked; None: off.
    queue_target_s: float | None = DEFAULT_TARGET_S
    # The shell's TUN takes and gives TCP/UDP packets with partial checksums
    # (virtio-net NEEDS_CSUM, see `offload`): peers are told they may send
    # such packets, and packets read so are completed for peers that did not
    # say they take them.  Set by the shell from the device, not configured.
    partial_csum: bool = False
    # A server of several worker processes (see `steering`): this one is
    # `worker` of `workers`, its session indices say so, and an initiation
    # from one of `foreign_peers` (the public keys the other workers serve)
    # is handed to its owner instead of being answered here.
    worker: int = 0
    workers: int = 1
    foreign_peers: frozenset[bytes] = frozenset()
    # Loss repair (see `reorder`): a gap in what this end receives that is
    # found lost waits for the peer to send it again; off, it is given up at
    # once (lower latency, inner losses).  This end answers the peer's
    # requests either way: the peer decides for its own direction.
    loss_repair: bool = True
