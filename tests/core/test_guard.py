"""The source guard (stripe/guard.py) must not become a weapon: spoofed junk
must not shut a real client or one of its links out, and what an attacker
sends must count against it."""

from __future__ import annotations

import random

from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, packet_seq

from stripe import guard, wire
from stripe.endpoint import Endpoint
from stripe.links import IDLE_PROBE_INTERVAL_S, LinkState


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
    sim.run(IDLE_PROBE_INTERVAL_S + 1.0)  # idle: the client's next probe finds it
    assert not sim.server.guard.blocked(backup[0], sim.now)
    assert sim.server.drops["blocked_source"] == 0
    assert sim.server.peers[0].links[1].health.state is LinkState.UP
    assert sim.client.peers[0].links[1].health.state is LinkState.UP
    # The primary link's data is not held up either.
    sim.run(0.5, [(sim.now + 0.01, "up", ip_packet(7))])
    assert [packet_seq(p) for p in sim.delivered["server"]] == [7]


ATTACKER = ("203.0.113.66", 6666)


def captured_data(sim: Sim, count: int = 80) -> list[bytes]:
    """The client's DATA datagrams of a short flow, as a sniffer sees them."""
    start = len(sim.wire_log)
    sim.run(0.5, [(sim.now + 0.004 * i, "up", ip_packet(i)) for i in range(count)])
    return [d for direction, _, d in sim.wire_log[start:]
            if direction == "up" and d[0] == wire.MessageType.DATA]


def test_a_flood_naming_unknown_sessions_gets_its_source_blocked() -> None:
    rng = random.Random(23)
    sim = Sim([SimLink()], seed=23)
    sim.run(1.0)
    header = wire.TRANSPORT_HEADER
    flood = [header.pack(wire.MessageType.DATA, 0, 0, rng.getrandbits(32), i, i, 0, 0)
             + rng.randbytes(100) for i in range(int(guard.FAIL_LIMIT) + 10)]
    sim.server.receive_datagrams(0, flood, ATTACKER, sim.now)
    assert sim.server.drops["unknown_session"] == len(flood)
    assert sim.server.guard.blocked(ATTACKER[0], sim.now)


def test_replayed_data_as_copies_get_their_source_blocked() -> None:
    """Captured DATA datagrams sent again as DATA_COPY: the replay window
    calls them duplicates (what a redundant copy arriving second is), but
    from a source that never authenticated they are an attack."""
    sim = Sim([SimLink()], seed=24)
    sim.run(1.0)
    captured = captured_data(sim)
    assert len(captured) >= guard.FAIL_LIMIT
    copies = [bytes([wire.MessageType.DATA_COPY]) + d[1:] for d in captured]
    before = sim.server.drops["duplicate"]
    sim.server.receive_datagrams(0, copies, ATTACKER, sim.now)
    assert sim.server.drops["duplicate"] == before + len(copies)
    assert sim.server.guard.blocked(ATTACKER[0], sim.now)


def test_a_client_of_a_restarted_server_gets_back_in() -> None:
    """The server restarts and forgets the session: the client's datagrams
    name a session it does not know, which counts against the client's
    address until it is blocked; the client's next handshake passes the
    block, clears it, and its traffic flows again."""
    sim = Sim([SimLink(), SimLink()], seed=25)
    sim.run(1.0)
    old = sim.server
    sim.server = Endpoint(old.spec, sim.now, wall_offset=1.7e9,
                          random_index=lambda: sim.rng.getrandbits(32))
    # The client sends on (500 packets/s) into the server that forgot it.
    sim.run(2.0, [(sim.now + 0.002 * i, "up", ip_packet(i)) for i in range(1000)])
    drops = sim.server.drops
    assert drops["unknown_session"] > guard.FAIL_LIMIT
    assert sim.server.guard.blocks >= 1
    sim.run(4.0, [(sim.now + 0.002 * i, "up", ip_packet(10_000 + i)) for i in range(1500)])
    assert sim.server.peers[0].current is not None
    assert not any(sim.server.guard.blocked(client_addr(i)[0], sim.now) for i in range(2))
    sim.delivered["server"].clear()
    sim.run(1.0, [(sim.now + 0.01 * i, "up", ip_packet(20_000 + i)) for i in range(50)])
    assert [packet_seq(p) for p in sim.delivered["server"]] == list(range(20_000, 20_050))


def test_ipv6_sources_are_kept_by_their_64() -> None:
    """One IPv6 host has a whole /64 to send from: junk from 64 addresses of
    it blocks the /64; another /64 is not touched."""
    g = guard.SourceGuard()
    now = 10.0
    for i in range(int(guard.FAIL_LIMIT)):
        g.failed(f"2001:db8:1:2::{i + 1:x}", now, 1)
    assert g.blocked("2001:db8:1:2:ffff::1", now)
    assert not g.blocked("2001:db8:1:3::1", now)
    assert g.block_changes(now) == (["2001:db8:1:2::/64"], [], False)
    assert guard.source_key("::ffff:192.0.2.1") == "192.0.2.1"  # a dual-stack socket's IPv4
    assert guard.source_key("192.0.2.1") == "192.0.2.1"
    # One address of the /64 authenticates: the /64 is trusted, as a NAT's
    # address is for everyone behind it.
    g.succeeded("2001:db8:1:2::99", now + 0.1)
    assert not g.blocked("2001:db8:1:2::1", now + 0.1)


