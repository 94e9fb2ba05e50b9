"""Segmentation and coalescing (stripe.offload) against an independent model.

Everything here is built and checked with straightforward code written for
the test: a 16-bit-word checksum loop, a packet builder and parser, and a
reference segmenter that follows the kernel's tcp_gso_segment rules one
field at a time.  The module under test shares none of it.
"""

from __future__ import annotations

import contextlib
import random
import struct
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stripe import offload
from stripe.coalesce import coalesce
from stripe.offload import (
    PLAIN_VNET_HDR,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    OffloadError,
    VnetHdr,
    pack_vnet_hdr,
    parse_vnet_hdr,
    split_tun_read,
)

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
V4_SRC, V4_DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
V6_SRC = bytes.fromhex("fd000000000000000000000000000001")
V6_DST = bytes.fromhex("fd000000000000000000000000000002")
TIMESTAMPS = bytes([1, 1, 8, 10]) + struct.pack("!II", 0x01020304, 0x0A0B0C0D)


# -- independent model ----------------------------------------------------------

def ref_sum(data: bytes) -> int:
    """Ones'-complement sum of 16-bit big-endian words, end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes([0, proto]) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


@dataclass(frozen=True)
class Tcp:
    """Every field of an IPv4/IPv6 + TCP packet the tests care about."""

    version: int = 4
    payload: bytes = b""
    seq: int = 1000
    ack: int = 2000
    flags: int = ACK
    window: int = 502
    options: bytes = b""
    sport: int = 40000
    dport: int = 5201
    ip_id: int = 0x1234
    ttl: int = 64
    tos: int = 0
    df: bool = True
    flow_label: int = 0
    urg_ptr: int = 0

    @property
    def addresses(self) -> tuple[bytes, bytes]:
        return (V4_SRC, V4_DST) if self.version == 4 else (V6_SRC, V6_DST)


def build(p: Tcp, csum: str = "full") -> bytes:
    """The packet; `csum`: "full" (as on the wire), "partial" (pseudo-header
    sum only, as a CHECKSUM_PARTIAL skb hands it over), "zero"."""
    src, dst = p.addresses
    tcp_len = 20 + len(p.options)
    tcp = struct.pack("!HHIIBBHHH", p.sport, p.dport, p.seq, p.ack, (tcp_len // 4) << 4,
                      p.flags, p.window, 0, p.urg_ptr) + p.options
    segment_len = tcp_len + len(p.payload)
    pseudo = pseudo_header(src, dst, 6, segment_len)
    if csum == "full":
        value = ref_checksum(pseudo + tcp + p.payload)
    elif csum == "partial":
        value = ref_sum(pseudo)
    else:
        value = 0
    tcp = tcp[:16] + value.to_bytes(2, "big") + tcp[18:]
    if p.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, p.tos, 20 + segment_len, p.ip_id,
                         0x4000 if p.df else 0, p.ttl, 6, 0, src, dst)
        ip = ip[:10] + ref_checksum(ip).to_bytes(2, "big") + ip[12:]
    else:
        first = (6 << 28) | (p.tos << 20) | p.flow_label
        ip = struct.pack("!IHBB16s16s", first, segment_len, 6, p.ttl, src, dst)
    return ip + tcp + p.payload


def parse(packet: bytes) -> Tcp:
    """Inverse of `build` (checksums aside)."""
    version = packet[0] >> 4
    if version == 4:
        assert packet[0] == 0x45
        tos, ip_id, frag, ttl = packet[1], int.from_bytes(packet[4:6], "big"), \
            int.from_bytes(packet[6:8], "big"), packet[8]
        a, extra = 20, dict(tos=tos, ip_id=ip_id, df=bool(frag & 0x4000), ttl=ttl)
    else:
        first = int.from_bytes(packet[:4], "big")
        a, extra = 40, dict(tos=(first >> 20) & 0xFF, flow_label=first & 0xFFFFF,
                            ttl=packet[7], ip_id=0x1234, df=True)
    sport, dport, seq, ack, off, flags, window, _c, urg = struct.unpack_from(
        "!HHIIBBHHH", packet, a)
    tcp_len = (off >> 4) * 4
    return Tcp(version=version, payload=packet[a + tcp_len:], seq=seq, ack=ack, flags=flags,
               window=window, options=packet[a + 20:a + tcp_len], sport=sport, dport=dport,
               urg_ptr=urg, **extra)  # type: ignore[arg-type]


def checksums_ok(packet: bytes) -> bool:
    version = packet[0] >> 4
    if version == 4:
        a = (packet[0] & 0x0F) * 4
        if ref_sum(packet[:a]) != 0xFFFF:
            return False
        src, dst, proto = packet[12:16], packet[16:20], packet[9]
    else:
        a, src, dst, proto = 40, packet[8:24], packet[24:40], packet[6]
    pseudo = pseudo_header(src, dst, proto, len(packet) - a)
    if proto == 17 and packet[a + 6:a + 8] == b"\0\0":
        return False  # a computed UDP checksum is never sent as 0
    return ref_sum(pseudo + packet[a:]) == 0xFFFF


def model_complete(packet: bytes, start: int, offset: int) -> bytes:
    """What the kernel does to a NEEDS_CSUM packet: sum from csum_start to the
    end (the field's pseudo-header sum included) and store the complement (a
    UDP 0 as 0xFFFF)."""
    at = start + offset
    value = ~ref_sum(packet[start:]) & 0xFFFF
    if offset == 6 and value == 0:
        value = 0xFFFF
    return packet[:at] + value.to_bytes(2, "big") + packet[at + 2:]


def tso(p: Tcp, mss: int, hdr_len: int | None = None) -> bytes:
    """virtio header + super-packet, as the kernel hands a TSO skb to a TUN:
    NEEDS_CSUM with the pseudo-header sum in the TCP checksum field, ECN in
    gso_type when the segment carries CWR, hdr_len possibly the whole linear
    part (the kernel's skb_headlen)."""
    a = 20 if p.version == 4 else 40
    kind = VIRTIO_NET_HDR_GSO_TCPV4 if p.version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    if p.flags & CWR:
        kind |= VIRTIO_NET_HDR_GSO_ECN
    hl = a + 20 + len(p.options)
    vnet = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, kind,
                       hl if hdr_len is None else hdr_len, mss, a, 16)
    return vnet + build(p, "partial")


