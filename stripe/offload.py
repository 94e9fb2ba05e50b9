"""TUN offload: split the kernel's super-packets, merge runs back into them.

Pure functions, bytes in and bytes out.  The I/O shell opens the TUN
with IFF_VNET_HDR and TUNSETOFFLOAD (CSUM | TSO4 | TSO6); every read() and
write() then carries a `struct virtio_net_hdr` in front of the IP packet::

    offset size field
     0      1   flags        NEEDS_CSUM: the transport checksum field holds only
                             the pseudo-header sum; the rest is summed over
                             [csum_start, end) and stored at csum_start+csum_offset.
                             DATA_VALID: the kernel already verified the checksum.
     1      1   gso_type     NONE, TCPV4, TCPV6 (| ECN: CWR on the first segment),
                             UDP_L4 (UDP GSO)
     2      2   hdr_len      IP + transport header bytes; on reads the kernel may
                             report the whole linear part, so it is not trusted
     4      2   gso_size     payload bytes per segment (the MSS)
     6      2   csum_start   offset of the transport header
     8      2   csum_offset  offset of its checksum field (TCP 16, UDP 6)

The multi-byte fields are in host byte order: the legacy virtio layout a TUN
uses unless TUNSETVNETLE/TUNSETVNETBE says otherwise.

Read side, `split_tun_read`: one read() may be a TSO super-packet of up to
64 KB.  It is cut into gso_size segments the way the kernel's tcp_gso_segment
and inet_gso_segment do it (seq += gso_size, IPv4 id += 1, FIN/PSH only on the
last segment, CWR only on the first), each with its own full TCP/UDP checksum,
so every inner packet stays independent on the wire: one lost datagram loses
one MSS, never 45 of them.

Write side: `stripe.coalesce` merges in-order TCP segments back into GSO
super-packets and writes everything else alone, with the header
`partial_vnet_hdr` gives it.

Checksums.  The Internet checksum is the ones'-complement sum of 16-bit
words; since 2**16 = 1 (mod 0xFFFF), `int.from_bytes(data, "big") % 0xFFFF`
is that sum up to the 0 / 0xFFFF ambiguity of ones'-complement arithmetic,
computed at C speed.  Dividing a 1400-byte integer by 0xFFFF costs a
hardware division per 30-bit digit, so `ones_sum` first folds the halves
together with shifts and masks (2**(16k) = 1 too) and divides what is left.

Partial checksums (`partial=True`, when the peer said it takes them: see
docs/protocol.md, "offload features").  The inner packets are sealed and
authenticated end to end, so nobody between the two TUNs needs a complete
TCP/UDP checksum: the sender can leave the field as the kernel gave it,
CHECKSUM_PARTIAL (the folded pseudo-header sum, not complemented), and the
receiving kernel completes it or, delivering locally, trusts it.  A packet in
that state is recognised by its bytes alone (`partial_csum_at`): a TCP or UDP
packet (IPv4 not fragmented, IPv6 without extension headers) whose checksum
field is congruent mod 0xFFFF to its pseudo-header sum.  A complete, correct
checksum matches that by chance once in 65,535 packets, and for such a packet
completing it again yields the same checksum, so treating it as partial is
harmless.  Rules that follow:

- `split_tun_read(..., partial=True)` gives every TSO/USO segment the
  pseudo-header sum of its own length instead of a full checksum, and keeps
  a NEEDS_CSUM read as it is when its csum_start/csum_offset are the ones
  `partial_csum_at` finds (anything else is completed here, as before);
- `complete_partial` completes such a packet (for a peer that does not take
  them, or before IPv4 fragmentation, which would hide the transport header);
- `stripe.coalesce` writes any lone packet in that state with NEEDS_CSUM and its
  csum_start/csum_offset, so a packet whose field is not a checksum never
  reaches the kernel without NEEDS_CSUM (merged runs always carry it).

What each function costs per segment is measured by `python -m
bench.offload_cost` (figures in docs/design.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

VNET_HDR: Final = struct.Struct("=BBHHHH")
VNET_HDR_LEN: Final = VNET_HDR.size  # 10: struct virtio_net_hdr without num_buffers

VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1
VIRTIO_NET_HDR_F_DATA_VALID: Final = 2

VIRTIO_NET_HDR_GSO_NONE: Final = 0
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
VIRTIO_NET_HDR_GSO_UDP: Final = 3  # UFO (IPv4 fragmentation offload): removed from Linux
VIRTIO_NET_HDR_GSO_TCPV6: Final = 4
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5
VIRTIO_NET_HDR_GSO_ECN: Final = 0x80

PLAIN_VNET_HDR: Final = bytes(VNET_HDR_LEN)  # no offload, checksum already complete

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
TCP_CSUM_OFFSET: Final = 16
UDP_CSUM_OFFSET: Final = 6
UDP_HEADER_LEN: Final = 8

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
TCP_URG: Final = 0x20
TCP_ECE: Final = 0x40
TCP_CWR: Final = 0x80

IPV4_DF: Final = 0x4000
MAX_IP_PACKET: Final = 0xFFFF  # IPv4 total length is 16 bits; we use the same bound for IPv6


class OffloadError(ValueError):
    """Input that cannot be split: the caller counts a drop under `reason`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse_vnet_hdr(buf: bytes | memoryview) -> VnetHdr:
    return VnetHdr(*_unpack_vnet(buf))


