"""The attack bench's datagrams against a real server endpoint.

`python -m bench attack` reports that no attacker datagram reached the
server's TUN because the server's drop counters account for every one it
sent. That rests on two facts checked here without sockets: each kind the
attacker sends (bench.attack.flood) is dropped, never delivered, and counted
exactly once, under one reason the report treats as "unauthenticated".
"""

from __future__ import annotations

import random
from collections import Counter

from tests.core.netsim import Sim, SimLink, ip_packet

from bench.attack import flood
from bench.attack.report import AUTHENTICATED_DROPS
from bench.attack.runner import initiations
from stripe import guard, wire
from stripe.noise import encode_key

ATTACKER = ("10.99.0.1", 40000)


def _captured(sim: Sim) -> list[bytes]:
    """The client's datagrams of a short flow, as a sniffer on the server's side sees them."""
    start = len(sim.wire_log)
    sim.run(0.5, [(sim.now + 0.005 * i, "up", ip_packet(i, 600)) for i in range(60)])
    return [data for direction, _, data in sim.wire_log[start:] if direction == "up"]


def test_every_attack_datagram_is_dropped_and_counted_once() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    captured = _captured(sim)
    assert sum(1 for d in captured if d[0] == wire.MessageType.DATA) >= 50
    material = flood.pools(
        captured, initiations(encode_key(sim.server.public_key), 8), random.Random(3)
    )
    assert all(material[k] for k in flood.KINDS)
    delivered = len(sim.delivered["server"])
    for kind in flood.KINDS:
        sim.server.guard = guard.SourceGuard()  # each kind examined afresh, then blocked
        before = Counter(sim.server.drops)
        datagrams = material[kind] * 2  # replays of replays too
        # A train through the batched path, then one by one through the general one.
        half = len(datagrams) // 2
        sim.server.receive_datagrams(0, datagrams[:half], ATTACKER, sim.now)
        for data in datagrams[half:]:
            sim.server.receive_datagram(0, data, ATTACKER, sim.now)
        sim.run(0.05)
        grown = Counter(sim.server.drops) - before
        assert sum(grown.values()) == len(datagrams), (kind, grown)
        assert not set(grown) & AUTHENTICATED_DROPS, (kind, grown)
        assert len(sim.delivered["server"]) == delivered, kind
    # What each kind costs the server, as the report's drop columns show it:
    # the first of each are examined, then the source is blocked (see guard)
    # and the rest cost one lookup each.
    drops = sim.server.drops
    assert drops["replay"] >= guard.FAIL_LIMIT and drops["blocked_source"] > 0
    assert drops["bad_tag"] > 0
    assert drops["handshake_cookie_sent"] > 0 or drops["unknown_peer"] > 0


def test_forged_datagrams_pass_the_replay_window_and_fail_the_tag() -> None:
    sim = Sim([SimLink()])
    sim.run(1.0)
    captured = [d for d in _captured(sim) if d[0] == wire.MessageType.DATA]
    forged = [flood.forge(d, random.Random(i)) for i, d in enumerate(captured)]
    before = sim.server.drops["bad_tag"]
    for data in forged:
        assert data is not None
        sim.server.receive_datagram(0, data, ATTACKER, sim.now)
    assert sim.server.drops["bad_tag"] - before == len(forged)
    # The real flow goes on: the forged counters left no mark on the window.
    sim.run(0.5, [(sim.now + 0.01, "up", ip_packet(999))])
    assert sim.delivered["server"][-1] == ip_packet(999)