def ref_segment(p: Tcp, mss: int) -> list[bytes]:
    """tcp_gso_segment + inet_gso_segment, one field at a time."""
    chunks = [p.payload[i:i + mss] for i in range(0, len(p.payload), mss)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        flags = p.flags
        if i < len(chunks) - 1:
            flags &= ~(FIN | PSH)
        if i > 0:
            flags &= ~CWR
        out.append(build(replace(p, payload=chunk, seq=(p.seq + i * mss) % 2**32,
                                 ip_id=(p.ip_id + i) % 2**16, flags=flags)))
    return out


def expand(buffers: list[bytes]) -> list[bytes]:
    """coalesce() output back to the packets it stands for, using the model."""
    packets = []
    for buf in buffers:
        flags, kind, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("=BBHHHH", buf)
        packet = buf[10:]
        if kind == VIRTIO_NET_HDR_GSO_NONE:
            if flags == VIRTIO_NET_HDR_F_NEEDS_CSUM:
                # Partial (by chance, for a full checksum: once in 65,535):
                # what the kernel makes of it.
                packet = model_complete(packet, csum_start, csum_offset)
                assert hdr_len == csum_start + csum_offset + 2
            else:
                assert buf[:10] == PLAIN_VNET_HDR
            packets.append(packet)
            continue
        p = parse(packet)
        a = 20 if p.version == 4 else 40
        assert kind == (VIRTIO_NET_HDR_GSO_TCPV4 if p.version == 4 else VIRTIO_NET_HDR_GSO_TCPV6) \
            | (VIRTIO_NET_HDR_GSO_ECN if p.flags & CWR else 0)
        assert (flags, hdr_len, csum_start, csum_offset) == (
            VIRTIO_NET_HDR_F_NEEDS_CSUM, a + 20 + len(p.options), a, 16)
        assert build(p, "partial") == packet  # lengths, IPv4 checksum, partial TCP sum
        assert 0 < gso_size < len(p.payload)
        packets.extend(ref_segment(p, gso_size))
    return packets


# -- checksum and header basics -------------------------------------------------

def test_checksum_known_answer() -> None:
    # The worked IPv4 header example (Wikipedia, "Internet checksum").
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert offload.checksum(header) == 0xB861 == ref_checksum(header)
    assert offload.checksum(b"") == 0xFFFF == ref_checksum(b"")
    assert offload.checksum(bytes(7)) == 0xFFFF
    assert offload.checksum(b"\x01") == ref_checksum(b"\x01") == 0xFEFF
    assert offload.checksum(b"\xff\xff") == ref_checksum(b"\xff\xff") == 0


@given(st.binary(max_size=3000))
def test_checksum_matches_word_loop(data: bytes) -> None:
    assert offload.checksum(data) == ref_checksum(data)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([0, 1, 40, 63, 64, 200]), st.binary(min_size=1, max_size=64))
