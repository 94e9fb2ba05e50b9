"""Where a UDP test's loss happened on the receiving side.

On this 2-core machine iperf3's own receiving socket overflows at a few
hundred Mbit/s (a plain veth loses 1-8 % at 600 Mbit/s, all of it counted as
``RcvbufErrors``): that loss is the measurement's, not the link's or the
tunnel's. So each run reads, in the server namespace, the namespace's UDP
``RcvbufErrors`` and each open UDP socket's ``drops`` before and after the
flow. Sockets open at both reads are the tunnel's own link sockets (the
test's iperf3 socket lives only during the test); the rest of the
namespace's overflows are iperf3's.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.lab.sh import run


@dataclass(frozen=True)
class UdpDrops:
    rcvbuf_errors: int  # the namespace's Udp RcvbufErrors (/proc/net/snmp)
    socket_drops: dict[int, int]  # open UDP sockets: inode -> drops (/proc/net/udp)


def parse_snmp_rcvbuf_errors(snmp: str) -> int:
    """``RcvbufErrors`` from the two ``Udp:`` lines (names, values) of /proc/net/snmp."""
    rows = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2 or "RcvbufErrors" not in rows[0]:
        raise ValueError("no Udp RcvbufErrors in /proc/net/snmp")
    return int(rows[1][rows[0].index("RcvbufErrors")])


def parse_socket_drops(tables: str) -> dict[int, int]:
    """inode -> drops for each socket row of /proc/net/udp and udp6 (concatenated).

    Header lines name the columns; in rows "tx_queue rx_queue" and "tm->when"
    are single fields, so a row's inode and drops are counted from its end.
    """
    out: dict[int, int] = {}
    for line in tables.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "sl":
            continue
        inode, drops = fields[-4], fields[-1]
        if inode.isdigit() and drops.isdigit():
            out[int(inode)] = out.get(int(inode), 0) + int(drops)
    return out


def read(ns: str) -> UdpDrops:
    snmp = run(["cat", "/proc/net/snmp"], ns=ns).stdout
    tables = run(["cat", "/proc/net/udp", "/proc/net/udp6"], ns=ns).stdout
    return UdpDrops(parse_snmp_rcvbuf_errors(snmp), parse_socket_drops(tables))


def between(before: UdpDrops, after: UdpDrops) -> dict[str, int]:
    """Receive-buffer drops during the flow: all, and at sockets open throughout."""
    steady = sum(
        max(0, after.socket_drops[inode] - drops)
        for inode, drops in before.socket_drops.items()
        if inode in after.socket_drops
    )
    return {"all": after.rcvbuf_errors - before.rcvbuf_errors, "tunnel_sockets": steady}
