"""Two endpoints joined by an in-memory network with a fake clock."""

from __future__ import annotations

import pytest
from tests.core.netsim import (
    Sim,
    SimLink,
    client_addr,
    ip_packet,
    nine_then_one_lost,
    out_of_order,
    packet_seq,
)

from stripe import control, wire
from stripe.endpoint import Endpoint
from stripe.estimator import FIRST_FEEDBACK_DELAY_S
from stripe.linkctl import REHANDSHAKE_AFTER_IDLE_SILENCE_S
from stripe.links import PROBE_INTERVAL_S, Link, LinkState
from stripe.peer import Peer
from stripe.session import Session
from stripe.transmit import Transmitter


def flow(start: float, count: int, interval: float, direction: str = "up",
         size: int = 1200, first: int = 0) -> list[tuple[float, str, bytes]]:
    return [(start + i * interval, direction, ip_packet(first + i, size)) for i in range(count)]


def seqs(sim: Sim, side: str) -> list[int]:
    return [packet_seq(p) for p in sim.delivered[side]]


def test_handshake_then_both_links_up_and_probe_timer_exact() -> None:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.020)])
    sim.run(1.0)
    client_peer = sim.client.peers[0]
    server_peer = sim.server.peers[0]
    assert client_peer.current is not None and server_peer.current is not None
    assert [link.health.state for link in client_peer.links.values()] == [LinkState.UP] * 2
    assert [link.health.state for link in server_peer.links.values()] == [LinkState.UP] * 2
    assert sim.client.drops == {} and sim.server.drops == {}
    # Idle: the next timer is exactly the next probe of some link.
    due = min(link.health.next_probe_time for link in client_peer.links.values())
    assert sim.client.get_timer() == pytest.approx(due)
    assert due - sim.now <= PROBE_INTERVAL_S


def test_packet_sent_before_handshake_is_queued_then_delivered() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(0.5, [(sim.now, "up", ip_packet(7))])
    assert seqs(sim, "server") == [7]


def test_equal_links_in_order_and_complete_both_directions() -> None:
    sim = Sim([SimLink(delay_s=0.005), SimLink(delay_s=0.005)])
    sim.run(0.5)
    t0 = sim.now
    sim.run(3.0, flow(t0, 2000, 0.001) + flow(t0, 500, 0.004, "down"))
    assert seqs(sim, "server") == list(range(2000))
    assert seqs(sim, "client") == list(range(500))
    # Equal shares of the bytes (control messages, such as the reports on
    # the down flow, go mostly to one link and are left out of it).
    sent = [link.counters.tx_bytes for link in sim.client.peers[0].links.values()]
    assert abs(sent[0] - sent[1]) < 0.02 * sum(sent)


def test_delay_skew_is_reordered_without_loss() -> None:
    # 10 ms vs 40 ms: packets on the fast link overtake the slow one by 30 ms.
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.040)])
    sim.run(1.0)
    sim.run(3.0, flow(sim.now, 1500, 0.001))
    assert seqs(sim, "server") == list(range(1500))
    stats = sim.server.peers[0].current.reorder.stats  # type: ignore[union-attr]
    assert stats.late == 0 and stats.delivered == 1500


def test_a_skew_of_a_geostationary_link_is_held_for_not_delivered_late() -> None:
    # 20 ms beside 420 ms (a satellite hop): the hold follows the 400 ms skew
    # rather than stopping short of it, so nothing reaches the TUN late.
    sim = Sim([SimLink(delay_s=0.020), SimLink(delay_s=0.420)], scheduler="roundrobin")
    sim.run(2.0)
    sim.run(4.0, flow(sim.now, 1500, 0.002))
    assert seqs(sim, "server") == list(range(1500))
    reorder = sim.server.peers[0].current.reorder  # type: ignore[union-attr]
    assert reorder.stats.late == 0
    assert 0.4 < reorder.hold_s <= 1.0