def test_checksum_large_inputs_match(kilobytes: int, pattern: bytes) -> None:
    # Up to 200 KB: every fold plan, and the plain division past the plans.
    data = (pattern * (kilobytes * 1024 // len(pattern) + 1))[:kilobytes * 1024 + len(pattern)]
    assert offload.checksum(data) == ref_checksum(data)


def test_vnet_header_roundtrip() -> None:
    hdr = VnetHdr(1, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, 72, 1428, 40, 16)
    raw = pack_vnet_hdr(hdr)
    assert len(raw) == offload.VNET_HDR_LEN == 10
    assert raw == struct.pack("=BBHHHH", 1, 0x84, 72, 1428, 40, 16)
    assert parse_vnet_hdr(raw) == hdr
    assert parse_vnet_hdr(memoryview(raw + b"xyz")) == hdr
    assert bytes(10) == PLAIN_VNET_HDR
    with pytest.raises(OffloadError) as err:
        parse_vnet_hdr(raw[:9])
    assert err.value.reason == "vnet_truncated"


# -- split: known answers -------------------------------------------------------

def test_split_ipv4_known_answer() -> None:
    """3 segments: sequence and IPv4 id both wrap; CWR first, PSH+FIN last."""
    p = Tcp(payload=b"abcdefghij", seq=0xFFFFFFFE, ack=1, flags=ACK | PSH | FIN | CWR,
            window=0x200, options=TIMESTAMPS, ip_id=0xFFFF, sport=1000, dport=2000)
    segments = split_tun_read(tso(p, mss=4))
    assert [s.hex() for s in segments] == [
        "45000038ffff4000400626be" "0a0000010a000002" "03e807d0" "fffffffe" "00000001"
        "8090" "0200" "759a" "0000" "0101080a010203040a0b0c0d" "61626364",
        "4500003800004000400626be" "0a0000010a000002" "03e807d0" "00000002" "00000001"
        "8010" "0200" "6e0f" "0000" "0101080a010203040a0b0c0d" "65666768",
        "4500003600014000400626bf" "0a0000010a000002" "03e807d0" "00000006" "00000001"
        "8019" "0200" "d168" "0000" "0101080a010203040a0b0c0d" "696a",
    ]
    assert segments == ref_segment(p, 4)
    assert all(checksums_ok(s) for s in segments)


def test_split_ipv6_known_fields() -> None:
    payload = bytes(range(256)) * 12  # 3072 bytes
    p = Tcp(version=6, payload=payload, seq=7, flags=ACK | PSH, options=TIMESTAMPS,
            tos=0x28, flow_label=0xBEEF5, ttl=17)
    segments = split_tun_read(tso(p, mss=1428))
    assert [len(s) for s in segments] == [40 + 32 + 1428, 40 + 32 + 1428, 40 + 32 + 216]
    parsed = [parse(s) for s in segments]
    assert [q.seq for q in parsed] == [7, 7 + 1428, 7 + 2 * 1428]
    assert [q.flags for q in parsed] == [ACK, ACK, ACK | PSH]
    assert all(q.options == TIMESTAMPS and q.flow_label == 0xBEEF5 and q.tos == 0x28
               and q.ttl == 17 for q in parsed)
    assert b"".join(q.payload for q in parsed) == payload
    assert all(int.from_bytes(s[4:6], "big") == len(s) - 40 for s in segments)
    assert segments == ref_segment(p, 1428)
    assert all(checksums_ok(s) for s in segments)


def test_split_ignores_untrusted_hdr_len() -> None:
    p = Tcp(payload=bytes(3000), options=TIMESTAMPS)
    assert split_tun_read(tso(p, 1448, hdr_len=1500)) == ref_segment(p, 1448)
    assert split_tun_read(tso(p, 1448, hdr_len=0)) == ref_segment(p, 1448)


def test_split_without_needs_csum_still_computes_checksums() -> None:
    p = Tcp(payload=bytes(range(200)) * 10)
    raw = bytearray(tso(p, 500))
    raw[0] = 0  # no NEEDS_CSUM: the field holds garbage, segments get fresh sums
    raw[10 + 36:10 + 38] = b"\xde\xad"
    assert split_tun_read(bytes(raw)) == ref_segment(p, 500)


def test_split_copies_ipv4_options_to_every_segment() -> None:
    p = Tcp(payload=bytes(range(256)) * 10, options=TIMESTAMPS, ip_id=41)
    plain = build(p, "partial")
    ip_options = bytes([0x94, 4, 0, 0])  # router alert
    ip = bytearray(plain[:20] + ip_options)
    ip[0] = 0x46
    ip[2:4] = (len(plain) + 4).to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    ip[10:12] = ref_checksum(bytes(ip)).to_bytes(2, "big")
    vnet = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                       56, 1000, 24, 16)
    segments = split_tun_read(vnet + bytes(ip) + plain[20:])
    expected = ref_segment(p, 1000)
    assert len(segments) == len(expected) == 3
    for got, want in zip(segments, expected, strict=True):
        assert got[0] == 0x46 and got[20:24] == ip_options
        assert got[24:] == want[20:]  # TCP identical: IP options are not in the pseudo-header
        assert int.from_bytes(got[2:4], "big") == len(got)
        assert got[4:6] == want[4:6]  # ids 41, 42, 43
        assert checksums_ok(got)


def test_split_single_segment_and_empty_payload() -> None:
    p = Tcp(payload=b"x" * 100)
    assert split_tun_read(tso(p, 1448)) == [build(p)]
    empty = Tcp(flags=ACK | FIN)
    assert split_tun_read(tso(empty, 1448)) == [build(empty)]


def _udp_gso(version: int, payload: bytes, mss: int, ip_id: int = 0x0100) -> bytes:
    src, dst = (V4_SRC, V4_DST) if version == 4 else (V6_SRC, V6_DST)
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", 5353, 443, udp_len & 0xFFFF,
                      ref_sum(pseudo_header(src, dst, 17, udp_len)))
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ip_id, 0, 64, 17, 0, src, dst)
        ip = ip[:10] + ref_checksum(ip).to_bytes(2, "big") + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, src, dst)
    vnet = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4,
                       len(ip) + 8, mss, len(ip), 6)
    return vnet + ip + udp + payload


