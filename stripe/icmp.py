"""ICMP "too big" answers and IPv4 fragmentation for inner packets, as bytes.

When an inner packet from the TUN is larger than what the tunnel can carry
right now (see `pmtu`), the sender has to learn the size:

- IPv4 with DF set: ICMP type 3 code 4 "fragmentation needed and DF set"
  (RFC 792) with the next-hop MTU in the second half of the unused word
  (RFC 1191), quoting as much of the packet as fits in 576 bytes (RFC 1812
  4.3.2.3, and what Linux quotes).
- IPv6: ICMPv6 type 2 "packet too big" (RFC 4443 3.2) with the MTU, quoting
  as much as fits in 1280 bytes, checksummed over the pseudo-header.
- IPv4 without DF: the sender allowed fragmentation, so `fragment_ipv4`
  cuts it as a router would (RFC 791); the receiving host reassembles.

Source address of an answer: the original packet's *destination*, as if
the far end had answered (other userspace tunnels that make these answers
do the same).  The tunnel's own address would be the textbook router
choice (RFC 1812 4.3.2.4), but on the client the sender is usually the
host itself, and Linux drops an incoming packet whose source is one of its
own addresses as a martian (no `accept_local`).  The destination is
routed through the TUN (that is how the packet got here), so
reverse-path filtering accepts the answer too.  Hosts act on the quoted
header, not on who signed the error (RFC 1191 section 4).

No answer (None) where RFC 1812 4.3.2.7 / RFC 4443 2.4(e) forbid one: to an
ICMP error, to a non-first IPv4 fragment, to a broadcast or multicast
destination, from a source that names no single host.

Everything here is pure; packets are bytes in, bytes out.
"""

from __future__ import annotations

import struct

from .offload import checksum

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV6_HEADER = struct.Struct("!IHBB16s16s")
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, unused / id, mtu / seq
ICMPV6_TOO_BIG = struct.Struct("!BBHI")  # type, code, checksum, mtu

# Protocol constants.
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2
IPV4_ERROR_MAX_BYTES = 576  # RFC 1812 4.3.2.3
IPV6_MIN_MTU = 1280  # RFC 8200: every link carries this; RFC 4443 quotes up to it
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF
# ICMP types that are errors (and Linux treats unknown types above 18 so too).
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMP_MAX_KNOWN_TYPE = 18
# IPv6 extension headers we step over to find an ICMPv6 type (RFC 8200 4.1).
IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DEST_OPTS = 0, 43, 44, 60
MAX_EXTENSION_HEADERS = 8

# Implementation constants.
ANSWER_TTL = 64
# Linux sets "internetwork control" precedence on ICMP errors, keeping the
# original TOS bits (icmp_send).
IPTOS_PREC_INTERNETCONTROL = 0xC0
IPTOS_TOS_MASK = 0x1E


# The 16-bit one's complement of the one's complement sum (RFC 1071): the
# data path's implementation (see `offload`).
internet_checksum = checksum


def ipv4_dont_fragment(packet: bytes) -> bool:
    return bool(packet[6] & 0x40)


def _ipv4_header_length(packet: bytes) -> int | None:
    """The header length of a plausible IPv4 packet, or None."""
    ihl = (packet[0] & 0x0F) * 4
    if packet[0] >> 4 != 4 or ihl < 20 or len(packet) < ihl:
        return None
    return ihl


def _ipv4_source_is_host(address: bytes) -> bool:
    first = address[0]
    return not (address == bytes(4) or first == 127 or first >= 224)


def _ipv4_header(tos: int, total_length: int, ident: int, flags_offset: int, ttl: int,
                 protocol: int, source: bytes, destination: bytes) -> bytes:
    header = IPV4_HEADER.pack(0x45, tos, total_length, ident, flags_offset, ttl, protocol, 0,
                              source, destination)
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]


