"""Handshake DoS defence: WireGuard-style stateless cookies and rate limits.

Theory of operation
-------------------
A handshake initiation costs the server four Diffie-Hellman operations, so
it is the one message an attacker would flood.  mac1 (keyed with the
server's public key) already turns away anyone who does not know the server
at all, before any DH.  On top of that, as WireGuard does:

- `HandshakeLimiter` counts the overall rate of mac1-valid initiations.
  Past `UNDER_LOAD_INITS_PER_S` the server is *under load* and demands
  proof that the sender can receive at its address.
- `CookieChecker` (server) gives that proof: under load, every initiation
  without a valid mac2 is answered with a small COOKIE_REPLY (52 bytes, less
  than the 148-byte initiation) carrying, encrypted, a cookie =
  MAC(rotating secret, source address and port).  Nothing is stored.
- `CookieJar` (client) decrypts the cookie (authenticated with the mac1 of
  the initiation it answers, so it cannot be forged off-path) and sends
  mac2 = MAC(cookie, initiation) with its next initiations for two minutes.
- Only an initiation with a valid mac2 meets the per-source token bucket
  (`HandshakeLimiter.allow`): its sender proved it receives at that address,
  so a spoofer cannot spend a real client's tokens.  Not under load there is
  no per-source limit at all: below the threshold the DH work is bounded by
  the threshold itself, and a spoofed trickle must not drain a bucket the
  real client needs.

Why replies are not one per source per interval: any per-source reply
slot is taken by whoever sends most from that address, and an off-path
attacker can spoof the real client's address at any rate, so the client
would never see its cookie.  Replying is safe against reflection: the
reply is smaller than the initiation that caused it (52 < 148 bytes, no
amplification), it goes to the address the initiation came from, and it
carries nothing an attacker can use (the cookie is only valid for that
address, encrypted under the initiation's mac1).

Replying costs the server a MAC and an encryption, though (~20 us in
Python): a flood of tens of thousands of initiations a second would spend
the whole CPU on cookie replies and starve the data path.  So replies have
a budget (`CookieReplyBudget`): up to COOKIE_REPLIES_PER_S a second, given
by *sampling*: while more initiations come than the budget, each one gets
its reply with probability budget / rate, whatever its source, so no sender
can take the share of another by sending more or sending first.  Sources
that authenticated recently (a client rekeying, or back after a short
outage: the guard trusts them, see `guard`) are sampled in a class of their
own, with a budget of its own: a flood from other addresses does not dilute
their chance, and a spoofer of their addresses only competes with them.

A flood of forged initiations thus costs the server one BLAKE2s a packet
and at most 2 x COOKIE_REPLIES_PER_S replies a second; a real client gets
its cookie with probability budget / flood rate per attempt (at once below
the budget), then through on its next attempt; floods from a real address
that does receive cookies are cut by that address's bucket.

Empty state: no buckets, a fresh secret, no cookie.  Memory is bounded by
`MAX_TRACKED_SOURCES` (and only senders that proved their address get a
bucket).
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import wire

COOKIE_SECRET_LIFETIME_S = 120.0
COOKIE_LIFETIME_S = 120.0 - 5.0  # client side, a little less than the secret's
UNDER_LOAD_INITS_PER_S = 50
INITS_PER_SOURCE_PER_S = 10.0
INITS_PER_SOURCE_BURST = 5.0
# Cookie replies a second, per class (trusted sources, others): ~2 % of a
# core at ~20 us a reply, 52 KB/s of replies.
COOKIE_REPLIES_PER_S = 1000
MAX_TRACKED_SOURCES = 4096
COOKIE_LABEL = b"cookie--"

COOKIE_REPLY = struct.Struct("!B3xI12s32s")  # type, receiver index, nonce, enc. cookie
COOKIE_REPLY_SIZE = COOKIE_REPLY.size
HANDSHAKE_INIT_MAC2_OFFSET = wire.HANDSHAKE_INIT_SIZE - wire.MAC_SIZE
_NO_MAC2 = bytes(wire.MAC_SIZE)


def _address_bytes(addr: tuple[str, int]) -> bytes:
    """The packed address and port (inet_pton: ipaddress takes ~8 us, and
    this runs for every initiation of a flood).  An IPv6 scope is left out."""
    host = addr[0].partition("%")[0]
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:  # not an address (a test's name): still one cookie per source
        packed = host.encode()
    return packed + addr[1].to_bytes(2, "big")


def _cookie_aead(server_public: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(hashlib.blake2s(COOKIE_LABEL + server_public).digest())


@dataclass(slots=True)
class _Bucket:
    tokens: float
    time: float


@dataclass(slots=True)
class HandshakeLimiter:
    """The overall rate of mac1-valid initiations (`note`, `under_load`) and,
    for those that proved their source address (valid mac2), a token bucket
    per source address (`allow`)."""

    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _window_start: float = 0.0
    _window_count: int = 0
    _last_rate: int = 0

    def note(self, now: float) -> None:
        """Count one (mac1-valid) initiation toward the overall rate."""
        if now - self._window_start >= 1.0:
            self._last_rate = self._window_count if now - self._window_start < 2.0 else 0
            self._window_start, self._window_count = now, 0
        self._window_count += 1

    def under_load(self) -> bool:
        return max(self._last_rate, self._window_count) > UNDER_LOAD_INITS_PER_S

    def allow(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_SOURCES:
                self._forget_full_buckets(now)
                if len(self._buckets) >= MAX_TRACKED_SOURCES:
                    return False
            bucket = self._buckets[source] = _Bucket(INITS_PER_SOURCE_BURST, now)
        bucket.tokens = min(INITS_PER_SOURCE_BURST,
                            bucket.tokens + (now - bucket.time) * INITS_PER_SOURCE_PER_S)
        bucket.time = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full_buckets(self, now: float) -> None:
        refill_s = INITS_PER_SOURCE_BURST / INITS_PER_SOURCE_PER_S
        for source in [s for s, b in self._buckets.items() if now - b.time > refill_s]:
            del self._buckets[source]


@dataclass(slots=True)
class _Sampler:
    """One class's offered initiations this second and last, and its replies."""

    window_start: float = float("-inf")
    offered: int = 0
    last_offered: int = 0
    sent: int = 0


