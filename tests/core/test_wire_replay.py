"""Known-answer tables for the wire layouts and the replay window."""

from __future__ import annotations

import pytest

from stripe import wire
from stripe.reorder import HEAP_SLACK, ReorderBuffer
from stripe.replay import WINDOW_SIZE, ReplayWindow


def test_sizes_are_derived_and_fixed() -> None:
    assert wire.TRANSPORT_HEADER_SIZE == 26
    assert wire.TRANSPORT_OVERHEAD == 42
    assert wire.WIRE_OVERHEAD_IPV4 == 70
    assert wire.HANDSHAKE_INIT_SIZE == 148
    assert wire.HANDSHAKE_RESP_SIZE == 92


def test_transport_header_known_answer() -> None:
    raw = wire.encode_transport_header(
        wire.MessageType.DATA, link_id=3, link_mask=0b101, receiver_index=0x01020304,
        counter=0x1122334455667788, link_seq=0xAABBCCDD, send_time_us=2**32 + 5,
        flow_gap=0x0102,
    )
    assert raw.hex() == (
        "04" "03" "0005" "01020304" "1122334455667788" "aabbccdd" "00000005" "0102"
    )
    header = wire.decode_transport_header(raw + bytes(16))
    assert header == wire.TransportHeader(
        wire.MessageType.DATA, 3, 5, 0x01020304, 0x1122334455667788, 0xAABBCCDD, 5, 0x0102
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (bytes([4]) + bytes(40), "short"),
        (bytes([4, 0, 0x10, 0]) + bytes(38), "bad_flags"),
    ],
)
def test_transport_header_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as err:
        if not data:
            wire.peek_type(data)
        wire.decode_transport_header(data)
    assert err.value.reason == reason


def test_peek_type_unknown() -> None:
    with pytest.raises(wire.WireError) as err:
        wire.peek_type(b"\x09abc")
    assert err.value.reason == "unknown_type"


def test_handshake_init_roundtrip_and_mac1() -> None:
    noise = bytes(range(108))
    key = wire.mac1_key(bytes(32))
    raw = wire.encode_handshake_init(2, 0xDEADBEEF, noise, key)
    assert len(raw) == wire.HANDSHAKE_INIT_SIZE
    assert raw[:8].hex() == "01020000deadbeef"
    init = wire.decode_handshake_init(raw)
    assert (init.link_id, init.sender_index, init.noise_message) == (2, 0xDEADBEEF, noise)
    assert wire.mac1_valid(raw, wire.HANDSHAKE_INIT_MAC1_OFFSET, key)
    tampered = bytearray(raw)
    tampered[20] ^= 1
    assert not wire.mac1_valid(bytes(tampered), wire.HANDSHAKE_INIT_MAC1_OFFSET, key)
    with pytest.raises(wire.WireError):
        wire.decode_handshake_init(raw[:-1])


def test_handshake_resp_roundtrip() -> None:
    noise = bytes(range(48))
    raw = wire.encode_handshake_resp(1, 7, 9, noise, wire.mac1_key(bytes(32)))
    resp = wire.decode_handshake_resp(raw)
    assert (resp.link_id, resp.sender_index, resp.receiver_index) == (1, 7, 9)
    assert resp.noise_message == noise


@pytest.mark.parametrize(
    ("packet", "ok"),
    [
        (bytes([0x45, 0, 0, 20]) + bytes(16), True),
        (bytes([0x45, 0, 0, 21]) + bytes(16), False),  # length field lies
        (bytes([0x44, 0, 0, 20]) + bytes(16), False),  # IHL < 5
        (bytes([0x60, 0, 0, 0, 0, 0]) + bytes(34), True),
        (bytes([0x60, 0, 0, 0, 0, 1]) + bytes(34), False),
        (bytes([0x50]) + bytes(30), False),  # not IP
        (b"\x45", False),
    ],
)
def test_inner_packet_validation(packet: bytes, ok: bool) -> None:
    assert wire.inner_packet_valid(packet) is ok


