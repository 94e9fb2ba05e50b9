"""Order per inner flow: the sender's flow gaps, the receiver's release
ahead of another flow's gap, and a ping that no longer waits for a bulk
flow's packets on a slower link."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest

from stripe import wire
from stripe.flows import FLOW_BUCKETS, FlowChains, flow_bucket
from stripe.reorder import ReorderBuffer
from stripe.sendqueue import SPARSE_FLOW_BYTES, SPARSE_INTERVAL_S, SPARSE_PEER_BYTES, SendQueue

from .netsim import Sim, SimLink

FIRST, IN_ORDER = wire.FLOW_FIRST, wire.FLOW_IN_ORDER


def udp4(sport: int, dport: int, seq: int = 0, size: int = 200, frag: int = 0,
         src: bytes = bytes([10, 0, 0, 1]), dst: bytes = bytes([10, 0, 0, 2])) -> bytes:
    """An IPv4 UDP packet from `sport` to `dport` whose payload starts with `seq`."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, frag, 64, 17, 0, src, dst)
    udp = struct.pack("!HHHH", sport, dport, size - 20, 0)
    return header + udp + struct.pack("!Q", seq) + bytes(size - 36)


def udp6(sport: int, dport: int, size: int = 200) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, size - 40, 17, 64, bytes(15) + b"\x01",
                         bytes(15) + b"\x02")
    return header + struct.pack("!HHHH", sport, dport, size - 40, 0) + bytes(size - 48)


def _first_in_another_bucket(taken: bytes, make: Callable[[int], bytes]) -> int:
    """The first n from 2 (a port, a host) whose packet `make(n)` is not in
    `taken`'s bucket: hash() is salted per process, and two flows meant to be
    told apart share a bucket in 1 process of 1024."""
    return next(n for n in range(2, 200) if flow_bucket(make(n)) != flow_bucket(taken))


def test_a_flow_keeps_its_bucket_and_flows_spread_over_buckets() -> None:
    assert flow_bucket(udp4(1000, 53, seq=1)) == flow_bucket(udp4(1000, 53, seq=2, size=900))
    assert flow_bucket(udp6(1000, 53)) == flow_bucket(udp6(1000, 53, size=1000))
    # hash() is salted per process, so the count varies from run to run: 100
    # flows in 1024 buckets give 95 distinct on average, fewer than 90 in 0.5 %
    # of processes (a flaky bound, seen in CI), fewer than 80 in 5e-10.  A
    # hash that ignores the ports gives 1.
    buckets = {flow_bucket(udp4(40000 + i, 443)) for i in range(100)}
    assert len(buckets) >= 80 and all(0 <= b < FLOW_BUCKETS for b in buckets)
    assert len({flow_bucket(udp6(40000 + i, 443)) for i in range(100)}) >= 80


def test_ip_options_do_not_move_a_flow_to_another_bucket() -> None:
    plain = udp4(1000, 53)
    with_options = bytes([0x46]) + plain[1:20] + bytes(4) + plain[20:]  # IHL 6: 4 option bytes
    assert flow_bucket(with_options) == flow_bucket(plain)


def test_fragments_and_portless_packets_go_by_their_addresses() -> None:
    # A fragment's first payload bytes are no ports: the ports of two
    # fragments of different flows do not separate them.
    more_fragments = 0x2000
    assert flow_bucket(udp4(1, 2, frag=more_fragments)) == flow_bucket(
        udp4(3, 4, frag=more_fragments)) == flow_bucket(udp4(5, 6, frag=185))
    def fragment_to(host: int) -> bytes:
        return udp4(1, 2, frag=more_fragments, dst=bytes([10, 0, 0, host]))
    other_host = fragment_to(_first_in_another_bucket(fragment_to(2), fragment_to))
    assert flow_bucket(other_host) != flow_bucket(udp4(1, 2, frag=more_fragments))
    assert flow_bucket(b"\x45") == 0  # no IP packet: no crash


