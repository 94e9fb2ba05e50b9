"""The load generator's simulated clients (bench.clients.sim) against a real
server core, on the fake clock: handshakes, links, idle cost, data, fairness,
and the server's timer heap agreeing with a full scan."""

from __future__ import annotations

import random

from bench.clients.sim import (
    InMemory,
    SimClient,
    client_inner,
    client_source,
    jain,
    make_keys,
    server_spec,
)
from stripe.endpoint import Endpoint
from stripe.links import LinkState
from stripe.noise import generate_keypair


def _lab(count: int, seed: int = 1) -> InMemory:
    rng = random.Random(seed)
    now = 1000.0
    server_private, server_public = generate_keypair()
    keys = make_keys(count)
    server = Endpoint(server_spec(server_private, keys), now, wall_offset=1.7e9,
                      random_index=lambda: rng.getrandbits(32))
    clients = [SimClient.create(i, k, server_public, InMemory.SERVER_ADDR, now, 1.7e9,
                                random_index=lambda: rng.getrandbits(32))
               for i, k in enumerate(keys)]
    return InMemory(server, clients, now)


def test_simulated_clients_connect_and_bring_both_links_up() -> None:
    lab = _lab(20)
    lab.run(2.0, check_timers=True)
    assert all(c.connected_at is not None for c in lab.clients)
    assert all(c.connected_at - 1000.0 < 0.1 for c in lab.clients)  # type: ignore[operator]
    for peer in lab.server.peers:
        assert peer.current is not None
        assert sorted(link.health.state.value for link in peer.links.values()) == ["up", "up"]
        # Each link learnt from its own source address.
        assert len({link.path for link in peer.links.values()}) == 2
    assert lab.server.drops == {}


def test_idle_clients_cost_the_server_under_one_datagram_per_link_per_second() -> None:
    lab = _lab(10)
    lab.run(5.0)
    before = sum(link.counters.rx_packets + link.counters.tx_packets
                 for peer in lab.server.peers for link in peer.links.values())
    lab.run(60.0, check_timers=True)
    after = sum(link.counters.rx_packets + link.counters.tx_packets
                for peer in lab.server.peers for link in peer.links.values())
    per_link_per_s = (after - before) / 60.0 / 20
    assert per_link_per_s < 1.2, per_link_per_s  # in + out; was 21 before idle links
    assert all(c.endpoint.peers[0].current is not None for c in lab.clients)


def test_sending_clients_are_delivered_whole_and_fairly() -> None:
    lab = _lab(8)
    lab.run(2.0)
    for c in lab.clients:
        c.rate_bps = 2e6
    lab.run(2.0, check_timers=True)
    got = [lab.delivered.get(str(client_inner(c.index)), 0) for c in lab.clients]
    sent = [c.bytes_sent for c in lab.clients]
    assert all(s > 400_000 for s in sent)
    # Everything sent arrived, but what was in flight at the end.
    assert all(g >= s - 20_000 for g, s in zip(got, sent, strict=True)), (got, sent)
    index = jain([float(g) for g in got])
    assert index is not None and index > 0.99
    # Only the copies of the first packets after idleness (see links).
    assert set(lab.server.drops) <= {"duplicate"} and lab.server.drops["duplicate"] <= 8 * 8


def test_a_dead_link_of_one_client_does_not_disturb_the_others() -> None:
    lab = _lab(4)
    lab.run(3.0)
    lab.down.add((0, 0))
    lab.run(8.0, check_timers=True)
    states = [link.health.state for link in lab.clients[0].endpoint.peers[0].links.values()]
    assert states == [LinkState.DOWN, LinkState.UP]
    for c in lab.clients[1:]:
        assert all(link.up for link in c.endpoint.peers[0].links.values())
    for c in lab.clients:
        c.rate_bps = 1e6
    lab.run(1.0)
    assert all(lab.delivered.get(str(client_inner(c.index)), 0) > 80_000 for c in lab.clients)


def test_jain() -> None:
    assert jain([1.0, 1.0, 1.0]) == 1.0
    assert jain([1.0, 0.0]) == 0.5
    assert jain([]) is None


def test_many_clients_at_once_connect_through_cookies() -> None:
    """120 initiations at once put the server under load: the clients get
    cookies and retry with them, from the link (source address) each cookie
    was made for, and all connect."""
    lab = _lab(120)
    lab.run(6.0)
    assert lab.server.drops["handshake_cookie_sent"] > 0
    assert all(c.connected_at is not None for c in lab.clients)


def test_a_rekey_burst_gives_every_client_a_new_session_through_cookies() -> None:
    """The bench's rekey burst: 120 clients handshake again at once; the
    server, under load, takes the cookies they hold from connecting (or
    sends fresh ones), and every client gets a new session while the old
    one serves."""
    lab = _lab(120)
    lab.run(6.0)
    old = [c.endpoint.peers[0].current for c in lab.clients]
    for c in lab.clients:
        c.start_rekey(lab.now)
    lab.run(4.0)
    assert all(c.rekeyed_at is not None for c in lab.clients)
    assert all(c.endpoint.peers[0].current is not o for c, o in zip(lab.clients, old, strict=True))
    assert all(p.current is not None for p in lab.server.peers)


def test_a_sealed_blast_is_what_a_server_accepts_and_delivers() -> None:
    """bench workers' generator (bench.clients.blast): datagrams sealed ahead
    of time, sent as GSO trains, each one opened and delivered in order."""
    from bench.clients.blast import TRAIN, seal
    from bench.clients.sim import INNER_NET
    from stripe import wire

    lab = _lab(2)
    lab.run(1.0)
    sink = INNER_NET.broadcast_address - 1
    size = 100 + wire.TRANSPORT_OVERHEAD
    trains = seal(lab.clients[1], 150, 100, sink)
    assert [len(t) // size for t in trains] == [TRAIN, TRAIN, 150 - 2 * TRAIN]
    source = (client_source(lab.clients[1].index, 0), 40000)
    for train in trains:
        datagrams = [train[i:i + size] for i in range(0, len(train), size)]
        lab.server.receive_datagrams(0, datagrams, source, lab.now)
    delivered = lab.server.packets_to_deliver()
    assert len(delivered) == 150
    assert all(p[16:20] == sink.packed and p[12:16] == client_inner(1).packed
               for p in delivered)
    assert [int.from_bytes(p[4:6], "big") for p in delivered] == [i % 64 for i in range(150)]
    assert lab.server.drops == {}
