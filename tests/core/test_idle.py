"""Idle links are cheap, and failover holds where it matters (issue 19).

While a peer has no data, its links are probed rarely (the client) or not
at all (the server); data after idleness wakes every link: probed at once,
and carried on two links until one is heard from, so a link that died
unseen while idle loses nothing.
"""

from __future__ import annotations

from tests.core.netsim import Sim, SimLink, ip_packet, packet_seq

from stripe.links import LinkState


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