def test_each_message_says_how_far_back_its_flows_previous_one_is() -> None:
    a = udp4(1000, 53)
    b = udp4(_first_in_another_bucket(a, lambda port: udp4(port, 53)), 53)
    chains = FlowChains()
    assert chains.gaps(0, [a, b, a, a]) == [FIRST, FIRST, 2, 1]
    assert chains.gaps(4, [b]) == [3]
    assert chains.gaps(4 + IN_ORDER, [a]) == [IN_ORDER]  # too far back to say
    assert FlowChains().gaps(0, [a]) == [FIRST]  # a new session starts afresh


def test_runs_of_one_flow_get_the_gaps_one_by_one_would() -> None:
    # The streak shortcut (no hash for a packet like the one before it)
    # must agree with hashing every packet, whatever the mix.
    rng = random.Random(7)
    kinds = [udp4(1, 2), udp4(1, 3), udp4(1, 2, frag=0x2000), udp6(1, 2), udp6(5, 6),
             udp4(1, 2, src=bytes([10, 9, 9, 9]))]
    chains, reference = FlowChains(), {}
    counter = 0
    for _ in range(200):
        run = [rng.choice(kinds) for _ in range(rng.randrange(1, 12))]
        expected = []
        for packet in run:
            bucket = flow_bucket(packet)
            previous = reference.get(bucket)
            expected.append(FIRST if previous is None else counter - previous)
            reference[bucket] = counter
            counter += 1
        assert chains.gaps(counter - len(run), run) == expected


def _buffer() -> tuple[ReorderBuffer, list[bytes]]:
    buffer = ReorderBuffer(hold_s=0.1)
    return buffer, buffer.ready


SLOW = 0b100  # link 2, announced and never heard from: loss inference waits for it


def test_another_flows_packet_goes_ahead_of_a_gap_and_a_flows_own_waits() -> None:
    buffer, out = _buffer()
    buffer.push(0, b"A0", 0, 0.0, SLOW | 0b11, flow_gap=FIRST)
    # 1 (flow A) is on the slow link; 2 is flow B's first: it goes at once.
    buffer.push(2, b"B2", 1, 0.001, SLOW | 0b11, flow_gap=FIRST)
    assert out == [b"A0", b"B2"] and buffer.stats.ahead == 1 and buffer.held == 0
    # 3 is A's next after 1: it waits, as does a message without a flow gap.
    buffer.push(3, b"A3", 1, 0.002, flow_gap=2)
    buffer.push(4, b"X4", 1, 0.003, flow_gap=IN_ORDER)
    assert out == [b"A0", b"B2"] and buffer.held == 2
    buffer.push(1, b"A1", 2, 0.004, flow_gap=1)
    assert out == [b"A0", b"B2", b"A1", b"A3", b"X4"]
    assert buffer.next_seq == 5 and buffer.held == 0 and buffer.stats.lost == 0


def test_a_flows_chain_is_released_when_its_head_arrives() -> None:
    buffer, out = _buffer()
    # 0 (flow A) is on the slow link; flow B's 2 and 3 arrive before its 1.
    buffer.push(2, b"B2", 1, 0.0, SLOW | 0b11, flow_gap=1)
    buffer.push(3, b"B3", 1, 0.0, SLOW | 0b11, flow_gap=1)
    assert out == []
    buffer.push(1, b"B1", 0, 0.001, SLOW | 0b11, flow_gap=FIRST)
    assert out == [b"B1", b"B2", b"B3"] and buffer.stats.ahead == 3
    buffer.push(1, b"B1", 0, 0.002, flow_gap=FIRST)  # a duplicate: not again
    assert out == [b"B1", b"B2", b"B3"]
    buffer.push(0, b"A0", 2, 0.003, flow_gap=FIRST)
    assert out == [b"B1", b"B2", b"B3", b"A0"] and buffer.next_seq == 4


