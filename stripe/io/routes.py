"""Routing automation on the client, through netlink (pyroute2).

Two options, each link getting its own routing table T (`link.table`,
default 5300 + link index) and one rule at priority 5300 + link index,
below the main table's 32766 so they are consulted first:

- `link_routes`: the classic multi-ISP set-up.  T holds a default route
  via the link's gateway on the link's interface, and the rule
  `from <link source> lookup T` (or `oif <link interface>` for a link bound
  to an interface without a source), so each link's socket leaves through
  its own uplink whatever the main table's default route says.
- `route_all`: the tunnel becomes the default route (0.0.0.0/1 and
  128.0.0.0/1, and ::/1 and 8000::/1 with an IPv6 tunnel address: more
  specific than any default route, which stays in place for the moment
  stripe is gone).  Left at that, the encrypted datagrams to the server
  would be routed into the tunnel itself: a loop.  So each link keeps its
  path to the server outside: T holds a host route to the server via the
  link's original gateway and interface, and the rule
  `to <server> [from <source> | oif <interface>] lookup T` sends the
  link's datagrams there.  A per-link rule rather than one host route in
  the main table, because several links commonly reach the same server
  address over different uplinks.

The uplink of each link (interface and gateway) is found before anything
changes: the interface is `link.interface`, or the one holding
`link.source`, or the kernel's route to the server; the gateway is
`link.gateway`, or the most specific main-table route to the server through
that interface.  Tables already in use are refused rather than shared.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..config import Config
from .tun import SetupError
from .undo import Undo

MAIN_TABLE = 254
RULE_PRIORITY_BASE = 5300
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
# Halves of the address space that together outrank a default route
# without replacing it (OpenVPN's def1, wg-quick's trick).
DEFAULT_HALVES = {
    4: (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")),
    6: (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1")),
}
# Reverting something the kernel already removed (a route through a device
# that went away) is not a failure.
GONE_ERRNOS = (errno.ESRCH, errno.ENOENT, errno.ENODEV)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Uplink:
    """Where a link's datagrams leave the host, as found before any change."""

    device: str
    ifindex: int
    gateway: str | None  # None: the server (or the uplink) is on-link


@dataclass(frozen=True, slots=True)
class Route:
    dst: Network
    device: str
    ifindex: int
    gateway: str | None
    table: int

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        table = "" if self.table == MAIN_TABLE else f" table {self.table}"
        dst = "default" if self.dst.prefixlen == 0 else str(self.dst)
        return f"ip route add {dst}{via} dev {self.device}{table}"

    def netlink(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": _family(self.dst.version), "dst": str(self.dst), "oif": self.ifindex,
            "table": self.table,
        }
        if self.gateway:
            args["gateway"] = self.gateway
        else:
            args["scope"] = RT_SCOPE_LINK
        return args


@dataclass(frozen=True, slots=True)
class Rule:
    version: int
    priority: int
    table: int
    src: Network | None = None
    dst: Network | None = None
    oifname: str | None = None

    def describe(self) -> str:
        parts = ["ip", "-6" if self.version == 6 else "", "rule add"]
        if self.src is not None:
            parts.append(f"from {self.src.network_address}")
        if self.dst is not None:
            parts.append(f"to {self.dst.network_address}")
        if self.oifname is not None:
            parts.append(f"oif {self.oifname}")
        parts.append(f"lookup {self.table} pref {self.priority}")
        return " ".join(part for part in parts if part)

    def netlink(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": _family(self.version), "priority": self.priority, "table": self.table,
        }
        if self.src is not None:
            args.update(src=str(self.src.network_address), src_len=self.src.prefixlen)
        if self.dst is not None:
            args.update(dst=str(self.dst.network_address), dst_len=self.dst.prefixlen)
        if self.oifname is not None:
            args["oifname"] = self.oifname
        return args


def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _host(address: str) -> Network:
    ip = ipaddress.ip_address(address)
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def plan(config: Config, uplinks: list[Uplink], tun_name: str,
         tun_index: int) -> list[Route | Rule]:
    """What to add, in order (pure: no system access).  Per-link tables and
    rules come before the tunnel's default halves, so the links' way out
    exists before the tunnel could capture their datagrams."""
    changes: list[Route | Rule] = []
    for i, (link, uplink) in enumerate(zip(config.links, uplinks, strict=True)):
        assert link.remote is not None  # a client link always has one
        server = _host(link.remote[0])
        table = config.link_table(i)
        if config.link_routes:
            default = ipaddress.ip_network("::/0" if server.version == 6 else "0.0.0.0/0")
            changes.append(Route(default, uplink.device, uplink.ifindex, uplink.gateway, table))
        else:
            changes.append(Route(server, uplink.device, uplink.ifindex, uplink.gateway, table))
        src = _host(link.source) if link.source else None
        changes.append(Rule(
            server.version, RULE_PRIORITY_BASE + i, table, src=src,
            # link_routes: every datagram from the link's socket uses T;
            # route_all only: just those to the server.
            dst=None if config.link_routes else server,
            oifname=link.interface if src is None else None,
        ))
    if config.route_all:
        for version in sorted({address.version for address in config.addresses}):
            for half in DEFAULT_HALVES[version]:
                changes.append(Route(half, tun_name, tun_index, None, MAIN_TABLE))
    return changes


