"""A link that goes down under its packets: what it carried lately and the
peer has not reported goes out again, as copies, on the other links."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import pytest
from tests.core.netsim import Sim, SimLink, ip_packet, out_of_order, packet_seq

from stripe import linkctl, wire
from stripe.io.metrics import families
from stripe.links import (
    IDLE_PROBE_INTERVAL_S,
    KEEP_MAX_PACKETS,
    KEEP_S,
    LINK_DEAD_AFTER_IDLE_S,
    Link,
    LinkState,
)
from stripe.noise import TransportKey
from stripe.scheduler import Scheduler, usable_links
from stripe.session import COPIES_SEALED_REMEMBERED, Session
from stripe.status import render

BURST = 40


def two_links(loss_repair: bool = True, **spec: object) -> Sim:
    # Round robin: half of the traffic is given to link 1.
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.012)], scheduler="roundrobin",
              loss_repair=loss_repair)
    sim.client.spec = dataclasses.replace(sim.client.spec, **spec)  # type: ignore[arg-type]
    sim.run(1.0)
    assert all(link.up for link in sim.client.peers[0].links.values())
    return sim


def bursts(sim: Sim, count: int) -> list[tuple[float, str, bytes]]:
    """`count` bursts of BURST packets, 20 ms apart (a burst is scheduled
    whole before the first of its sends fails)."""
    return [(sim.now + (i // BURST) * 0.020, "up", ip_packet(i, 1000))
            for i in range(count * BURST)]


def steady(sim: Sim, count: int, gap_s: float = 0.002) -> list[tuple[float, str, bytes]]:
    return [(sim.now + i * gap_s, "up", ip_packet(i, 1000)) for i in range(count)]


def delivered(sim: Sim) -> list[int]:
    return [packet_seq(p) for p in sim.delivered["server"]]


def no_resend(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim.client._egress, "resend_recent", lambda *args: None)


# -- interface down: the sends fail ------------------------------------------


def test_packets_of_a_failed_send_arrive_once_and_in_order() -> None:
    sim = two_links()
    sim.links[1].send_fails = True
    sim.run(1.0, bursts(sim, 5))
    assert delivered(sim) == list(range(5 * BURST))
    peer = sim.client.peers[0]
    assert not peer.links[1].up
    assert peer.copies.resent == BURST // 2  # link 1's half of the first burst
    assert peer.copies.resend_failed == 0
    assert sim.server.drops["duplicate"] == 0 and sim.server.drops["replay"] == 0
    assert sim.server.peers[0].copies.copies_first == BURST // 2


def test_without_the_resend_those_packets_are_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = two_links(loss_repair=False)  # (the receiver would ask for them: test_repair)
    no_resend(sim, monkeypatch)
    sim.links[1].send_fails = True
    sim.run(1.0, bursts(sim, 5))
    assert len(delivered(sim)) == 5 * BURST - BURST // 2


def test_with_no_other_link_the_loss_is_counted() -> None:
    sim = two_links()
    sim.links[0].up = False  # silent: link 0 stays in the schedule a while
    # ... until it is declared down (idle: by the client's rare probes)
    sim.run(LINK_DEAD_AFTER_IDLE_S + IDLE_PROBE_INTERVAL_S)
    assert not sim.client.peers[0].links[0].up
    sim.links[1].send_fails = True
    sim.run(1.0, bursts(sim, 1))
    peer = sim.client.peers[0]
    assert peer.copies.resent == 0 and peer.copies.resend_failed == BURST
    assert delivered(sim) == []


def test_a_packet_with_a_redundant_copy_is_not_sent_a_second_copy() -> None:
    # Every packet is copied onto the other link: link 1's originals have
    # their copies on link 0 already, and a copy is never copied again (a
    # second copy would reuse its nonce).
    sim = two_links(duplicate_below=2000)
    sim.links[1].send_fails = True
    sim.run(1.0, bursts(sim, 3))
    assert delivered(sim) == list(range(3 * BURST))
    peer = sim.client.peers[0]
    assert peer.copies.resent == 0 and peer.copies.copies_sent > 0


# -- silent blackhole: found dead later --------------------------------------


def test_a_blackholed_link_loses_fewer_packets_with_the_resend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lost = {}
    for resend in (True, False):
        sim = two_links(loss_repair=False)  # the resend alone
        if not resend:
            no_resend(sim, monkeypatch)
        traffic = steady(sim, 1000)  # 2 s, a packet every 2 ms
        sim.run(0.5, traffic[:250])
        sim.links[1].up = False
        sim.run(2.0, traffic[250:])
        got = delivered(sim)
        reorder = sim.server.peers[0].current.reorder  # type: ignore[union-attr]
        assert out_of_order(got) <= reorder.stats.late  # once, in order but the late
        lost[resend] = 1000 - len(got)
        peer = sim.client.peers[0]
        assert not peer.links[1].up
        assert (peer.copies.resent > 0) == resend
    # Without: link 1's share of the ~0.2 s until it is declared dead.  With:
    # the newest of them, whose gaps the receiver still held, get through;
    # the older copies come too late (its hold here: 20 ms).
    assert lost[False] > 30
    assert lost[True] < lost[False], lost
    assert sim.server.peers[0].copies.copies_first == 0  # the last run: without
    assert sim.server.drops["replay"] == 0


def test_a_dead_link_still_answers_repairs_for_what_it_carried_before() -> None:
    """The resend takes the newest 50 ms of a link that went down; the
    older packets it carried stay kept (`links.KEEP_S`), for the repairs the
    peer may still ask: they went through that silent link too."""
    sim = two_links()
    traffic = steady(sim, 400)
    sim.run(0.4, traffic[:200])
    sim.links[1].up = False
    sim.run(0.6, traffic[200:])
    peer = sim.client.peers[0]
    assert not peer.links[1].up and peer.links[1].recent.packets > 0
    session = peer.current
    assert session is not None
    # A counter link 1 carried 0.1 s before it went silent: still kept,
    # and never copied; what was re-sent has had its one copy.
    old = next(run.first_counter for run in peer.links[1].recent.runs
               if run.session is session and run.sent > sim.now - 0.75)
    assert session.can_copy(old)
    repaired, missing = peer.copies.repaired, peer.copies.repair_missing
    sim.client._egress.repair(peer, session, [old], sim.now)
    assert (peer.copies.repaired, peer.copies.repair_missing) == (repaired + 1, missing)


def test_a_late_resent_copy_does_not_lengthen_the_hold() -> None:
    # Without repair (with it, the receiver asks for the dead link's gaps at
    # its hold deadline, and they come in time: see test_repair).
    sim = two_links(loss_repair=False)
    traffic = steady(sim, 1000)
    sim.run(0.5, traffic[:250])
    sim.links[1].up = False
    sim.run(2.0, traffic[250:])
    reorder = sim.server.peers[0].current
    assert reorder is not None
    assert reorder.reorder.stats.late > 0  # copies that came too late ...
    assert reorder.reorder.late_bonus(sim.now) == 0.0  # ... are not skew


class LinkOneFirst(Scheduler):
    """Link 1 while it is usable, else whatever `fallback` picks: every
    packet of the server's sparse flow on the link with the shorter round
    trip, as the adaptive scheduler put an upload's acks in the lab."""

    def __init__(self, fallback: Scheduler) -> None:
        self.fallback = fallback

    def pick(self, links: Collection[Link], size: int, now: float,
             within_window: bool = True) -> Link | None:
        one = [link for link in usable_links(links) if link.link_id == 1]
        return one[0] if one else self.fallback.pick(links, size, now, within_window)