def test_a_gap_given_up_releases_what_waited_for_it_and_keeps_its_deadline() -> None:
    buffer, out = _buffer()
    # 0 and 1 are lost; 2 (flow B, first) went ahead: the gap still has a deadline.
    buffer.push(2, b"B2", 1, 0.0, SLOW | 0b10, flow_gap=FIRST)
    buffer.push(3, b"A3", 1, 0.01, SLOW | 0b10, flow_gap=3)  # waits for 0
    buffer.push(4, b"B4", 1, 0.02, SLOW | 0b10, flow_gap=2)  # 2 went: at once
    assert out == [b"B2", b"B4"]
    assert buffer.deadline() == 0.1
    buffer.poll(0.1)
    assert out == [b"B2", b"B4", b"A3"]
    assert buffer.next_seq == 5 and buffer.stats.lost == 2 and buffer.held == 0
    assert buffer.stats.deadline_releases == 1


def test_one_flow_over_skewed_links_is_released_in_order_not_ahead() -> None:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.060)])
    sim.run(1.0)
    sim.run(2.0, [(sim.now + i * 0.002, "up", udp4(1, 2, seq=i, size=1000)) for i in range(500)])
    assert [struct.unpack_from("!Q", p, 28)[0] for p in sim.delivered["server"]] == list(
        range(500))
    stats = sim.server.peers[0].current.reorder.stats  # type: ignore[union-attr]
    assert stats.ahead == 0 and stats.max_held > 5  # it did wait for the slow link


BULK = 1  # the bulk flow's source port in the ping tests; the ping's is PING
PING = _first_in_another_bucket(udp4(BULK, 9), lambda port: udp4(port, 9))


def _tagged(seq: int, sport: int) -> bytes:
    return udp4(sport, 9, seq=seq, size=1000 if sport == BULK else 100)


def _delays(sim: Sim, traffic: list[tuple[float, str, bytes]], seconds: float,
            step: float = 0.001) -> tuple[dict[bytes, float], int]:
    """Run the sim `seconds` in steps, sending `traffic` up: each delivered
    packet's delay, and the most packets waiting at the client's sending edge."""
    sent_at = {packet: t for t, _, packet in traffic}
    delays: dict[bytes, float] = {}
    most_queued = 0
    end = sim.now + seconds
    while sim.now < end:
        now = sim.now
        sim.run(step, [x for x in traffic if now <= x[0] < now + step])
        most_queued = max(most_queued, len(sim.client.peers[0].queue))
        for packet in sim.delivered["server"]:
            delays.setdefault(packet, sim.now - sent_at[packet])
    return delays, most_queued


def test_a_ping_crosses_the_fast_link_without_waiting_for_the_bulk_on_the_slow_one() -> None:
    # Round robin puts every other bulk packet on the 60 ms link; pings go on
    # whichever link is next.  Those on the 10 ms link used to wait ~50 ms
    # for the bulk packets sent before them on the slow one.
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.060)])
    sim.run(1.0)
    start = sim.now
    traffic = [(start + i * 0.002, "up", _tagged(i, BULK)) for i in range(500)]
    traffic += [(start + 0.1 + i * 0.037, "up", _tagged(10_000 + i, PING)) for i in range(20)]
    delays, _ = _delays(sim, traffic, 1.3)
    pings = [d for p, d in delays.items() if p[21] == PING]
    bulk = [struct.unpack_from("!Q", p, 28)[0] for p in sim.delivered["server"] if p[21] == BULK]
    assert len(pings) == 20 and bulk == list(range(500))  # the bulk flow stays in order
    fast = [d for d in pings if d < 0.03]
    assert len(fast) >= 5, sorted(round(d * 1000) for d in pings)
    stats = sim.server.peers[0].current.reorder.stats  # type: ignore[union-attr]
    assert stats.ahead >= len(fast) and stats.late == 0
    assert sim.server.status(sim.now)["peers"][0]["reorder"]["ahead"] == stats.ahead


# -- the sending edge: sparse flows skip the queue ------------------------------