# (counter, expected accept) applied in order to one window: the table of
# wireguard-go's replay test, adapted to our window size.
W = WINDOW_SIZE
REPLAY_TABLE = [
    (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
    (W, True), (W - 1, True), (W - 1, False), (W - 2, True), (2, True), (2, False),
    (W + 16, True), (3, False),  # now too old: highest - 3 >= W
    (W + 16, False), (W * 3, True), (W * 3 - W + 1, True), (W * 3 - W, False),
    (2**64 - 1, False),  # the reserved limit
    (2**64 - 2, True), (W * 3, False),
]


def test_replay_window_table() -> None:
    window = ReplayWindow()
    for step, (counter, expected) in enumerate(REPLAY_TABLE):
        assert window.check(counter) is expected, f"step {step}: check({counter})"
        assert window.accept(counter) is expected, f"step {step}: accept({counter})"


def test_replay_window_check_does_not_mutate() -> None:
    window = ReplayWindow()
    assert window.check(5) and window.check(5)
    assert window.highest == -1


def test_replay_window_wraparound_clears_old_bits() -> None:
    window = ReplayWindow()
    for counter in range(0, 200_000, 37):
        assert window.accept(counter)
    for counter in range(200_000 - W + 1, 200_000):
        assert window.check(counter) is (counter % 37 != 0)


def test_reorder_memory_stays_bounded_over_a_long_interleaved_flow() -> None:
    """Two links in runs of 32, one always a run behind: packets are held
    nearly all the time, released in order, and nothing is lost.  The
    buffer's bookkeeping must not grow with the number of packets."""
    buffer = ReorderBuffer(hold_s=0.05)
    delivered = 0
    now = 0.0
    for block in range(0, 200_000, 64):
        for seq in [*range(block + 32, block + 64), *range(block, block + 32)]:
            link = 0 if seq % 64 < 32 else 1
            assert buffer.push(seq, b"x", link, now, link_mask=0b11)
        now += 0.0005
        delivered += len(buffer.ready)
        buffer.ready.clear()
        assert len(buffer._held_heap) <= 2 * buffer.held + HEAP_SLACK + 1
        assert len(buffer._arrivals) <= 64
    assert delivered == 200_000 and buffer.stats.lost == 0


def test_a_packet_at_the_frontier_goes_at_once_and_uncovers_what_was_held() -> None:
    """The packet the frontier waits for is delivered without being held,
    and takes with it the held packets right behind it."""
    buffer = ReorderBuffer(hold_s=0.05)
    for seq in (2, 3, 5):
        buffer.push(seq, bytes([seq]), 1, 0.0, link_mask=0b11)
    assert buffer.ready == [] and buffer.held == 3
    buffer.push(0, b"\0", 0, 0.001, link_mask=0b11)
    assert buffer.ready == [b"\0"] and buffer.next_seq == 1
    buffer.push(1, b"\1", 0, 0.001, link_mask=0b11)
    assert buffer.ready == [b"\0", b"\1", b"\2", b"\3"] and buffer.next_seq == 4
    assert buffer.held == 1 and buffer.stats.lost == 0


def test_a_packet_at_the_frontier_that_is_not_its_links_newest_lets_inference_run() -> None:
    """Link 0 delivered counter 5 before counter 1 (it reordered); link 1,
    which held the gaps up, has since gone quiet.  When 1 comes, every
    link still active has delivered past the gap at 2-4: it is given up at
    once, not after the hold."""
    buffer = ReorderBuffer(hold_s=0.05)
    buffer.push(0, b"\0", 1, 0.0, link_mask=0b01)
    buffer.push(5, b"\5", 0, 0.0, link_mask=0b01)
    assert buffer.ready == [b"\0"] and buffer.held == 1
    buffer.push(1, b"\1", 0, 0.2, link_mask=0b01)
    assert buffer.ready == [b"\0", b"\1", b"\5"] and buffer.next_seq == 6
    assert buffer.stats.lost == 3 and buffer.stats.inferred_releases == 1
    assert buffer.stats.deadline_releases == 0


def test_a_packet_at_the_frontier_and_its_links_newest_leaves_the_gap_behind_it_waiting() -> None:
    """Counter 0 arrives on link 0, which has sent nothing newer: the gap
    at 1 may still be in flight on link 0, so what link 1 delivered waits
    (for the hold, or for link 0 to show it has nothing older)."""
    buffer = ReorderBuffer(hold_s=0.05)
    buffer.push(2, b"\2", 1, 0.0, link_mask=0b11)
    buffer.push(0, b"\0", 0, 0.001, link_mask=0b11)
    assert buffer.ready == [b"\0"] and buffer.held == 1 and buffer.stats.lost == 0
    buffer.note_progress(0, 3, 0.002)  # link 0: everything below 3 came or is lost
    assert buffer.ready == [b"\0", b"\2"] and buffer.stats.lost == 1
