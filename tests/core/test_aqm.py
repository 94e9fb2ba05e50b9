"""Queue management at the sending edge (`stripe.aqm`): CoDel's control law
over measured queues, ECN marking, and the closed loop with a loss-based
sender on simulated links with deep buffers (fake clock)."""

from __future__ import annotations

import itertools
import math
import struct

import msgpack
import pytest
from tests.core.netsim import Sim, SimLink, ip_packet, packet_seq

from stripe import control
from stripe.aqm import (
    INTERVAL_S,
    SINGLE_FLOW_QUEUE_RTTS,
    VARIABILITY_ALLOWANCE_SCALE,
    BondQueue,
    CoDel,
    mark_ce,
    measure_bond,
)
from stripe.estimator import FEEDBACK_INTERVAL_S, QUEUE_FRESH_S
from stripe.links import Link
from stripe.offload import checksum
from stripe.sendqueue import QUEUE_MAX_PACKETS, QUEUE_MIN_PACKETS, SendQueue, limit_for
from stripe.window import QUEUE_CAP_MIN_S, queue_cap_s, variability_queue_s

TARGET = 0.005


def drops_over(codel: CoDel, queue_s: float, start: float, seconds: float,
               step: float = 0.001, base_rtt_s: float = 0.0) -> list[float]:
    """Offer a packet every `step` with the bond's queue at `queue_s`; the
    times CoDel signalled."""
    times = []
    for i in range(round(seconds / step)):
        now = start + i * step
        if codel.should_signal(BondQueue(queue_s, base_rtt_s), now):
            times.append(now)
    return times


def test_no_signal_below_target() -> None:
    codel = CoDel(TARGET)
    assert drops_over(codel, TARGET * 0.9, 0.0, 5.0) == []
    assert not codel.dropping


def test_first_signal_after_a_whole_interval_above_target() -> None:
    codel = CoDel(TARGET)
    times = drops_over(codel, 0.030, 10.0, 0.5)
    assert times, "a standing queue was never signalled"
    assert times[0] == pytest.approx(10.0 + INTERVAL_S, abs=0.0015)


