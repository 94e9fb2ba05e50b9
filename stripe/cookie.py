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

Why every initiation without mac2 gets a reply, not one per source per
interval: any per-source reply slot is taken by whoever sends most from
that address, and an off-path attacker can spoof the real client's address
at any rate, so the client would never see its cookie.  Replying to all is
safe against reflection: the reply is smaller than the initiation that
caused it (52 < 148 bytes, no amplification), it goes to the address the
initiation came from, and it carries nothing an attacker can use (the
cookie is only valid for that address, encrypted under the initiation's
mac1).  An attacker spoofing a victim's address could as well send the
victim its own 148 bytes directly.

A flood of forged initiations thus costs the server one BLAKE2s and, under
load, one small encrypted reply per packet; real clients, which receive
their cookie, get through on their next attempt, and floods from a real
address that does receive cookies are cut by that address's bucket.

Empty state: no buckets, a fresh secret, no cookie.  Memory is bounded by
`MAX_TRACKED_SOURCES` (and only senders that proved their address get a
bucket).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
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
MAX_TRACKED_SOURCES = 4096
COOKIE_LABEL = b"cookie--"

COOKIE_REPLY = struct.Struct("!B3xI12s32s")  # type, receiver index, nonce, enc. cookie
COOKIE_REPLY_SIZE = COOKIE_REPLY.size
HANDSHAKE_INIT_MAC2_OFFSET = wire.HANDSHAKE_INIT_SIZE - wire.MAC_SIZE


def _address_bytes(addr: tuple[str, int]) -> bytes:
    return ipaddress.ip_address(addr[0]).packed + addr[1].to_bytes(2, "big")


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