@pytest.mark.parametrize("version", [4, 6])
def test_split_udp_gso(version: int) -> None:
    payload = bytes(range(250)) * 10 + b"odd"  # 2503 bytes: 1200, 1200, 103
    datagrams = split_tun_read(_udp_gso(version, payload, 1200, ip_id=0xFFFF))
    a = 20 if version == 4 else 40
    assert [len(d) - a - 8 for d in datagrams] == [1200, 1200, 103]
    assert b"".join(d[a + 8:] for d in datagrams) == payload
    for i, d in enumerate(datagrams):
        assert int.from_bytes(d[a + 4:a + 6], "big") == len(d) - a  # UDP length
        assert d[a:a + 4] == struct.pack("!HH", 5353, 443)
        assert checksums_ok(d)
        if version == 4:
            assert int.from_bytes(d[2:4], "big") == len(d)
            assert int.from_bytes(d[4:6], "big") == (0xFFFF + i) % 0x10000
        else:
            assert int.from_bytes(d[4:6], "big") == len(d) - 40


def test_split_udp_zero_checksum_is_sent_as_ffff() -> None:
    # A 2-byte payload chosen so that the datagram's words sum to 0xFFFF.
    rest = ref_sum(pseudo_header(V4_SRC, V4_DST, 17, 10) + struct.pack("!HHHH", 5353, 443, 10, 0))
    payload = (0xFFFF - rest).to_bytes(2, "big")
    datagram = split_tun_read(_udp_gso(4, payload, 100))[0]
    assert datagram[26:28] == b"\xff\xff"
    assert checksums_ok(datagram)


def test_split_completes_partial_checksum() -> None:
    p = Tcp(payload=b"hello, partial world", options=TIMESTAMPS)
    vnet = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    assert split_tun_read(vnet + build(p, "partial")) == [build(p)]
    v6 = replace(p, version=6, payload=b"odd")
    vnet6 = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 40, 16)
    assert split_tun_read(vnet6 + build(v6, "partial")) == [build(v6)]


def test_split_plain_packets_are_untouched() -> None:
    odd = b"\x45not really a packet but untouched"
    assert split_tun_read(PLAIN_VNET_HDR + odd) == [odd]
    valid = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)
    assert split_tun_read(valid + odd) == [odd]


# -- split: malformed input ------------------------------------------------------

