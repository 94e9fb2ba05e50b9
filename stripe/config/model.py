"""The validated configuration of one stripe process, and its defaults.

`Config` is what `parse.load` makes of a TOML file: every value checked,
every default filled in.  The core gets the part it runs on as an
`EndpointSpec` (`Config.endpoint_spec`); the shell uses the rest (TUN,
sockets, routes, privileges).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..aqm import DEFAULT_TARGET_S
from ..spec import EndpointSpec, LinkSpec, PeerSpec, Role
from ..steering import owner_of

# The TUN MTU by default: derived at start from the links' interfaces and
# routes (see stripe.pmtu and stripe.io.path_mtu).
AUTO_MTU = "auto"
# Probing each link's path (DPLPMTUD) is on by default: it costs a handful
# of padded probes per link at start and one every 10 s, and it finds what
# interface MTUs do not show (PPPoE, LTE, tunnels on the way) on paths that
# drop ICMP, which is where a tunnel otherwise stalls without a word.
DEFAULT_PMTU_PROBE = True
# Redundancy copies packets up to this size; a full-size one doubles a bulk flow.
MAX_DUPLICATE_BELOW = 9000
# Queue management (see `aqm`): CoDel's target, the standing queue the bond
# may keep before inner packets are dropped or ECN-marked.  Above a second
# it would manage nothing.
DEFAULT_QUEUE_TARGET_MS = DEFAULT_TARGET_S * 1000
MAX_QUEUE_TARGET_MS = 1000.0
# After opening the TUN device and sockets nothing needs root any more.
DEFAULT_USER = "nobody"
DEFAULT_SCHEDULER = "adaptive"
IFNAMSIZ = 15
DEFAULT_ALLOWED_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
# Routing automation: link i gets table LINK_TABLE_BASE + i unless its
# `table` says otherwise (stripe/io/routes.py picks the rule priorities).
LINK_TABLE_BASE = 5300
# Tables the kernel reserves (unspec, default, main, local) and the top of the range.
RESERVED_TABLES = (0, 253, 254, 255)
MAX_TABLE = 2**32 - 1


CONTROL_SOCKET_DIR = Path("/run/stripe")


def default_control_socket(tun_name: str, role: Role) -> Path:
    """/run/stripe/<tun>-<role>.sock, plus the name of the `ip netns`
    namespace we run in, if any: namespaces share /run, and two processes with
    the same TUN name in two namespaces must not collide."""
    return CONTROL_SOCKET_DIR / f"{tun_name}-{role.value}{_netns_suffix()}.sock"


def _netns_suffix() -> str:
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        for entry in sorted(os.scandir("/run/netns"), key=lambda e: e.name):
            if entry.stat().st_ino == own:
                return f"-{entry.name}"
    except OSError:
        pass
    return ""


class ConfigError(Exception):
    """Local misuse: the config is wrong.  str() is the whole message."""


@dataclass(frozen=True, slots=True)
class LinkConfig:
    name: str
    interface: str | None
    source: str | None
    remote: tuple[str, int] | None  # client: the server's address
    port: int  # local port to bind (client: 0 = any)
    weight: int
    backup: bool
    # Routing automation (client, see stripe/io/routes.py): the uplink's
    # gateway (None: found in the main table) and this link's routing table.
    gateway: str | None = None
    table: int | None = None

    @property
    def binding(self) -> str:
        """Where the link's socket is bound, e.g. "dev veth0 from 10.0.0.1:0"."""
        parts = [f"dev {self.interface}"] if self.interface else []
        if self.source or self.port:
            parts.append(f"from {self.source or '*'}:{self.port}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    role: Role
    tun_name: str
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    mtu: int | None  # None: "auto", derived from the links at start
    private_key: bytes
    peers: tuple[PeerSpec, ...]
    scheduler: str
    reorder_hold_ms: float | None
    listen_port: int | None
    links: tuple[LinkConfig, ...]
    control_socket: Path
    user: str | None  # drop to this user after setup; None: stay as started
    # Operations (all off by default): Prometheus endpoint, routing
    # automation on the client, NAT on the server.
    metrics: tuple[str, int] | None = None
    route_all: bool = False
    link_routes: bool = False
    masquerade: tuple[str, ...] = ()

    def link_table(self, index: int) -> int:
        """The routing table of link `index` (routing automation)."""
        table = self.links[index].table
        return LINK_TABLE_BASE + index if table is None else table
    # Kernel offloads on the data path (TUN TSO, UDP GSO/GRO) where available.
    offload: bool = True
    pmtu_probe: bool = DEFAULT_PMTU_PROBE
    # Redundancy (off by default): copies of small or chosen-DSCP packets.
    duplicate_below: int = 0
    duplicate_dscp: tuple[int, ...] = ()
    # Queue management (see `aqm`): None turns it off.
    queue_target_ms: float | None = DEFAULT_QUEUE_TARGET_MS
    # Server: worker processes (see `steering`, stripe/io/workers.py).
    # `worker` is not configured: it is set in each worker process's copy of
    # the config (`worker_share`); None in a single process or the supervisor.
    workers: int = 1
    worker: int | None = None
    # Ask the peer again for packets found lost (see `reorder`).
    loss_repair: bool = True

    def worker_tun(self, worker: int) -> str:
        """Worker `worker`'s TUN device: the configured name for worker 0
        (it has the addresses), NAME-k for the others (routes only)."""
        return self.tun_name if worker == 0 else f"{self.tun_name}-{worker}"

    def worker_control_socket(self, worker: int) -> Path:
        """Worker `worker`'s own status socket (the supervisor's is `control_socket`)."""
        path = self.control_socket
        return path.with_name(f"{path.stem}-w{worker}{path.suffix}")

    def worker_share(self, worker: int) -> Config:
        """This config as worker `worker` runs it: its TUN, its status
        socket, no metrics server (the supervisor's), its peers (see
        `endpoint_spec`)."""
        return replace(self, worker=worker, tun_name=self.worker_tun(worker),
                       control_socket=self.worker_control_socket(worker), metrics=None,
                       masquerade=())

    def owned_peers(self, worker: int) -> tuple[PeerSpec, ...]:
        return tuple(p for p in self.peers if owner_of(p.public_key, self.workers) == worker)

    def endpoint_spec(self, tunnel_mtu: int | None = None) -> EndpointSpec:
        """`tunnel_mtu`: the TUN's MTU as set up (needed when `mtu` is auto)."""
        links = tuple(
            LinkSpec(i, link.name, link.weight, link.backup, link.remote, link.binding)
            for i, link in enumerate(self.links)
        ) if self.role is Role.CLIENT else ()
        hold = None if self.reorder_hold_ms is None else self.reorder_hold_ms / 1000
        worker = self.worker or 0
        peers = self.peers if self.worker is None else self.owned_peers(worker)
        return EndpointSpec(
            self.role, self.private_key,
            peers,
            links, self.scheduler, hold,
            tunnel_mtu=tunnel_mtu if tunnel_mtu is not None else self.mtu,
            pmtu_probe=self.pmtu_probe,
            duplicate_below=self.duplicate_below,
            duplicate_dscp=frozenset(self.duplicate_dscp),
            queue_target_s=None if self.queue_target_ms is None else self.queue_target_ms / 1000,
            worker=worker, workers=1 if self.worker is None else self.workers,
            foreign_peers=frozenset(p.public_key for p in self.peers if p not in peers),
            loss_repair=self.loss_repair,
        )