def frag_needed(packet: bytes, mtu: int) -> bytes | None:
    """The ICMP "fragmentation needed" answer to an IPv4 `packet` that does
    not fit `mtu`, or None where no answer may be sent."""
    ihl = _ipv4_header_length(packet)
    if ihl is None:
        return None
    flags_offset = (packet[6] << 8) | packet[7]
    if flags_offset & IPV4_OFFSET_MASK:
        return None  # non-first fragment (RFC 1812 4.3.2.7)
    source, destination = packet[12:16], packet[16:20]
    if not _ipv4_source_is_host(source) or destination[0] >= 224 or not _ipv4_source_is_host(
        destination
    ):
        return None  # no single host to answer, or a multicast/broadcast destination
    if packet[9] == IPPROTO_ICMP and len(packet) > ihl:
        icmp_type = packet[ihl]
        if icmp_type in ICMP_ERROR_TYPES or icmp_type > ICMP_MAX_KNOWN_TYPE:
            return None  # never an error about an error
    quote = packet[: IPV4_ERROR_MAX_BYTES - 20 - ICMP_HEADER.size]
    body = ICMP_HEADER.pack(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu & 0xFFFF) + quote
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    tos = (packet[1] & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL
    header = _ipv4_header(tos, 20 + len(body), 0, 0, ANSWER_TTL, IPPROTO_ICMP,
                          destination, source)
    return header + body


def _ipv6_upper_layer(packet: bytes) -> tuple[int, int] | None:
    """(next header, offset) of the first header after the extension
    headers; None when a non-first fragment hides it or the chain is cut."""
    next_header, offset = packet[6], 40
    for _ in range(MAX_EXTENSION_HEADERS):
        if next_header in (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS):
            if len(packet) < offset + 2:
                return None
            next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
        elif next_header == IPV6_FRAGMENT:
            if len(packet) < offset + 8:
                return None
            if ((packet[offset + 2] << 8) | packet[offset + 3]) & 0xFFF8:
                return None  # non-first fragment: the upper layer is elsewhere
            next_header, offset = packet[offset], offset + 8
        else:
            return next_header, offset
    return None


def _ipv6_is_multicast_or_unspecified(address: bytes) -> bool:
    return address[0] == 0xFF or address == bytes(16)


def packet_too_big(packet: bytes, mtu: int) -> bytes | None:
    """The ICMPv6 "packet too big" answer to an IPv6 `packet` that does not
    fit `mtu`, or None where no answer may be sent."""
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    source, destination = packet[8:24], packet[24:40]
    # RFC 4443 2.4(e) would allow a PTB to a multicast destination, but we
    # answer from the destination's address and a multicast one cannot sign.
    if _ipv6_is_multicast_or_unspecified(source) or _ipv6_is_multicast_or_unspecified(
        destination
    ) or source == b"\x00" * 15 + b"\x01":
        return None
    upper = _ipv6_upper_layer(packet)
    if upper is not None and upper[0] == IPPROTO_ICMPV6 and len(packet) > upper[1] and (
        packet[upper[1]] < 128
    ):
        return None  # ICMPv6 error (types 0-127): never answered
    quote = packet[: IPV6_MIN_MTU - 40 - ICMPV6_TOO_BIG.size]
    length = ICMPV6_TOO_BIG.size + len(quote)
    message = ICMPV6_TOO_BIG.pack(ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quote
    pseudo = destination + source + struct.pack("!I3xB", length, IPPROTO_ICMPV6)
    checksum = internet_checksum(pseudo + message)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    header = IPV6_HEADER.pack(6 << 28, length, IPPROTO_ICMPV6, ANSWER_TTL, destination, source)
    return header + message


def _copied_options(options: bytes) -> bytes:
    """The IPv4 options that go into every fragment (copy flag set, RFC 791),
    padded to a multiple of 4 bytes."""
    out = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of options
            break
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break  # malformed: keep what we have
        size = options[i + 1]
        if kind & 0x80:
            out += options[i : i + size]
        i += size
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes] | None:
    """Cut an IPv4 packet (DF clear) into fragments of at most `mtu` bytes,
    as RFC 791 describes; None if it cannot be (DF set, malformed, `mtu` too
    small for the header plus 8 bytes)."""
    ihl = _ipv4_header_length(packet)
    if ihl is None or ipv4_dont_fragment(packet) or len(packet) != (
        (packet[2] << 8) | packet[3]
    ):
        return None
    flags_offset = (packet[6] << 8) | packet[7]
    first_offset = flags_offset & IPV4_OFFSET_MASK
    more_after = bool(flags_offset & IPV4_MF)
    header, payload = packet[:ihl], packet[ihl:]
    later_header_options = _copied_options(header[20:ihl])
    fragments: list[bytes] = []
    position = 0
    while position < len(payload) or not fragments:
        options = header[20:ihl] if not fragments else later_header_options
        header_length = 20 + len(options)
        room = (mtu - header_length) // 8 * 8
        if room <= 0:
            return None
        chunk = payload[position : position + room]
        last = position + len(chunk) >= len(payload)
        flags = IPV4_MF if (not last or more_after) else 0
        offset = first_offset + position // 8
        fixed = IPV4_HEADER.pack(
            0x40 | header_length // 4, header[1], header_length + len(chunk),
            (header[4] << 8) | header[5], flags | offset, header[8], header[9], 0,
            header[12:16], header[16:20],
        )
        full = fixed + options
        full = full[:10] + struct.pack("!H", internet_checksum(full)) + full[12:]
        fragments.append(full + chunk)
        position += len(chunk)
    return fragments