def test_signals_come_faster_while_the_queue_stands() -> None:
    codel = CoDel(TARGET)
    times = drops_over(codel, 0.030, 0.0, 3.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # CoDel's control law: after the n-th signal the next is due in
    # interval / sqrt(n).
    for n, gap in enumerate(gaps[:8], start=1):
        assert gap == pytest.approx(INTERVAL_S / math.sqrt(n), abs=0.0015), (n, gaps)
    assert codel.count == len(times)


def test_a_short_burst_is_not_signalled() -> None:
    codel = CoDel(TARGET)
    assert drops_over(codel, 0.050, 0.0, INTERVAL_S * 0.9) == []
    assert drops_over(codel, 0.0, INTERVAL_S * 0.9, 0.01) == []
    # Above again: the interval starts over.
    assert drops_over(codel, 0.050, 1.0, INTERVAL_S * 0.9) == []


def test_leaves_dropping_when_the_queue_drains_and_remembers_the_rate() -> None:
    codel = CoDel(TARGET)
    drops_over(codel, 0.030, 0.0, 2.0)
    reached = codel.count
    assert reached > 4
    drops_over(codel, 0.0, 2.0, 0.2)
    assert not codel.dropping
    # Soon above again: it resumes near the rate it had reached (RFC 8289),
    # not at one drop per interval.
    times = drops_over(codel, 0.030, 2.2, 0.5)
    assert times
    assert codel.count > 2
    assert times[1] - times[0] < INTERVAL_S / 1.5


def test_target_grows_with_the_bonds_round_trip() -> None:
    codel = CoDel(TARGET)
    assert codel.target_for(BondQueue(0.0, 0.001)) == TARGET
    assert codel.target_for(BondQueue(0.0, 0.080)) == pytest.approx(
        SINGLE_FLOW_QUEUE_RTTS * 0.080)
    assert codel.interval_for(0.0) == INTERVAL_S
    assert codel.interval_for(0.2) == pytest.approx(0.2 + FEEDBACK_INTERVAL_S)
    # A 30 ms queue on a bond whose slowest link has an 80 ms RTT is what a
    # single loss-based flow needs to keep it busy: no signal.
    assert drops_over(codel, 0.030, 0.0, 2.0, base_rtt_s=0.080) == []
    assert drops_over(codel, 0.060, 2.0, 2.0, base_rtt_s=0.080) != []


def _ipv4(tos: int, payload: bytes = b"x" * 12) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[1] = tos
    struct.pack_into("!H", header, 2, 20 + len(payload))
    header[8], header[9] = 64, 6
    header[12:16], header[16:20] = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    return bytes(header) + payload


@pytest.mark.parametrize("tos", [0x01, 0x02, 0xB8 | 0x02, 0xFE, 0x03])
def test_mark_ce_on_ecn_capable_ipv4_keeps_the_checksum_valid(tos: int) -> None:
    packet = _ipv4(tos)
    marked = mark_ce(packet)
    assert marked is not None
    assert marked[1] == tos | 0x03  # DSCP kept, ECN = CE
    assert checksum(marked[:20]) == 0  # a valid header sums to 0xFFFF
    assert marked[2:10] == packet[2:10] and marked[12:] == packet[12:]


def test_mark_ce_refuses_what_must_be_dropped() -> None:
    assert mark_ce(_ipv4(0x00)) is None  # Not-ECT
    assert mark_ce(_ipv4(0xB8)) is None  # EF, Not-ECT
    assert mark_ce(b"") is None
    assert mark_ce(b"\x45\x02") is None  # truncated
    assert mark_ce(bytes(40)) is None  # version 0


def test_mark_ce_on_ipv6() -> None:
    # Version 6, traffic class 0xB9 (EF + ECT(1)), flow label 0x12345.
    first = (6 << 28) | (0xB9 << 20) | 0x12345
    packet = struct.pack("!I", first) + bytes(36)
    marked = mark_ce(packet)
    assert marked is not None
    word = struct.unpack_from("!I", marked)[0]
    assert word >> 28 == 6 and (word >> 20) & 0xFF == 0xBB and word & 0xFFFFF == 0x12345
    not_ect = struct.pack("!I", (6 << 28) | (0xB8 << 20)) + bytes(36)
    assert mark_ce(not_ect) is None


def _link(link_id: int, qdelay_s: float, at: float, rate_bps: float = 10e6,
          min_rtt_s: float | None = None, spread: float | None = 0.0) -> Link:
    """A link with a report; `spread` None: its capacity swings not yet measured."""
    link = Link(link_id, f"l{link_id}")
    est = link.est
    if spread is not None:
        est._spread.spread = spread
    est.standing_qdelay_s, est.qdelay_at, est.rate_bps = qdelay_s, at, rate_bps
    link.health.min_rtt_s = min_rtt_s
    return link


def test_bond_queue_is_the_shortest_link_queue() -> None:
    one_packet = 1500 * 8 / 10e6
    links = [_link(0, 0.040, 10.0, min_rtt_s=0.02), _link(1, 0.025, 10.0, min_rtt_s=0.08)]
    bond = measure_bond(links, 10.01)
    assert bond.queue_s == pytest.approx(0.025 - one_packet)
    assert bond.base_rtt_s == 0.08
    # Fixed-rate links (measured steady): no allowance ...
    assert bond.allowance_s == 0.0
    # ... links not measured yet are assumed to swing like cellular ones.
    fresh = [_link(0, 0.040, 10.0, min_rtt_s=0.02, spread=None)]
    assert measure_bond(fresh, 10.01).allowance_s > 0.0
    # A link without a queue: the bond has room, whatever the others hold.
    links.append(_link(2, 0.0, 10.0))
    assert measure_bond(links, 10.01).queue_s == 0.0
    assert measure_bond([], 10.0) == BondQueue(0.0, 0.0)


def test_bond_queue_follows_fresh_reports_and_drains_stale_ones() -> None:
    link = _link(0, 0.050, 10.0)
    one_packet = 1500 * 8 / 10e6
    # Reports keep coming: the queue stands (it is being refilled).
    assert measure_bond([link], 10.0 + QUEUE_FRESH_S * 0.9).queue_s == pytest.approx(
        0.050 - one_packet)
    # No report with new packets for a while: what is left of it.
    later = 10.0 + QUEUE_FRESH_S + 0.01
    assert measure_bond([link], later).queue_s == pytest.approx(
        max(0.050 - (later - 10.0) - one_packet, 0.0))


def test_a_bond_whose_capacity_varies_may_keep_more_queue() -> None:
    """The allowance is the smallest of the links' variability queues, which
    grow with how much each link's delivery varies (a cellular link's swings)."""
    fixed, cellular = _link(0, 0.0, 10.0, min_rtt_s=0.05), _link(1, 0.0, 10.0, min_rtt_s=0.05)
    for est, spread in ((fixed.est, 0.05), (cellular.est, 0.4)):
        est._spread.spread = spread
    small = measure_bond([fixed], 10.0).allowance_s
    large = measure_bond([cellular], 10.0).allowance_s
    assert large == pytest.approx(variability_queue_s(0.05, 0.4, cellular.window.report_gap_s))
    assert small == 0.0 < large  # a few percent is report timing, not the link
    assert queue_cap_s(0.05, 0.05) == QUEUE_CAP_MIN_S < queue_cap_s(0.05, 0.4) == large
    assert measure_bond([fixed, cellular], 10.0).allowance_s == small
    codel = CoDel(TARGET)
    bond = measure_bond([cellular], 10.0)
    assert codel.target_for(bond) == pytest.approx(
        max(TARGET, SINGLE_FLOW_QUEUE_RTTS * 0.05) + VARIABILITY_ALLOWANCE_SCALE * large)


def test_a_swing_of_a_cellular_bond_is_not_signalled_but_the_same_queue_on_fixed_lines_is() -> None:
    """300 ms of queue for a second: on two LTE-like links (their delivery
    swinging by 20 %, 60 ms round trips) a capacity dip, which a drop would
    turn into seconds of a cubic flow regrowing its window; on fixed lines, a
    standing queue to drop from."""
    def bond(spread: float) -> BondQueue:
        links = [_link(i, 0.3, 10.0, min_rtt_s=0.06, spread=spread) for i in (0, 1)]
        return measure_bond(links, 10.0)
    swinging, fixed = bond(0.2), bond(0.05)
    assert swinging.queue_s == fixed.queue_s > 0.29
    for bond_now, signalled in ((swinging, False), (fixed, True)):
        codel = CoDel(TARGET)
        signals = [codel.should_signal(bond_now, 10.0 + i * 0.001) for i in range(1000)]
        assert any(signals) == signalled


def test_feedback_carries_the_interval_low_and_reads_a_report_without_it() -> None:
    report = control.LinkReport(1, 10, 12_000, 9, 5_300, 5_000, 5_100)
    message, _ = control.decode(control.encode(control.Feedback((report,)), 7))
    assert message == control.Feedback((report,))
    # A peer from before the field: six entries, read as "not sent".
    old = msgpack.packb({"t": 4, "l": [[1, 10, 12_000, 9, 5_300, 5_000]], "d": 7})
    message, _ = control.decode(old)
    assert isinstance(message, control.Feedback)
    assert message.reports[0].owd_low_us is None
    for bad in ([[1, 10, 12_000, 9, 5_300, 5_000, "low"]],
                [[1, 10, 12_000, 9, 5_300, 5_000, 5_100, 0]]):
        with pytest.raises(control.ControlError):
            control.decode(msgpack.packb({"t": 4, "l": bad, "d": 7}))


# -- closed loop: a loss-based sender through the tunnel ------------------

STEP_S = 0.01
PACKET_BYTES = 1250


def aimd_flow(sim: Sim, seconds: float, tos: int = 0) -> tuple[list[float], int, int]:
    """A rate-based stand-in for a loss-based TCP: +2 Mbit/s each second,
    x0.7 at most once per 100 ms when the receiver sees a gap in what the
    tunnel delivers (a loss) or a CE mark.  Returns the queue a packet meets
    every step (what waits at the sending edge for room on a link, and link
    0's own queue), the packets sent and the packets delivered."""
    rate, seq, last_cut = 1e6, 0, -1.0
    read, expected = 0, 0  # packets of sim.delivered looked at; the next sequence
    queues = []
    sent = 0
    for _ in range(round(seconds / STEP_S)):
        count = max(1, round(rate * STEP_S / (PACKET_BYTES * 8)))
        traffic = []
        for i in range(count):
            packet = bytearray(ip_packet(seq, PACKET_BYTES))
            packet[1] = tos
            struct.pack_into("!H", packet, 10, checksum(bytes(packet[:20])))
            traffic.append((sim.now + i * STEP_S / count, "up", bytes(packet)))
            seq += 1
        sent += count
        sim.run(STEP_S, traffic)
        delivered = sim.delivered["server"]
        congested = False
        for packet in delivered[read:]:
            got = packet_seq(packet)
            congested |= got != expected or packet[1] & 0x03 == 0x03
            expected = got + 1
        read = len(delivered)
        if congested and sim.now - last_cut > 0.1:
            rate, last_cut = rate * 0.7, sim.now
        else:
            rate += 2e6 * STEP_S
        edge = sim.client.peers[0].queue
        waited = sim.now - edge.peek()[1] if edge else 0.0
        queues.append(waited + sim.links[0].queued_s("up", sim.now))
    return queues, sent, len(sim.delivered["server"])


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def _deep_buffered_bond(target_s: float | None = 0.005) -> Sim:
    """Two 5 Mbit/s links, 5 ms one-way, 500 ms of buffer each (a modem's)."""
    links = [SimLink(delay_s=0.005, rate_bps=5e6, queue_limit_s=0.5) for _ in range(2)]
    sim = Sim(links, scheduler="adaptive", queue_target_s=target_s)
    sim.run(1.0)
    return sim


def test_queue_management_keeps_a_deep_buffer_short_at_full_rate() -> None:
    managed, unmanaged = _deep_buffered_bond(), _deep_buffered_bond(None)
    queues, sent, delivered = aimd_flow(managed, 12.0)
    queues_off, _, delivered_off = aimd_flow(unmanaged, 12.0)
    # Without it the sender hears of congestion only when the queue at the
    # sending edge overflows (the links' windows keep their own buffers
    # short), a quarter of a second of queue later.
    assert unmanaged.client.peers[0].aqm is None
    assert _p90(queues_off[len(queues_off) // 3:]) > 0.200
    aqm = managed.client.peers[0].aqm
    assert aqm is not None and aqm.drops > 0 and aqm.marks == 0
    assert sent - delivered >= aqm.drops
    assert _p90(queues[len(queues) // 3:]) < 0.040
    # ... and the links stay nearly as busy.  (This stand-in regains 2 Mbit/s
    # a second after a cut, far slower than a TCP at this round trip, so
    # each signal costs it more than it would cost a real flow; the bench's
    # `latency` and throughput scenarios measure real ones.)
    assert delivered >= 0.85 * delivered_off, (delivered, delivered_off)


def test_ecn_capable_packets_are_marked_not_dropped() -> None:
    sim = _deep_buffered_bond()
    queues, sent, _ = aimd_flow(sim, 8.0, tos=0x02)  # ECT(0)
    aqm = sim.client.peers[0].aqm
    assert aqm is not None and aqm.marks > 0 and aqm.drops == 0
    sim.run(0.5)  # what is still on its way
    marked = [p for p in sim.delivered["server"] if p[1] & 0x03 == 0x03]
    assert len(marked) == aqm.marks
    assert all(checksum(p[:20]) == 0 for p in marked)
    assert len(sim.delivered["server"]) == sent  # nothing dropped
    assert _p90(queues[len(queues) // 3:]) < 0.040


def test_jitter_is_not_a_queue() -> None:
    # 20 ms of jitter on both links, each packet on its own (as over an
    # ISP's parallel paths), half the bond's capacity spread over both: the
    # mean delay sits ~10 ms above the minimum, but no queue stands, so
    # nothing may be dropped.  (Judged on the mean, 600 of 3000 were.)
    links = [SimLink(delay_s=0.002, jitter_s=0.020, reorder=True, rate_bps=5e6,
                     queue_limit_s=0.5) for _ in range(2)]
    sim = Sim(links, scheduler="roundrobin")
    sim.run(1.0)
    interval = PACKET_BYTES * 8 / 5e6
    sim.run(6.0, [(sim.now + i * interval, "up", ip_packet(i, PACKET_BYTES))
                  for i in range(int(6.0 / interval))])
    ests = [link.est for link in sim.client.peers[0].links.values()]
    assert all(est.qdelay_s > 0.008 for est in ests), [est.qdelay_s for est in ests]
    aqm = sim.client.peers[0].aqm
    assert aqm is not None and aqm.drops == 0


def test_light_load_is_never_signalled() -> None:
    sim = _deep_buffered_bond()
    interval = PACKET_BYTES * 8 / 6e6  # 60 % of the bond
    sim.run(5.0, [(sim.now + i * interval, "up", ip_packet(i, PACKET_BYTES))
                  for i in range(int(5.0 / interval))])
    aqm = sim.client.peers[0].aqm
    assert aqm is not None and aqm.drops == 0 and aqm.marks == 0


def test_the_sending_edges_limit_is_time_at_the_bonds_rate_within_its_bounds() -> None:
    assert limit_for(10e6, 0.105) == QUEUE_MIN_PACKETS  # 87 packets: the floor
    assert limit_for(40e6, 0.3) == 1000  # 40 Mbit/s for 300 ms, in full packets
    assert limit_for(1e9, 0.8) == QUEUE_MAX_PACKETS  # memory bounds it
    # A limit lowered under a long queue drops one packet a push, not a burst.
    queue = SendQueue(maxlen=4)
    for i in range(4):
        queue.push(bytes([i]), 0.0, i)
    queue.maxlen = 2
    assert queue.full and queue.push(b"x", 0.0, 9) and len(queue) == 4


def _edge_after_burst(spread: float, rate_bps: float, target_s: float | None = TARGET,
                      burst: int = 1500) -> tuple[int, int, float]:
    """Two links whose estimates say `rate_bps` each and whose delivery
    swings by `spread` (0.4: cellular, 0: fixed lines), 60 ms round trips;
    `burst` full packets offered at one instant: what waits at the client's
    sending edge, the edge's drops, and the limit queue management implies."""
    sim = Sim([SimLink(delay_s=0.030, rate_bps=rate_bps) for _ in range(2)],
              scheduler="adaptive", queue_target_s=target_s)
    sim.run(1.0)
    peer = sim.client.peers[0]
    for link in peer.links.values():
        link.est._spread.spread = spread
        link.est.rate_bps = rate_bps
        link.health.min_rtt_s = 0.060
    bond = measure_bond(list(peer.links.values()), sim.now)
    hold_s = CoDel(TARGET).acts_after_s(bond)
    before = sim.client.drops["queue_full"]
    for i in range(burst):
        sim.client.send_packet(ip_packet(i, 1400), sim.now)
    return len(peer.queue), sim.client.drops["queue_full"] - before, hold_s


def test_the_sending_edge_holds_what_queue_management_lets_stand_before_tail_drop() -> None:
    """On a bond whose capacity swings, queue management lets hundreds of
    milliseconds stand before it acts: a fixed 256 packets at 40 Mbit/s
    would overflow in 70 ms and drop in bursts first (docs/bench.md, `van`).
    On fixed lines, or without queue management, the floor as before."""
    waiting, dropped, hold_s = _edge_after_burst(0.4, 20e6)
    assert hold_s > 0.25
    limit = limit_for(40e6, hold_s)
    assert QUEUE_MIN_PACKETS < limit <= QUEUE_MAX_PACKETS
    assert waiting == limit and dropped > 0  # (the windows took the rest)
    waiting_off, dropped_off, _ = _edge_after_burst(0.4, 20e6, None)
    assert waiting_off == QUEUE_MIN_PACKETS
    assert dropped_off - dropped == limit - QUEUE_MIN_PACKETS  # the same windows
    waiting, dropped, _ = _edge_after_burst(0.0, 5e6)
    assert waiting == QUEUE_MIN_PACKETS and dropped > 0
