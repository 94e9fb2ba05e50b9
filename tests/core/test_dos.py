"""Handshake floods: rate limits, stateless cookies, no amplification."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, packet_seq

from stripe import cookie, guard, wire
from stripe import session as session_mod
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
    sim.run(0.0)  # the last replies leave
    drops = sim.server.drops
    # Until the server is under load each costs a DH; from then on each gets
    # a cookie reply (and no DH), smaller than the initiation it answers.
    assert drops["unknown_peer"] == cookie.UNDER_LOAD_INITS_PER_S
    assert drops["handshake_cookie_sent"] >= len(flood) - drops["unknown_peer"]
    assert drops["handshake_rate_limited"] == 0
    replies = [data for addr, data in sim.stray if addr == attacker]
    assert len(replies) == len(flood) - drops["unknown_peer"]
    assert all(len(r) < wire.HANDSHAKE_INIT_SIZE for r in replies)
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
    # 600 bytes: sent once (small packets of a sparse flow also go as copies,
    # whose replays count as duplicates)
    sim.run(0.5, [(sim.now + 0.002 * i, "up", ip_packet(i, 600)) for i in range(100)])
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


def test_a_source_still_sending_junk_stays_blocked_without_examination() -> None:
    """Malformed junk from one address, a train every 0.1 s for 20 s: after
    the first FAIL_LIMIT nothing more of it is parsed.  Its block is renewed
    at each end (after 1, 2, 4 and 8 s) instead of ending, so the kernel filter
    never changes and the source's next burst is not read and examined
    again.  Quiet for a whole block, it goes free."""
    sim = Sim([SimLink()], seed=8)
    server = sim.server
    attacker = ("10.99.0.7", 4000)
    junk = [bytes([0x7F]) + bytes(60)] * 20
    changes = []
    for i in range(200):
        now = sim.now + 0.1 * i
        server.receive_datagrams(0, junk, attacker, now)
        change = server.block_changes(now)
        if change is not None:
            changes.append(change)
    assert changes == [([attacker[0]], [], False)]  # blocked once, never let go
    examined = server.drops["unknown_type"]
    assert guard.FAIL_LIMIT <= examined < guard.FAIL_LIMIT + len(junk)
    assert server.drops["blocked_source"] == 200 * len(junk) - examined
    assert server.guard.blocks == 1 and server.guard.renewals == 4  # at 1, 3, 7, 15 s
    assert server.block_changes(sim.now + 20 + 2 * guard.BLOCK_MAX_S) == ([], [attacker[0]],
                                                                        False)


def test_handshakes_pass_a_blocked_address() -> None:
    sim = Sim([SimLink()], seed=6)  # nothing sent yet
    host = client_addr(0)[0]
    sim.server.guard.failed(host, sim.now, int(guard.FAIL_LIMIT))  # e.g. a shared NAT
    assert sim.server.guard.blocked(host, sim.now)
    sim.run(3.0, [(sim.now + 0.5, "up", ip_packet(1))])
    assert sim.delivered["server"] == [ip_packet(1)]  # handshake went through, then data
    assert not sim.server.guard.blocked(host, sim.now)


def junk_initiation(server_public: bytes, rng: random.Random) -> bytes:
    """What an off-path attacker who knows only the server's public key can
    send: a valid mac1 over junk (no Diffie-Hellman of it can succeed)."""
    return wire.encode_handshake_init(0, rng.getrandbits(32), rng.randbytes(108),
                                      wire.mac1_key(server_public))


def run_with_spoofed_flood(sim: Sim, seconds: float, per_s: int, source: tuple[str, int],
                           rng: random.Random, burst: int = 1) -> None:
    """Advance the sim, the server receiving `per_s` junk initiations a second,
    `burst` at a time, that claim to come from `source`; its answers go there."""
    step = burst / per_s
    for _ in range(round(seconds * per_s / burst)):
        for _ in range(burst):
            sim.server.receive_datagram(0, junk_initiation(sim.server.public_key, rng), source,
                                        sim.now)
        sim.run(step)


def client_initiations(sim: Sim, start: int) -> int:
    return sum(1 for direction, _, data in sim.wire_log[start:]
               if direction == "up" and data[0] == wire.MessageType.HANDSHAKE_INIT)


def test_spoofed_flood_under_load_does_not_lock_the_client_out() -> None:
    """500 junk initiations a second with the client's own address: the
    server is under load, and every initiation without mac2 gets a cookie
    reply, the client's too; its second attempt carries mac2, which the
    spoofer cannot make, and gets through."""
    rng = random.Random(11)
    sim = Sim([SimLink()], seed=11)
    peer = sim.client.peers[0]
    peer.handshake.due = sim.now + 1.0  # the flood is on before the client starts
    start = len(sim.wire_log)
    run_with_spoofed_flood(sim, 4.0, 500, client_addr(0), rng)
    assert peer.current is not None
    assert client_initiations(sim, start) <= 2
    assert peer.handshake.attempts == 0
    drops = sim.server.drops
    assert drops["handshake_cookie_sent"] > 1900  # under load: cookies, no DH
    assert drops["bad_handshake"] <= cookie.UNDER_LOAD_INITS_PER_S + 1
    # The replies to the spoofed initiations reach the client too, and are
    # dropped there (no initiation of its own has their index), counted.
    assert sim.client.drops["unknown_session"] > 100
    assert all(len(data) < wire.HANDSHAKE_INIT_SIZE for _, data in sim.stray)


def test_spoofed_flood_below_load_does_not_drain_the_client() -> None:
    """40 junk initiations a second from the client's address, 4 every 0.1 s
    (enough to keep a 10/s token bucket empty): not enough to put the server
    under load, so no per-source limit applies and each costs one failed DH;
    the client's own initiation goes through at once."""
    rng = random.Random(12)
    sim = Sim([SimLink()], seed=12)
    peer = sim.client.peers[0]
    peer.handshake.due = sim.now + 1.0
    start = len(sim.wire_log)
    run_with_spoofed_flood(sim, 2.0, 40, client_addr(0), rng, burst=4)
    assert peer.current is not None
    assert client_initiations(sim, start) == 1
    drops = sim.server.drops
    assert drops["handshake_cookie_sent"] == drops["handshake_rate_limited"] == 0
    assert drops["bad_handshake"] >= 70