def test_a_flow_with_nothing_waiting_skips_within_its_quantum() -> None:
    queue = SendQueue()
    assert queue.push(b"bulk", 0.0, 1) is False and len(queue) == 1
    assert not queue.may_skip(1, 100, 0.0)  # its own packets wait: it waits behind them
    assert queue.may_skip(2, 100, 0.0)
    assert queue.may_skip(2, SPARSE_FLOW_BYTES - 100, 0.01)
    assert not queue.may_skip(2, 1, 0.02)  # its quantum is spent for this interval
    assert queue.may_skip(2, 100, SPARSE_INTERVAL_S)  # a new interval
    assert queue.pop() == b"bulk" and not queue and queue.may_skip(1, 100, 0.2)
    assert queue.skips == 4


def test_what_all_flows_skip_is_bounded_per_peer() -> None:
    queue = SendQueue()
    queue.push(b"bulk", 0.0, 0)
    sizes = [1000] * 100
    skipped = sum(queue.may_skip(bucket, size, 0.0) for bucket, size in enumerate(sizes, 1))
    assert skipped == SPARSE_PEER_BYTES // 1000


def test_a_full_queue_drops_its_oldest_and_keeps_its_counts() -> None:
    queue = SendQueue(maxlen=2)
    queue.push(b"a", 0.0, 1)
    queue.push(b"b", 0.0, 2)
    assert queue.push(b"c", 0.0, 2) is True  # "a" went
    assert queue.may_skip(1, 10, 0.0) and not queue.may_skip(2, 10, 0.0)
    assert [queue.pop(), queue.pop()] == [b"b", b"c"]
    assert queue.may_skip(2, 10, 0.0)


def test_a_ping_skips_a_bulk_flows_backlog_at_the_sending_edge() -> None:
    # 2 x 2 Mbit/s and a bulk flow offering 8: the windows are full and the
    # bulk flow's packets wait at the sending edge; a ping every 50 ms does not.
    sim = Sim([SimLink(delay_s=0.010, rate_bps=2e6), SimLink(delay_s=0.010, rate_bps=2e6)],
              scheduler="adaptive")
    sim.run(1.0)
    start = sim.now
    traffic = [(start + i * 0.0012, "up", _tagged(i, BULK)) for i in range(2500)]
    traffic += [(start + 1.0 + i * 0.05, "up", _tagged(10_000 + i, PING)) for i in range(30)]
    delays, most_queued = _delays(sim, traffic, 3.2)
    pings = sorted(d for p, d in delays.items() if p[21] == PING)
    bulk = sorted(d for p, d in delays.items() if p[21] == BULK)
    assert most_queued > 20  # the bulk flow did queue
    median_ping, median_bulk = pings[len(pings) // 2], bulk[len(bulk) // 2]
    assert median_ping < 0.5 * median_bulk, (median_ping, median_bulk)
    assert len(pings) == 30  # none lost to the bulk flow's queue management
    assert sim.client.status(sim.now)["peers"][0]["skipped_queue"] >= 25
    # Small: each went on both links too, and the second to arrive was dropped.
    assert sim.client.peers[0].copies.copies_sent >= 25
    assert sim.server.drops["duplicate"] >= 20


def test_sparse_counts_a_flows_bytes_and_is_not_a_skip() -> None:
    queue = SendQueue()
    assert queue.sparse(2, SPARSE_FLOW_BYTES - 100, 0.0)
    assert queue.sparse(2, 100, 0.01)
    assert not queue.sparse(2, 1, 0.02)  # its quantum is spent for this interval
    assert not queue.may_skip(2, 1, 0.03)  # the same quantum
    assert queue.sparse(2, 100, SPARSE_INTERVAL_S)
    assert queue.skips == 0


def _light_sim(loss: float = 0.0) -> Sim:
    """Two links, the second dropping `loss` of what it carries; nothing
    else to send, so nothing waits at the sending edge."""
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.012, loss=loss)],
              scheduler="roundrobin", seed=3)
    sim.run(1.0)
    return sim