def pack_vnet_hdr(hdr: VnetHdr) -> bytes:
    return VNET_HDR.pack(hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size,
                         hdr.csum_start, hdr.csum_offset)


# -- checksum arithmetic ------------------------------------------------------

# Fold plans by bit-length class c (x < 2**(2**c)): fold at 2**(c-1) bits, then
# 2**(c-2), ... while the split stays >= _FOLD_STOP_BITS; then one division.
# Splits are powers of two >= 16, hence multiples of 16 bits.  Plans cover
# integers under 2**20 bits (128 KB): any IP packet, any run of them; larger
# ones (only a malformed NEEDS_CSUM read could be) take the plain division.
_FOLD_STOP_BITS: Final = 1024
_FOLD_PLANS: Final = tuple(
    tuple((1 << k, (1 << (1 << k)) - 1) for k in range(c - 1, -1, -1)
          if (1 << k) >= _FOLD_STOP_BITS)
    for c in range(21)
)


def ones_sum(data: bytes) -> int:
    """Sum of `data` as big-endian 16-bit words (odd length: zero-padded at the
    end, as the checksum defines), reduced mod 0xFFFF.

    Read little-endian, which is ~10 % faster and pads an odd length for
    free; swapping the bytes of every word multiplies the sum by 256 (mod
    0xFFFF), and 256 * 256 = 1, so one more multiplication by 256 undoes it."""
    return reduce_ones(int.from_bytes(data, "little")) * 256 % 0xFFFF


def reduce_ones(x: int) -> int:
    """`x` mod 0xFFFF for a non-negative integer of any size."""
    c = x.bit_length().bit_length()
    if c < len(_FOLD_PLANS):
        for shift, mask in _FOLD_PLANS[c]:
            x = (x >> shift) + (x & mask)
    return x % 0xFFFF


def checksum_field(total: int) -> int:
    """The value to store so that the words, checksum included, sum to 0xFFFF.

    `total` is the sum mod 0xFFFF of everything else; its complement is
    0xFFFF - total, and 0 when total is 0 (the true sum is then 0xFFFF:
    never 0 here, the pseudo-header's protocol word is not zero)."""
    return (-total) % 0xFFFF