def test_weighted_shares_follow_weights() -> None:
    sim = Sim([SimLink(weight=3), SimLink(weight=1)])
    sim.run(0.5)
    before = [link.counters.tx_packets for link in sim.client.peers[0].links.values()]
    sim.run(2.0, flow(sim.now, 1000, 0.001))
    after = [link.counters.tx_packets for link in sim.client.peers[0].links.values()]
    data = [a - b for a, b in zip(after, before, strict=True)]
    assert data[0] / data[1] == pytest.approx(3.0, rel=0.1)
    assert seqs(sim, "server") == list(range(1000))


def test_loss_is_inferred_without_waiting_for_the_deadline() -> None:
    sim = Sim([SimLink(delay_s=0.005, loss=0.05), SimLink(delay_s=0.005)], seed=3,
              reorder_hold_s=0.200)
    sim.run(1.0)
    sim.run(3.0, flow(sim.now, 2000, 0.001))
    got = seqs(sim, "server")
    assert got == sorted(set(got))
    assert len(got) > 1850
    stats = sim.server.peers[0].current.reorder.stats  # type: ignore[union-attr]
    assert stats.inferred_releases > 0
    # With both links busy, gaps are inferred lost well before the 200 ms hold.
    assert stats.deadline_releases <= stats.inferred_releases // 10


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_terrible_network_delivers_in_order_without_duplicates(seed: int) -> None:
    links = [
        SimLink(delay_s=0.010, jitter_s=0.015, loss=0.05, duplicate=0.05, reorder=True),
        SimLink(delay_s=0.030, jitter_s=0.005, loss=0.02, duplicate=0.02, reorder=True),
        SimLink(delay_s=0.002, jitter_s=0.001, loss=0.10),
    ]
    sim = Sim(links, seed=seed, scheduler="roundrobin")
    sim.run(2.0)
    sim.run(4.0, flow(sim.now, 1500, 0.002) + flow(sim.now, 1500, 0.002, "down"))
    for side, receiver in (("server", sim.server), ("client", sim.client)):
        got = seqs(sim, side)
        # Once each, in order but for what came after its gap was given up.
        late = receiver.peers[0].current.reorder.stats.late  # type: ignore[union-attr]
        assert out_of_order(got) <= late
        assert len(got) > 1500 * 0.75
    assert sim.server.drops["replay"] > 0  # the duplicates were seen and refused


def test_silent_link_is_taken_out_within_600_ms_and_flow_continues() -> None:
    """Out of the schedule (STALE) well within 600 ms, declared DOWN after a
    second of silence (not before: a cellular fade lasts that long)."""
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.010)]
    sim = Sim(links)
    sim.run(1.0)
    sim.run(1.0, flow(sim.now, 1000, 0.001))
    links[1].up = False
    sim.run(0.6, flow(sim.now, 600, 0.001, first=1000))
    client_link = sim.client.peers[0].links[1]
    assert client_link.health.state is LinkState.STALE
    sent_before = client_link.counters.tx_packets
    sim.run(0.3, flow(sim.now, 300, 0.001, first=1600))
    assert client_link.health.state is LinkState.STALE  # 0.9 s: a fade, maybe
    sim.run(0.3, flow(sim.now, 300, 0.001, first=1900))
    assert client_link.health.state is LinkState.DOWN
    sim.run(0.4, flow(sim.now, 400, 0.001, first=2200))
    # Only probes (every 200 ms) go to the silent link from the cut on.
    assert client_link.counters.tx_packets - sent_before <= 6
    got = seqs(sim, "server")
    assert out_of_order(got) <= sim.server.peers[0].current.reorder.stats.late  # type: ignore[union-attr]
    # Restore: back up after a few good probes, data flows on both again.
    links[1].up = True
    sim.run(1.5)
    assert client_link.health.state is LinkState.UP


