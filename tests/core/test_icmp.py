"""ICMP "too big" answers and IPv4 fragmentation: known answers, with every
checksum re-checked here by an independent implementation (and, where
tcpdump is installed, by tcpdump's own decoder)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from stripe import icmp

PAYLOAD = bytes(range(256)) * 6


def reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: add 16-bit words one by one, carrying around
    at every step (a different method from the one under test)."""
    total = 0
    for i in range(0, len(data), 2):
        word = data[i] << 8 | (data[i + 1] if i + 1 < len(data) else 0)
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def with_checksum(data: bytes, at: int) -> bytes:
    return data[:at] + struct.pack("!H", reference_checksum(data)) + data[at + 2 :]


def echo_request_v4(size: int = 1500, flags: int = 0x4000, ident: int = 0xABCD,
                    src: str = "0a4d0001", dst: str = "0a4d0002") -> bytes:
    """A ping of `size` bytes from 10.77.0.1 to 10.77.0.2 (DF by default)."""
    body = with_checksum(bytes([8, 0, 0, 0, 0x12, 0x34, 0, 1]) + PAYLOAD[: size - 28], 2)
    header = struct.pack("!BBHHHBBH", 0x45, 0, size, ident, flags, 64, 1, 0)
    header = with_checksum(header + bytes.fromhex(src + dst), 10)
    return header + body


def udp_v6(size: int = 1500, next_header: int = 17, extension: bytes = b"") -> bytes:
    """A UDP packet of `size` bytes from 2001:db8::1 to 2001:db8::2."""
    udp = struct.pack("!HHHH", 1234, 5678, size - 40 - len(extension), 0)
    udp += PAYLOAD[: size - 48 - len(extension)]
    header = struct.pack("!IHBB", 6 << 28, size - 40, next_header, 64)
    return (header + bytes.fromhex("20010db8" + "0" * 23 + "1") +
            bytes.fromhex("20010db8" + "0" * 23 + "2") + extension + udp)


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert icmp.internet_checksum(data) == 0xFFFF - 0xDDF2 == reference_checksum(data)
    assert icmp.internet_checksum(b"\x01") == reference_checksum(b"\x01")


def test_frag_needed_known_answer() -> None:
    packet = echo_request_v4()
    assert packet[:20].hex() == "450005dcabcd4000400174b70a4d00010a4d0002"
    answer = icmp.frag_needed(packet, 1232)
    assert answer is not None
    # IP: v4, IHL 5, TOS c0 (internetwork control), 576 bytes, id 0, no
    # flags, TTL 64, ICMP, checksum 6361, from 10.77.0.2 (the original
    # destination) to 10.77.0.1.  ICMP: type 3 code 4, checksum f0fe,
    # unused 0, next-hop MTU 1232 (04d0), then the first 548 bytes.
    assert answer[:28].hex() == (
        "45c00240000000004001" "6361" "0a4d0002" "0a4d0001" "0304" "f0fe" "0000" "04d0")
    assert answer[28:] == packet[:548]
    assert len(answer) == 576  # RFC 1812 4.3.2.3
    assert reference_checksum(answer[:20]) == 0
    assert reference_checksum(answer[20:]) == 0


def test_frag_needed_quotes_whole_short_packet() -> None:
    packet = echo_request_v4(size=600)
    answer = icmp.frag_needed(packet, 576)
    assert answer is not None and answer[28:] == packet[:548]
    small = echo_request_v4(size=100)
    answer = icmp.frag_needed(small, 68)
    assert answer is not None and answer[28:] == small and len(answer) == 128
    assert reference_checksum(answer[20:]) == 0


def test_packet_too_big_known_answer() -> None:
    packet = udp_v6()
    answer = icmp.packet_too_big(packet, 1280)
    assert answer is not None
    # IPv6: payload 1240 (04d8), next header 58, hop limit 64, from
    # 2001:db8::2 to 2001:db8::1.  ICMPv6: type 2 code 0, checksum db42,
    # MTU 1280 (00000500), then as much as fits in 1280 bytes.
    assert answer[:8].hex() == "6000000004d83a40"
    assert answer[8:40] == packet[24:40] + packet[8:24]
    assert answer[40:48].hex() == "0200" "db42" "00000500"
    assert answer[48:] == packet[:1232]
    assert len(answer) == 1280  # RFC 4443 2.4(c)
    pseudo = answer[8:40] + struct.pack("!IxxxB", len(answer) - 40, 58)
    assert reference_checksum(pseudo + answer[40:]) == 0


@pytest.mark.parametrize(("packet", "why"), [
    (echo_request_v4(flags=0x4000 | 185), "non-first fragment"),
    (echo_request_v4(dst="e0000001"), "multicast destination"),
    (echo_request_v4(dst="ffffffff"), "broadcast destination"),
    (echo_request_v4(src="00000000"), "unspecified source"),
    (echo_request_v4(src="7f000001"), "loopback source"),
])
def test_no_frag_needed_where_rfc1812_forbids(packet: bytes, why: str) -> None:
    assert icmp.frag_needed(packet, 1232) is None, why


def test_no_answer_to_an_icmp_error() -> None:
    error = icmp.frag_needed(echo_request_v4(), 1232)
    assert error is not None
    assert icmp.frag_needed(error, 500) is None
    unknown_type = bytearray(echo_request_v4())
    unknown_type[20] = 42
    assert icmp.frag_needed(bytes(unknown_type), 1232) is None