def test_a_link_blackholed_under_all_of_a_sparse_flow_is_found_by_reports_of_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload and its acks (300 bytes: not a sparse flow's, which go on
    two links), every ack on link 1.  Link 1 goes silent both
    ways: the client hears nothing from the server, so it reported nothing,
    and the server, whose stall check runs on reports, learnt it only from
    its probes, after 0.45 s or more (in the lab the inner TCP's
    retransmission timeout came first, and its ack went the same way: 0.7 s
    without goodput).  The client's reports of nothing take link 1 out of
    the server's schedule within its stall time, and the acks flow again."""
    out_after = {}
    for silence_reports in (True, False):
        if not silence_reports:
            monkeypatch.setattr(linkctl, "SILENCE_REPORTS_FOR_S", 0.0)
        sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.005)], loss_repair=True)
        server = sim.server.peers[0]
        server.scheduler = LinkOneFirst(server.scheduler)
        sim.run(1.0)
        start = sim.now
        traffic = sorted([(start + i * 0.002, "up", ip_packet(i, 1000)) for i in range(1000)]
                         + [(start + i * 0.010, "down", ip_packet(10**6 + i, 300))
                            for i in range(200)])
        sim.run(0.4, [x for x in traffic if x[0] < start + 0.4])
        sim.links[1].up = False
        cut, acks_before = sim.now, len(sim.delivered["client"])
        while server.links[1].health.state is LinkState.UP and sim.now < cut + 1.0:
            sim.run(0.01, [x for x in traffic if sim.now <= x[0] < sim.now + 0.01])
        out_after[silence_reports] = sim.now - cut
        sim.run(cut + 0.6 - sim.now, [x for x in traffic if sim.now <= x[0] < cut + 0.5])
        if silence_reports:
            # STALE, not DOWN: its stall time (100 ms here) and a report.
            assert server.links[1].health.stalls == 1 and server.links[1].health.downs == 0
        # Every ack sent since the cut came through, in order: the newest
        # ones again at once, the older ones asked for by the client.
        acks = [packet_seq(p) - 10**6 for p in sim.delivered["client"][acks_before:]]
        assert acks == list(range(40, 90))
        monkeypatch.undo()
    assert out_after[True] <= 0.25, out_after
    assert out_after[False] >= 0.4, out_after  # its probes' silence