def test_backup_link_carries_data_only_when_primary_is_down() -> None:
    links = [SimLink(), SimLink(backup=True)]
    sim = Sim(links)
    sim.run(1.0)
    backup = sim.client.peers[0].links[1]
    base = backup.counters.tx_packets
    sim.run(1.0, flow(sim.now, 500, 0.001))
    assert backup.counters.tx_packets - base <= 12  # probes and probe acks only
    links[0].up = False
    sim.run(1.0)
    base = backup.counters.tx_packets
    sim.run(1.0, flow(sim.now, 500, 0.001, first=500))
    assert backup.counters.tx_packets - base >= 450


def test_server_restart_triggers_a_new_handshake() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    old = sim.client.peers[0].current
    # The server forgets every session (as after a restart).
    server_peer = sim.server.peers[0]
    sim.server._sessions.table.clear()
    server_peer.current = server_peer.previous = server_peer.next_session = None
    sim.run(REHANDSHAKE_AFTER_IDLE_SILENCE_S + 1.0)  # idle: the probes find the silence
    assert sim.client.peers[0].current is not old
    sim.run(1.0, flow(sim.now, 100, 0.002))
    assert seqs(sim, "server") == list(range(100))


def test_flow_resumes_within_a_second_and_a_half_of_a_server_restart() -> None:
    # Found by the chaos bench: the client waited for 3 s of silence before
    # handshaking again, while its queue (256 packets) overflowed and the
    # flows' retransmissions were dropped with it: TCP stalled 7.5 s.
    sim = Sim([SimLink(delay_s=0.01), SimLink(delay_s=0.02)])
    sim.run(1.0)
    old = sim.client.peers[0].current
    server_peer = sim.server.peers[0]
    sim.server._sessions.table.clear()
    server_peer.current = server_peer.previous = server_peer.next_session = None
    before = len(sim.delivered["server"])
    sim.run(1.5, flow(sim.now, 150, 0.01))
    assert sim.client.peers[0].current is not old
    assert seqs(sim, "server")[before:][-1] == 149  # the newest sent has arrived


def test_a_restarted_server_hears_reports_in_its_own_link_sequence() -> None:
    # Found by the chaos bench: the client kept the old server's highest
    # link sequence per link across the restart, so the new server was told
    # it had been received up to numbers it had not sent yet (in flight
    # 4294966012 packets, links flipping stale/up).
    sim = Sim([SimLink(delay_s=0.01), SimLink(delay_s=0.02)])
    sim.run(1.0)
    sim.run(2.0, flow(sim.now, 1000, 0.002, "down"))
    sim.server = Endpoint(sim.server.spec, sim.now, wall_offset=1.7e9,
                          random_index=lambda: sim.rng.getrandbits(32))
    sim.run(REHANDSHAKE_AFTER_IDLE_SILENCE_S + 1.0)  # the idle client finds the restart
    sim.run(1.0, flow(sim.now, 100, 0.01, "down"))
    links = sim.server.peers[0].links.values()
    assert links and all(0 <= link.est.highest_reported <= link.est._data_seq for link in links)
    assert all(link.est.in_flight_packets < 100 for link in links)


def test_rekey_keeps_flow_running() -> None:
    sim = Sim([SimLink(delay_s=0.01), SimLink(delay_s=0.02)])
    sim.run(1.0)
    first = sim.client.peers[0].current
    sim.run(125.0)
    assert sim.client.peers[0].current is not first
    sim.run(2.0, flow(sim.now, 500, 0.002) + flow(sim.now, 500, 0.002, "down"))
    assert seqs(sim, "server") == list(range(500))
    assert seqs(sim, "client") == list(range(500))


