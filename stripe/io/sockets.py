"""One UDP socket per link, bound to its interface and/or source address.

No SO_REUSEADDR on them: with it, any local user could bind the same port
on a more specific address (with SO_REUSEADDR too) and receive the
datagrams meant for stripe.  A reload that replaces a socket by one on the
same port (a server going from its wildcard socket to per-link ones, or
back) needs the new one bound while the old one is still open: for that
moment only, both have SO_REUSEADDR, which is cleared again right after the
bind (`open_link_sockets(..., replacing=...)`).  The kernel checks the flag
only when a socket binds, so the port is never free, and shareable only for
the few system calls of a reload.

Also the UDP offloads: GSO (`UDP_SEGMENT`: one sendmsg carries up to 64
equal-sized datagrams, the kernel or NIC cuts them) and GRO (`UDP_GRO`: one
recvmsg returns a train of datagrams from one sender glued together, the
segment size in a control message).  Each datagram on the wire is still a
normal UDP datagram: a receiver without GRO sees no difference.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from ..config import Config, LinkConfig
from ..spec import Role
from .tun import SetupError

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# <linux/udp.h>
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
# The kernel takes at most UDP_MAX_SEGMENTS (64 before 6.x, 128 after) per
# send and 64 KB of payload; stay under both.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000


def enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


def gso_supported(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        return True
    except OSError:
        return False

# <linux/in.h>, <linux/in6.h> (not in Python's socket module): "probe" sets
# DF and ignores both the kernel's fragmentation and the path MTU it learnt
# from ICMP, so stripe's own probing (stripe.pmtu) sees the real path and
# no datagram is cut in pieces behind its back.
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
PMTUDISC_PROBE = 3


def _family(*hosts: str | None) -> socket.AddressFamily:
    for host in hosts:
        if host is not None and ipaddress.ip_address(host).version == 6:
            return socket.AF_INET6
    return socket.AF_INET


def open_link_socket(link: LinkConfig, probe_pmtu: bool = False,
                     share: bool = False, reuse_port: bool = False) -> socket.socket:
    """`share`: bind with SO_REUSEADDR (the caller clears it right after,
    see the module doc).  `reuse_port`: one of a server's worker sockets
    (see `reuseport`), which the supervisor opens all at once."""
    remote_host = link.remote[0] if link.remote else None
    family = _family(link.source, remote_host)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if link.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.interface.encode())
        if probe_pmtu:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_PROBE)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_PROBE)
        host = link.source or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        sock.bind((host, link.port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"{link.source or '*'}:{link.port}" + (f" on {link.interface}" if link.interface
                                                          else "")
        raise SetupError(f"link {link.name}: cannot bind UDP socket to {where}: "
                         f"{exc.strerror or exc}") from None
    return sock


def listen_links(config: Config) -> list[LinkConfig]:
    """Server: the sockets to listen on, one per configured link, or one
    wildcard socket on listen_port when no links are configured."""
    if config.links:
        return list(config.links)
    assert config.listen_port is not None
    return [LinkConfig("any", None, None, None, config.listen_port, 1, False)]


def open_sockets(config: Config) -> dict[int, socket.socket]:
    """By socket id.  Client: socket i serves link i (link ids of the spec
    the config makes).  Server: socket i listens for `listen_links` [i]."""
    links = config.links if config.role is Role.CLIENT else listen_links(config)
    return open_link_sockets(dict(enumerate(links)), config.pmtu_probe)


def open_link_sockets(links: dict[int, LinkConfig], probe_pmtu: bool,
                      replacing: Iterable[socket.socket] = ()) -> dict[int, socket.socket]:
    """All of them or none (SetupError naming the link that failed).
    `replacing`: open sockets the caller closes once these are open (a
    reload); a new socket may bind the port of one of them meanwhile."""
    old = [sock for sock in replacing if sock.fileno() != -1]
    sockets: dict[int, socket.socket] = {}
    try:
        _set_reuse(old, True)
        for sock_id, link in links.items():
            sockets[sock_id] = open_link_socket(link, probe_pmtu, share=bool(old))
    except SetupError:
        for sock in sockets.values():
            sock.close()
        raise
    finally:
        _set_reuse([*old, *sockets.values()], False)
    return sockets


def _set_reuse(sockets: Iterable[socket.socket], on: bool) -> None:
    for sock in sockets:
        if sock.fileno() != -1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(on))