def test_a_ping_goes_on_two_links_when_nothing_waits() -> None:
    # The direction that carries only a download's ACKs is not loaded, but
    # its links' delays swing: a ping, DNS, a call's packet goes on two.
    sim = _light_sim(loss=0.3)
    traffic = [(sim.now + i * 0.05, "up", _tagged(i, PING)) for i in range(40)]
    sim.run(2.5, traffic)
    got = sorted(struct.unpack_from("!Q", p, 28)[0] for p in sim.delivered["server"])
    assert got == list(range(40))  # none lost, though half went on a lossy link
    peer = sim.client.peers[0]
    assert peer.copies.copies_sent == 40 and peer.queue.skips == 0
    assert sim.server.drops["duplicate"] > 0 and sim.server.peers[0].copies.copies_first > 0


def test_small_tcp_packets_and_large_ones_go_once_when_nothing_waits() -> None:
    # ACKs: the next one covers a lost or late one, and copying them would
    # double the packets of a download's return direction.
    sim = _light_sim()
    ack = bytearray(udp4(5000, 80, size=52))
    ack[9] = 6  # TCP
    traffic = [(sim.now + i * 0.05, "up", bytes(ack)) for i in range(20)]
    traffic += [(sim.now + 0.025 + i * 0.05, "up", udp4(PING, 9, seq=i, size=1000))
                for i in range(20)]
    sim.run(1.5, traffic)
    assert len(sim.delivered["server"]) == 40
    assert sim.client.peers[0].copies.copies_sent == 0


def test_a_flow_of_small_packets_is_copied_only_within_the_sparse_budget() -> None:
    # 100-byte packets every 2 ms: 5,000 bytes per interval, of which the
    # first 3,000 (30 packets) are sparse and go on two links.
    sim = _light_sim()
    start = sim.now
    sim.run(1.1, [(start + i * 0.002, "up", _tagged(i, PING)) for i in range(500)])
    assert len(sim.delivered["server"]) == 500
    copies = sim.client.peers[0].copies.copies_sent
    intervals = 1.0 / SPARSE_INTERVAL_S
    assert 0.8 * intervals * 30 <= copies <= (intervals + 1) * 30, copies


def test_a_counter_far_ahead_is_skipped_to_at_once() -> None:
    buffer, out = _buffer()
    # An authenticated peer's bug: a counter 2**40 ahead, waiting on 3 (as
    # does 5: two waiters on one message, which an honest sender never makes).
    buffer.push(5, b"A5", 1, 0.0, SLOW | 0b10, flow_gap=2)
    buffer.push(2**40, b"B", 1, 0.0, SLOW | 0b10, flow_gap=2**40 - 3)
    buffer.poll(0.1)  # the gaps given up one after the other, without a walk over 2**40
    buffer.poll(0.2)
    assert sorted(out) == [b"A5", b"B"] and buffer.next_seq == 2**40 + 1


def test_late_packets_tell_how_late_and_whether_inference_gave_them_up() -> None:
    buffer, out = _buffer()
    every = SLOW | 0b11  # each packet announces the three links
    # Link 2 is announced and not heard from: 0 waits out the hold, skipped.
    buffer.push(1, b"1", 0, 0.0, every)
    buffer.push(2, b"2", 1, 0.01, every)
    assert out == [] and buffer.held == 2
    buffer.poll(0.1)
    assert out == [b"1", b"2"] and buffer.stats.deadline_releases == 1
    buffer.push(0, b"0", 2, 0.25, every)  # 150 ms after its skip
    stats = buffer.stats
    assert out[-1] == b"0" and stats.late == 1 and stats.late_after_inference == 0
    assert stats.late_after_max_s == pytest.approx(0.15)
    # Every link past 3, and 3 missing: inference gives it up, wrongly.
    buffer.push(4, b"4", 0, 0.3, every)
    buffer.push(5, b"5", 1, 0.3, every)
    buffer.push(6, b"6", 2, 0.3, every)
    assert out[-3:] == [b"4", b"5", b"6"] and stats.inferred_releases == 1
    buffer.push(3, b"3", 1, 0.32, every)
    assert stats.late == 2 and stats.late_after_inference == 1
    assert stats.late_after_count == 2
    assert stats.late_after_sum_s == pytest.approx(0.15 + 0.02)
    assert stats.late_after_max_s == pytest.approx(0.15)
