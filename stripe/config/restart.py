"""Which config changes a running process can take from a reload.

A reload changes what the core runs on (peers, links, scheduling) live;
what was set up at start (the TUN, sockets, privileges, routes, the metrics
server) needs a restart.  Each `Config` field is in exactly one of the two
lists (the tests check it), so a new field cannot be forgotten.
"""

from __future__ import annotations

from typing import Any

from ..spec import Role
from .model import AUTO_MTU, Config

# What a running process cannot take from a reload, by Config field, with the
# key to name: the TUN device, sockets, privileges, routes and metrics server
# set up at start.  Every other field changes live (see `reconfig`, and the
# shell for the server's sockets); test_config checks each field is in one
# list or the other.
RESTART_KEYS = {
    "role": "role", "tun_name": "interface.name", "addresses": "interface.address",
    "mtu": "interface.mtu", "private_key": "interface.private_key",
    "listen_port": "interface.listen_port", "control_socket": "interface.control_socket",
    "user": "interface.user", "metrics": "interface.metrics",
    "route_all": "interface.route_all", "link_routes": "interface.link_routes",
    "masquerade": "interface.masquerade", "offload": "interface.offload",
    "pmtu_probe": "interface.pmtu_probe", "workers": "interface.workers",
    "worker": "interface.workers",
}
LIVE_FIELDS = frozenset({"path", "peers", "scheduler", "reorder_hold_ms", "links",
                         "duplicate_below", "duplicate_dscp", "queue_target_ms",
                         "loss_repair"})
SECRET_FIELDS = frozenset({"private_key"})


def restart_needed(old: Config, new: Config) -> str | None:
    """Why `new` cannot replace the running `old` by a reload (one line naming
    the file and the key), or None if it can."""
    for field_name, key in RESTART_KEYS.items():
        was, now = getattr(old, field_name), getattr(new, field_name)
        if was != now:
            shown = [AUTO_MTU if field_name == "mtu" and v is None else _show(v)
                     for v in (was, now)]
            values = "" if field_name in SECRET_FIELDS else f" ({shown[0]} -> {shown[1]})"
            return f"{new.path}: {key} changed{values}: needs a restart"
    if (old.route_all or old.link_routes) and _routed(old) != _routed(new):
        return (f"{new.path}: link: with route_all or link_routes, links added, removed, "
                "moved or given another gateway or table change the routes set up at "
                "start: needs a restart")
    if new.workers > 1 and _listening(old) != _listening(new):
        return (f"{new.path}: link: with workers > 1, the server's listening sockets are "
                "opened by the supervisor at start: adding, removing or moving one needs "
                "a restart")
    return None


def _listening(cfg: Config) -> list[tuple[object, ...]]:
    return [(link.interface, link.source, link.port) for link in cfg.links]


def _routed(cfg: Config) -> list[tuple[object, ...]]:
    """What the routing automation made of each link (see stripe/io/routes.py)."""
    return [(link.interface, link.source, link.remote, link.gateway, cfg.link_table(i))
            for i, link in enumerate(cfg.links)]


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(x) for x in value) + "]"
    if isinstance(value, Role):
        return value.value
    return '""' if value is None else str(value)
