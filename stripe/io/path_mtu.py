"""What the system says about each link's path MTU, for `mtu = "auto"`.

Asked once at start, before the TUN exists: a link bound to an interface
takes the route to its remote through that interface, and the route's
`mtu` metric when it has one, else the device's MTU; a link without a
remote (a server link) takes its interface, or the interface holding its
source address.  A server without links listens on every address: it
takes the device of the default route, else assumes Ethernet (1500).
The arithmetic is in `stripe.pmtu`; this module only asks `ip`.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Any

from ..config import Config, LinkConfig
from ..pmtu import Derivation, LinkPath, check_configured_mtu, derive_tunnel_mtu
from ..spec import Role

IP_TIMEOUT_S = 5.0


def resolve_tunnel_mtu(config: Config) -> Derivation:
    """The TUN MTU: `config.mtu`, or derived from the links when it is "auto".
    The explanation and any warnings are for the log."""
    paths = link_paths(config)
    if config.mtu is not None:
        warnings = tuple(check_configured_mtu(config.mtu, paths))
        return Derivation(config.mtu, f"mtu {config.mtu} (configured)", warnings)
    ipv6_inside = any(address.version == 6 for address in config.addresses)
    return derive_tunnel_mtu(paths, ipv6_inside)


def link_paths(config: Config) -> list[LinkPath]:
    if config.role is Role.SERVER and not config.links:
        device = _default_route_device()
        mtu = None if device is None else _interface_mtu(device)
        return [] if device is None or mtu is None else [
            LinkPath("listen", mtu, 4, f"default route via {device}")]
    paths = []
    for link in config.links:
        path = _link_path(link)
        if path is not None:
            paths.append(path)
    return paths


def _family(link: LinkConfig) -> int:
    for host in (link.source, link.remote[0] if link.remote else None):
        if host is not None and ipaddress.ip_address(host).version == 6:
            return 6
    return 4


def _link_path(link: LinkConfig) -> LinkPath | None:
    family = _family(link)
    if link.remote is not None:
        route = _route(link.remote[0], link.source, link.interface)
        if route is not None:
            return LinkPath(link.name, route[0], family, route[1])
    device = link.interface or (None if link.source is None else _device_with(link.source))
    mtu = None if device is None else _interface_mtu(device)
    if device is None or mtu is None:
        return None
    return LinkPath(link.name, mtu, family, f"interface {device}")


def _ip_json(*args: str) -> list[dict[str, Any]]:
    try:
        result = subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                timeout=IP_TIMEOUT_S, check=False)
        data = json.loads(result.stdout) if result.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def _route(remote: str, source: str | None, interface: str | None) -> tuple[int, str] | None:
    """(MTU, where it comes from) of the route the kernel would use to `remote`."""
    args = ["route", "get", remote]
    if source is not None:
        args += ["from", source]
    if interface is not None:
        args += ["oif", interface]
    routes = _ip_json(*args)
    if not routes:
        return None
    route = routes[0]
    device = route.get("dev")
    for metric in route.get("metrics", []):
        if isinstance(metric, dict) and isinstance(metric.get("mtu"), int):
            return metric["mtu"], f"route to {remote} mtu"
    mtu = _interface_mtu(device) if isinstance(device, str) else None
    return None if mtu is None else (mtu, f"route to {remote} via {device}")


def _device_with(address: str) -> str | None:
    prefix = 128 if ipaddress.ip_address(address).version == 6 else 32
    for entry in _ip_json("addr", "show", "to", f"{address}/{prefix}"):
        name = entry.get("ifname")
        if isinstance(name, str):
            return name
    return None


def _default_route_device() -> str | None:
    for family in ("-4", "-6"):
        for route in _ip_json(family, "route", "show", "default"):
            device = route.get("dev")
            if isinstance(device, str):
                return device
    return None


def _interface_mtu(name: str) -> int | None:
    try:
        with open(f"/sys/class/net/{name}/mtu") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