def _mutate(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


GOOD_V4 = tso(Tcp(payload=bytes(3000), options=TIMESTAMPS), 1000)
GOOD_V6 = tso(Tcp(version=6, payload=bytes(3000)), 1000)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "vnet_truncated"),
        (GOOD_V4[:9], "vnet_truncated"),
        (GOOD_V4[:10], "ip_truncated"),
        (GOOD_V4[:25], "ip_truncated"),
        (GOOD_V4[:-1], "ip_length"),
        (GOOD_V6[:-1], "ip_length"),
        (_mutate(GOOD_V4, 1, bytes([VIRTIO_NET_HDR_GSO_TCPV6])), "ip_version"),
        (_mutate(GOOD_V6, 1, bytes([VIRTIO_NET_HDR_GSO_TCPV4])), "ip_version"),
        (_mutate(GOOD_V4, 1, bytes([VIRTIO_NET_HDR_GSO_UDP])), "gso_type"),
        (_mutate(GOOD_V4, 1, bytes([2])), "gso_type"),
        (_mutate(GOOD_V4, 1, bytes([0x7F])), "gso_type"),
        (_mutate(GOOD_V4, 1, bytes([VIRTIO_NET_HDR_GSO_UDP_L4 | 0x80])), "gso_type"),
        (_mutate(GOOD_V4, 1, bytes([VIRTIO_NET_HDR_GSO_UDP_L4])), "gso_protocol"),
        (_mutate(GOOD_V4, 4, b"\0\0"), "gso_size"),
        (_mutate(GOOD_V4, 6, struct.pack("=H", 14)), "csum_fields"),
        (_mutate(GOOD_V4, 8, struct.pack("=H", 6)), "csum_fields"),
        (_mutate(GOOD_V4, 10, b"\x46"), "csum_fields"),  # IHL 6: TCP is not at csum_start
        (_mutate(GOOD_V4, 10, b"\x44"), "ip_header"),  # IHL below 5
        (_mutate(GOOD_V4, 10 + 6, b"\x20"), "ip_fragment"),  # MF
        (_mutate(GOOD_V4, 10 + 7, b"\x08"), "ip_fragment"),  # offset
        (_mutate(GOOD_V4, 10 + 9, b"\x11"), "gso_protocol"),
        (_mutate(GOOD_V4, 10 + 32, b"\x40"), "tcp_header"),  # data offset 4 words
        (_mutate(GOOD_V4, 10 + 0, b"\x5f"), "ip_version"),
        (_mutate(GOOD_V6, 10 + 6, b"\x00"), "ipv6_next_header"),  # hop-by-hop options
        (_mutate(GOOD_V6, 10 + 6, b"\x2c"), "ipv6_next_header"),  # fragment header
        (struct.pack("=BBHHHH", 1, 0, 0, 0, 20, 16) + bytes(30), "csum_fields"),
        (struct.pack("=BBHHHH", 1, 0, 0, 0, 60, 0) + bytes(30), "csum_fields"),
    ],
)
def test_split_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(OffloadError) as err:
        split_tun_read(raw)
    assert err.value.reason == reason


def test_split_rejects_truncated_tcp_header() -> None:
    p = Tcp(payload=b"", options=TIMESTAMPS)
    raw = tso(p, 100)
    short = raw[:-4]
    short = _mutate(short, 10 + 2, (len(short) - 10).to_bytes(2, "big"))
    with pytest.raises(OffloadError) as err:
        split_tun_read(short)
    assert err.value.reason == "tcp_header"
    tiny = _mutate(raw[:10 + 30], 10 + 2, (30).to_bytes(2, "big"))
    with pytest.raises(OffloadError) as err:
        split_tun_read(tiny)
    assert err.value.reason == "tcp_truncated"


# -- split / coalesce: properties ---------------------------------------------------

OPTIONS = st.sampled_from([b"", TIMESTAMPS, bytes([2, 4, 5, 0xB4, 1, 1, 4, 2]),
                           TIMESTAMPS + bytes([1, 1, 5, 10]) + bytes(8)])  # + one SACK block


