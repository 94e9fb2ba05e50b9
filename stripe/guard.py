"""Sources that send nothing but junk stop costing the server anything.

A server port is open to the internet.  Replayed datagrams, forged ones
(which cost a decryption attempt each) and malformed ones are all dropped
and counted, but each still costs the single-threaded server a few
microseconds; at a few hundred thousand datagrams per second from one
attacker the server's socket overflows and the real clients' datagrams are
lost with the attacker's.  So a source address whose datagrams keep failing
(FAIL_LIMIT failures, decaying with FAIL_HALF_LIFE_S) is *blocked*: for
BLOCK_S its transport datagrams are dropped before any parsing (one dict
lookup per read), then it is examined again.

What it cannot do harm to:
- an address that authenticated within TRUSTED_S is never blocked, so an
  attacker who spoofs a real client's address cannot get it shut out (the
  datagrams are then only dropped one by one, as before);
- handshake messages are never blocked (they have their own rate limit and
  cookies, see `cookie`), so a client whose address was blocked (a NAT
  shared with an attacker) can always handshake, and that clears the block;
- "unknown session" does not count as a failure: that is what a real
  client sends to a server that restarted, until it handshakes again.

Empty state: no sources.  Bounded: at most MAX_SOURCES addresses, the least
interesting (neither blocked nor trusted) forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass

FAIL_LIMIT = 64.0
FAIL_HALF_LIFE_S = 1.0
BLOCK_S = 1.0
TRUSTED_S = 10.0
MAX_SOURCES = 4096


@dataclass(slots=True)
class _Source:
    score: float = 0.0
    scored_at: float = 0.0
    blocked_until: float = float("-inf")
    trusted_until: float = float("-inf")


class SourceGuard:
    __slots__ = ("_blocked", "_sources", "blocks")

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}
        self._blocked: dict[str, float] = {}  # host -> blocked until
        self.blocks = 0  # times a source was blocked (status)

    def blocked(self, host: str, now: float) -> bool:
        source = self._sources.get(host)
        return source is not None and now < source.blocked_until

    def failed(self, host: str, now: float, count: int = 1) -> None:
        """`count` datagrams from `host` failed to parse or authenticate."""
        source = self._entry(host, now)
        if now < source.trusted_until:
            return
        source.score = source.score * 0.5 ** ((now - source.scored_at) / FAIL_HALF_LIFE_S) + count
        source.scored_at = now
        if source.score >= FAIL_LIMIT:
            source.blocked_until = self._blocked[host] = now + BLOCK_S
            source.score = 0.0
            self.blocks += 1

    def succeeded(self, host: str, now: float) -> None:
        """A datagram from `host` authenticated."""
        source = self._entry(host, now)
        source.trusted_until = now + TRUSTED_S
        source.blocked_until = float("-inf")
        source.score = 0.0
        self._blocked.pop(host, None)

    def blocked_hosts(self, now: float) -> tuple[str, ...]:
        """The addresses blocked now, newest block last (for a kernel filter:
        see stripe/io/source_filter.py)."""
        blocked = self._blocked
        if blocked:
            for host in [h for h, until in blocked.items() if now >= until]:
                del blocked[host]
        return tuple(blocked)

    def _entry(self, host: str, now: float) -> _Source:
        source = self._sources.get(host)
        if source is None:
            if len(self._sources) >= MAX_SOURCES:
                self._forget(now)
            source = self._sources[host] = _Source(scored_at=now)
        return source

    def _forget(self, now: float) -> None:
        sources = self._sources
        idle = [host for host, s in sources.items()
                if now >= s.blocked_until and now >= s.trusted_until]
        for host in idle:
            del sources[host]
        if len(sources) >= MAX_SOURCES:  # all blocked or trusted: oldest half goes
            for host in list(sources)[: MAX_SOURCES // 2]:
                del sources[host]