@pytest.mark.parametrize("sources", [
    [("203.0.113.7", 777)],
    [("2001:db8:7:7::1", 777), ("2001:db8:7:7::2", 778)],  # one IPv6 /64, one bucket
])
def test_under_load_a_source_proving_its_address_is_rate_limited(
        sources: list[tuple[str, int]]) -> None:
    """A flood from an attacker's own address, which can receive cookies and
    so send valid mac2: that address's token bucket (an IPv6 /64's) cuts it
    to the limit."""
    sim = Sim([SimLink()], seed=13)
    sim.run(1.0)
    server = sim.server
    attacker_private, _ = generate_keypair()
    t = sim.now
    # Put the server under load, then get a cookie the way a client does.
    first = PendingInitiation(attacker_private, server.public_key, None, 1, 0, 1.7e9)
    for _ in range(cookie.UNDER_LOAD_INITS_PER_S):
        server.receive_datagram(0, first.datagram, ("198.51.100.1", 1), t)
    jars = []
    for source in sources:
        server.receive_datagram(0, first.datagram, source, t)
        reply = next(data for _sock, data, addr in server.datagrams_to_send() if addr == source)
        jar = cookie.CookieJar(server.public_key)
        assert jar.consume_reply(reply, first.mac1, t)
        jars.append(jar)
    before = Counter(server.drops)
    for i in range(50):
        jar = jars[i % len(jars)]
        init = PendingInitiation(attacker_private, server.public_key, None, 100 + i, 0,
                                 1.7e9 + 1 + i, mac2=lambda covered, j=jar: j.mac2(covered, t))
        server.receive_datagram(0, init.datagram, sources[i % len(sources)], t + 0.001 * i)
    grown = Counter(server.drops) - before
    # Only the bucket's burst reached a DH (and failed: an unknown key).
    assert grown["unknown_peer"] == cookie.INITS_PER_SOURCE_BURST
    assert grown["handshake_rate_limited"] == 50 - cookie.INITS_PER_SOURCE_BURST
    assert grown["handshake_cookie_sent"] == 0


# -- the cookie reply budget --------------------------------------------------------