# -- talking to the kernel ---------------------------------------------------


def set_up(config: Config, tun_name: str, undo: Undo) -> None:
    with IPRoute() as ipr:
        uplinks = [_uplink(ipr, config, i) for i in range(len(config.links))]
        _check_tables_free(ipr, config)
        tun_index = _ifindex(ipr, tun_name, "the TUN device")
        for change in plan(config, uplinks, tun_name, tun_index):
            kind = "route" if isinstance(change, Route) else "rule"
            try:
                getattr(ipr, kind)("add", **change.netlink())
            except NetlinkError as exc:
                hint = " (another VPN's route_all?)" if exc.code == errno.EEXIST else ""
                raise SetupError(f"{change.describe()}: {_reason(exc)}{hint}") from None
            undo.record(change.describe(), partial(_remove, kind, change.netlink()))


def _remove(kind: str, args: dict[str, Any]) -> None:
    with IPRoute() as ipr:
        try:
            getattr(ipr, kind)("del", **args)
        except NetlinkError as exc:
            if exc.code not in GONE_ERRNOS:
                raise OSError(exc.code, _reason(exc)) from None


def _reason(exc: NetlinkError) -> str:
    return f"{errno.errorcode.get(exc.code, exc.code)} ({exc.args[-1]})"


def _ifindex(ipr: IPRoute, name: str, what: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise SetupError(f"{what} {name!r} does not exist")
    return int(found[0])


def _ifname(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get("ifname"))


def _uplink(ipr: IPRoute, config: Config, i: int) -> Uplink:
    link = config.links[i]
    assert link.remote is not None
    where = f"link[{i}] ({link.name})"
    server = link.remote[0]
    if link.interface:
        index = _ifindex(ipr, link.interface, f"{where}: interface")
    elif link.source:
        owners = [a.get("index") for a in ipr.get_addr(address=link.source)]
        if not owners:
            raise SetupError(f"{where}: source {link.source} is not an address of this host")
        index = int(owners[0])
    else:
        # Neither: the link goes where the kernel routes the server now.
        try:
            answer = ipr.route("get", dst=server)[0]
        except NetlinkError as exc:
            raise SetupError(f"{where}: no route to the server {server}: "
                             f"{_reason(exc)}") from None
        index = int(answer.get("oif"))
        return Uplink(_ifname(ipr, index), index, link.gateway or answer.get("gateway"))
    device = _ifname(ipr, index)
    gateway = link.gateway or _main_gateway(ipr, server, index, device, where, i)
    return Uplink(device, index, gateway)


def _main_gateway(ipr: IPRoute, server: str, index: int, device: str, where: str,
                  i: int) -> str | None:
    """The gateway of the most specific main-table route to `server` through
    interface `index` (lowest metric first among equals); None if that route
    has no gateway (on-link)."""
    address = ipaddress.ip_address(server)
    best: tuple[int, int, str | None] | None = None
    for route in ipr.get_routes(family=_family(address.version), table=MAIN_TABLE):
        if route["type"] != RTN_UNICAST:
            continue
        dst = route.get("dst") or ("::" if address.version == 6 else "0.0.0.0")
        if address not in ipaddress.ip_network(f"{dst}/{route['dst_len']}"):
            continue
        hops = route.get("multipath")
        nexthops = ([(hop["oif"], hop.get("gateway")) for hop in hops] if hops
                    else [(route.get("oif"), route.get("gateway"))])
        metric = route.get("priority") or 0
        for oif, gateway in nexthops:
            key = (route["dst_len"], -metric, gateway)
            if oif == index and (best is None or key[:2] > best[:2]):
                best = key
    if best is None:
        raise SetupError(f"{where}: no route to the server {server} through {device} in the "
                         f"main table; give the uplink's gateway as link[{i}].gateway")
    return best[2]


def _rules(ipr: IPRoute) -> list[Any]:
    rules = list(ipr.get_rules(family=socket.AF_INET))
    with contextlib.suppress(NetlinkError):  # a kernel without IPv6 has no IPv6 rules
        rules += list(ipr.get_rules(family=socket.AF_INET6))
    return rules


def _check_tables_free(ipr: IPRoute, config: Config) -> None:
    rules = _rules(ipr)
    for i, link in enumerate(config.links):
        table = config.link_table(i)
        routes = list(ipr.get_routes(family=socket.AF_UNSPEC, table=table))
        used_by_rule = any(rule.get("table") == table for rule in rules)
        if routes or used_by_rule:
            raise SetupError(
                f"routing table {table} (link[{i}] {link.name}) is already in use: by another "
                f"stripe, or left over from one that was killed (`ip route flush table {table}; "
                f"ip rule del table {table}`); or choose another with link[{i}].table")
