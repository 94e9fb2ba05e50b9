"""One UDP socket per link, bound to its interface and/or source address."""

from __future__ import annotations

import ipaddress
import socket

from ..config import Config, LinkConfig
from ..endpoint import Role
from .tun import SetupError

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
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


def open_link_socket(link: LinkConfig, probe_pmtu: bool = False) -> socket.socket:
    remote_host = link.remote[0] if link.remote else None
    family = _family(link.source, remote_host)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def open_sockets(config: Config) -> list[socket.socket]:
    """Client: socket i serves link i.  Server: one per configured link, or
    one wildcard socket on listen_port when no links are configured."""
    links = list(config.links)
    if config.role is Role.SERVER and not links:
        assert config.listen_port is not None
        links = [LinkConfig("any", None, None, None, config.listen_port, 1, False)]
    sockets: list[socket.socket] = []
    try:
        for link in links:
            sockets.append(open_link_socket(link, config.pmtu_probe))
    except SetupError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
