"""Idle links are cheap, and failover holds where it matters (issue 19).

While a peer has no data, its links are probed rarely (the client) or not
at all (the server); data after idleness wakes every link: probed at once,
and carried on two links until one is heard from, so a link that died
unseen while idle loses nothing.
"""

from __future__ import annotations

import itertools

import msgpack
import pytest
from tests.core.netsim import Sim, SimLink, ip_packet, packet_seq

from stripe import control
from stripe.linkctl import _probe
from stripe.links import IDLE_PROBE_INTERVAL_S, Link, LinkHealth, LinkState
from stripe.sessions import HANDSHAKE_RETRY_MAX_S


def _idle_sim(scheduler: str = "adaptive") -> Sim:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.030)], scheduler=scheduler)
    sim.run(3.0)  # handshake, links up, then idle
    return sim


def _datagrams_per_s(sim: Sim, seconds: float) -> dict[tuple[str, int], float]:
    before = {(d, i): link.carried[d] for i, link in enumerate(sim.links) for d in ("up", "down")}
    sim.run(seconds)
    return {key: (sim.links[key[1]].carried[key[0]] - count) / seconds
            for key, count in before.items()}


def test_an_idle_link_carries_under_one_datagram_per_second_each_way() -> None:
    sim = _idle_sim()
    rates = _datagrams_per_s(sim, 60.0)
    # Before: 10.5 per second each way (probes every 200 ms from both ends).
    assert all(rate <= 0.6 for rate in rates.values()), rates
    for ep in (sim.client, sim.server):
        assert [link.health.state for link in ep.peers[0].links.values()] == [LinkState.UP] * 2
    assert sim.client.drops == {} and sim.server.drops == {}


def test_idle_session_stays_without_rehandshakes() -> None:
    sim = _idle_sim()
    index = sim.client.peers[0].current
    sim.run(60.0)
    assert sim.client.peers[0].current is index  # no "no answer from the server" handshake


def test_a_link_dying_under_traffic_is_out_within_a_second() -> None:
    sim = _idle_sim()
    t0 = sim.now
    traffic = [(t0 + i * 0.002, "up", ip_packet(i, 1000)) for i in range(2000)]
    sim.run(1.0, traffic[:500])
    sim.links[0].up = False  # silently dead (blackholed)
    died = sim.now
    peer = sim.client.peers[0]
    gone_at = None
    while sim.now < died + 3.0:
        sim.run(0.01, [t for t in traffic if sim.now <= t[0] < sim.now + 0.01])
        if gone_at is None and not peer.links[0].up:
            gone_at = sim.now
    assert gone_at is not None and gone_at - died < 1.0
    assert sim.client.peers[0].links[1].up


def _first_packet_after_idle_and_dead_link(direction: str, scheduler: str) -> None:
    sim = _idle_sim(scheduler)
    sim.run(20.0)  # long idle
    sim.links[0].up = False  # the faster link dies, unseen: nothing is sent while idle
    sim.run(0.05)
    side = "server" if direction == "up" else "client"
    start = sim.now
    sim.run(1.0, [(start, direction, ip_packet(1)), (start + 0.3, direction, ip_packet(2))])
    got = [packet_seq(p) for p in sim.delivered[side]]
    assert got == [1, 2]


def test_first_packet_after_idle_survives_a_link_that_died_while_idle_up() -> None:
    _first_packet_after_idle_and_dead_link("up", "adaptive")
    _first_packet_after_idle_and_dead_link("up", "roundrobin")


def test_first_packet_after_idle_survives_a_link_that_died_while_idle_down() -> None:
    _first_packet_after_idle_and_dead_link("down", "adaptive")
    _first_packet_after_idle_and_dead_link("down", "roundrobin")


def test_dead_link_found_within_a_second_of_data_after_idle() -> None:
    sim = _idle_sim()
    sim.run(20.0)
    sim.links[0].up = False
    start = sim.now
    traffic = [(start + i * 0.01, "up", ip_packet(i, 500)) for i in range(100)]
    sim.run(1.0, traffic)
    sim.run(0.1)
    assert sim.client.peers[0].links[0].health.state is LinkState.DOWN
    assert [packet_seq(p) for p in sim.delivered["server"]] == list(range(100))
    # Once the live link answered, data stops going twice.
    copies = sim.client.peers[0].copies.copies_sent
    assert copies < 20, copies


def test_a_link_that_died_while_idle_is_found_by_idle_probes() -> None:
    sim = _idle_sim()
    sim.links[0].up = False
    sim.run(8.0)
    assert sim.client.peers[0].links[0].health.state is LinkState.DOWN
    assert sim.client.peers[0].links[1].health.state is LinkState.UP
    sim.links[0].up = True
    sim.run(10.0)  # back: idle probes see it again
    assert sim.client.peers[0].links[0].health.state is LinkState.UP


def test_unanswered_idle_probes_back_off_and_anything_heard_probes_at_once() -> None:
    """A link that is not up and whose probes go unanswered is probed every
    3, 6, 12, 12 ... s while idle, not every 3 s forever: a peer that cannot
    answer (an overloaded server dropping what it cannot read) gets less
    to read.  A datagram heard on it brings the next probe forward."""
    health = LinkHealth(state=LinkState.DOWN, idle=True)
    sent = []
    now = 0.0
    while now < 40.0:
        if health.probe_due(now):
            health.start_probe(now)
            sent.append(now)
        now = round(now + 0.05, 2)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    base = IDLE_PROBE_INTERVAL_S
    assert gaps[:3] == [base, 2 * base, 4 * base] and set(gaps[3:]) == {4 * base}, gaps
    health.heard(now)
    assert health.probe_due(now)
    ack = health.start_probe(now)
    health.on_ack(ack, now + 0.01)
    assert health.misses == 0


