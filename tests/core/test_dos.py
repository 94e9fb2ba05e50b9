"""Handshake floods: rate limits, stateless cookies, no amplification."""

from __future__ import annotations

from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, packet_seq

from stripe import cookie, guard, wire
from stripe.handshake import PendingInitiation
from stripe.noise import generate_keypair


def forged_initiation(server_public: bytes, index: int) -> bytes:
    """A well-formed initiation (valid mac1) from a key the server does not know."""
    attacker_private, _ = generate_keypair()
    return PendingInitiation(attacker_private, server_public, None, index, 0, 1.7e9).datagram


def test_flood_gets_cookies_and_real_client_still_connects() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    server_public = sim.server.public_key
    flood = [forged_initiation(server_public, i) for i in range(300)]
    # The client loses its session (as after a restart) while the flood runs.
    client_peer = sim.client.peers[0]
    client_peer.current = None
    client_peer.handshake.due = sim.now
    attacker = ("203.0.113.9", 666)
    for i, data in enumerate(flood):
        sim.server.receive_datagram(0, data, attacker, sim.now + i * 0.003)
        if i % 10 == 0:
            sim.run(0.03)
    drops = sim.server.drops
    # One cookie reply per 0.1 s to the flooding address (the flood spans
    # ~0.9 s of initiations plus the sim's pauses); the rest cost nothing.
    assert 5 <= drops["handshake_cookie_sent"] <= 20
    assert drops["handshake_cookie_limited"] > 200
    # Only the first second's worth (before "under load") cost a DH.
    assert drops["unknown_peer"] + drops["handshake_rate_limited"] < 80
    assert drops["unknown_peer"] <= cookie.INITS_PER_SOURCE_BURST + cookie.INITS_PER_SOURCE_PER_S
    replies = [data for addr, data in sim.stray if addr == attacker]
    assert replies and all(len(r) < wire.HANDSHAKE_INIT_SIZE for r in replies)
    # The real client got a cookie and is back, under the same load.
    sim.run(3.0)
    assert client_peer.current is not None
    sim.run(1.0, [(sim.now, "up", ip_packet(5))])
    assert [packet_seq(p) for p in sim.delivered["server"]][-1:] == [5]


def test_cookie_reply_is_bound_to_the_initiation() -> None:
    _server_private, server_public = generate_keypair()
    checker = cookie.CookieChecker(server_public, lambda n: bytes(n))
    client_private, _ = generate_keypair()
    pending = PendingInitiation(client_private, server_public, None, 7, 0, 1.7e9)
    init = wire.decode_handshake_init(pending.datagram)
    addr = ("198.51.100.1", 4000)
    reply = checker.reply(init, addr, 10.0)
    jar = cookie.CookieJar(server_public)
    assert not jar.consume_reply(reply, bytes(16), 10.0)  # not for this initiation
    assert jar.consume_reply(reply, pending.mac1, 10.0)
    again = PendingInitiation(client_private, server_public, None, 8, 0, 1.7e9 + 1,
                              mac2=lambda covered: jar.mac2(covered, 11.0))
    assert checker.mac2_valid(again.datagram, addr, 11.0)
    assert not checker.mac2_valid(again.datagram, ("198.51.100.2", 4000), 11.0)
    assert not checker.mac2_valid(pending.datagram, addr, 11.0)


def test_per_source_bucket_and_bounded_memory() -> None:
    limiter = cookie.HandshakeLimiter()
    allowed = sum(limiter.allow("192.0.2.1", 0.0) for _ in range(20))
    assert allowed == cookie.INITS_PER_SOURCE_BURST
    assert limiter.allow("192.0.2.1", 1.0)  # refilled
    for i in range(cookie.MAX_TRACKED_SOURCES + 100):
        limiter.allow(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 2.0)
    assert len(limiter._buckets) <= cookie.MAX_TRACKED_SOURCES


def test_a_source_sending_junk_is_blocked_and_real_clients_are_not() -> None:
    """Replays and forgeries from one address: after FAIL_LIMIT of them the
    address's transport datagrams are dropped unexamined (no decryption)
    for BLOCK_S; the client's own traffic, and a client whose address once
    authenticated, are never blocked; handshakes are never blocked."""
    sim = Sim([SimLink(), SimLink()], seed=5)
    sim.run(1.0)
    start = len(sim.wire_log)
    sim.run(0.5, [(sim.now + 0.002 * i, "up", ip_packet(i)) for i in range(100)])
    captured = [d for direction, _, d in sim.wire_log[start:] if direction == "up"]
    server = sim.server
    attacker = ("10.99.0.9", 4000)
    bad_tag_before = server.drops["bad_tag"]
    for _ in range(3):
        server.receive_datagrams(0, captured, attacker, sim.now)  # replays
    assert server.guard.blocked(attacker[0], sim.now)
    # The first train is examined (the guard counts per read), the rest not.
    assert len(captured) >= guard.FAIL_LIMIT
    assert server.drops["replay"] == len(captured)
    assert server.drops["blocked_source"] == 2 * len(captured)
    assert server.drops["bad_tag"] == bad_tag_before
    # Forged copies (a counter far ahead, would cost a decryption) are not
    # even opened while the block lasts.
    forged = [d[:8] + (2**40).to_bytes(8, "big") + d[16:] for d in captured]
    server.receive_datagrams(0, forged, attacker, sim.now)
    assert server.drops["bad_tag"] == bad_tag_before
    # The real client goes on, and replays spoofing its address cannot block it.
    for _ in range(3):
        server.receive_datagrams(0, captured, client_addr(0), sim.now)
    assert not server.guard.blocked(client_addr(0)[0], sim.now)
    delivered = len(sim.delivered["server"])
    sim.run(0.5, [(sim.now + 0.01, "up", ip_packet(1000))])
    assert len(sim.delivered["server"]) == delivered + 1
    # The block ends by itself; examination (and counting) resumes.
    later = sim.now + guard.BLOCK_S + 0.01
    before = server.drops["replay"]
    server.receive_datagram(0, captured[0], attacker, later)
    assert server.drops["replay"] == before + 1


def test_handshakes_pass_a_blocked_address() -> None:
    sim = Sim([SimLink()], seed=6)  # nothing sent yet
    host = client_addr(0)[0]
    sim.server.guard.failed(host, sim.now, int(guard.FAIL_LIMIT))  # e.g. a shared NAT
    assert sim.server.guard.blocked(host, sim.now)
    sim.run(3.0, [(sim.now + 0.5, "up", ip_packet(1))])
    assert sim.delivered["server"] == [ip_packet(1)]  # handshake went through, then data
    assert not sim.server.guard.blocked(host, sim.now)
