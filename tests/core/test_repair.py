"""Loss repair: a gap the receiver finds lost (its link delivered past it)
is asked for again (a REPAIR message), and the sender sends it again as a
DATA_COPY; the gap waits for it instead of being given up (see reorder)."""

from __future__ import annotations

import random

import msgpack
import pytest
from tests.core.netsim import (
    Sim,
    SimLink,
    ip_packet,
    nine_then_one_lost,
    out_of_order,
    packet_seq,
)
from tests.core.test_adaptive import offered

from stripe import control
from stripe.links import RecentRun, RecentSends
from stripe.reorder import MAX_REPAIR_GAP, MAX_REPAIRS_ASKED, ReorderBuffer, ReorderStats


def flow(start: float, count: int, interval: float, first: int = 0,
         size: int = 1200) -> list[tuple[float, str, bytes]]:
    return [(start + i * interval, "up", ip_packet(first + i, size)) for i in range(count)]


def seqs(sim: Sim) -> list[int]:
    return [packet_seq(p) for p in sim.delivered["server"]]


def reorder_stats(sim: Sim) -> ReorderStats:
    """The server's (the receiver of "up" traffic) current reorder counts."""
    session = sim.server.peers[0].current
    assert session is not None
    return session.reorder.stats


def test_a_packet_its_link_dropped_is_asked_for_and_delivered_in_order() -> None:
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.010)]
    sim = Sim(links, scheduler="roundrobin", reorder_hold_s=0.200)
    sim.run(1.0)
    nine_then_one_lost(sim)  # 0..8 delivered, 9 dropped on link 1
    sent = sim.now
    sim.run(0.1, flow(sim.now, 10, 0.002, first=10))
    assert seqs(sim) == list(range(20))  # 9 too, in its place
    stats = reorder_stats(sim)
    assert (stats.repair_requests, stats.repaired, stats.lost) == (1, 1, 0)
    assert stats.deadline_releases == 0 and stats.repair_timeouts == 0
    assert sim.client.peers[0].copies.repaired == 1
    assert sim.server.drops["replay"] == 0
    # It waited for about a round trip of a link, not the 200 ms hold.
    reorder = sim.server.peers[0].current.reorder  # type: ignore[union-attr]
    assert 0.02 < reorder.repair_wait_s < 0.1
    assert sim.now - sent >= 0.1


def test_a_lossy_link_loses_nothing_with_repair_and_packets_without() -> None:
    got = {}
    for repair in (True, False):
        sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.015, loss=0.05)],
                  scheduler="roundrobin", loss_repair=repair, seed=7)
        sim.run(1.0)
        sim.run(3.0, flow(sim.now, 1000, 0.002))
        got[repair] = seqs(sim)
        # Requests and copies cross the lossy link too: some may be lost.
        stats = reorder_stats(sim)
        if repair:
            assert stats.repair_requests > 10
            assert out_of_order(got[repair]) == 0
        else:
            assert stats.repair_requests == 0
    assert len(got[False]) < 990
    assert len(got[True]) >= 998, 1000 - len(got[True])


def test_a_loss_found_behind_a_deep_queue_is_still_kept_for_its_repair() -> None:
    """A link 700 ms away (a deep queue) shows its loss 0.7 s after the
    send: the sender still has the packet (it keeps them as long as the
    receiver's hold may wait for a link)."""
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.700)]
    sim = Sim(links, scheduler="roundrobin")
    sim.run(1.0)
    # Data first, so both links are verified (no copies of a waking bond),
    # an odd count, so that 9 of what follows goes on the far link.
    sim.run(1.6, flow(sim.now, 161, 0.01, first=1000))
    nine_then_one_lost(sim)  # 9 dropped on the far link
    sim.run(2.0, flow(sim.now, 10, 0.002, first=10))
    assert [seq for seq in seqs(sim) if seq < 1000] == list(range(20))
    stats = reorder_stats(sim)
    assert (stats.repair_requests, stats.repaired, stats.lost, stats.late) == (1, 1, 0, 0)
    copies = sim.client.peers[0].copies
    assert (copies.repaired, copies.repair_missing) == (1, 0)