def test_block_changes_report_what_changed_once() -> None:
    g = guard.SourceGuard()
    now = 10.0
    assert g.block_changes(now) is None
    g.failed("192.0.2.1", now, int(guard.FAIL_LIMIT))
    g.failed("192.0.2.2", now + 0.1, int(guard.FAIL_LIMIT))
    assert g.block_changes(now + 0.1) == (["192.0.2.1", "192.0.2.2"], [], False)
    assert g.block_changes(now + 0.2) is None
    g.succeeded("192.0.2.2", now + 0.3)  # a handshake from it: urgent
    assert g.block_changes(now + 0.3) == ([], ["192.0.2.2"], True)
    assert g.block_changes(now + guard.BLOCK_S) == ([], ["192.0.2.1"], False)  # it ended
    assert g.block_changes(now + 5) is None
    assert g.blocked_sources(now + 5) == []


def test_a_source_that_keeps_sending_junk_is_blocked_longer_each_time() -> None:
    """A source still sending when its block ends stays blocked, twice as
    long each time (up to BLOCK_MAX_S), and nothing is reported to the
    kernel filter: no re-examination, no rebuild.  One that went quiet
    during its block goes free; if it comes back with junk it is blocked
    again, twice as long.  Authenticating, or a quiet spell longer than
    BLOCK_MAX_S, starts it over at BLOCK_S."""
    g = guard.SourceGuard()
    now = 10.0
    g.failed("192.0.2.1", now, int(guard.FAIL_LIMIT))
    assert g.block_changes(now) == (["192.0.2.1"], [], False)
    ends = []
    for _ in range(8):  # one datagram read (the kernel's sample) every 0.5 s
        start = now
        while True:
            now += 0.5
            assert g.blocked("192.0.2.1", now)
            assert g.block_changes(now) is None  # renewals change nothing outside
            if g.renewals > len(ends):
                ends.append(now - start)
                break
            g.still_sending("192.0.2.1")
    assert ends == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0]
    assert guard.BLOCK_MAX_S == 64.0
    # Quiet for a whole block: it goes free, and the filter hears.
    assert g.block_changes(now + guard.BLOCK_MAX_S) == ([], ["192.0.2.1"], False)
    assert not g.blocked("192.0.2.1", now + guard.BLOCK_MAX_S)
    g.failed("192.0.2.1", now + guard.BLOCK_MAX_S + 1, int(guard.FAIL_LIMIT))  # back: longer
    assert g.blocked("192.0.2.1", now + 2 * guard.BLOCK_MAX_S)
    g.succeeded("192.0.2.1", now + 2 * guard.BLOCK_MAX_S)  # it handshakes: a client after all
    later = now + 2 * guard.BLOCK_MAX_S + guard.TRUSTED_S
    g.failed("192.0.2.1", later, int(guard.FAIL_LIMIT))
    assert g.block_changes(later) == (["192.0.2.1"], [], True)  # (the handshake's lift)
    assert g.blocked_sources(later + 0.5) == ["192.0.2.1"]
    assert g.block_changes(later + guard.BLOCK_S) == ([], ["192.0.2.1"], False)  # BLOCK_S
    g.failed("192.0.2.2", now, int(guard.FAIL_LIMIT))
    g.failed("192.0.2.2", now + 1, int(guard.FAIL_LIMIT))  # 2 s
    later = now + 3 + guard.BLOCK_MAX_S  # quiet for longer than the longest block
    g.failed("192.0.2.2", later, int(guard.FAIL_LIMIT))
    assert not g.blocked("192.0.2.2", later + guard.BLOCK_S)


def test_a_source_read_once_at_the_end_of_its_block_is_renewed_there() -> None:
    """Without a timer turn between (`block_changes` not asked), asking
    about the source at the end of its block renews it; a source that sent
    no junk during its block goes free, reported unblocked exactly once."""
    g = guard.SourceGuard()
    g.failed("192.0.2.1", 0.0, int(guard.FAIL_LIMIT))
    g.failed("192.0.2.2", 0.01, int(guard.FAIL_LIMIT))
    assert g.block_changes(0.01) == (["192.0.2.1", "192.0.2.2"], [], False)
    assert g.blocked("192.0.2.1", 0.5) and g.blocked("192.0.2.2", 0.5)
    g.still_sending("192.0.2.1")  # junk read from it (the other sends what names a session)
    assert g.blocked("192.0.2.1", guard.BLOCK_S + 0.1)  # renewed as it is asked
    assert g.block_changes(guard.BLOCK_S + 0.2) == ([], ["192.0.2.2"], False)
    assert g.blocked_sources(guard.BLOCK_S + 0.2) == ["192.0.2.1"]
    assert not g.blocked("192.0.2.1", 3 * guard.BLOCK_S + 0.2)  # quiet through its 2 s
    assert g.block_changes(3 * guard.BLOCK_S + 0.2) == ([], ["192.0.2.1"], False)
