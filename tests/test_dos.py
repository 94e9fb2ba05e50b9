"""Handshake floods: rate limits, stateless cookies, no amplification."""

from __future__ import annotations

from netsim import Sim, SimLink, ip_packet, packet_seq

from stripe import cookie, wire
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
    client_peer.handshake_due = sim.now
    attacker = ("203.0.113.9", 666)
    for i, data in enumerate(flood):
        sim.server.receive_datagram(0, data, attacker, sim.now + i * 0.003)
        if i % 10 == 0:
            sim.run(0.03)
    drops = sim.server.drops
    assert drops["handshake_cookie_sent"] > 200
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