def test_replayed_and_forged_datagrams_are_dropped_and_counted() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    sim.run(1.0, flow(sim.now, 50, 0.01))
    captured = [d for direction, _, d in sim.wire_log if direction == "up"]
    for data in captured[-20:]:
        sim.inject("up", 0, data)
    forged = bytearray(next(d for d in reversed(captured) if d[0] == 4))  # a DATA packet
    forged[8:16] = (10**6).to_bytes(8, "big")  # a fresh counter, so only the tag can fail
    sim.inject("up", 0, bytes(forged))
    handshake = next(d for d in captured if d[0] == 1)
    sim.inject("up", 0, handshake)
    before = len(sim.delivered["server"])
    sim.run(0.5)
    assert len(sim.delivered["server"]) == before
    assert sim.server.drops["replay"] >= 19
    assert sim.server.drops["bad_tag"] == 1
    assert sim.server.drops["handshake_replay"] == 1


def test_a_train_with_a_handshake_junk_and_control_in_it_delivers_all_its_data() -> None:
    """Datagrams read at once (a GRO train) are looked up once per run of
    one session on one link (see ingress): a handshake message, junk or a
    control message in the middle of a train must not derail what follows."""
    sim = Sim([SimLink()])
    sim.run(1.0)
    sim.links[0].up = False  # the sim logs what the client sends, and drops it
    start = len(sim.wire_log)
    sim.run(0.03, flow(sim.now, 10, 0.002))
    sent = [d for direction, _, d in sim.wire_log[start:] if direction == "up"]
    data = [d for d in sent if d[0] == wire.MessageType.DATA.value]
    assert len(data) == 10
    probe = next(d for direction, _, d in sim.wire_log
                 if direction == "up" and d[0] == wire.MessageType.CONTROL.value)
    handshake = next(d for direction, _, d in sim.wire_log if direction == "up" and d[0] == 1)
    sim.links[0].up = True
    before = len(sim.delivered["server"])
    for datagram in [*data[:3], handshake, *data[3:6], b"\x04junk", probe, *data[6:]]:
        sim.inject("up", 0, datagram)  # injected at one instant: one train
    sim.run(0.2)
    assert seqs(sim, "server")[before:] == list(range(10))
    drops = sim.server.drops
    assert drops["handshake_replay"] == 1 and drops["short"] == 1 and drops["replay"] == 1


def test_server_follows_client_to_a_new_address_on_a_link() -> None:
    """NAT rebinding or a DHCP renew: the session survives, replies follow."""
    from tests.core import netsim

    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    sim.run(0.5, flow(sim.now, 20, 0.01, "down"))
    old = netsim.client_addr(1)
    moved = ("10.1.0.77", 41234)
    original = netsim.client_addr
    netsim.client_addr = lambda i: moved if i == 1 else original(i)  # type: ignore[assignment]
    try:
        sim.run(1.0)  # probes from the new address authenticate it
        link = sim.server.peers[0].links[1]
        assert link.path is not None and link.path[1] == moved != old
        sim.run(1.0, flow(sim.now, 200, 0.002, "down", first=100))
        got = [packet_seq(p) for p in sim.delivered["client"]]
        assert got[-200:] == list(range(100, 300))
        assert sim.client.peers[0].current is not None
    finally:
        netsim.client_addr = original  # type: ignore[assignment]


def test_tail_loss_released_by_marker_not_by_deadline() -> None:
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.010)]
    # (Repaired, 9 would come too: see test_repair.)
    sim = Sim(links, scheduler="roundrobin", reorder_hold_s=0.200, loss_repair=False)
    sim.run(1.0)
    nine_then_one_lost(sim)  # 0..8 delivered, 9 lost on link 1
    sent_10 = sim.now
    # 10 goes on link 0 and arrives at +10 ms; link 1's marker (sent 5 ms
    # after 9) arrives at +14 ms and releases it, long before the 200 ms hold.
    sim.run(0.016, flow(sim.now, 1, 0.001, first=10))
    assert seqs(sim, "server") == [*range(9), 10]
    stats = sim.server.peers[0].current.reorder.stats  # type: ignore[union-attr]
    assert stats.deadline_releases == 0 and stats.inferred_releases == 1
    assert sim.now - sent_10 <= 0.017