def test_recovery_while_idle_is_clocked_by_acks() -> None:
    """A DOWN link coming back is probed at the busy pace for its three
    acks, but only while they come: a lost one puts it back on the idle
    pace (it was probed five times a second even while its probes were
    lost, 69k probes in the 1,000-client overload, see docs/scaling.md)."""
    health = LinkHealth(state=LinkState.DOWN, idle=True)
    health.on_ack(health.start_probe(0.0), 0.01)
    assert health.good_acks == 1 and health.next_probe_time == pytest.approx(0.2)
    health.start_probe(0.2)  # lost
    assert health.next_probe_time == pytest.approx(0.2 + IDLE_PROBE_INTERVAL_S)
    at = health.next_probe_time
    assert health.on_ack(health.start_probe(at), at + 0.01) is None and health.good_acks == 2
    assert health.next_probe_time == pytest.approx(at + 0.2)
    assert health.on_ack(health.start_probe(at + 0.2), at + 0.21) is LinkState.UP


def _client_datagrams(sim: Sim, seconds: float) -> int:
    start = len(sim.wire_log)
    sim.run(seconds)
    return sum(direction == "up" for direction, _, _ in sim.wire_log[start:])


def test_a_client_whose_server_cannot_answer_sends_ever_less() -> None:
    """Nothing comes back on any link (the server gone, or too loaded to
    read): the idle client's probes and its handshake retries back off, so
    what it offers falls instead of feeding the overload, and it is back
    within a retry once the server answers again."""
    sim = _idle_sim()
    for link in sim.links:
        link.up = False
    sim.run(30.0)
    late = _client_datagrams(sim, 30.0)
    # Two links probed every 12 s (not every 3 s: 20) and a handshake every
    # 8 s, give or take one of each at the window's edges.
    assert late <= 2 * (30 / (4 * IDLE_PROBE_INTERVAL_S) + 1) + 30 / 8 + 1, late
    for link in sim.links:
        link.up = True
    sim.run(HANDSHAKE_RETRY_MAX_S + 1.0)
    assert sim.client.peers[0].current is not None
    states = [link.health.state for link in sim.client.peers[0].links.values()]
    assert states == [LinkState.UP] * 2, states


def test_a_probe_says_when_its_sender_holds_the_link_up() -> None:
    """PROBE's "r": the sender holds the link up, its previous probe came
    back, with its RTT; absent otherwise, and an older peer's probe (no
    "r") still decodes.  A bad value is a control error, not a crash."""
    for message in (control.Probe(7), control.Probe(7, 12_345)):
        assert control.decode(control.encode(message, 3)) == (message, 3)
    assert control.decode(msgpack.packb({"t": 1, "i": 7, "d": 3})) == (control.Probe(7), 3)
    for bad in (-1, 2**32, "fast", 1.5):
        with pytest.raises(control.ControlError):
            control.decode(msgpack.packb({"t": 1, "i": 7, "r": bad, "d": 3}))
    link = Link(0, "l0")
    health = link.health
    assert _probe(link, 0.0).up_srtt_us is None  # UNKNOWN
    health.on_ack(0, 0.02)
    assert health.state is LinkState.UP
    assert _probe(link, 1.0).up_srtt_us == 20_000
    # That one is lost: the next does not vouch, the path may have broken
    # one way since (a probe that reaches the peer proves the other way).
    assert _probe(link, 1.2).up_srtt_us is None


def test_an_idle_server_learns_a_link_from_the_clients_probes() -> None:
    """A link the server has not seen work (its own probe and the answer
    lost, say to an overloaded socket) comes up on the client's next idle
    probe that vouches for it, without the server probing it at all."""
    sim = _idle_sim()
    server_link = sim.server.peers[0].links[1]
    server_link.health = LinkHealth(idle=True, idle_probes=False)  # never seen to work
    server_link.health.start_probe(sim.now)  # and its probe lost
    sim.run(IDLE_PROBE_INTERVAL_S - 0.1)
    assert server_link.health.state is LinkState.UP
    assert server_link.health.probes_sent == 1  # not one more
    assert server_link.health.srtt_s == pytest.approx(0.060, rel=0.2)  # the client's (2 x 30 ms)


def test_a_vouching_probe_counts_as_one_ack_towards_recovery() -> None:
    health = LinkHealth(state=LinkState.DOWN, idle=True, idle_probes=False)
    health.start_probe(0.0)  # ours, unanswered so far
    assert health.on_peer_up(5.0, 0.05) is None and health.good_acks == 1
    assert health.probe_due(5.0)  # and we look ourselves, now
    assert health.on_peer_up(7.0, 0.05) is None
    assert health.on_peer_up(9.0, 0.05) is LinkState.UP
    assert health.last_ack_time == 9.0


def test_a_pause_in_the_peers_data_costs_at_most_four_reports_of_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One packet, then nothing: the receiver reports it, then that nothing
    came after it at 50, 150, 350 and 750 ms (see linkctl's reports of
    nothing), and nothing more: a light flow's pauses cost four small
    datagrams each, not twenty a second."""
    sim = _idle_sim()
    links = sim.server._links
    sent: list[float] = []
    send_feedback = links._send_feedback

    def counted(*args: object) -> None:
        sent.append(sim.now)
        send_feedback(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(links, "_send_feedback", counted)
    start = sim.now
    sim.run(3.0, [(start, "up", ip_packet(0, 200))])
    first = sent[0]
    assert [round(t - first, 2) for t in sent[1:]] == [0.05, 0.15, 0.35, 0.75]
    assert first - start < 0.05
