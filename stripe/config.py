"""Read and validate a stripe TOML config file.

Every problem becomes one `ConfigError` line that names the file, the key
and what is expected, e.g.::

    b.toml: link[1].remote: expected "HOST:PORT" such as "10.0.0.2:5000", got "10.0.0.2"

The CLI prints it and exits 2.  This module also checks the bits of the
system a config refers to (key files, link interfaces), since "interface
veth9 does not exist" is a config error to the user.
"""

from __future__ import annotations

import base64
import binascii
import errno
import ipaddress
import os
import pwd
import socket
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .aqm import DEFAULT_TARGET_S
from .endpoint import EndpointSpec, LinkSpec, PeerSpec, Role
from .pmtu import MAX_MTU, MIN_MTU_IPV4, MIN_MTU_IPV6
from .scheduler import SCHEDULERS
from .wire import MAX_LINKS

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

    def endpoint_spec(self, tunnel_mtu: int | None = None) -> EndpointSpec:
        """`tunnel_mtu`: the TUN's MTU as set up (needed when `mtu` is auto)."""
        links = tuple(
            LinkSpec(i, link.name, link.weight, link.backup, link.remote, link.binding)
            for i, link in enumerate(self.links)
        ) if self.role is Role.CLIENT else ()
        hold = None if self.reorder_hold_ms is None else self.reorder_hold_ms / 1000
        return EndpointSpec(
            self.role, self.private_key,
            self.peers,
            links, self.scheduler, hold,
            tunnel_mtu=tunnel_mtu if tunnel_mtu is not None else self.mtu,
            pmtu_probe=self.pmtu_probe,
            duplicate_below=self.duplicate_below,
            duplicate_dscp=frozenset(self.duplicate_dscp),
            queue_target_s=None if self.queue_target_ms is None else self.queue_target_ms / 1000,
        )


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
    "pmtu_probe": "interface.pmtu_probe",
}
LIVE_FIELDS = frozenset({"path", "peers", "scheduler", "reorder_hold_ms", "links",
                         "duplicate_below", "duplicate_dscp", "queue_target_ms"})
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
    return None


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