def test_no_markers_while_packets_wait_for_the_windows_of_slow_links(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 1 Mbit/s links under a flow of twice that: each link sends when a
    report opens its window and pauses between, longer than the marker
    delay.  Packets wait at the sending edge all along, so a link's next data
    settles any gap: no marker (one after every pause was 12 % of an ADSL
    uplink's datagrams).  The tail, once the flow stops, still gets its markers."""
    sim = Sim([SimLink(rate_bps=1e6), SimLink(rate_bps=1e6)], scheduler="adaptive")
    sim.run(1.0)
    markers: list[float] = []
    client = sim.client.peers[0]
    send_control = Transmitter.send_control

    def spy(self: Transmitter, peer: Peer, session: Session, link: Link,
            message: control.ControlMessage, now: float) -> None:
        if peer is client and isinstance(message, control.Marker):
            markers.append(now)
        send_control(self, peer, session, link, message, now)

    monkeypatch.setattr(Transmitter, "send_control", spy)
    t0 = sim.now
    sim.run(4.0, flow(t0, 1600, 0.0025))  # 3.84 Mbit/s offered for 4 s
    assert len(sim.delivered["server"]) > 600  # the links were busy
    assert client.queue  # and packets still waited
    busy = [t for t in markers if t0 + 1.0 <= t < t0 + 4.0]
    assert len(busy) <= 3, busy
    sim.run(3.0)  # the queue drains, the flow stops: the tail's markers
    assert [t for t in markers if t >= t0 + 4.0]


def test_the_answer_to_data_after_a_pause_leaves_before_the_feedback() -> None:
    """The first data after a pause makes a feedback due, but not at once:
    the answer to that data (here the server's reply, handed over as the
    driver does right after delivering) must not queue behind a control
    message; the feedback follows FIRST_FEEDBACK_DELAY_S later."""
    sim = Sim([SimLink(), SimLink()], scheduler="adaptive")
    sim.run(1.0, [(sim.now + 0.01, "up", ip_packet(0))])
    sim.run(1.0)  # a pause: the feedback for packet 0 went long ago
    client, server = sim.client, sim.server
    feedback_at: list[float] = []
    send_feedback = server._links._send_feedback

    def spy(peer: Peer, session: Session, now: float) -> None:
        feedback_at.append(now)
        send_feedback(peer, session, now)

    server._links._send_feedback = spy  # type: ignore[method-assign]
    client.send_packet(ip_packet(1), sim.now)
    arrival = sim.now + 0.010
    for sock, data, _addr in client.datagrams_to_send():
        server.receive_datagram(sock, data, client_addr(sock), arrival)
    assert [packet_seq(p) for p in server.packets_to_deliver()] == [1]
    if (timer := server.get_timer()) is not None and timer <= arrival:
        server.handle_timer(arrival)
    server.send_packets([ip_packet(2)], arrival)
    sent = server.datagrams_to_send()
    # The reply is the first datagram on its link (a link that data did not
    # just arrive on may have had a probe since: it woke from idle, see links).
    types = [(addr, wire.peek_type(data)) for _sock, data, addr in sent]
    data_addrs = [addr for addr, mtype in types if mtype is wire.MessageType.DATA]
    assert len(data_addrs) == 1
    assert next(mtype for addr, mtype in types if addr == data_addrs[0]) is wire.MessageType.DATA
    assert feedback_at == []
    timer = server.get_timer()
    assert timer is not None and timer <= arrival + FIRST_FEEDBACK_DELAY_S
    server.handle_timer(arrival + FIRST_FEEDBACK_DELAY_S)
    assert feedback_at == [arrival + FIRST_FEEDBACK_DELAY_S]
    later = server.datagrams_to_send()
    assert wire.MessageType.CONTROL in [wire.peek_type(data) for _sock, data, _addr in later]
