"""Read and validate a stripe TOML config file into a `Config`.

The CLI prints a `ConfigError` and exits 2.  Parsing also checks the bits of
the system a config refers to (key files, link interfaces, users), since
"interface veth9 does not exist" is a config error to the user.  It may
wait on the network (host names in `remote` are resolved) and on user
lookups: the running process calls it off its event loop (`io.reload`).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..pmtu import MAX_MTU, MIN_MTU_IPV4, MIN_MTU_IPV6
from ..scheduler import SCHEDULERS
from ..spec import PeerSpec, Role
from ..steering import MAX_WORKERS
from ..wire import MAX_LINKS
from .files import FileContent, ReadFile, key_from, read_local_file
from .model import (
    AUTO_MTU,
    DEFAULT_ALLOWED_IPS,
    DEFAULT_PMTU_PROBE,
    DEFAULT_QUEUE_TARGET_MS,
    DEFAULT_SCHEDULER,
    DEFAULT_USER,
    IFNAMSIZ,
    MAX_DUPLICATE_BELOW,
    MAX_QUEUE_TARGET_MS,
    MAX_TABLE,
    RESERVED_TABLES,
    Config,
    ConfigError,
    LinkConfig,
    default_control_socket,
)
from .tables import Table, kind_of


def _parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)
    address = str(infos[0][4][0])
    return address, int(port_text)


def load(path: str | os.PathLike[str], role: Role,
         interface_exists: Callable[[str], bool] | None = None,
         read_file: ReadFile = read_local_file) -> Config:
    """Read, parse and validate; raises ConfigError with a one-line reason."""
    name = str(path)
    try:
        source = read_file(Path(name))
        data = tomllib.loads(source.data.decode())
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    exists = interface_exists or (lambda ifname: os.path.exists(f"/sys/class/net/{ifname}"))
    return _parse(name, data, role, exists, read_file, source)


def _parse(path: str, data: dict[str, Any], role: Role,
           interface_exists: Callable[[str], bool], read_file: ReadFile,
           source: FileContent) -> Config:
    top = Table(path, "", data)
    iface = Table(path, "interface", top.get("interface", dict, what="an [interface] table"),
                  read_file, source)
    raw_peers = top.get("peer", object, what="a [peer] table (or [[peer]] tables on a server)")
    if isinstance(raw_peers, dict):
        raw_peers = [raw_peers]
        peer_names = ["peer"]
    elif isinstance(raw_peers, list) and raw_peers and role is Role.SERVER:
        peer_names = [f"peer[{i}]" for i in range(len(raw_peers))]
    else:
        raise top.error("peer", "expected one [peer] table"
                        + (" or [[peer]] tables" if role is Role.SERVER else " (the server)"))
    raw_links = top.get("link", list, [], what="[[link]] tables")
    top.finish()

    tun_name = iface.get("name", str, "stripe0")
    iface.check("name", 0 < len(tun_name) <= IFNAMSIZ and "/" not in tun_name
                and not any(c.isspace() for c in tun_name),
                f"expected an interface name of 1-{IFNAMSIZ} characters, got {tun_name!r}")
    addresses = []
    for text in iface.get("address", list, what='a list like ["10.2.0.1/24"]'):
        try:
            if not isinstance(text, str):
                raise ValueError
            addresses.append(ipaddress.ip_interface(text))
        except ValueError:
            raise iface.error(
                "address", f'expected addresses like "10.2.0.1/24" or "fd00::1/64", got {text!r}'
            ) from None
    mtu = _parse_mtu(iface, any(address.version == 6 for address in addresses))
    pmtu_probe = iface.get("pmtu_probe", bool, DEFAULT_PMTU_PROBE)
    private_key = key_from(iface, "private_key", "private_key_file", True)
    assert private_key is not None
    scheduler = iface.get("scheduler", str, DEFAULT_SCHEDULER)
    iface.check("scheduler", scheduler in SCHEDULERS,
                f"expected one of {', '.join(sorted(SCHEDULERS))}, got {scheduler!r}")
    hold = iface.get("reorder_hold_ms", float, None)
    iface.check("reorder_hold_ms", hold is None or 0 < hold <= 2000,
                f"expected a hold time in ms, 0 < x <= 2000, got {hold}")
    listen_port = iface.get("listen_port", int, None if role is Role.CLIENT else ...,
                            what="a UDP port number")
    iface.check("listen_port", listen_port is None or 0 < listen_port < 65536,
                f"expected a UDP port 1..65535, got {listen_port}")
    control_text = iface.get("control_socket", str, str(default_control_socket(tun_name, role)),
                             what="a path for the status socket")
    user = iface.get("user", str, DEFAULT_USER, what='a user name, or "" to keep root')
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            if "user" in iface.table:
                raise iface.error("user", f"no such user {user!r} on this host") from None
            # Going on as root without a word is not a default (a minimal
            # container without nobody): it has to be asked for.
            raise iface.error("user", f"the default user {user!r} does not exist on this "
                                      "host; name another user to run as after set-up, or "
                                      'write user = "" to keep running as started (root)'
                              ) from None
    metrics = _parse_metrics(iface)
    route_all = iface.get("route_all", bool, False)
    link_routes = iface.get("link_routes", bool, False)
    for key in ("route_all", "link_routes"):
        iface.check(key, role is Role.CLIENT or key not in iface.table,
                    "only a client routes through its links; remove it from the server config")
    masquerade = _parse_masquerade(iface, role, interface_exists)
    offload = iface.get("offload", bool, True)
    duplicate_below = iface.get("duplicate_below", int, 0, what="a packet size in bytes")
    iface.check("duplicate_below", 0 <= duplicate_below <= MAX_DUPLICATE_BELOW,
                f"expected 0 (off) .. {MAX_DUPLICATE_BELOW} bytes, got {duplicate_below}")
    dscp = iface.get("duplicate_dscp", list, [], what="a list of DSCP values like [46]")
    iface.check("duplicate_dscp",
                all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 63
                    for v in dscp),
                f"expected DSCP values 0..63 such as [46] (EF), got {dscp!r}")
    queue_target = iface.get("queue_target_ms", float, DEFAULT_QUEUE_TARGET_MS,
                             what="a queueing delay in ms, or 0 (off)")
    iface.check("queue_target_ms", 0 <= queue_target <= MAX_QUEUE_TARGET_MS,
                f"expected 0 (off) .. {MAX_QUEUE_TARGET_MS:g} ms, got {queue_target:g}")
    loss_repair = iface.get("loss_repair", bool, True)
    workers = iface.get("workers", int, 1, what="a number of worker processes")
    iface.check("workers", role is Role.SERVER or "workers" not in iface.table,
                "only a server has worker processes; remove it from the client config")
    iface.check("workers", 1 <= workers <= MAX_WORKERS,
                f"expected 1 .. {MAX_WORKERS} worker processes, got {workers}")
    iface.check("workers", workers == 1 or len(f"{tun_name}-{workers - 1}") <= IFNAMSIZ,
                f"each worker gets a TUN named {tun_name}-1 .. {tun_name}-{workers - 1}: "
                f"the name must leave room for that within {IFNAMSIZ} characters")
    iface.finish()

    peers = tuple(
        _parse_peer(Table(path, name, raw, read_file, source), several=len(raw_peers) > 1)
        for name, raw in zip(peer_names, raw_peers, strict=True)
    )
    keys = [peer.public_key for peer in peers]
    if len(set(keys)) != len(keys):
        raise top.error("peer", "two peers have the same public_key")

    if workers > 1:
        for name, peer in zip(peer_names, peers, strict=True):
            if any(net.prefixlen == 0 for net in peer.allowed_ips):
                raise ConfigError(
                    f"{path}: {name}: allowed_ips: with workers > 1 every peer needs "
                    "allowed_ips narrower than 0.0.0.0/0 and ::/0 (each worker's TUN gets "
                    "routes to its own peers' addresses)")
    if role is Role.CLIENT and not raw_links:
        raise top.error("link", "a client needs at least one [[link]] with a remote")
    if len(raw_links) > MAX_LINKS:
        raise top.error("link", f"at most {MAX_LINKS} links, got {len(raw_links)}")
    links = tuple(
        _parse_link(Table(path, f"link[{i}]", raw), role, listen_port, interface_exists)
        for i, raw in enumerate(raw_links)
    )
    names = [link.name for link in links]
    if len(set(names)) != len(names):
        raise top.error("link", f"link names must be unique, got {names}")
    if link_routes:
        for i, link in enumerate(links):
            if link.source is None and link.interface is None:
                raise ConfigError(f"{path}: link[{i}]: link_routes needs the link's source or "
                                  "interface (which socket the link's rule selects)")
    config = Config(path, role, tun_name, tuple(addresses), mtu, private_key, peers,
                    scheduler, hold, listen_port, links, Path(control_text), user or None,
                    metrics, route_all, link_routes, masquerade, offload, pmtu_probe,
                    duplicate_below, tuple(sorted(set(dscp))), queue_target or None,
                    workers, loss_repair=loss_repair)
    tables = [config.link_table(i) for i in range(len(links))]
    if (route_all or link_routes) and len(set(tables)) != len(tables):
        raise top.error("link", f"two links use the same routing table: {tables}")
    return config


def _parse_metrics(iface: Table) -> tuple[str, int] | None:
    text = iface.get("metrics", str, None, what='"HOST:PORT" such as "127.0.0.1:9586"')
    if text is None:
        return None
    try:
        return _parse_host_port(text)
    except (ValueError, OSError):
        raise iface.error("metrics", 'expected "HOST:PORT" to serve Prometheus metrics on, '
                                     f'such as "127.0.0.1:9586", got {text!r}') from None


def _parse_masquerade(iface: Table, role: Role,
                      interface_exists: Callable[[str], bool]) -> tuple[str, ...]:
    what = 'an interface name or a list of them, like "eth0"'
    raw = iface.get("masquerade", object, [], what=what)
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise iface.error("masquerade", f"expected {what}, got {kind_of(raw)}")
    iface.check("masquerade", role is Role.SERVER or not names,
                "NAT of the clients' traffic is a server option; remove it from the client")
    for name in names:
        iface.check("masquerade", interface_exists(name),
                    f"interface {name!r} does not exist on this host")
    return tuple(names)


def _parse_mtu(iface: Table, ipv6_inside: bool) -> int | None:
    """An integer MTU, or None for "auto"."""
    floor = MIN_MTU_IPV6 if ipv6_inside else MIN_MTU_IPV4
    what = f'expected "{AUTO_MTU}" or an MTU {floor}..{MAX_MTU}'
    value = iface.get("mtu", object, AUTO_MTU)
    if value == AUTO_MTU:
        return None
    if type(value) is not int:
        raise iface.error("mtu", f"{what}, got {value!r}")
    if not floor <= value <= MAX_MTU:
        why = " (IPv6 in the tunnel needs 1280)" if ipv6_inside and value < floor else ""
        raise iface.error("mtu", f"{what}{why}, got {value}")
    return value


def _parse_peer(r: Table, several: bool) -> PeerSpec:
    public_key = key_from(r, "public_key", "public_key_file", True, secret=False)
    assert public_key is not None
    psk = key_from(r, "preshared_key", "preshared_key_file", False)
    what = 'a list of networks like ["10.2.0.1/32", "fd00::1/128"]'
    raw = r.get("allowed_ips", list, None if not several else ..., what=what)
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = DEFAULT_ALLOWED_IPS
    if raw is not None:
        nets = []
        for text in raw:
            try:
                if not isinstance(text, str):
                    raise ValueError
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise r.error("allowed_ips", f"expected {what}, got {text!r}") from None
        allowed = tuple(nets)
    r.finish()
    return PeerSpec(public_key, psk, allowed)


def _optional_address(r: Table, key: str, what: str) -> str | None:
    text: str | None = r.get(key, str, None, what=what)
    if text is not None:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise r.error(key, f"expected an IP address, got {text!r}") from None
    return text


def _parse_link(r: Table, role: Role, listen_port: int | None,
                interface_exists: Callable[[str], bool]) -> LinkConfig:
    name = r.get("name", str, what="a short link name like \"dsl\"")
    r.check("name", 0 < len(name.encode()) <= 32, "expected 1-32 bytes")
    interface = r.get("interface", str, None, what="a network interface name")
    if interface is not None and not interface_exists(interface):
        raise r.error("interface", f"interface {interface!r} does not exist on this host")
    source = _optional_address(r, "source", "a local IP address")
    remote = None
    remote_text = r.get("remote", str, None if role is Role.SERVER else ...,
                        what='"HOST:PORT" such as "10.0.0.2:5000"')
    if remote_text is not None:
        try:
            remote = _parse_host_port(remote_text)
        except (ValueError, OSError):
            raise r.error("remote", 'expected "HOST:PORT" such as "10.0.0.2:5000", '
                                    f"got {remote_text!r}") from None
    default_port = listen_port if role is Role.SERVER else 0
    port = r.get("port", int, default_port, what="a UDP port number")
    r.check("port", port is not None and 0 <= port < 65536, f"expected 0..65535, got {port}")
    weight = r.get("weight", int, 1)
    r.check("weight", 1 <= weight <= 1000, f"expected 1..1000, got {weight}")
    backup = r.get("backup", bool, False)
    gateway = _optional_address(r, "gateway", "the uplink's gateway address")
    table = r.get("table", int, None, what="a routing table number")
    r.check("table", table is None or (0 < table <= MAX_TABLE and table not in RESERVED_TABLES),
            f"expected a table number 1..{MAX_TABLE} other than 253-255, got {table}")
    for key in ("gateway", "table"):
        r.check(key, role is Role.CLIENT or key not in r.table,
                "routing automation is a client option; remove it from the server config")
    r.finish()
    assert port is not None
    return LinkConfig(name, interface, source, remote, port, weight, backup, gateway, table)