def partial_field(total: int) -> int:
    """The pseudo-header sum `total` (positive) as CHECKSUM_PARTIAL stores
    it: folded as the kernel folds it, to 1..0xFFFF (a sum congruent to 0
    is 0xFFFF, never 0; the kernel's final sum is the same either way, a
    packet compared byte for byte is not)."""
    return (total - 1) % 0xFFFF + 1


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`, as stored in a header."""
    if not any(data):
        return 0xFFFF  # the one case where the ones'-complement sum is 0, not 0xFFFF
    return checksum_field(ones_sum(data))


def _mangle_udp(csum: int) -> int:
    # UDP: a computed 0 is sent as 0xFFFF (0 means "no checksum").  TCP keeps
    # its 0: both spell ones'-complement zero, but the full split writes 0 and
    # a completed partial segment must be the same bytes (coalescing compares
    # them, and so do the tests).
    return csum or 0xFFFF


# -- partial checksums ---------------------------------------------------------

def partial_csum_at(packet: bytes) -> tuple[int, int] | None:
    """(csum_start, csum_offset) if `packet` is a TCP or UDP packet whose
    checksum field holds its pseudo-header sum (CHECKSUM_PARTIAL, see the
    module docstring), else None.  Never raises."""
    n = len(packet)
    if n < 28:
        return None
    version = packet[0] >> 4
    if version == 4:
        start = (packet[0] & 0x0F) * 4
        if start < 20 or packet[6] & 0x3F or packet[7]:  # a fragment: no transport header
            return None
        proto = packet[9]
        # The addresses as one integer: 2**16 = 1 (mod 0xFFFF), so it is
        # congruent to the sum of their 16-bit words.
        words = int.from_bytes(packet[12:20], "big")
    elif version == 6 and n >= 48:
        start, proto = 40, packet[6]
        words = int.from_bytes(packet[8:40], "big")
    else:
        return None
    if proto == IPPROTO_TCP:
        if n < start + 20:
            return None
        at = start + TCP_CSUM_OFFSET
    elif proto == IPPROTO_UDP:
        if n < start + UDP_HEADER_LEN:
            return None
        at = start + UDP_CSUM_OFFSET
    else:
        return None
    if ((packet[at] << 8 | packet[at + 1]) - words - proto - n + start) % 0xFFFF:
        return None
    return start, at - start


def complete_partial(packet: bytes) -> bytes:
    """`packet` with a complete transport checksum if it was partial (see
    `partial_csum_at`); any other packet as it is."""
    at = partial_csum_at(packet)
    if at is None:
        return packet
    return _complete_checksum(packet, *at)


_partial_hdrs: dict[tuple[int, int], bytes] = {}


def partial_vnet_hdr(packet: bytes) -> bytes:
    """The virtio-net header to write `packet` alone with: NEEDS_CSUM and its
    csum_start/csum_offset if its checksum is partial, else PLAIN_VNET_HDR."""
    at = partial_csum_at(packet)
    if at is None:
        return PLAIN_VNET_HDR
    hdr = _partial_hdrs.get(at)
    if hdr is None:  # at most 11 IPv4 header lengths + IPv6, x TCP / UDP
        start, offset = at
        # hdr_len: the kernel wants at least the checksum field in the linear part.
        hdr = _partial_hdrs[at] = VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, start + offset + 2, 0,
            start, offset)
    return hdr


# -- read side: split -----------------------------------------------------------

def split_tun_read(buf: bytes, partial: bool = False) -> list[bytes]:
    """One read() from a TUN opened with IFF_VNET_HDR (header + packet) ->
    complete, independent IP packets, each with a correct IP header (lengths,
    IPv4 id incremented per segment as the kernel does, IPv4 header checksum)
    and a correct full TCP/UDP checksum; with `partial`, the TCP/UDP
    checksum of segments and of NEEDS_CSUM packets is left partial instead
    (the pseudo-header sum: see the module docstring).

    - gso_type NONE without NEEDS_CSUM: [packet], untouched.
    - gso_type NONE with NEEDS_CSUM: the partial checksum completed.
    - TCPV4 / TCPV6 (possibly | ECN): gso_size segments; per-segment sequence
      numbers; FIN and PSH only on the last, CWR only on the first; options
      copied to every segment.
    - UDP_L4: gso_size datagrams, each with its own UDP length and checksum.
    - anything else, inconsistent lengths, truncated headers, IPv6 extension
      headers: OffloadError.
    """
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _unpack_vnet(buf)
    packet = buf[VNET_HDR_LEN:]
    if not packet:
        raise OffloadError("ip_truncated", "empty packet after the virtio-net header")
    if gso_type == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            # Kept partial only if the receiver will recognise it as such: it
            # reads the state from the bytes (`partial_csum_at`), not from a
            # header, so the bytes must say what this header says.
            if partial and partial_csum_at(packet) == (csum_start, csum_offset):
                return [packet]
            return [_complete_checksum(packet, csum_start, csum_offset)]
        return [packet]
    kind = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if kind in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
        version = 4 if kind == VIRTIO_NET_HDR_GSO_TCPV4 else 6
        ip_len = _ip_header_len(packet, version, IPPROTO_TCP)
        if len(packet) < ip_len + 20:
            raise OffloadError("tcp_truncated", f"{len(packet) - ip_len} bytes after IP")
        _check_csum_fields(flags, csum_start, csum_offset, ip_len, TCP_CSUM_OFFSET)
        return _split_tcp(packet, version, ip_len, _gso_size(gso_size), partial)
    if gso_type == VIRTIO_NET_HDR_GSO_UDP_L4:
        version = packet[0] >> 4
        ip_len = _ip_header_len(packet, version, IPPROTO_UDP)
        if len(packet) < ip_len + UDP_HEADER_LEN:
            raise OffloadError("udp_truncated", f"{len(packet) - ip_len} bytes after IP")
        _check_csum_fields(flags, csum_start, csum_offset, ip_len, UDP_CSUM_OFFSET)
        return _split_udp(packet, version, ip_len, _gso_size(gso_size), partial)
    raise OffloadError("gso_type", f"unsupported gso_type {gso_type:#x}")


def _unpack_vnet(buf: bytes | memoryview) -> tuple[int, int, int, int, int, int]:
    if len(buf) < VNET_HDR_LEN:
        raise OffloadError("vnet_truncated", f"{len(buf)} bytes, header needs {VNET_HDR_LEN}")
    fields: tuple[int, int, int, int, int, int] = VNET_HDR.unpack_from(buf)
    return fields


def _gso_size(gso_size: int) -> int:
    if gso_size == 0:
        raise OffloadError("gso_size", "gso_size 0 in a GSO packet")
    return gso_size


def _check_csum_fields(flags: int, csum_start: int, csum_offset: int, ip_len: int,
                       expected_offset: int) -> None:
    # The segments' checksums are computed from scratch, so these fields are
    # not needed; when present they must still describe this packet.
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (
            csum_start != ip_len or csum_offset != expected_offset):
        raise OffloadError(
            "csum_fields", f"csum_start {csum_start} / csum_offset {csum_offset} do not "
            f"point at the transport checksum (IP header {ip_len} bytes)")


def _ip_header_len(packet: bytes, version: int, protocol: int) -> int:
    """Validate the IP header of a GSO packet; returns its length."""
    n = len(packet)
    if packet[0] >> 4 != version:
        raise OffloadError("ip_version", f"IP version {packet[0] >> 4}, gso_type says {version}")
    if version == 4:
        if n < 20:
            raise OffloadError("ip_truncated", f"{n} bytes, IPv4 header needs 20")
        ip_len = (packet[0] & 0x0F) * 4
        if ip_len < 20 or n < ip_len:
            raise OffloadError("ip_header", f"IPv4 header length {ip_len} in {n} bytes")
        total = (packet[2] << 8) | packet[3]
        if total != n:
            raise OffloadError("ip_length", f"IPv4 total length {total}, packet {n} bytes")
        if packet[6] & 0x3F or packet[7]:
            raise OffloadError("ip_fragment", "a GSO packet cannot be an IPv4 fragment")
        if packet[9] != protocol:
            raise OffloadError("gso_protocol", f"IP protocol {packet[9]}, expected {protocol}")
        return ip_len
    if version == 6:
        if n < 40:
            raise OffloadError("ip_truncated", f"{n} bytes, IPv6 header needs 40")
        payload = (packet[4] << 8) | packet[5]
        if payload + 40 != n:
            raise OffloadError("ip_length", f"IPv6 payload length {payload}, packet {n} bytes")
        if packet[6] != protocol:
            raise OffloadError("ipv6_next_header", f"next header {packet[6]}, expected "
                               f"{protocol} (IPv6 extension headers are not supported)")
        return 40
    raise OffloadError("ip_version", f"IP version {version}")


def _complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """CHECKSUM_PARTIAL -> complete: sum [csum_start, end), which includes the
    pseudo-header sum the kernel left in the field, and store the complement."""
    at = csum_start + csum_offset
    if at + 2 > len(packet):
        raise OffloadError("csum_fields", f"checksum at {at} beyond a {len(packet)}-byte packet")
    csum = checksum_field(ones_sum(packet[csum_start:]))
    if csum_offset == UDP_CSUM_OFFSET:
        csum = _mangle_udp(csum)
    return b"".join((packet[:at], csum.to_bytes(2, "big"), packet[at + 2:]))


# Segment headers are packed in one call: the unchanging stretches of the
# template go in as byte strings, the per-segment fields as integers.  Layouts
# (a = IP header length, t = TCP header length):
#   IPv4: [0:2] totlen id [6:10] ipcsum [12:a+4] seq [a+8:a+13] flags
#         [a+14:a+16] tcpcsum [a+18:a+t]
#   IPv6: [0:4] paylen [6:44] seq [48:53] flags [54:56] tcpcsum [58:40+t]
#   UDP over IPv4: [0:2] totlen id [6:10] ipcsum [12:a] ports udplen udpcsum
#   UDP over IPv6: [0:4] paylen [6:40] ports udplen udpcsum
# At most 11 x 11 TCP layouts (header lengths 20..60 in steps of 4) and 11 UDP.
_layouts: dict[tuple[int, int, int, int], struct.Struct] = {}


def _segment_layout(protocol: int, version: int, ip_len: int, tcp_len: int) -> struct.Struct:
    key = (protocol, version, ip_len, tcp_len)
    layout = _layouts.get(key)
    if layout is None:
        if protocol == IPPROTO_UDP:
            fmt = f"!2sHH4sH{ip_len - 12}s4sHH" if version == 4 else "!4sH34s4sHH"
        elif version == 4:
            fmt = f"!2sHH4sH{ip_len - 8}sI5sB2sH{tcp_len - 18}s"
        else:
            fmt = f"!4sH38sI5sB2sH{tcp_len - 18}s"
        layout = _layouts[key] = struct.Struct(fmt)
    return layout


def _split_tcp(packet: bytes, version: int, ip_len: int, mss: int,
               partial: bool = False) -> list[bytes]:
    n = len(packet)
    a = ip_len
    tcp_len = (packet[a + 12] >> 4) * 4
    if tcp_len < 20 or n < a + tcp_len:
        raise OffloadError("tcp_header", f"TCP header length {tcp_len} in {n - a} bytes")
    hl = a + tcp_len
    layout = _segment_layout(IPPROTO_TCP, version, a, tcp_len)
    seq0 = int.from_bytes(packet[a + 4:a + 8], "big")
    flags0 = packet[a + 13]
    mid_clear = ~(TCP_FIN | TCP_PSH)  # only the last segment keeps FIN and PSH
    # The pseudo-header's addresses as one integer (congruent to the sum of
    # their words, see partial_csum_at), protocol and TCP header length.
    pseudo = int.from_bytes(packet[12:20] if version == 4 else packet[8:40], "big") \
        + IPPROTO_TCP + tcp_len
    # The TCP header words with seq, flags and checksum taken out, plus the
    # pseudo-header: each segment adds its own.
    tcp_base = pseudo + ones_sum(packet[a:a + 4] + bytes(4) + packet[a + 8:a + 13] + b"\0"
                                  + packet[a + 14:a + 16] + bytes(2) + packet[a + 18:hl])
    ip_base = ip_id0 = 0
    c1 = b""
    if version == 4:
        ip_base = ones_sum(packet[:2] + packet[6:10] + packet[12:a])
        ip_id0 = (packet[4] << 8) | packet[5]
        c0, c1, c2 = packet[:2], packet[6:10], packet[12:a + 4]
    else:
        c0, c2 = packet[:4], packet[6:a + 4]
    c3, c4, c5 = packet[a + 8:a + 13], packet[a + 14:a + 16], packet[a + 18:hl]

    out: list[bytes] = []
    pack = layout.pack
    from_bytes = int.from_bytes
    plans = _FOLD_PLANS
    # Every full segment has the same length: one fold plan for all of them
    # (the plan for the largest value of that length works for any value).
    full_plan = plans[(8 * mss).bit_length()]  # mss < 2**16: always in the table
    full_partial = partial_field(pseudo + mss)  # a full segment's partial checksum
    view = memoryview(packet)
    payload: bytes | memoryview
    is_v4 = version == 4
    start = hl
    i = 0
    last_start = hl + max(n - hl - 1, 0) // mss * mss  # a payload-less packet: one segment
    while True:
        end = start + mss if start < last_start else n
        plen = end - start
        seq = (seq0 + (start - hl)) & 0xFFFFFFFF
        tflags = flags0 if end == n else flags0 & mid_clear
        if i:
            tflags &= ~TCP_CWR  # CWR only on the first segment, as tcp_gso_segment does
        if partial:
            # The pseudo-header sum only: the payload is never summed, and
            # copied once, from the view.
            payload = view[start:end]
            tcp_csum = full_partial if plen == mss else partial_field(pseudo + plen)
        else:
            # The payload's word sum, inline (see ones_sum): read little-endian,
            # fold, and the final multiplication by 256 turns it big-endian.
            payload = packet[start:end]
            x = from_bytes(payload, "little")
            if plen == mss:
                for shift, mask in full_plan:
                    x = (x >> shift) + (x & mask)
            else:
                for shift, mask in plans[x.bit_length().bit_length()]:
                    x = (x >> shift) + (x & mask)
            tcp_csum = (-(x * 256 + tcp_base + plen + (seq >> 16) + (seq & 0xFFFF)
                          + tflags)) % 0xFFFF
        if is_v4:
            total = hl + plen
            ip_id = (ip_id0 + i) & 0xFFFF
            ip_csum = (-(ip_base + total + ip_id)) % 0xFFFF
            header = pack(c0, total, ip_id, c1, ip_csum, c2, seq, c3, tflags, c4, tcp_csum, c5)
        else:
            header = pack(c0, tcp_len + plen, c2, seq, c3, tflags, c4, tcp_csum, c5)
        out.append(header + payload)
        if end == n:
            return out
        start = end
        i += 1


def _split_udp(packet: bytes, version: int, ip_len: int, mss: int,
               partial: bool = False) -> list[bytes]:
    n = len(packet)
    a = ip_len
    hl = a + UDP_HEADER_LEN
    layout = _segment_layout(IPPROTO_UDP, version, a, UDP_HEADER_LEN)
    ports = packet[a:a + 4]
    if version == 4:
        addresses = packet[12:20]
        udp_base = ones_sum(ports) + ones_sum(addresses) + IPPROTO_UDP
        ip_base = ones_sum(packet[:2] + packet[6:10] + packet[12:a])
        ip_id0 = (packet[4] << 8) | packet[5]
        c0, c1, c2 = packet[:2], packet[6:10], packet[12:a]
    else:
        udp_base = ones_sum(ports) + ones_sum(packet[8:40]) + IPPROTO_UDP
        c0, c2 = packet[:4], packet[6:40]

    out: list[bytes] = []
    start = hl
    i = 0
    while True:
        end = min(start + mss, n)
        payload = packet[start:end]
        udp_len = UDP_HEADER_LEN + end - start
        if partial:  # the pseudo-header sum only (see the module docstring)
            udp_csum = partial_field(udp_base - ones_sum(ports) + udp_len)
        else:
            # The UDP length appears twice in the sum: header field and pseudo-header.
            udp_csum = _mangle_udp(checksum_field(
                ones_sum(payload) + udp_base + 2 * udp_len))
        if version == 4:
            total = a + udp_len
            ip_id = (ip_id0 + i) & 0xFFFF
            ip_csum = checksum_field(ip_base + total + ip_id)
            header = layout.pack(c0, total, ip_id, c1, ip_csum, c2, ports, udp_len, udp_csum)
        else:
            header = layout.pack(c0, udp_len, c2, ports, udp_len, udp_csum)
        out.append(header + payload)
        if end >= n:
            return out
        start = end
        i += 1
