"""TUN offload, write side: merge runs of TCP segments into GSO super-packets.

In-order TCP segments of one flow that Linux GRO would merge become one GSO
super-packet, so the receiving kernel walks its stack once per ~64 KB instead
of once per MSS.  Everything else goes out alone, with NEEDS_CSUM when its
checksum is partial and a zero header (`PLAIN_VNET_HDR`) otherwise.  Pure
functions, bytes in and bytes out; the virtio-net header, the checksum
arithmetic and the read side are in `stripe.offload`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from .offload import (
    IPPROTO_TCP,
    IPV4_DF,
    MAX_IP_PACKET,
    PLAIN_VNET_HDR,
    TCP_ACK,
    TCP_CSUM_OFFSET,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    checksum_field,
    ones_sum,
    partial_csum_at,
    partial_field,
    partial_vnet_hdr,
    reduce_ones,
)

# Which segments merge (what Linux GRO, tcp_gro_receive and inet_gro_receive,
# accepts; wireguard-go's tcpGRO is a subset of it):
#   - same addresses, ports, ACK number, window, data offset, TCP options bytes,
#     ECE; IPv4 without options, same TOS, TTL and DF, not a fragment, ids
#     consecutive (or, with DF, all equal: RFC 6864 makes them meaningless);
#     IPv6 without extension headers, same traffic class, flow label, hop limit;
#   - ACK set; no SYN, RST or URG; CWR only on the first (-> gso_type | ECN);
#     PSH or FIN only on the last;
#   - contiguous sequence numbers, every payload the first one's size except
#     a shorter last one, at most 65535 bytes of IP packet in all.
# Runs are kept per flow (addresses + ports): a packet of that flow that cannot
# join the open run closes it, so each flow's packets come out in their order;
# across flows the output follows the first packet of each run.
#
# Checksums are verified before merging, as Linux GRO and wireguard-go do.
# The merged packet goes to the kernel with NEEDS_CSUM (CHECKSUM_PARTIAL):
# delivered locally it counts as verified, forwarded it gets a fresh checksum.
# Merging a segment whose checksum was wrong would launder it.  AEAD only
# proves the peer sent these bytes; a segment corrupted before it reached the
# peer's TUN (a LAN hop, a NIC, a forwarding host that does not verify L4
# checksums) still carries its bad checksum, and end-to-end TCP must see it.
# A segment that fails goes out alone, unmerged, and the kernel drops it
# (counted in TcpInCsumErrors) exactly as it would without the tunnel.
# The check is done once per run: the packets' integer values are added up
# (each bad byte would have to be cancelled by another bad byte to slip
# through), and only a failing run is checked packet by packet.

_V4_TCP: Final = struct.Struct("!xBHHHB3x12sIIBBH")  # IPv4 (no options) + TCP, 40 bytes
_V6_TCP: Final = struct.Struct("!IHxB36sIIBBH")  # IPv6 + TCP, 60 bytes
# ACK set, no SYN, RST or URG: (flags & _FLAGS_CHECKED) == TCP_ACK.
_FLAGS_CHECKED: Final = TCP_ACK | TCP_SYN | TCP_RST | TCP_URG
_RUN_ENDERS: Final = TCP_PSH | TCP_FIN


class _Run:
    """One flow's run of mergeable segments, in order.

    `words` is the sum of the packets read as little-endian integers (see
    `ones_sum`); `_run_checksums_ok` adds what the pseudo-headers contribute.
    `total` is the merged IP packet's length.  IPv4 ids: `next_id` is the id
    the next segment must carry, `id_step` 1 (incrementing) or 0 (fixed, DF;
    chosen by the second segment)."""

    __slots__ = ("id_step", "ip_len", "mss", "next_id", "next_seq", "packets", "signature",
                 "tcp_len", "total", "version", "words")

    def __init__(self, packet: bytes, version: int, signature: tuple[object, ...], seq: int,
                 payload: int, tcp_len: int, ip_id: int, words: int) -> None:
        self.packets = [packet]
        self.version = version
        self.signature = signature
        self.ip_len = 20 if version == 4 else 40
        self.tcp_len = tcp_len
        self.mss = payload
        self.next_seq = (seq + payload) & 0xFFFFFFFF
        self.total = len(packet)
        self.id_step = 1 if version == 4 else 0  # IPv6 has no id: 0 always "follows"
        self.next_id = (ip_id + self.id_step) & 0xFFFF
        self.words = words


def coalesce(packets: Sequence[bytes], verify: bool = True) -> list[bytes]:
    """In-order IP packets about to be written to a vnet-hdr TUN -> buffers
    ready for os.write, each = virtio header + packet.

    Consecutive TCP segments of one flow that Linux GRO would merge become one
    GSO super-packet (gso_type TCPV4/TCPV6, NEEDS_CSUM with the pseudo-header
    sum in the TCP checksum field, gso_size = the segments' payload size, the
    last segment's PSH/FIN kept).  Flows may be interleaved: order within a
    flow is kept, order across flows may change.  Everything else (UDP, ICMP,
    TCP that cannot merge, a lone segment, bytes that do not parse) goes out
    alone: with NEEDS_CSUM if its TCP/UDP checksum is partial (see
    `partial_csum_at`), else with PLAIN_VNET_HDR.  Never raises on any list
    of bytes.

    `verify=False` skips the checksum check before merging (~0.65 us a
    packet).  Only for packets whose integrity is guaranteed otherwise: the
    tunnel's AEAD tag covers every byte from the sender's `split_tun_read`
    (or its kernel) to here, so a checksum could only be wrong if the
    authenticated peer made it so, and such a peer can send any content
    with a right checksum just as well.
    """
    slots: list[bytes | _Run] = []
    runs: dict[bytes, _Run] = {}
    v4_unpack = _V4_TCP.unpack_from
    v6_unpack = _V6_TCP.unpack_from
    from_bytes = int.from_bytes
    for packet in packets:
        n = len(packet)
        if n > 40 and packet[0] == 0x45 and packet[9] == IPPROTO_TCP:
            (tos, total, ip_id, frag, ttl, key, seq, ack, offset, flags,
             window) = v4_unpack(packet)
            tcp_len = (offset >> 4) * 4
            payload = n - 20 - tcp_len
            if (total != n or frag & ~IPV4_DF or offset < 0x50 or payload <= 0
                    or flags & _FLAGS_CHECKED != TCP_ACK):
                runs.pop(key, None)  # keeps this flow's order: nothing merges across it
                slots.append(packet)
                continue
            signature: tuple[object, ...] = (tos, frag, ttl, ack, offset, window,
                                             flags & TCP_ECE, packet[40:20 + tcp_len])
        elif n > 60 and packet[0] >> 4 == 6 and packet[6] == IPPROTO_TCP:
            vtf, plen, hop, key, seq, ack, offset, flags, window = v6_unpack(packet)
            tcp_len = (offset >> 4) * 4
            payload = n - 40 - tcp_len
            ip_id = frag = 0
            if (plen + 40 != n or offset < 0x50 or payload <= 0
                    or flags & _FLAGS_CHECKED != TCP_ACK):
                runs.pop(key, None)
                slots.append(packet)
                continue
            signature = (vtf, hop, ack, offset, window, flags & TCP_ECE, packet[60:40 + tcp_len])
        else:
            flow = _tcp_flow_key(packet)
            if flow is not None:
                runs.pop(flow, None)
            slots.append(packet)
            continue

        run = runs.get(key)
        if run is not None:
            if (run.signature == signature and seq == run.next_seq and payload <= run.mss
                    and not flags & TCP_CWR and run.total + payload <= MAX_IP_PACKET
                    and (ip_id == run.next_id or _fixed_ids(run, ip_id, frag))):
                run.packets.append(packet)
                run.next_seq = (seq + payload) & 0xFFFFFFFF
                run.next_id = (ip_id + run.id_step) & 0xFFFF
                run.total += payload
                if verify:
                    run.words += from_bytes(packet, "little")
                if payload < run.mss or flags & _RUN_ENDERS:
                    del runs[key]  # nothing may follow a short or PSH/FIN segment
                continue
            del runs[key]
        run = _Run(packet, 4 if packet[0] == 0x45 else 6, signature, seq, payload, tcp_len,
                   ip_id, from_bytes(packet, "little") if verify else -1)
        slots.append(run)
        if not flags & _RUN_ENDERS:
            runs[key] = run

    out: list[bytes] = []
    for slot in slots:
        if isinstance(slot, _Run):
            _emit_run(slot, out)
        else:
            out.append(partial_vnet_hdr(slot) + slot)
    return out


def _tcp_flow_key(packet: bytes) -> bytes | None:
    """Addresses + ports of what looks like a TCP packet, keyed as runs are."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4 and packet[9] == IPPROTO_TCP:
        ip_len = (packet[0] & 0x0F) * 4
        return packet[12:20] + packet[ip_len:ip_len + 4]
    if n >= 44 and packet[0] >> 4 == 6 and packet[6] == IPPROTO_TCP:
        return packet[8:44]
    return None


def _fixed_ids(run: _Run, ip_id: int, frag: int) -> bool:
    """IPv4 ids that do not increment may still merge: all equal, with DF."""
    if len(run.packets) == 1 and frag & IPV4_DF and ip_id == (run.next_id - 1) & 0xFFFF:
        run.id_step = 0
        return True
    return False


def _emit_run(run: _Run, out: list[bytes]) -> None:
    packets = run.packets
    if len(packets) == 1:
        out.append(partial_vnet_hdr(packets[0]) + packets[0])
    elif run.words < 0 or _run_checksums_ok(run):  # words < 0: not verified, by request
        out.append(_merge(run, packets, run.total))
    else:  # some segment is bad: merge the good stretches, send the bad ones alone
        good: list[bytes] = []
        for packet in packets:
            if _packet_checksums_ok(packet, run.version):
                good.append(packet)
            else:
                _emit_stretch(run, good, out)
                good = []
                out.append(PLAIN_VNET_HDR + packet)
        _emit_stretch(run, good, out)


def _emit_stretch(run: _Run, packets: list[bytes], out: list[bytes]) -> None:
    if len(packets) == 1:
        out.append(partial_vnet_hdr(packets[0]) + packets[0])
    elif packets:
        hl = run.ip_len + run.tcp_len
        out.append(_merge(run, packets, sum(map(len, packets)) - hl * (len(packets) - 1)))


def _run_checksums_ok(run: _Run) -> bool:
    head = run.packets[0]
    count = len(run.packets)
    if run.version == 4:
        # Each packet's words: IPv4 header (0 when right) + TCP; the pseudo-
        # header adds the addresses, the protocol and the TCP length.
        lengths = run.total + (count - 1) * (20 + run.tcp_len)
        pseudo = lengths + count * (ones_sum(head[12:20]) + IPPROTO_TCP - 20)
    else:
        # Each packet's words include the first 8 IPv6 header bytes, which are
        # not in the pseudo-header (the payload length is: it is the TCP length).
        vtf = int.from_bytes(head[:4], "big")
        pseudo = count * (IPPROTO_TCP - (vtf >> 16) - (vtf & 0xFFFF) - (IPPROTO_TCP << 8 | head[7]))
    return (reduce_ones(run.words) * 256 + pseudo) % 0xFFFF == 0


def _packet_checksums_ok(packet: bytes, version: int) -> bool:
    """The IPv4 header checksum, and the TCP checksum complete and right or
    partial (the kernel completes that one: see `partial_csum_at`)."""
    if version == 4:
        if ones_sum(packet[:20]) != 0:
            return False
        if partial_csum_at(packet) is not None:
            return True
        pseudo = ones_sum(packet[12:20]) + IPPROTO_TCP + len(packet) - 20
        return (ones_sum(packet[20:]) + pseudo) % 0xFFFF == 0
    if partial_csum_at(packet) is not None:
        return True
    pseudo = ones_sum(packet[8:40]) + IPPROTO_TCP + len(packet) - 40
    return (ones_sum(packet[40:]) + pseudo) % 0xFFFF == 0


def _merge(run: _Run, packets: list[bytes], total: int) -> bytes:
    """One GSO super-packet of `total` IP bytes, virtio header first, from
    in-order `packets`."""
    head = packets[0]
    a = run.ip_len
    hl = a + run.tcp_len
    tcp_total = total - a
    header = bytearray(head[:hl])
    if run.version == 4:
        header[2:4] = total.to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = checksum_field(ones_sum(bytes(header[:20]))).to_bytes(2, "big")
        pseudo = ones_sum(head[12:20]) + IPPROTO_TCP + tcp_total
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        header[4:6] = tcp_total.to_bytes(2, "big")
        pseudo = ones_sum(head[8:40]) + IPPROTO_TCP + tcp_total
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    header[a + 13] |= packets[-1][a + 13] & _RUN_ENDERS
    if header[a + 13] & TCP_CWR:
        gso_type |= VIRTIO_NET_HDR_GSO_ECN
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented;
    # the kernel adds the segment's words and stores the complement.
    header[a + 16:a + 18] = partial_field(pseudo).to_bytes(2, "big")
    vnet = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hl, len(head) - hl, a,
                         TCP_CSUM_OFFSET)
    parts = [p[hl:] for p in packets]
    parts[0] = vnet + header + parts[0]
    return b"".join(parts)