def test_cookie_replies_are_sampled_within_the_budget() -> None:
    """Ten times the budget offered in one second: about the budget's worth
    of replies, never more, spread over the whole second (sampling, not
    first come: the late initiations get their share); the trusted class
    keeps its own budget."""
    rng = random.Random(21)
    budget = cookie.CookieReplyBudget(per_s=100)
    offered = 1000
    admitted = [budget.admit(False, 5.0, rng.random) for _ in range(offered)]  # learns the rate
    admitted = [budget.admit(False, 6.0 + i / offered, rng.random) for i in range(offered)]
    assert 70 <= sum(admitted) <= 100
    assert sum(admitted[offered // 2:]) >= 30  # the second half of the second too
    assert all(budget.admit(True, 6.5, rng.random) for _ in range(100))
    assert not budget.admit(True, 6.6, lambda: 0.0)  # the trusted class's budget is spent
    assert all(budget.admit(False, 8.0 + i / 200, lambda: 0.99) for i in range(50))  # quiet again


def test_a_flood_far_above_the_budget_costs_few_replies_and_a_rekey_gets_through() -> None:
    """20,000 junk initiations a second from spoofed addresses all over:
    the server answers at most its reply budget, not every one (each reply
    is a MAC and an encryption: answering all of them starved the data path
    in `bench attack`), and the client, whose address authenticated
    recently, still gets its cookie on its first rekey attempt and its new
    session on the second."""
    rng = random.Random(22)
    sim = Sim([SimLink()], seed=22)
    sim.run(1.0)
    peer = sim.client.peers[0]
    old = peer.current
    assert old is not None
    old.created = sim.now - session_mod.REKEY_AFTER_S + 0.5  # rekey due in 0.5 s
    start, stray_start = len(sim.wire_log), len(sim.stray)
    per_s, burst, seconds = 20_000, 40, 1.5
    for _ in range(round(seconds * per_s / burst)):
        for _ in range(burst):
            source = (f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}", 1000)
            sim.server.receive_datagram(0, junk_initiation(sim.server.public_key, rng), source,
                                        sim.now)
        sim.run(burst / per_s)
    sim.run(1.0)
    drops = sim.server.drops
    # 30,000 initiations; the first second's sampling starts before the rate
    # is known, so allow the budget twice for it.
    assert drops["handshake_cookie_sent"] <= 3 * cookie.COOKIE_REPLIES_PER_S
    assert drops["handshake_cookie_withheld"] >= per_s * seconds - 4 * cookie.COOKIE_REPLIES_PER_S
    # Every reply but the client's went to the spoofed addresses.
    assert len(sim.stray) - stray_start in range(drops["handshake_cookie_sent"] - 2,
                                                 drops["handshake_cookie_sent"])
    assert peer.current is not None and peer.current is not old
    assert client_initiations(sim, start) <= 2


def test_a_flood_of_unanswered_initiations_gets_its_source_blocked() -> None:
    """Initiations beyond the cookie budget, or with a bad mac1, count as
    junk: a source flooding only initiations is blocked like any other junk
    source (its handshakes then reach the core only as the shell's kernel
    filter samples them).  A live client's own address is never blocked by
    such a flood spoofing it, and its tunnel goes on."""
    rng = random.Random(23)
    sim = Sim([SimLink()], seed=23)
    sim.run(1.0)
    server = sim.server
    attacker = ("203.0.113.50", 777)
    t = sim.now
    for i in range(3 * cookie.COOKIE_REPLIES_PER_S):  # 3,000 in one second
        server.receive_datagram(0, junk_initiation(server.public_key, rng), attacker,
                                t + i / (3 * cookie.COOKIE_REPLIES_PER_S))
    assert server.drops["handshake_cookie_withheld"] > guard.FAIL_LIMIT
    assert server.guard.blocked(attacker[0], t + 1.0)
    bad_mac1 = ("203.0.113.51", 778)
    for i in range(int(guard.FAIL_LIMIT) + 1):
        server.receive_datagram(0, bytes([1]) + bytes(147), bad_mac1, t + 1.0 + i * 1e-4)
    assert server.guard.blocked(bad_mac1[0], t + 1.1)
    # The same flood spoofing the client's address: not blocked, data flows.
    sim.run(0.5)
    client = client_addr(0)
    for i in range(3 * cookie.COOKIE_REPLIES_PER_S):
        server.receive_datagram(0, junk_initiation(server.public_key, rng), client,
                                sim.now + i * 1e-5)
    assert not server.guard.blocked(client[0], sim.now)
    sim.run(0.5, [(sim.now + 0.1, "up", ip_packet(77))])
    assert packet_seq(sim.delivered["server"][-1]) == 77
