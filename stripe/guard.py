"""Sources that send nothing but junk stop costing the server anything.

A server port is open to the internet.  Replayed datagrams, forged ones
(which cost a decryption attempt each) and malformed ones are all dropped
and counted, but each still costs the single-threaded server a few
microseconds; at a few hundred thousand datagrams per second from one
attacker the server's socket overflows and the real clients' datagrams are
lost with the attacker's.  So a source address whose datagrams keep failing
(FAIL_LIMIT failures, decaying with FAIL_HALF_LIFE_S) is *blocked*: for
BLOCK_S its transport datagrams are dropped before any parsing (one dict
lookup per read).  A source still sending when its block ends stays
blocked, twice as long each time, up to BLOCK_MAX_S; one that went quiet
during its block goes free, and is examined again (FAIL_LIMIT more junk
datagrams read) if it comes back.  "Still sending" is junk of its read
while it is blocked (`still_sending`): with the shell's kernel filter in
place (it drops a blocked source's datagrams before we read them, see
stripe/io/source_filter.py) that is from the sample the filter lets
through.  What names a session we have does not count (it may be a real
client's: its block ends as it would have), and neither do handshakes.
Renewing instead of re-examining matters with thousands of attacking
addresses: an examination costs a source's whole burst read and parsed,
and a change to the kernel filter, each time.  Authenticating, or a quiet
spell longer than BLOCK_MAX_S, starts a source over at BLOCK_S.

Sources are kept by *key* (`source_key`): an IPv4 address, or for IPv6 the
/64 it belongs to ("2001:db8:1:2::/64"), since one IPv6 host is normally
given a whole /64 and could otherwise send from unlimited addresses.  An
IPv4-mapped IPv6 address (a dual-stack socket) is its IPv4 address.

The shell mirrors the blocked keys into a kernel filter (see
stripe/io/source_filter.py); `block_changes` hands it only what changed
since it last asked, and asking costs nothing when nothing did (a heap of
block ends, not a scan of the table).  A block a handshake lifted is
`urgent`: the client behind it is back, and its datagrams must not wait
for the filter's next turn.

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
  (`succeeded`) at once (the shell's kernel filter samples a blocked
  source's handshakes only while they come in a flood: io/source_filter);
- trusted entries are never forgotten to make room: when the table is full,
  idle sources go first, then those whose block has ended, never a trusted
  or a blocked one (a new source then goes untracked, and unblocked, until
  some entry expires).

Empty state: no sources, nothing blocked, no changes to report.
Bounded: at most MAX_SOURCES keys; the heap holds one end per block made
in the last BLOCK_MAX_S (an end made stale by a handshake is dropped when
it comes up).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

FAIL_LIMIT = 64.0
FAIL_HALF_LIFE_S = 1.0
BLOCK_S = 1.0  # the first block of a source
BLOCK_MAX_S = 64.0  # blocks after it double up to this
TRUSTED_S = 10.0
MAX_SOURCES = 4096
IPV6_PREFIX_BITS = 64
# Keys of IPv6 source addresses, remembered up to this many (then all are
# forgotten: a flood from one /64 cycles through addresses).
MAX_CACHED_KEYS = 4096

_keys: dict[str, str] = {}


def source_key(host: str) -> str:
    """What the guard keeps a source address by: an IPv4 address as it is;
    an IPv6 address as its /64 ("2001:db8::/64"), or as the IPv4 address it
    maps (::ffff:192.0.2.1); anything unparsable as it is."""
    if ":" not in host:
        return host
    key = _keys.get(host)
    if key is None:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return host
        mapped = address.ipv4_mapped
        if mapped is not None:
            key = str(mapped)
        else:
            network = ipaddress.IPv6Network((int(address) >> (128 - IPV6_PREFIX_BITS)
                                             << (128 - IPV6_PREFIX_BITS), IPV6_PREFIX_BITS))
            key = str(network)
        if len(_keys) >= MAX_CACHED_KEYS:
            _keys.clear()
        _keys[host] = key
    return key


class BlockChanges(NamedTuple):
    """Keys blocked (newest block last) and unblocked since the last report;
    `urgent`: a handshake lifted one of the blocks."""

    blocked: list[str]
    unblocked: list[str]
    urgent: bool


@dataclass(slots=True)
class _Source:
    score: float = 0.0
    scored_at: float = 0.0
    blocked_until: float = float("-inf")
    trusted_until: float = float("-inf")
    block_s: float = 0.0  # how long its last block lasted (0: none lately)
    sent_while_blocked: bool = False  # during its current block


def _nowhere(key: str, now: float) -> bool:
    return False


class SourceGuard:
    __slots__ = ("_blocked", "_changed", "_ends", "_lifted", "_no_room_until", "_sources",
                 "blocks", "renewals")

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}
        self._blocked: dict[str, float] = {}  # key -> blocked until
        self._ends: list[tuple[float, str]] = []  # heap of (blocked until, key)
        self._changed: set[str] = set()  # keys blocked or unblocked since block_changes
        self._lifted = False  # ... and one of them by a handshake
        # The table was full of sources that may not be forgotten: no new
        # one is tracked, and no search for room made, before this.
        self._no_room_until = float("-inf")
        self.blocks = 0  # times a source was blocked (status)
        self.renewals = 0  # times a block was renewed at its end (status)

    def blocked(self, host: str, now: float) -> bool:
        key = source_key(host)
        source = self._sources.get(key)
        if source is None or source.blocked_until == float("-inf"):
            return False
        return now < source.blocked_until or (self._renewed(key, source)
                                              and now < source.blocked_until)

    def still_sending(self, host: str) -> None:
        """Blocked `host` sent junk: its block is renewed when it ends."""
        source = self._sources.get(source_key(host))
        if source is not None:
            source.sent_while_blocked = True

    def failed(self, host: str, now: float, count: int = 1,
               protected: Callable[[str, float], bool] = _nowhere) -> None:
        """`count` datagrams from `host` failed to parse or authenticate.
        `protected(key, now)`: the source (by `source_key`) is a live link's
        path, never to be blocked (asked only when it would be)."""
        key = source_key(host)
        source = self._entry(key, now)
        if source is None or now < source.trusted_until:
            return
        source.score = source.score * 0.5 ** ((now - source.scored_at) / FAIL_HALF_LIFE_S) + count
        source.scored_at = now
        if source.score >= FAIL_LIMIT:
            source.score = 0.0
            if protected(key, now):
                return
            again = source.block_s and now - source.blocked_until < BLOCK_MAX_S
            self._block(key, source, 2 * source.block_s if again else BLOCK_S, now)
            self._changed.add(key)
            self.blocks += 1

    def _block(self, key: str, source: _Source, block_s: float, start: float) -> None:
        source.block_s = min(block_s, BLOCK_MAX_S)
        source.sent_while_blocked = False
        until = source.blocked_until = self._blocked[key] = start + source.block_s
        heapq.heappush(self._ends, (until, key))

    def _renewed(self, key: str, source: _Source) -> bool:
        """At the end of a block: renew it from there, twice as long, if the
        source sent junk during it (the kernel filter need not change)."""
        if not source.sent_while_blocked or self._blocked.get(key) != source.blocked_until:
            return False
        self._block(key, source, 2 * source.block_s, source.blocked_until)
        self.renewals += 1
        return True

    def trusted(self, host: str, now: float) -> bool:
        """`host` authenticated within the last TRUSTED_S."""
        source = self._sources.get(source_key(host))
        return source is not None and now < source.trusted_until

    def succeeded(self, host: str, now: float) -> None:
        """A datagram from `host` authenticated."""
        key = source_key(host)
        source = self._entry(key, now)
        if source is None:
            return
        source.trusted_until = now + TRUSTED_S
        source.score = source.block_s = 0.0
        source.sent_while_blocked = False
        if self._blocked.pop(key, None) is not None:
            source.blocked_until = float("-inf")
            self._changed.add(key)
            self._lifted = True

    def block_changes(self, now: float) -> BlockChanges | None:
        """What changed since the last call, or None: nothing.  A key may be
        reported blocked again (its block renewed), and unblocked when it
        never was."""
        ends, blocked, sources = self._ends, self._blocked, self._sources
        while ends and ends[0][0] <= now:
            until, key = heapq.heappop(ends)
            if blocked.get(key) == until:
                source = sources.get(key)
                if source is None or not self._renewed(key, source):
                    del blocked[key]
                    self._changed.add(key)
        if not self._changed:
            return None
        added = sorted((k for k in self._changed if k in blocked), key=blocked.__getitem__)
        removed = [k for k in self._changed if k not in blocked]
        changes = BlockChanges(added, removed, self._lifted)
        self._changed, self._lifted = set(), False
        return changes

    def blocked_sources(self, now: float) -> list[str]:
        """Every key blocked now (status and tests)."""
        return [key for key, until in self._blocked.items() if now < until]

    def _entry(self, key: str, now: float) -> _Source | None:
        """The key's entry, made if there is room (None: there is none)."""
        source = self._sources.get(key)
        if source is None:
            if len(self._sources) >= MAX_SOURCES and not self._make_room(now):
                return None
            source = self._sources[key] = _Source(scored_at=now)
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
             s.score * 0.5 ** ((now - s.scored_at) / FAIL_HALF_LIFE_S), key)
            for key, s in sources.items()
            if now >= s.blocked_until and now >= s.trusted_until)
        for _, _, key in idle[:MAX_SOURCES // 4]:
            del sources[key]  # an ended block stays in _blocked until its end is popped
        if len(idle) < MAX_SOURCES // 8:
            # Few could go: the rest are trusted or blocked, and stay so for
            # a while; do not search a full table again for every datagram.
            self._no_room_until = now + min(BLOCK_S, TRUSTED_S)
        return bool(idle)
