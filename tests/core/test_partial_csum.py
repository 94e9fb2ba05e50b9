"""Partial inner checksums (see `stripe.offload`, "Partial checksums", and
docs/protocol.md, "Offload features").

Known answers for the pseudo-header sums and the virtio-net headers, the
partial split against the full one (completing a partial segment gives the
full segment, byte for byte), the writer's rule (a packet whose checksum
field is not a checksum never goes out without NEEDS_CSUM), and the
negotiation between two endpoints: partial packets only to a peer that said
it takes them under the current session, completed for any other.
"""

from __future__ import annotations

import struct
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.core.netsim import Sim, SimLink
from tests.core.test_offload import (
    TIMESTAMPS,
    Tcp,
    build,
    checksums_ok,
    expand,
    pseudo_header,
    ref_segment,
    ref_sum,
    super_packets,
    tso,
)

from stripe import control, offload
from stripe.coalesce import coalesce
from stripe.offload import (
    PLAIN_VNET_HDR,
    complete_partial,
    partial_csum_at,
    partial_vnet_hdr,
    split_tun_read,
)

V4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def udp4(payload: bytes, csum: int, src: bytes = V4[0], dst: bytes = V4[1],
         frag: int = 0x4000) -> bytes:
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, 17, 0, src, dst)
    ip = ip[:10] + (~ref_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    return ip + struct.pack("!HHHH", 5353, 53, 8 + len(payload), csum) + payload


# -- known answers ------------------------------------------------------------------

def test_pseudo_header_sum_known_answer() -> None:
    # 10.0.0.1 -> 10.0.0.2, TCP, 20-byte header + 12 bytes: 0x0a00 + 0x0001 +
    # 0x0a00 + 0x0002 + 6 + 32 = 0x1429.
    p = Tcp(payload=b"abcdefghijkl")
    packet = build(p, "partial")
    assert packet[36:38] == b"\x14\x29"
    assert partial_csum_at(packet) == (20, 16)
    # Two 6-byte segments: each 0x1400 + 3 + 6 + 26 = 0x1423, IPv4 header
    # checksums complete, ids counting up.
    segments = split_tun_read(tso(p, 6), partial=True)
    assert [s[36:38] for s in segments] == [b"\x14\x23"] * 2
    assert [s[4:6] for s in segments] == [b"\x12\x34", b"\x12\x35"]
    assert all(ref_sum(s[:20]) == 0xFFFF for s in segments)
    # Completed, they are exactly the full split.
    assert [complete_partial(s) for s in segments] == split_tun_read(tso(p, 6))
    # UDP: 0x0a00 + 1 + 0x0a00 + 2 + 17 + 10 (length) = 0x141e.
    assert partial_csum_at(udp4(b"hi", 0x141E)) == (20, 6)
    assert partial_csum_at(udp4(b"hi", 0x141F)) is None


def test_partial_vnet_headers_known_answer() -> None:
    little = sys.byteorder == "little"
    v4_tcp = build(Tcp(payload=b"x" * 100), "partial")
    expected = "0100260000001400" + "1000" if little else "0100002600000014" + "0010"
    assert partial_vnet_hdr(v4_tcp).hex() == expected  # NEEDS_CSUM, hdr_len 38, 20/16
    v6_tcp = build(Tcp(version=6, payload=b"x" * 100), "partial")
    assert struct.unpack("=BBHHHH", partial_vnet_hdr(v6_tcp)) == (1, 0, 58, 0, 40, 16)
    assert struct.unpack("=BBHHHH", partial_vnet_hdr(udp4(b"hi", 0x141E))) == (1, 0, 28, 0, 20, 6)
    # Full checksums, and packets that have no checksum to complete: plain.
    assert partial_vnet_hdr(build(Tcp(payload=b"x" * 100))) == PLAIN_VNET_HDR
    icmp = bytes.fromhex("4500001c00004000400100000a0000020a000001") + bytes(8)
    assert partial_vnet_hdr(icmp) == PLAIN_VNET_HDR


@pytest.mark.parametrize("packet", [
    udp4(b"hi", 0x141E, frag=0x2000),  # a first fragment (MF): its length is not the datagram's
    udp4(b"hi", 0x141E, frag=0x0001),  # a later fragment
    build(Tcp(payload=b"x"), "partial")[:39],  # truncated TCP header
    bytes(10),
    b"",
])
def test_not_partial(packet: bytes) -> None:
    assert partial_csum_at(packet) is None
    assert complete_partial(packet) == packet
    assert partial_vnet_hdr(packet) == PLAIN_VNET_HDR


def test_ipv6_extension_header_is_not_partial() -> None:
    packet = bytearray(build(Tcp(version=6, payload=b"x" * 10), "partial"))
    packet[6] = 0  # hop-by-hop options: the transport header is not at 40
    assert partial_csum_at(bytes(packet)) is None


def test_needs_csum_read_is_kept_partial_only_where_it_points_at_the_field() -> None:
    p = Tcp(payload=b"y" * 300)
    packet = build(p, "partial")
    read = struct.pack("=BBHHHH", 1, 0, 40, 0, 20, 16) + packet
    assert split_tun_read(read, partial=True) == [packet]
    assert split_tun_read(read) == [build(p)]
    # csum_start/offset elsewhere (say, an inner header of a tunnel): completed.
    odd = struct.pack("=BBHHHH", 1, 0, 40, 0, 24, 12) + packet
    assert split_tun_read(odd, partial=True) == split_tun_read(odd)


def test_a_tcp_checksum_that_folds_to_zero_completes_to_zero() -> None:
    # Found by hypothesis: a segment whose words sum to ones'-complement zero.
    # The full split writes 0x0000; completing its partial twin must give the
    # same bytes, not the 0xFFFF that only UDP needs (0 means "none" there).
    for version in (4, 6):
        first = build(Tcp(version=version, payload=bytes(2) + b"abcdefgh"))
        c = int.from_bytes(first[(20 if version == 4 else 40) + 16:][:2], "big")
        p = Tcp(version=version, payload=c.to_bytes(2, "big") + b"abcdefgh")
        full = build(p)
        assert full[(20 if version == 4 else 40) + 16:][:2] == b"\0\0"
        assert checksums_ok(full)
        assert complete_partial(build(p, "partial")) == full
    # UDP: the same sum completes to 0xFFFF.
    def udp_partial(payload: bytes) -> bytes:
        return udp4(payload, ref_sum(pseudo_header(*V4, 17, 8 + len(payload))))
    c = int.from_bytes(complete_partial(udp_partial(bytes(2) + b"abcdefgh"))[26:28], "big")
    zero_sum = complete_partial(udp_partial(c.to_bytes(2, "big") + b"abcdefgh"))
    assert zero_sum[26:28] == b"\xff\xff"
    assert checksums_ok(zero_sum)


# -- partial split == full split, completed ------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(super_packets())
def test_partial_split_completes_to_the_full_split(case: tuple[Tcp, int]) -> None:
    p, mss = case
    raw = tso(p, mss)
    partial = split_tun_read(raw, partial=True)
    assert [complete_partial(s) for s in partial] == ref_segment(p, mss)
    assert all(partial_csum_at(s) is not None for s in partial)
    # Written to a TUN: merged runs as before, lone segments with NEEDS_CSUM;
    # either way the kernel ends up with exactly the reference segments.
    for verify in (True, False):
        out = coalesce(partial, verify=verify)
        assert expand(out) == ref_segment(p, mss)
        assert len(out) == 1
    if len(partial) > 1:  # merged: the same super-packet as from full segments
        assert coalesce(partial, verify=False) == coalesce(ref_segment(p, mss))


def test_udp_gso_partial_split_completes_to_the_full_split() -> None:
    from tests.core.test_offload import _udp_gso
    for version in (4, 6):
        raw = _udp_gso(version, bytes(range(256)) * 12, 1000)
        partial = split_tun_read(raw, partial=True)
        full = split_tun_read(raw)
        assert [complete_partial(s) for s in partial] == full
        assert all(checksums_ok(s) for s in full)
        assert all(partial_vnet_hdr(s) != PLAIN_VNET_HDR for s in partial)


# -- negotiation ----------------------------------------------------------------------

def test_control_features_round_trip_and_old_decoders_ignore_them() -> None:
    data = control.encode(control.Probe(7), 1, control.FEATURE_PARTIAL_CSUM)
    assert msgpack.unpackb(data) == {"t": 1, "i": 7, "d": 1, "o": 1}
    assert control.decode_with_features(data) == (control.Probe(7), 1, 1)
    assert control.decode(data) == (control.Probe(7), 1)  # what an older peer reads
    plain = control.encode(control.Probe(7), 1)
    assert plain.hex() == "83a17401a16907a16401"  # unchanged without features
    assert control.decode_with_features(plain) == (control.Probe(7), 1, 0)
    with pytest.raises(control.ControlError):
        control.decode_with_features(msgpack.packb({"t": 1, "i": 7, "d": 1, "o": -1}))


def tcp_segments(count: int, first_seq: int = 1000) -> tuple[list[bytes], list[bytes]]:
    """`count` partial TSO segments of one flow and their full versions."""
    p = Tcp(payload=bytes(range(200)) * 6 * count, seq=first_seq, options=TIMESTAMPS)
    raw = tso(p, 1200)
    return split_tun_read(raw, partial=True), split_tun_read(raw)


@pytest.mark.parametrize(("client", "server", "partial_on_wire"), [
    (True, True, True),     # two offload ends: no checksum summed anywhere
    (True, False, False),   # the server's TUN does not take them (or it is older)
])
def test_partial_only_to_a_peer_that_takes_them(client: bool, server: bool,
                                                partial_on_wire: bool) -> None:
    sim = Sim([SimLink(delay_s=0.005), SimLink(delay_s=0.005)], partial_csum=(client, server))
    sim.run(1.0)
    client_session = sim.client.peers[0].current
    assert client_session is not None
    assert bool(client_session.peer_features & control.FEATURE_PARTIAL_CSUM) == server
    assert sim.client.status(sim.now)["peers"][0]["partial_csum"] == server
    assert sim.server.status(sim.now)["peers"][0]["partial_csum"] is server  # client says so
    partial, full = tcp_segments(8)
    sim.run(0.5, [(sim.now + 0.001 * i, "up", s) for i, s in enumerate(partial)])
    got = sim.delivered["server"]
    assert got == (partial if partial_on_wire else full)
    # Whatever arrived, the TUN write ends up with the full segments.
    assert expand(coalesce(got, verify=False)) == full
    assert sim.client.drops == {} and sim.server.drops == {}


def test_packets_before_the_peer_said_anything_are_completed() -> None:
    """Queued before the handshake, sent before any control message of the
    session arrived: the peer's features are not known yet, so complete."""
    sim = Sim([SimLink(delay_s=0.005)], partial_csum=(True, True))
    partial, full = tcp_segments(3)
    sim.run(1.0, [(sim.now, "up", s) for s in partial])
    assert sim.delivered["server"] == full
    later_partial, _ = tcp_segments(3, first_seq=5000)
    sim.run(0.5, [(sim.now + 0.001 * i, "up", s) for i, s in enumerate(later_partial)])
    assert sim.delivered["server"][3:] == later_partial


def test_fragmented_packets_are_completed_first() -> None:
    """An IPv4 packet without DF above the peer's MTU is fragmented: its
    checksum must be complete before the transport header is split off."""
    sim = Sim([SimLink(delay_s=0.005)], partial_csum=(True, True), tunnel_mtu=576)
    sim.run(1.0)
    payload = bytes(range(256)) * 4
    pseudo = (0x0A00 + 1 + 0x0A00 + 2 + 17 + 8 + len(payload)) % 0xFFFF
    packet = udp4(payload, pseudo, frag=0)
    assert partial_csum_at(packet) == (20, 6)
    sim.run(0.5, [(sim.now, "up", packet)])
    fragments = sim.delivered["server"]
    assert len(fragments) > 1
    field = fragments[0][26:28]
    assert field == offload.complete_partial(packet)[26:28] != pseudo.to_bytes(2, "big")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([4, 6]), st.binary(max_size=1400), st.integers(0, 2**32 - 1),
       st.integers(0, 0xFFFF), st.sampled_from(["full", "partial"]))
def test_a_lone_packet_reaches_the_kernel_right(version: int, payload: bytes, seq: int,
                                                port: int, csum: str) -> None:
    """The writer's rule on any lone TCP packet: a partial one always goes
    with NEEDS_CSUM; a full one as it is (or, when its checksum equals its
    pseudo-header sum by chance, with NEEDS_CSUM, which gives it the same
    checksum): what the kernel ends up with is always the full packet."""
    p = Tcp(version=version, payload=payload, seq=seq, sport=port, flags=0x18)
    packet = build(p, csum)
    out = coalesce([packet], verify=False)
    assert len(out) == 1
    if csum == "partial":
        assert out[0][0] == offload.VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert expand(out) == [build(p)]
