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

Source addresses are spoofable, so the guard must not become a way to shut
a real client out:
- an address that authenticated within TRUSTED_S is never blocked;
- an address that is the current path of a link of a live session is never
  blocked (the caller says which: `failed(..., protected=...)`), so a link
  back from an outage, or a backup link that has been quiet, cannot be shut
  out by junk spoofed from its address;
- handshake messages are never blocked (they have their own limits and
  cookies, see `cookie`), so a client whose address was blocked (a NAT
  shared with an attacker, or a server that restarted and takes the
  client's datagrams for an unknown session as failures) can always
  handshake, and a handshake that authenticates clears the block
  (`succeeded`) at once;
- trusted entries are never forgotten to make room: when the table is full,
  idle sources go first, then those whose block has ended, never a trusted
  or a blocked one (a new source then goes untracked, and unblocked, until
  some entry expires).

Empty state: no sources.  Bounded: at most MAX_SOURCES addresses.
"""

from __future__ import annotations

from collections.abc import Callable
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


def _nowhere(host: str, now: float) -> bool:
    return False


class SourceGuard:
    __slots__ = ("_blocked", "_no_room_until", "_sources", "blocks")

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}
        self._blocked: dict[str, float] = {}  # host -> blocked until
        # The table was full of sources that may not be forgotten: no new
        # one is tracked, and no search for room made, before this.
        self._no_room_until = float("-inf")
        self.blocks = 0  # times a source was blocked (status)

    def blocked(self, host: str, now: float) -> bool:
        source = self._sources.get(host)
        return source is not None and now < source.blocked_until

    def failed(self, host: str, now: float, count: int = 1,
               protected: Callable[[str, float], bool] = _nowhere) -> None:
        """`count` datagrams from `host` failed to parse or authenticate.
        `protected(host, now)`: the host is a live link's path, never to be
        blocked (asked only when it would be)."""
        source = self._entry(host, now)
        if source is None or now < source.trusted_until:
            return
        source.score = source.score * 0.5 ** ((now - source.scored_at) / FAIL_HALF_LIFE_S) + count
        source.scored_at = now
        if source.score >= FAIL_LIMIT:
            source.score = 0.0
            if protected(host, now):
                return
            source.blocked_until = self._blocked[host] = now + BLOCK_S
            self.blocks += 1

    def succeeded(self, host: str, now: float) -> None:
        """A datagram from `host` authenticated."""
        source = self._entry(host, now)
        if source is None:
            return
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

    def _entry(self, host: str, now: float) -> _Source | None:
        """The host's entry, made if there is room (None: there is none)."""
        source = self._sources.get(host)
        if source is None:
            if len(self._sources) >= MAX_SOURCES and not self._make_room(now):
                return None
            source = self._sources[host] = _Source(scored_at=now)
        return source

    def _make_room(self, now: float) -> bool:
        """Forget up to a quarter of the table: idle sources (the lowest
        scores first), then those whose block has ended; never one that is
        trusted or blocked now.  False if nothing could go."""
        if now < self._no_room_until:
            return False
        sources = self._sources
        idle = sorted(
            (s.blocked_until != float("-inf"),
             s.score * 0.5 ** ((now - s.scored_at) / FAIL_HALF_LIFE_S), host)
            for host, s in sources.items()
            if now >= s.blocked_until and now >= s.trusted_until)
        for _, _, host in idle[:MAX_SOURCES // 4]:
            del sources[host]
        if len(idle) < MAX_SOURCES // 8:
            # Few could go: the rest are trusted or blocked, and stay so for
            # a while; do not search a full table again for every datagram.
            self._no_room_until = now + min(BLOCK_S, TRUSTED_S)
        return bool(idle)