def test_a_peer_that_does_not_repair_is_not_waited_for() -> None:
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.010)]
    sim = Sim(links, scheduler="roundrobin", reorder_hold_s=0.200)
    # An older client: it never says it answers REPAIR.
    sim.client._links._transmit._features = 0  # type: ignore[attr-defined]
    sim.run(1.0)
    nine_then_one_lost(sim)
    sim.run(0.1, flow(sim.now, 10, 0.002, first=10))
    assert seqs(sim) == [*range(9), *range(10, 20)]
    stats = reorder_stats(sim)
    assert stats.repair_requests == 0 and stats.inferred_releases == 1
    assert sim.server.peers[0].current.reorder.repair_wait_s == 0.0  # type: ignore[union-attr]


def test_repair_off_at_the_receiver_gives_the_gap_up_at_once() -> None:
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.010, loss=0.1)]
    sim = Sim(links, scheduler="roundrobin", loss_repair=False, seed=3)
    sim.run(1.0)
    sim.run(1.0, flow(sim.now, 200, 0.002))
    stats = reorder_stats(sim)
    assert stats.repair_requests == 0 and stats.lost > 0
    assert sim.client.peers[0].copies.repaired == 0


def test_the_sender_sends_each_counter_once_and_counts_what_it_no_longer_has() -> None:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.010)], scheduler="roundrobin")
    sim.run(1.0)
    sim.run(0.05, flow(sim.now, 20, 0.001))
    client = sim.client
    peer = client.peers[0]
    session = peer.current
    assert session is not None
    egress = client._egress
    sent_before = sum(link.counters.tx_packets for link in peer.links.values())
    egress.repair(peer, session, [3, 3, 5], sim.now)
    assert peer.copies.repaired == 2 and peer.copies.repair_missing == 1  # 3 asked twice
    egress.repair(peer, session, [3], sim.now)  # its one copy went already
    egress.repair(peer, session, [10**6], sim.now)  # never sent
    assert peer.copies.repaired == 2 and peer.copies.repair_missing == 3
    assert sum(link.counters.tx_packets for link in peer.links.values()) == sent_before + 2
    sim.run(1.0)  # no longer kept
    egress.repair(peer, session, [7], sim.now)
    assert peer.copies.repaired == 2 and peer.copies.repair_missing == 4
    assert out_of_order(seqs(sim)) == 0  # the copies of delivered packets: dropped


# -- the reorder buffer alone -------------------------------------------------


def test_the_gap_waits_for_its_repair_then_is_given_up() -> None:
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    buf.push(0, b"0", 0, 1.0)
    buf.push(2, b"2", 0, 1.001)  # link 0 delivered past 1: lost
    assert buf.repair_wanted == [1]
    assert buf.deadline() == pytest.approx(1.051)  # the repair's time, not the hold's
    buf.poll(1.030)  # past the hold: still waits
    assert buf.ready == [b"0"]
    buf.push(3, b"3", 0, 1.040)
    assert buf.repair_wanted == [1]  # asked once
    buf.poll(1.052)
    assert buf.ready == [b"0", b"2", b"3"]
    assert (buf.stats.repair_timeouts, buf.stats.lost, buf.stats.deadline_releases) == (1, 1, 0)
    # The copy, late: delivered out of order, and no lesson for the hold.
    assert buf.push(1, b"1", 1, 1.060, copy=True) is False
    assert buf.late_bonus(1.060) == 0.0


def test_a_repair_in_time_fills_the_gap() -> None:
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    buf.push(0, b"0", 0, 1.0)
    buf.push(2, b"2", 0, 1.001)
    buf.push(1, b"1", 1, 1.030, copy=True)
    assert buf.ready == [b"0", b"1", b"2"]
    assert (buf.stats.repaired, buf.stats.lost) == (1, 0)
    assert buf.deadline() is None