def test_no_packet_too_big_to_an_icmpv6_error_even_behind_extension_headers() -> None:
    error = icmp.packet_too_big(udp_v6(), 1280)
    assert error is not None
    assert icmp.packet_too_big(error + bytes(100), 1280) is None
    # ICMPv6 type 1 (destination unreachable) after a hop-by-hop header.
    hop_by_hop = bytes([58, 0, 1, 4, 0, 0, 0, 0])
    packet = udp_v6(next_header=0, extension=hop_by_hop)
    packet = packet[:48] + bytes([1, 0]) + packet[50:]
    assert icmp.packet_too_big(packet, 1280) is None
    # An echo request (type 128) behind the same header is answered.
    packet = packet[:48] + bytes([128, 0]) + packet[50:]
    assert icmp.packet_too_big(packet, 1280) is not None


def test_no_packet_too_big_from_unspecified_or_to_multicast() -> None:
    packet = udp_v6()
    assert icmp.packet_too_big(packet[:8] + bytes(16) + packet[24:], 1280) is None
    multicast = bytes.fromhex("ff02" + "0" * 27 + "1")
    assert icmp.packet_too_big(packet[:24] + multicast + packet[40:], 1280) is None


def reassemble(fragments: list[bytes]) -> bytes:
    parts = sorted(((struct.unpack_from("!H", f, 6)[0] & 0x1FFF) * 8, f) for f in fragments)
    first = parts[0][1]
    ihl = (first[0] & 0x0F) * 4
    data = b""
    for offset, fragment in parts:
        assert offset == len(data)
        data += fragment[(fragment[0] & 0x0F) * 4 :]
    header = bytearray(first[:ihl])
    struct.pack_into("!H", header, 2, ihl + len(data))
    struct.pack_into("!H", header, 6, 0)  # flags and offset of the whole packet
    struct.pack_into("!H", header, 10, 0)
    struct.pack_into("!H", header, 10, reference_checksum(bytes(header)))
    return bytes(header) + data


@pytest.mark.parametrize("mtu", [576, 1000, 1232, 1499])
def test_fragments_reassemble_to_the_original(mtu: int) -> None:
    packet = echo_request_v4(flags=0)
    fragments = icmp.fragment_ipv4(packet, mtu)
    assert fragments is not None and len(fragments) >= 2
    for i, fragment in enumerate(fragments):
        assert len(fragment) <= mtu
        assert reference_checksum(fragment[:20]) == 0
        assert struct.unpack_from("!H", fragment, 2)[0] == len(fragment)
        more = bool(fragment[6] & 0x20)
        assert more == (i < len(fragments) - 1)
        assert fragment[4:6] == packet[4:6]  # same identification
    assert reassemble(fragments) == packet


def test_fragmenting_a_fragment_keeps_offset_and_more_flag() -> None:
    packet = echo_request_v4(size=1000, flags=0x2000 | 100)  # offset 800, more to come
    fragments = icmp.fragment_ipv4(packet, 576)
    assert fragments is not None and len(fragments) == 2
    offsets = [struct.unpack_from("!H", f, 6)[0] for f in fragments]
    assert offsets == [0x2000 | 100, 0x2000 | (100 + 556 // 8)]


def test_fragments_copy_only_copied_options() -> None:
    base = echo_request_v4(size=1000, flags=0)
    # Options: security (type 130, copied, 4 bytes here) and record route
    # (type 7, not copied), 12 bytes in all.
    options = bytes([130, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 0])
    header = bytearray(base[:20] + options)
    header[0] = 0x48
    struct.pack_into("!H", header, 2, len(base) + len(options))
    struct.pack_into("!H", header, 10, 0)
    packet = with_checksum(bytes(header), 10) + base[20:]
    fragments = icmp.fragment_ipv4(packet, 576)
    assert fragments is not None
    assert fragments[0][20:32] == options
    for fragment in fragments[1:]:
        assert fragment[0] == 0x46 and fragment[20:24] == bytes([130, 4, 0, 0])
        assert reference_checksum(fragment[:24]) == 0


def test_no_fragmenting_with_df_or_a_bad_length() -> None:
    assert icmp.fragment_ipv4(echo_request_v4(), 1232) is None
    assert icmp.fragment_ipv4(echo_request_v4(flags=0)[:-1], 1232) is None


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_tcpdump_decodes_the_answers(tmp_path: Path) -> None:
    answers = [icmp.frag_needed(echo_request_v4(), 1232), icmp.packet_too_big(udp_v6(), 1280)]
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW
    for answer in answers:
        assert answer is not None
        pcap += struct.pack("<IIII", 0, 0, len(answer), len(answer)) + answer
    path = tmp_path / "answers.pcap"
    path.write_bytes(pcap)
    out = subprocess.run(["tcpdump", "-r", str(path), "-n", "-vv"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    assert "10.77.0.2 > 10.77.0.1: ICMP 10.77.0.2 unreachable - need to frag (mtu 1232)" in out
    assert "ICMP6, packet too big, mtu 1280" in out
    assert "bad" not in out.lower() and "wrong" not in out.lower(), out
