"""The source guard (stripe/guard.py) must not become a weapon: spoofed junk
must not shut a real client or one of its links out, and what an attacker
sends must count against it."""

from __future__ import annotations

import random

from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, packet_seq

from stripe import guard
from stripe.links import LinkState


def junk(rng: random.Random, n: int) -> list[bytes]:
    """Datagrams anyone can send: an unknown message type, random bytes."""
    return [bytes([0x09]) + rng.randbytes(60) for _ in range(n)]


def test_a_handshake_from_a_blocked_source_clears_the_block() -> None:
    """A client behind an address the guard blocked (a NAT shared with an
    attacker): its handshake passes the block and lifts it at once, so the
    data it sends right after arrives, long before the block would end."""
    sim = Sim([SimLink()], seed=21)
    host = client_addr(0)[0]
    sim.server.guard.failed(host, sim.now, int(guard.FAIL_LIMIT))
    assert sim.server.guard.blocked(host, sim.now)
    sim.run(0.3, [(sim.now + 0.1, "up", ip_packet(1))])
    assert sim.server.drops["blocked_source"] == 0
    assert sim.delivered["server"] == [ip_packet(1)]
    assert not sim.server.guard.blocked(host, sim.now)


def test_a_full_table_never_forgets_a_trusted_source() -> None:
    g = guard.SourceGuard()
    now = 50.0
    g.succeeded("192.0.2.1", now)  # a real client, first in the table
    for i in range(guard.MAX_SOURCES + 10):  # then an attacker's many addresses get blocked
        g.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", now, int(guard.FAIL_LIMIT))
    assert len(g._sources) <= guard.MAX_SOURCES
    g.failed("192.0.2.1", now + 1.0, int(guard.FAIL_LIMIT) * 2)  # spoofing the client
    assert not g.blocked("192.0.2.1", now + 1.0)


def test_a_full_table_forgets_idle_sources_first() -> None:
    g = guard.SourceGuard()
    now = 50.0
    g.failed("192.0.2.9", now, int(guard.FAIL_LIMIT))  # blocked for BLOCK_S
    for i in range(guard.MAX_SOURCES - 1):
        g.failed(f"10.0.{i >> 8}.{i & 255}", now, 1)  # one failure each: idle
    later = now + 0.5
    g.failed("198.51.100.1", later, 1)  # the table is full: room is made
    assert len(g._sources) < guard.MAX_SOURCES
    assert g.blocked("192.0.2.9", later)  # the blocked one stays
    assert "198.51.100.1" in g._sources


def test_junk_from_a_backup_link_address_does_not_shut_the_link_out() -> None:
    """A backup link back from an outage longer than the trust period: its
    address has not authenticated for 15 s, but it is still the path of a
    link of a live session, so 64 spoofed junk datagrams from it do not get
    it blocked, and the link comes back as fast as without them."""
    rng = random.Random(22)
    links = [SimLink(), SimLink(backup=True)]
    sim = Sim(links, seed=22)
    sim.run(1.0)
    assert sim.client.peers[0].links[1].health.state is LinkState.UP
    links[1].up = False
    sim.run(15.0)
    assert sim.server.peers[0].links[1].health.state is LinkState.DOWN
    backup = client_addr(1)
    sim.server.receive_datagrams(1, junk(rng, 64), backup, sim.now)
    links[1].up = True
    sim.run(1.0)
    assert not sim.server.guard.blocked(backup[0], sim.now)
    assert sim.server.drops["blocked_source"] == 0
    assert sim.server.peers[0].links[1].health.state is LinkState.UP
    assert sim.client.peers[0].links[1].health.state is LinkState.UP
    # The primary link's data is not held up either.
    sim.run(0.5, [(sim.now + 0.01, "up", ip_packet(7))])
    assert [packet_seq(p) for p in sim.delivered["server"]] == [7]