def test_every_gap_below_the_frontier_is_asked_for_at_once() -> None:
    """Asked one gap at a time, the later gaps would be asked a repair time
    later each, and be gone from the sender by then."""
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    buf.push(0, b"0", 0, 1.0)
    for seq in (2, 4, 5, 7):
        buf.push(seq, str(seq).encode(), 0, 1.001)
    buf.push(9, b"9", 1, 1.002)  # both links past 7: 1, 3 and 6 are lost
    assert buf.repair_wanted == [1, 3, 6]
    buf.push(10, b"10", 0, 1.003)  # and now past 9: 8 too, asked once
    assert buf.repair_wanted == [1, 3, 6, 8]
    for seq in (3, 1, 8, 6):  # the copies, in any order
        buf.push(seq, str(seq).encode(), 0, 1.03, copy=True)
    assert buf.ready == [str(seq).encode() for seq in range(11)]
    assert (buf.stats.repaired, buf.stats.lost, buf.stats.repair_timeouts) == (4, 0, 0)


def test_losses_are_still_asked_for_after_many_were_repaired() -> None:
    """The table of counters asked for keeps only those still ahead: a long
    transfer with steady losses is asked for all along, not just until
    MAX_REPAIRS_ASKED were asked once."""
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    now = 1.0
    for i in range(3 * MAX_REPAIRS_ASKED):
        seq = 2 * i
        now += 0.001
        buf.push(seq + 1, b"x", 0, now)  # past seq: lost, asked for
        buf.push(seq, b"x", 0, now + 0.0005, copy=True)  # its repair
    assert buf.stats.repair_requests == 3 * MAX_REPAIRS_ASKED
    assert (buf.stats.repaired, buf.stats.lost) == (3 * MAX_REPAIRS_ASKED, 0)


def test_a_gap_too_wide_to_repair_is_given_up_at_once() -> None:
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    buf.push(0, b"0", 0, 1.0)
    buf.push(MAX_REPAIR_GAP + 2, b"x", 0, 1.001)
    assert buf.repair_wanted == []
    assert buf.stats.inferred_releases == 1 and buf.stats.lost == MAX_REPAIR_GAP + 1


def test_without_repair_the_gap_is_given_up_at_once() -> None:
    buf = ReorderBuffer(hold_s=0.020)
    buf.push(0, b"0", 0, 1.0)
    buf.push(2, b"2", 0, 1.001)
    assert buf.repair_wanted == [] and buf.ready == [b"0", b"2"]


# -- overdue: a gap at its hold deadline ----------------------------------------


def overdue_buffer() -> ReorderBuffer:
    """0 from link 1, then 2 from link 0 at 1.0: link 1, which carried 1,
    has delivered nothing past it, so inference waits for it."""
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    buf.push(0, b"0", 1, 0.999)
    buf.push(2, b"2", 0, 1.0)
    assert buf.repair_wanted == [] and buf.repair_overdue == []
    return buf


def test_a_gap_at_its_deadline_is_asked_for_as_overdue_and_filled_in_order() -> None:
    buf = overdue_buffer()
    buf.poll(1.021)
    assert buf.repair_overdue == [1] and buf.repair_wanted == []
    assert buf.overdue_link == 1  # the link it waits on: not where to ask
    assert buf.ready == [b"0"]  # not given up: it waits for the repair
    assert buf.deadline() == pytest.approx(1.071)
    buf.push(3, b"3", 0, 1.03)
    buf.push(1, b"1", 0, 1.05, copy=True)
    assert buf.ready == [b"0", b"1", b"2", b"3"]
    stats = buf.stats
    assert (stats.overdue_requests, stats.repair_requests, stats.repaired) == (1, 1, 1)
    assert (stats.deadline_releases, stats.lost, stats.late) == (0, 0, 0)


def test_an_overdue_gap_is_given_up_when_its_repair_does_not_come() -> None:
    buf = overdue_buffer()
    buf.poll(1.021)
    buf.poll(1.070)
    assert buf.ready == [b"0"]
    buf.poll(1.072)
    assert buf.ready == [b"0", b"2"]
    assert (buf.stats.repair_timeouts, buf.stats.lost, buf.stats.deadline_releases) == (1, 1, 0)
    # The original, later still: delivered out of order, as before.
    assert buf.push(1, b"1", 1, 1.2) is False
    assert buf.ready[-1] == b"1" and buf.stats.late == 1


def test_the_original_arriving_first_ends_the_wait() -> None:
    buf = overdue_buffer()
    buf.poll(1.021)
    buf.push(1, b"1", 1, 1.04)  # the late link's own packet, before the copy
    assert buf.ready == [b"0", b"1", b"2"]
    assert buf.stats.late == 0 and buf.deadline() is None