def test_a_tail_on_a_blackholed_link_goes_again_whole() -> None:
    """Every packet on link 1, then link 1 goes silent both ways and the
    sender goes quiet too (the end of a burst): nothing the server got
    shows a gap, so it can ask for nothing.  When link 1 leaves the
    schedule (the server's reports of nothing reveal its stall), all it
    carried since anything was delivered goes again, not only its last
    50 ms, which held nothing here."""
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.005)], loss_repair=True)
    client = sim.client.peers[0]
    client.scheduler = LinkOneFirst(client.scheduler)
    sim.run(1.0)
    start = sim.now
    traffic = [(start + i * 0.002, "up", ip_packet(i, 1000)) for i in range(100)]
    sim.run(0.15, traffic[:75])
    sim.links[1].up = False  # the last 25 packets, 50 ms of them, are lost
    sim.run(0.5, traffic[75:])
    assert client.links[1].health.stalls == 1
    assert delivered(sim) == list(range(100))
    assert client.copies.resent == 25 and client.copies.repaired == 0


# -- bounds, status ----------------------------------------------------------


def test_what_a_link_remembers_is_bounded() -> None:
    sim = two_links()
    sim.run(0.01, [(sim.now, "up", ip_packet(i, 1000)) for i in range(3 * KEEP_MAX_PACKETS)])
    for link in sim.client.peers[0].links.values():
        assert 0 < link.recent.packets <= KEEP_MAX_PACKETS
        assert link.recent.packets == sum(len(run.packets) for run in link.recent.runs)
    # Old runs go when the link sends again, or when they are too old to
    # re-send, on a link that sends nothing more too.
    sim.run(KEEP_S * 2.5, [(sim.now + KEEP_S * 2, "up", ip_packet(0, 1000))])
    remembered = sorted(link.recent.packets for link in sim.client.peers[0].links.values())
    assert remembered == [0, 1]


def test_the_status_and_metrics_report_resent_packets() -> None:
    sim = two_links()
    sim.links[1].send_fails = True
    sim.run(1.0, bursts(sim, 1))
    status = sim.client.status(sim.now)
    assert status["peers"][0]["resent_packets"] == BURST // 2
    assert f"re-sent when their link went down: {BURST // 2}" in render(status)
    metrics = {m.name: m for m in families(status)}
    assert metrics["stripe_peer_resent_packets"].samples[0].value == BURST // 2


# -- the session's side: one copy per message ---------------------------------


DATA, COPY = wire.MessageType.DATA, wire.MessageType.DATA_COPY


def _session() -> Session:
    return Session(1, 2, TransportKey("AESGCM", bytes(range(32))),
                   TransportKey("AESGCM", bytes(32)), 0.0, True)


def test_a_message_gets_one_copy_only() -> None:
    session = _session()
    session.seal(DATA, 0, 1, 0, [b"x" * 40], 0.0)
    assert session.can_copy(0)
    session.seal(COPY, 1, 3, 0, [b"x" * 40], 0.0, copy_of=0)
    assert not session.can_copy(0)
    with pytest.raises(ValueError, match="copied already"):
        session.seal(COPY, 0, 3, 1, [b"x" * 40], 0.0, copy_of=0)


def test_copies_beyond_memory_are_assumed_made() -> None:
    session = _session()
    count = COPIES_SEALED_REMEMBERED + 10
    session.seal(DATA, 0, 1, 0, [b"p"] * count, 0.0)
    for counter in range(count):
        session.seal(COPY, 1, 3, counter, [b"p"], 0.0, copy_of=counter)
    assert not any(session.can_copy(counter) for counter in range(count))
    session.seal(DATA, 0, 1, 0, [b"q"], 0.0)
    assert session.can_copy(count)