@st.composite
def super_packets(draw: st.DrawFn, version: int | None = None) -> tuple[Tcp, int]:
    v = version or draw(st.sampled_from([4, 6]))
    options = draw(OPTIONS)
    mss = draw(st.one_of(st.integers(1, 1500),
                         st.sampled_from([536, 1220, 1360, 1387, 1428, 1448, 1460])))
    hl = (20 if v == 4 else 40) + 20 + len(options)
    # Mostly real super-packet sizes (hypothesis alone favours tiny ones).
    limit = min(65535 - hl, mss * 45)
    size = draw(st.one_of(st.integers(0, limit), st.integers(limit // 2, limit)))
    flags = ACK | draw(st.sampled_from([0, PSH, FIN, PSH | FIN])) \
        | draw(st.sampled_from([0, CWR, ECE, CWR | ECE]))
    p = Tcp(version=v, payload=random.Random(draw(st.integers())).randbytes(size),
            seq=draw(st.integers(0, 2**32 - 1)), ack=draw(st.integers(0, 2**32 - 1)),
            flags=flags, window=draw(st.integers(0, 0xFFFF)), options=options,
            ip_id=draw(st.integers(0, 0xFFFF)), ttl=draw(st.integers(1, 255)),
            tos=draw(st.integers(0, 255)), df=draw(st.booleans()),
            flow_label=draw(st.integers(0, 0xFFFFF)))
    return p, mss


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(super_packets(), st.integers(0, 0xFFFF))
def test_split_then_coalesce_round_trips(case: tuple[Tcp, int], hdr_len: int) -> None:
    p, mss = case
    raw = tso(p, mss, hdr_len)
    segments = split_tun_read(raw)
    assert segments == ref_segment(p, mss)
    assert all(checksums_ok(s) for s in segments)
    merged = coalesce(segments)
    assert coalesce(segments, verify=False) == merged  # the data path's mode: same result
    if len(segments) == 1:
        # Plain, but for a checksum that equals its pseudo-header sum by chance.
        assert merged == [offload.partial_vnet_hdr(segments[0]) + segments[0]]
        return
    # One GSO packet: the kernel's super-packet again, byte for byte.
    assert len(merged) == 1
    a = 20 if p.version == 4 else 40
    assert merged[0][10:] == raw[10:]
    assert parse_vnet_hdr(merged[0]) == VnetHdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, raw[1], a + 20 + len(p.options), mss, a, 16)
    # And a TUN read of it splits into the same segments.
    assert split_tun_read(merged[0]) == segments


FLOWS = [dict(sport=40000 + i) for i in range(3)]


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[list[list[bytes]], list[bytes], list[int]]:
    """Per flow: its segments with some dropped (gaps); all interleaved in a
    random order that keeps each flow's order; other packets sprinkled in."""
    flows = []
    for i in range(draw(st.integers(1, 3))):
        v = draw(st.sampled_from([4, 6]))
        mss = draw(st.integers(100, 1400))
        count = draw(st.integers(1, 12))
        p = Tcp(version=v, payload=draw(st.binary(min_size=mss * count - draw(
            st.integers(0, mss - 1)), max_size=mss * count)), options=TIMESTAMPS,
            flags=ACK | draw(st.sampled_from([0, PSH])), seq=draw(st.integers(0, 2**32 - 1)),
            ip_id=draw(st.integers(0, 0xFFFF)), **FLOWS[i])  # type: ignore[arg-type]
        segments = ref_segment(p, mss)
        kept = [s for s in segments if draw(st.integers(0, 5))]  # ~1 in 6 lost
        flows.append(kept)
    others = [build(Tcp(flags=ACK, sport=50000)),  # a pure ACK of another flow
              bytes.fromhex("4500001c00004000400100000a0000020a000001") + bytes(8),  # ICMP-ish
              b"\x60" + bytes(3)]  # junk
    cursors = [0] * len(flows)
    order: list[bytes] = []
    owner: list[int] = []
    while any(c < len(f) for c, f in zip(cursors, flows, strict=True)):
        i = draw(st.sampled_from([j for j, f in enumerate(flows) if cursors[j] < len(f)]))
        order.append(flows[i][cursors[i]])
        owner.append(i)
        cursors[i] += 1
        if draw(st.integers(0, 7)) == 0:
            order.append(draw(st.sampled_from(others)))
            owner.append(-1)
    return flows, order, owner


def _stretches(segments: list[bytes]) -> int:
    """Contiguous pieces of one flow's segments (a gap starts a new one)."""
    pieces, expected = 0, None
    for s in segments:
        p = parse(s)
        if p.seq != expected:
            pieces += 1
        expected = (p.seq + len(p.payload)) % 2**32
    return pieces


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(interleavings())
def test_coalesce_keeps_flows_apart_and_in_order(
        case: tuple[list[list[bytes]], list[bytes], list[int]]) -> None:
    flows, order, owner = case
    out = coalesce(order)
    packets = expand(out)
    assert sorted(packets) == sorted(order)
    # Each flow's packets come back in their order, and nothing merged across
    # a gap or across flows (expansion would then have invented packets).
    for segments in flows:
        assert [p for p in packets if p in segments] == segments
        groups = [b for b in out if any(s in segments for s in expand([b]))]
        assert len(groups) == _stretches(segments) or not segments
    others = [p for p, o in zip(order, owner, strict=True) if o < 0]
    assert [p for p in packets if p in others] == others


# -- coalesce: what merges and what does not ---------------------------------------

def _run(p: Tcp, count: int = 4, mss: int = 1000) -> list[bytes]:
    return ref_segment(replace(p, payload=bytes(range(250)) * (mss * count // 250)), mss)


def _shapes(out: list[bytes]) -> list[int]:
    """Per output buffer: how many packets it stands for."""
    return [len(expand([b])) for b in out]


def test_coalesce_merges_ipv4_and_ipv6_runs() -> None:
    for version in (4, 6):
        segments = _run(Tcp(version=version, options=TIMESTAMPS, flags=ACK | PSH))
        out = coalesce(segments)
        assert _shapes(out) == [4]
        assert expand(out) == segments
        assert out[0][10:][20 if version == 4 else 40 + 13] & PSH


def test_coalesced_partial_sum_that_folds_to_zero_is_0xffff() -> None:
    """fd00::1 -> fd00::2 with 1,525 TCP bytes: the pseudo-header sum is
    0x1FFFE, congruent to 0.  CHECKSUM_PARTIAL holds it folded as the kernel
    folds it, 0xFFFF (hypothesis found the 0x0000 this wrote)."""
    p = Tcp(version=6, payload=bytes(1493), seq=0, options=TIMESTAMPS)
    segments = ref_segment(p, 498)
    assert [len(s) - 72 for s in segments] == [498, 498, 497]
    out = coalesce(segments)
    assert _shapes(out) == [3]
    assert out[0][10 + 40 + 16:10 + 40 + 18] == b"\xff\xff"
    assert expand(out) == segments


def test_coalesce_single_and_non_tcp_go_out_plain() -> None:
    one = build(Tcp(payload=b"x" * 10))
    icmp = bytes.fromhex("4500001c00004000400100000a0000020a000001") + bytes(8)
    assert coalesce([one]) == [PLAIN_VNET_HDR + one]
    assert coalesce([icmp, one]) == [PLAIN_VNET_HDR + icmp, PLAIN_VNET_HDR + one]
    assert coalesce([]) == []


@pytest.mark.parametrize(
    ("change", "index"),
    [
        (dict(flags=ACK | SYN), 2), (dict(flags=ACK | RST), 2), (dict(flags=ACK | URG), 2),
        (dict(flags=PSH), 2),  # no ACK
        (dict(window=1), 2), (dict(ack=1), 2), (dict(ttl=3), 2), (dict(tos=4), 2),
        (dict(df=False), 2), (dict(options=TIMESTAMPS[:-1] + b"\x00"), 2),
        (dict(flags=ACK | ECE), 2),
    ],
)
def test_coalesce_does_not_merge_differing_segments(change: dict[str, object], index: int) -> None:
    segments = _run(Tcp(options=TIMESTAMPS))
    p = parse(segments[index])
    segments[index] = build(replace(p, **change))  # type: ignore[arg-type]
    out = coalesce(segments)
    assert expand(out) == segments
    assert len(out) >= 2 and max(_shapes(out)) <= 2


def test_coalesce_flag_positions() -> None:
    segments = _run(Tcp())
    # PSH or FIN in the middle ends the run there.
    for flag in (PSH, FIN):
        marked = list(segments)
        marked[1] = build(replace(parse(marked[1]), flags=ACK | flag))
        assert _shapes(coalesce(marked)) == [2, 2]
    # CWR may only open a run, and then marks it ECN.
    cwr = list(segments)
    cwr[2] = build(replace(parse(cwr[2]), flags=ACK | CWR))
    out = coalesce(cwr)
    assert _shapes(out) == [2, 2]
    assert [b[1] for b in out] == [VIRTIO_NET_HDR_GSO_TCPV4,
                                   VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN]
    assert expand(out) == cwr


def test_coalesce_ip_ids() -> None:
    segments = _run(Tcp())
    skipped = list(segments)
    skipped[2] = build(replace(parse(skipped[2]), ip_id=0x9999))
    assert _shapes(coalesce(skipped)) == [2, 1, 1]  # nor does the next one follow it
    # Fixed ids merge with DF (the kernel re-numbers them; RFC 6864), not without.
    fixed = [build(replace(parse(s), ip_id=0)) for s in segments]
    out = coalesce(fixed)
    assert _shapes(out) == [4]
    assert parse(out[0][10:]).ip_id == 0
    no_df = [build(replace(parse(s), ip_id=0, df=False)) for s in segments]
    assert _shapes(coalesce(no_df)) == [1, 1, 1, 1]


def test_coalesce_sizes() -> None:
    segments = _run(Tcp(), count=5)
    bigger = list(segments)
    bigger[2] = build(replace(parse(bigger[2]), payload=bytes(1100)))
    # Larger than the run's size: a new run (and the next segment's sequence
    # number no longer follows it).
    assert _shapes(coalesce(bigger)) == [2, 1, 2]
    shorter = list(segments)
    shorter[1] = build(replace(parse(shorter[1]), payload=bytes(500)))
    assert _shapes(coalesce(shorter)) == [2, 3]  # a short segment ends its run
    # 65535 bytes of IP packet at most.
    many = _run(Tcp(), count=70)
    out = coalesce(many)
    assert expand(out) == many
    assert all(len(b) - 10 <= 65535 for b in out)
    assert _shapes(out) == [65, 5]


def test_coalesce_verifies_checksums() -> None:
    segments = _run(Tcp(options=TIMESTAMPS), count=6)
    corrupt = list(segments)
    corrupt[2] = corrupt[2][:-1] + bytes([corrupt[2][-1] ^ 0x40])  # payload bit flip
    out = coalesce(corrupt)
    assert _shapes(out) == [2, 1, 3]
    assert out[1] == PLAIN_VNET_HDR + corrupt[2]  # the kernel will drop it
    bad_ip = list(segments)
    bad_ip[0] = bad_ip[0][:10] + b"\x00\x00" + bad_ip[0][12:]
    out = coalesce(bad_ip)
    assert _shapes(out) == [1, 5]
    assert out[0] == PLAIN_VNET_HDR + bad_ip[0]
    v6 = _run(Tcp(version=6), count=3)
    v6[2] = v6[2][:-1] + bytes([v6[2][-1] ^ 1])
    assert _shapes(coalesce(v6)) == [2, 1]
    # Unverified (the AEAD already vouched for the bytes): merged as they are.
    assert _shapes(coalesce(corrupt, verify=False)) == [6]


def test_coalesce_ipv4_options_and_fragments_go_out_plain() -> None:
    segments = _run(Tcp())
    with_options = []
    for s in segments:
        ip = bytearray(s[:20] + bytes([1, 1, 1, 0]))  # NOPs + end of options
        ip[0] = 0x46
        ip[2:4] = (len(s) + 4).to_bytes(2, "big")
        ip[10:12] = b"\0\0"
        ip[10:12] = ref_checksum(bytes(ip)).to_bytes(2, "big")
        with_options.append(bytes(ip) + s[20:])
    assert _shapes(coalesce(with_options)) == [1, 1, 1, 1]
    fragments = [s[:6] + b"\x20\x00" + s[8:] for s in segments]  # MF set
    assert _shapes(coalesce(fragments)) == [1, 1, 1, 1]


def test_coalesce_pure_ack_in_the_same_flow_keeps_order() -> None:
    segments = _run(Tcp())
    ack = build(Tcp(flags=ACK))  # same addresses and ports, no payload
    order = [segments[0], segments[1], ack, segments[2], segments[3]]
    out = coalesce(order)
    assert _shapes(out) == [2, 1, 2]
    assert expand(out) == order


# -- fuzz ---------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_split_random_bytes_only_raise_offload_error(data: bytes) -> None:
    try:
        packets = split_tun_read(data)
    except OffloadError:
        return
    assert packets and all(isinstance(p, bytes) for p in packets)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([GOOD_V4, GOOD_V6, _udp_gso(4, bytes(3000), 1000),
                        _udp_gso(6, bytes(999), 100)]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       st.integers(0, 3200))
def test_split_mutated_packets_only_raise_offload_error(
        raw: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(raw[:len(raw) - cut])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    with contextlib.suppress(OffloadError):
        split_tun_read(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.sampled_from(_run(Tcp(options=TIMESTAMPS)) + _run(Tcp(version=6))),
    st.builds(lambda s, at, v: s[:at] + bytes([v]) + s[at + 1:],
              st.sampled_from(_run(Tcp()) + _run(Tcp(version=6))),
              st.integers(0, 80), st.integers(0, 255)),
), max_size=12))
def test_coalesce_never_raises(packets: list[bytes]) -> None:
    out = coalesce(packets)
    assert len(out) <= len(packets)
    for buf in out:
        hdr = parse_vnet_hdr(buf)
        if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE:
            assert buf[10:] in packets
        else:
            assert all(checksums_ok(p) for p in split_tun_read(buf))