def test_every_counter_missing_below_the_newest_overdue_packet_is_asked_for() -> None:
    buf = overdue_buffer()
    buf.push(4, b"4", 0, 1.001)
    buf.push(6, b"6", 0, 1.015)
    buf.poll(1.0215)  # 2 and 4 waited the hold, 6 not yet: 1 and 3 overdue
    assert buf.repair_overdue == [1, 3]
    for seq in (1, 3):
        buf.push(seq, str(seq).encode(), 0, 1.03, copy=True)
    assert buf.ready == [b"0", b"1", b"2", b"3", b"4"]
    buf.poll(1.036)  # now 6 has: 5 is asked for
    assert buf.repair_overdue == [1, 3, 5]
    assert buf.stats.overdue_requests == 3


def test_an_overdue_gap_too_wide_to_repair_is_given_up_at_its_deadline() -> None:
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.050
    buf.push(0, b"0", 1, 0.999)
    buf.push(MAX_REPAIR_GAP + 2, b"x", 0, 1.0)
    buf.poll(1.021)
    assert buf.repair_overdue == [] and buf.ready == [b"0", b"x"]
    assert buf.stats.deadline_releases == 1 and buf.stats.overdue_requests == 0


def test_without_repair_a_gap_is_given_up_at_its_deadline() -> None:
    buf = overdue_buffer()
    buf.repair_wait_s = 0.0
    buf.poll(1.021)
    assert buf.repair_overdue == [] and buf.ready == [b"0", b"2"]
    assert buf.stats.deadline_releases == 1


def silenced(faster_dies: bool, repair: bool, jump_s: float | None = None) -> Sim:
    """Steady traffic over two links; after 0.5 s one of them goes silent
    without a word (`jump_s`: its delay jumps to that instead)."""
    delays = (0.015, 0.010) if faster_dies else (0.010, 0.012)
    sim = Sim([SimLink(delay_s=delays[0]), SimLink(delay_s=delays[1])],
              scheduler="roundrobin", loss_repair=repair)
    sim.run(1.0)
    traffic = flow(sim.now, 1000, 0.002)
    sim.run(0.5, traffic[:250])
    if jump_s is None:
        sim.links[1].up = False
    else:
        sim.links[1].delay_s = jump_s
    sim.run(2.5, traffic[250:])
    return sim


@pytest.mark.parametrize("faster_dies", [False, True])
def test_a_link_that_goes_silent_costs_the_flow_a_few_packets_not_its_share(
        faster_dies: bool) -> None:
    """Its gaps reach their deadline (inference waits for the silent link);
    asked for as overdue, over the other link, and copied there (not on the
    silent one, even when it had the shortest round trip), they come."""
    lost = {}
    for repair in (True, False):
        sim = silenced(faster_dies, repair)
        got = seqs(sim)
        lost[repair] = 1000 - len(got)
        assert out_of_order(got) <= reorder_stats(sim).late
    stats = reorder_stats(silenced(faster_dies, True))
    assert stats.overdue_requests > 10 and stats.repaired > 10
    assert lost[False] >= 20  # link 1's share until it is found dead
    assert lost[True] <= 8, lost


def test_a_link_whose_delay_jumps_past_the_hold_is_waited_for_not_reordered() -> None:
    """A queue that fills at once: the link's packets come, late.  Asked for
    as overdue, its gaps are filled by the copies or the originals, in
    order; and the link's window is not cut for it (no loss)."""
    late = {}
    for repair in (True, False):
        sim = silenced(False, repair, jump_s=0.150)
        got = seqs(sim)
        assert sorted(got) == list(range(1000))
        late[repair] = out_of_order(got)
        links = sim.client.peers[0].links.values()
        assert all(link.window.losses == 0 for link in links)
    assert late[False] >= 25
    assert late[True] <= 3, late


# -- the message ---------------------------------------------------------------


