"""Drop a blocked source's datagrams in the kernel (a classic BPF socket filter).

`stripe.guard` decides which source addresses only send junk; while one is
blocked, its datagrams still cost a receive syscall and a Python lookup
each, and at a few hundred thousand a second they fill the socket's buffer,
so a real client's datagrams are lost with them.  A socket filter drops
them before they are queued: no buffer, no wake-up, no CPU of ours (the
kernel counts them as the socket's drops: `ss -u -a -m`, /proc/net/udp).

The program (IPv4 sockets; the filter sees the UDP header at offset 0):
handshake messages (first payload byte 1-3) always pass, as the guard
promises; otherwise the IPv4 source is compared with each blocked address.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import struct

from ..wire import MessageType

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SKF_NET_OFF = -0x100000  # loads relative to the IP header
MAX_FILTERED = 200  # a cBPF program holds 4096 instructions; stay small

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_INSN = struct.Struct("=HBBI")
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20
_JGT_K, _JGE_K, _JEQ_K = 0x25, 0x35, 0x15
_RET_K = 0x06
_ACCEPT, _DROP = 0xFFFFFFFF, 0
# The handshake message types, which always pass (see guard): a range.
_HANDSHAKE_FIRST = MessageType.HANDSHAKE_INIT.value
_HANDSHAKE_LAST = MessageType.COOKIE_REPLY.value
assert {t.value for t in (MessageType.HANDSHAKE_INIT, MessageType.HANDSHAKE_RESP,
                          MessageType.COOKIE_REPLY)} == set(range(_HANDSHAKE_FIRST,
                                                                  _HANDSHAKE_LAST + 1))


def program(hosts: list[str]) -> list[tuple[int, int, int, int]]:
    """The filter for these IPv4 source addresses (see the module doc)."""
    n = len(hosts)
    insns = [
        (_LD_B_ABS, 0, 0, 8),  # first UDP payload byte: the stripe message type
        (_JGT_K, 1, 0, _HANDSHAKE_LAST),  # above: not a handshake, check the source
        (_JGE_K, n + 1, 0, _HANDSHAKE_FIRST),  # handshake messages always pass
        (_LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF),  # IPv4 source address
    ]
    for j, host in enumerate(hosts):
        index = 4 + j
        insns.append((_JEQ_K, n + 4 - index, 0, int(ipaddress.IPv4Address(host))))
    insns += [(_RET_K, 0, 0, _ACCEPT), (_RET_K, 0, 0, _DROP)]
    return insns


def apply(sock: socket.socket, hosts: list[str]) -> None:
    """Replace the socket's filter (atomically); no hosts: remove it."""
    if not hosts:
        with contextlib.suppress(OSError):  # ENOENT: no filter attached
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return
    insns = program(hosts[:MAX_FILTERED])
    code = ctypes.create_string_buffer(b"".join(_INSN.pack(*insn) for insn in insns))
    # struct sock_fprog {u16 len; struct sock_filter *filter}: the kernel
    # copies the program during the call, so `code` only has to live until then.
    fprog = struct.pack("=HxxxxxxQ", len(insns), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def ipv4_hosts(hosts: tuple[str, ...]) -> list[str]:
    out = []
    for host in hosts:
        try:
            if ipaddress.ip_address(host).version == 4:
                out.append(host)
        except ValueError:
            continue
    return out