def decode_key(text: str) -> bytes:
    """A base64 32-byte key, as `stripe genkey` prints it.  ValueError if not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes, a key has 32")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# Reads one file: (st_mode, content), OSError if it cannot.  Injected so a
# process that dropped root can be handed files root read for it (reload).
ReadFile = Callable[[Path], tuple[int, bytes]]


def read_local_file(path: Path) -> tuple[int, bytes]:
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_mode, f.read()


def recording_reader(into: dict[str, Any]) -> ReadFile:
    """Reads like read_local_file and keeps a JSON-able copy of every file in
    `into`, for `shipped_reader` at the other end of the control socket."""

    def read(path: Path) -> tuple[int, bytes]:
        mode, data = read_local_file(path)
        into[str(path)] = {"mode": mode, "data": base64.b64encode(data).decode()}
        return mode, data

    return read


def shipped_reader(files: object) -> ReadFile:
    """Serves the files `recording_reader` kept; a file that is absent or
    malformed in `files` reads as missing (an OSError, so a config error)."""

    def read(path: Path) -> tuple[int, bytes]:
        entry = files.get(str(path)) if isinstance(files, dict) else None
        if isinstance(entry, dict):
            mode, data = entry.get("mode"), entry.get("data")
            if type(mode) is int and isinstance(data, str):
                try:
                    return mode, base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    pass
        raise FileNotFoundError(errno.ENOENT, "not among the files sent with the request")

    return read


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, path: str, where: str, table: Any,
                 read_file: ReadFile = read_local_file) -> None:
        self.path, self.where, self.read_file = path, where, read_file
        if not isinstance(table, dict):
            raise self.error("", f"expected a table, got {_kind(table)}")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        name = f"{self.where}.{key}" if self.where and key else (self.where or key)
        return ConfigError(f"{self.path}: {name}: {message}")

    def get(self, key: str, kind: type, default: Any = ..., *, what: str = "") -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.error(key, f"missing; expected {what or kind.__name__}")
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.error(key, f"expected {what or kind.__name__}, got {_kind(value)}")
        return value

    def check(self, key: str, ok: bool, message: str) -> None:
        if not ok:
            raise self.error(key, message)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key (known keys here: {known})")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _key_from(reader: _Reader, inline: str, file_key: str, required: bool) -> bytes | None:
    text = reader.get(inline, str, None, what="a base64 key (see `stripe genkey`)")
    file_name = reader.get(file_key, str, None, what="a file path")
    if text is not None and file_name is not None:
        raise reader.error(inline, f"give either {inline} or {file_key}, not both")
    key = inline
    if file_name is not None:
        key = file_key
        path = Path(reader.path).parent / file_name
        try:
            mode, raw = reader.read_file(path)
            text = raw.decode(errors="replace")  # not base64 either way: reported below
        except OSError as exc:
            raise reader.error(file_key, f"cannot read {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise reader.error(
                file_key, f"{path} is readable by group or others; run: chmod 600 {path}"
            )
    if text is None:
        if required:
            raise reader.error(inline, f"missing; expected {inline} or {file_key}")
        return None
    try:
        return decode_key(text)
    except ValueError as exc:
        raise reader.error(key, f"expected a base64 32-byte key: {exc}") from None


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
        data = tomllib.loads(read_file(Path(name))[1].decode())
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    exists = interface_exists or (lambda ifname: os.path.exists(f"/sys/class/net/{ifname}"))
    return _parse(name, data, role, exists, read_file)


def _parse(path: str, data: dict[str, Any], role: Role,
           interface_exists: Callable[[str], bool], read_file: ReadFile) -> Config:
    top = _Reader(path, "", data)
    iface = _Reader(path, "interface", top.get("interface", dict, what="an [interface] table"),
                    read_file)
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
    private_key = _key_from(iface, "private_key", "private_key_file", True)
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
            user = ""  # the default user is missing (minimal container): keep running as is
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
    iface.finish()

    peers = tuple(
        _parse_peer(_Reader(path, name, raw, read_file), several=len(raw_peers) > 1)
        for name, raw in zip(peer_names, raw_peers, strict=True)
    )
    keys = [peer.public_key for peer in peers]
    if len(set(keys)) != len(keys):
        raise top.error("peer", "two peers have the same public_key")

    if role is Role.CLIENT and not raw_links:
        raise top.error("link", "a client needs at least one [[link]] with a remote")
    if len(raw_links) > MAX_LINKS:
        raise top.error("link", f"at most {MAX_LINKS} links, got {len(raw_links)}")
    links = tuple(
        _parse_link(_Reader(path, f"link[{i}]", raw), role, listen_port, interface_exists)
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
                    duplicate_below, tuple(sorted(set(dscp))), queue_target or None)
    tables = [config.link_table(i) for i in range(len(links))]
    if (route_all or link_routes) and len(set(tables)) != len(tables):
        raise top.error("link", f"two links use the same routing table: {tables}")
    return config


def _parse_metrics(iface: _Reader) -> tuple[str, int] | None:
    text = iface.get("metrics", str, None, what='"HOST:PORT" such as "127.0.0.1:9586"')
    if text is None:
        return None
    try:
        return _parse_host_port(text)
    except (ValueError, OSError):
        raise iface.error("metrics", 'expected "HOST:PORT" to serve Prometheus metrics on, '
                                     f'such as "127.0.0.1:9586", got {text!r}') from None


def _parse_masquerade(iface: _Reader, role: Role,
                      interface_exists: Callable[[str], bool]) -> tuple[str, ...]:
    what = 'an interface name or a list of them, like "eth0"'
    raw = iface.get("masquerade", object, [], what=what)
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise iface.error("masquerade", f"expected {what}, got {_kind(raw)}")
    iface.check("masquerade", role is Role.SERVER or not names,
                "NAT of the clients' traffic is a server option; remove it from the client")
    for name in names:
        iface.check("masquerade", interface_exists(name),
                    f"interface {name!r} does not exist on this host")
    return tuple(names)


def _parse_mtu(iface: _Reader, ipv6_inside: bool) -> int | None:
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


def _parse_peer(r: _Reader, several: bool) -> PeerSpec:
    public_key = _key_from(r, "public_key", "public_key_file", True)
    assert public_key is not None
    psk = _key_from(r, "preshared_key", "preshared_key_file", False)
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


def _optional_address(r: _Reader, key: str, what: str) -> str | None:
    text: str | None = r.get(key, str, None, what=what)
    if text is not None:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise r.error(key, f"expected an IP address, got {text!r}") from None
    return text


def _parse_link(r: _Reader, role: Role, listen_port: int | None,
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