def test_repair_message_round_trip_and_malformed_ones() -> None:
    data = control.encode(control.Repair((5, 7, 2**40)), 9, control.FEATURE_REPAIR)
    assert control.decode_with_features(data) == (
        control.Repair((5, 7, 2**40)), 9, control.FEATURE_REPAIR)
    for counters in ([], list(range(control.MAX_REPAIR_COUNTERS + 1)), [-1], ["5"], 5):
        with pytest.raises(control.ControlError):
            control.decode(msgpack.packb({"t": 8, "s": counters, "d": 1}))
    overdue = control.Repair((5,), overdue=True)
    assert control.decode(control.encode(overdue, 9)) == (overdue, 9)
    assert "w" not in msgpack.unpackb(control.encode(control.Repair((5,)), 9))  # as before
    with pytest.raises(control.ControlError):
        control.decode(msgpack.packb({"t": 8, "s": [5], "w": 1, "d": 1}))


def test_a_link_that_overflows_backs_off_and_a_randomly_lossy_one_does_not() -> None:
    """Repaired losses are hidden from the inner flow, so the link's window
    must hear of the congestion ones (see window.on_loss)."""
    full = Sim([SimLink(delay_s=0.010, rate_bps=10e6, queue_limit_s=0.02),
                SimLink(delay_s=0.030, rate_bps=5e6, queue_limit_s=0.02)], scheduler="adaptive")
    full.run(1.0)
    full.run(4.0, offered(full.now, 20e6, 3.0))
    assert reorder_stats(full).repair_requests > 0
    assert sum(link.window.losses for link in full.client.peers[0].links.values()) > 0
    lossy = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.015, loss=0.05)],
                scheduler="roundrobin", seed=7)
    lossy.run(1.0)
    lossy.run(3.0, flow(lossy.now, 1000, 0.002))
    assert reorder_stats(lossy).repair_requests > 10
    assert all(link.window.losses == 0 for link in lossy.client.peers[0].links.values())


def test_while_repairs_come_the_rest_of_the_burst_is_waited_for() -> None:
    """The copies of a burst of losses leave together and arrive one after
    the other: each that comes extends the wait of those still missing."""
    buf = ReorderBuffer(hold_s=0.020)
    buf.repair_wait_s = 0.040
    buf.push(0, b"0", 0, 1.0)
    buf.push(2, b"2", 0, 1.0)
    buf.push(4, b"4", 0, 1.0)  # 1 and 3 asked at 1.0, given up at 1.04 ...
    buf.push(1, b"1", 1, 1.039, copy=True)
    buf.poll(1.045)  # ... but a repair just came: 3 is on its way too
    assert buf.ready == [b"0", b"1", b"2"]
    assert buf.deadline() == pytest.approx(1.049)
    buf.push(3, b"3", 1, 1.047, copy=True)
    assert buf.ready == [b"0", b"1", b"2", b"3", b"4"]
    assert (buf.stats.repaired, buf.stats.repair_timeouts, buf.stats.lost) == (2, 0, 0)


def test_the_kept_packets_are_found_by_counter_across_sessions_and_purges() -> None:
    """`RecentSends.find` (bisection by epoch and counter) finds exactly
    what a walk over every kept run finds, with sessions changing (a
    rekey), runs of all sizes, and the oldest runs purged as they age."""
    rng = random.Random(7)
    sessions = [object(), object(), object()]
    recent = RecentSends()
    counters = {id(s): 0 for s in sessions}
    session = sessions[0]
    now = 0.0
    for step in range(3000):
        now += rng.choice((0.0001, 0.001, 0.01))
        if rng.random() < 0.01:
            session = rng.choice(sessions)  # a rekey (or, here, back again)
        size = rng.choice((1, 1, 2, 5, 64))
        first = counters[id(session)]
        counters[id(session)] += size + rng.choice((0, 0, 3))  # other links' counters between
        packets = [f"{id(session)}:{first + i}".encode() for i in range(size)]
        recent.add(RecentRun(now, session, first, step, packets))  # type: ignore[arg-type]
        recent.purge(now)
        if step % 50:
            continue
        for asked in sessions:
            top = counters[id(asked)]
            wanted = sorted(set(rng.sample(range(max(top - 400, 0), top + 5),
                                           min(64, top + 5))))
            expected = {c: p for run in recent.runs if run.session is asked
                        for i, p in enumerate(run.packets)
                        for c in [run.first_counter + i] if c in set(wanted)}
            assert recent.find(asked, wanted) == expected  # type: ignore[arg-type]