@dataclass(slots=True)
class CookieReplyBudget:
    """Which initiations without a valid mac2 get a cookie reply: all while
    a class (trusted sources, others) offers at most `per_s` a second, else
    each with probability per_s / offered rate, and never more than `per_s`
    in one second."""

    per_s: int = COOKIE_REPLIES_PER_S
    _classes: tuple[_Sampler, _Sampler] = field(default_factory=lambda: (_Sampler(), _Sampler()))

    def admit(self, trusted: bool, now: float, draw: Callable[[], float]) -> bool:
        """`draw()`: uniform in [0, 1), from the endpoint's random source
        (called only when sampling)."""
        s = self._classes[trusted]
        if now - s.window_start >= 1.0:
            s.last_offered = s.offered if now - s.window_start < 2.0 else 0
            s.window_start, s.offered, s.sent = now, 0, 0
        s.offered += 1
        rate = max(s.last_offered, s.offered)
        if s.sent >= self.per_s or (rate > self.per_s and draw() * rate >= self.per_s):
            return False
        s.sent += 1
        return True


class CookieChecker:
    """Server side: make cookies, check mac2, answer with COOKIE_REPLY."""

    def __init__(self, server_public: bytes, random_bytes: Callable[[int], bytes]) -> None:
        self._random = random_bytes
        self._aead = _cookie_aead(server_public)
        self._secret = random_bytes(32)
        self._secret_time = float("-inf")

    def _cookie(self, addr: tuple[str, int], now: float) -> bytes:
        if now - self._secret_time >= COOKIE_SECRET_LIFETIME_S:
            self._secret, self._secret_time = self._random(32), now
        return hashlib.blake2s(_address_bytes(addr), key=self._secret,
                               digest_size=wire.MAC_SIZE).digest()

    def mac2_valid(self, datagram: bytes, addr: tuple[str, int], now: float) -> bool:
        if datagram[HANDSHAKE_INIT_MAC2_OFFSET:] == _NO_MAC2:
            return False  # what a client without a cookie sends: nothing to compute
        cookie = self._cookie(addr, now)
        expected = hashlib.blake2s(datagram[:HANDSHAKE_INIT_MAC2_OFFSET], key=cookie,
                                   digest_size=wire.MAC_SIZE).digest()
        return hmac.compare_digest(expected, datagram[HANDSHAKE_INIT_MAC2_OFFSET:])

    def reply(self, init: wire.HandshakeInit, addr: tuple[str, int], now: float) -> bytes:
        nonce = self._random(12)
        sealed = self._aead.encrypt(nonce, self._cookie(addr, now), init.mac1)
        return COOKIE_REPLY.pack(wire.MessageType.COOKIE_REPLY, init.sender_index, nonce, sealed)


class CookieJar:
    """Client side: the latest cookie from the server, and mac2 with it."""

    def __init__(self, server_public: bytes) -> None:
        self._aead = _cookie_aead(server_public)
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        # The link whose initiation the cookie answered: the cookie is bound
        # to that link's source address, so the retry must leave from it.
        self.link_id: int | None = None

    def fresh(self, now: float) -> bool:
        return self._cookie is not None and now - self._cookie_time < COOKIE_LIFETIME_S

    def consume_reply(self, datagram: bytes, init_mac1: bytes, now: float) -> bool:
        """Store the cookie if the reply answers our initiation with `init_mac1`."""
        if len(datagram) != COOKIE_REPLY_SIZE:
            return False
        _type, _receiver, nonce, sealed = COOKIE_REPLY.unpack(datagram)
        try:
            self._cookie = self._aead.decrypt(nonce, sealed, init_mac1)
        except InvalidTag:
            return False
        self._cookie_time = now
        return True

    def mac2(self, covered: bytes, now: float) -> bytes:
        if self._cookie is None or now - self._cookie_time >= COOKIE_LIFETIME_S:
            return wire.ZERO_MAC
        return hashlib.blake2s(covered, key=self._cookie, digest_size=wire.MAC_SIZE).digest()


def reply_receiver_index(datagram: bytes) -> int:
    """The initiator's sender index a COOKIE_REPLY answers; WireError if malformed."""
    if len(datagram) != COOKIE_REPLY_SIZE:
        raise wire.WireError("bad_cookie_reply_size")
    return int(COOKIE_REPLY.unpack(datagram)[1])
