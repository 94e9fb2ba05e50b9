"""Drop a blocked source's datagrams in the kernel (a classic BPF socket filter).

`stripe.guard` decides which sources only send junk; while one is blocked,
its datagrams still cost a receive syscall and a Python lookup each, and at
a few hundred thousand a second they fill the socket's buffer, so a real
client's datagrams are lost with them.  A socket filter drops them before
they are queued: no buffer, no wake-up, no CPU of ours (the kernel counts
them as the socket's drops: `ss -u -a -m`, /proc/net/udp).

The program (the filter sees the UDP header at offset 0, the IP header at
SKF_NET_OFF): the IP version picks a search of the blocked
IPv4 addresses or of the blocked IPv6 /64s (the guard keeps IPv6 sources by
/64), each a binary search tree over sorted 32-bit words (an IPv6 /64 is
two: the tree over the first words leads to a tree over the second words of
the /64s that share it).  A packet costs some 20-80 instructions whatever
the number of blocked sources (up to some 260 when they are near the
program's limit, LEAF_SIZES), and a program of at most BPF_MAXINSNS
instructions holds ~4,000 of them; beyond that the newest blocks are in it,
and the oldest are dropped after reading instead.

A blocked source's other datagrams are dropped but for a sample, one in
OTHERS_SAMPLE at random (the kernel's prandom): what we read of them is what
tells the guard the source is still sending, so its block is renewed when
it ends and the program need not change (a source that went quiet goes
free).

A blocked source's handshake messages (first payload byte 1-3) pass, as the
guard promises (a handshake lifts a block: the client behind a spoofed
address gets back in), but sampled: one in `handshake_sample` at random (the
kernel's prandom), so a source that floods initiations and junk from one
address cannot make us read its initiations faster than we can afford.
`SourceFilter.note_handshakes` sets the ratio from how many such
handshakes the core saw: while they come faster than
BLOCKED_HANDSHAKES_PER_S, the ratio grows to bring them under it; it falls
back to 1 (all pass) when the flood ends.  Below that rate nothing is
sampled, so a real client's handshake is never lost to it.

`SourceFilter` keeps the blocked set as the guard reports changes to it
(each key parsed once, when it is blocked), and builds the program again at
most MAX_REBUILDS_PER_S times a second, whatever the churn: a burst of
blocks costs one rebuild, a source's junk reaches us for at most
1/MAX_REBUILDS_PER_S longer, and an ended block is dropped in the kernel for
as long, except one that a handshake lifted: the client behind it is back,
so that change goes to the kernel at once (only authenticated handshakes
can ask for it).  It also sums the blocks up for the log: one line per
LOG_INTERVAL_S at most, with counts and a few examples, never one per
source.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import math
import socket
import struct
from collections.abc import Callable, Iterable, Sequence

from ..guard import BLOCK_MAX_S, BLOCK_S
from ..wire import MessageType

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SKF_NET_OFF = -0x100000  # loads relative to the IP header
BPF_MAXINSNS = 4096  # the kernel's limit for a classic socket filter
MAX_REBUILDS_PER_S = 4.0
LOG_INTERVAL_S = 10.0
LOG_EXAMPLES = 3
# Values compared one after the other at the leaves of a search tree: the
# first size whose program fits is used.  Larger leaves make a shorter
# program (more sources fit) and longer searches (up to 255 compares for a
# datagram from a source not blocked: a jump offset is 8 bits).
LEAF_SIZES = (64, 128, 255)
# Handshakes from blocked sources read per second at most (in Python each
# costs ~15 us: 1,000 is ~2 % of a core); above, the kernel samples them.
BLOCKED_HANDSHAKES_PER_S = 1000.0
MAX_HANDSHAKE_SAMPLE = 1 << 16
# A blocked source's other datagrams pass one in this many: what keeps its
# block (see guard: a source still sending when its block ends stays
# blocked).  One that sends at the rate that got it blocked (FAIL_LIMIT
# junk datagrams in about a second) is seen about once a second; a flood of
# a million datagrams a second costs ~16,000 reads.
OTHERS_SAMPLE = 64
SAMPLE_REVIEW_S = 0.25  # the ratio is reviewed this often while sources are blocked (a
# flood of initiations must be cut within a fraction of a second: it starves the data path)

Insn = tuple[int, int, int, int]
# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_INSN = struct.Struct("=HBBI")
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20
_RSH_K = 0x74
_LDX_IMM, _TXA, _MOD_K = 0x01, 0x87, 0x94
SKF_AD_RANDOM = 56  # the kernel's prandom_u32(), loaded at SKF_AD_OFF + 56
_LD_RANDOM: Insn = (0x20, 0, 0, (-0x1000 + SKF_AD_RANDOM) & 0xFFFFFFFF)
_JA, _JGT_K, _JGE_K, _JEQ_K = 0x05, 0x25, 0x35, 0x15
_RET_K = 0x06
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_ACCEPT_INSN: Insn = (_RET_K, 0, 0, _ACCEPT)
_DROP_INSN: Insn = (_RET_K, 0, 0, _DROP)
_IPV4_SOURCE = (SKF_NET_OFF + 12) & 0xFFFFFFFF
_IPV6_SOURCE = (SKF_NET_OFF + 8) & 0xFFFFFFFF  # the first of its four words
# The handshake message types, which always pass (see guard): a range.
_HANDSHAKE_FIRST = MessageType.HANDSHAKE_INIT.value
_HANDSHAKE_LAST = MessageType.COOKIE_REPLY.value
assert {t.value for t in (MessageType.HANDSHAKE_INIT, MessageType.HANDSHAKE_RESP,
                          MessageType.COOKIE_REPLY)} == set(range(_HANDSHAKE_FIRST,
                                                                  _HANDSHAKE_LAST + 1))

Parsed = int | tuple[int, int]  # an IPv4 address, or an IPv6 /64's two words


def parse(key: str) -> Parsed | None:
    """A guard key (see guard.source_key) as the filter compares it; None
    if it is neither an IPv4 address nor an IPv6 /64."""
    try:
        if "/" in key:
            network = ipaddress.IPv6Network(key)
            if network.prefixlen != 64:
                return None
            prefix = int(network.network_address) >> 64
            return (prefix >> 32, prefix & 0xFFFFFFFF)
        return int(ipaddress.IPv4Address(key))
    except ValueError:
        return None


def program(blocked: Iterable[Parsed], handshake_sample: int = 1,
            leaf_values: int = LEAF_SIZES[0]) -> list[Insn]:
    """The filter for these blocked sources; their handshakes pass one in
    `handshake_sample` (see the module doc); at most `leaf_values` values
    compared in a row."""
    ipv4: set[int] = set()
    by_first: dict[int, set[int]] = {}
    for p in blocked:
        if isinstance(p, int):
            ipv4.add(p)
        else:
            by_first.setdefault(p[0], set()).add(p[1])
    blocked_leaves: list[int] = []  # where a match jumps to `blocked_tail`
    code: list[Insn] = [
        (_LD_B_ABS, 0, 0, 8),  # first UDP payload byte: the stripe message type
        (_LDX_IMM, 0, 0, 0),  # X: 1 for a handshake message (the tail samples those)
        (_JGT_K, 2, 0, _HANDSHAKE_LAST),
        (_JGE_K, 0, 1, _HANDSHAKE_FIRST),
        (_LDX_IMM, 0, 0, 1),
        (_LD_B_ABS, 0, 0, SKF_NET_OFF & 0xFFFFFFFF),  # IP version
        (_RSH_K, 0, 0, 4),
        (_JEQ_K, 1, 0, 6),
    ]
    over_ipv6 = _jump_over(code)  # IPv4 (a dual-stack socket gets both)
    if by_first:

        def second_words(first: int) -> None:
            code.append((_LD_W_ABS, 0, 0, _IPV6_SOURCE + 4))
            _tree(code, sorted(by_first[first]), None, blocked_leaves, leaf_values)

        code.append((_LD_W_ABS, 0, 0, _IPV6_SOURCE))
        _tree(code, sorted(by_first), second_words, blocked_leaves, leaf_values)
    else:
        code.append(_ACCEPT_INSN)
    over_ipv6()
    if ipv4:
        code.append((_LD_W_ABS, 0, 0, _IPV4_SOURCE))
        _tree(code, sorted(ipv4), None, blocked_leaves, leaf_values)
    else:
        code.append(_ACCEPT_INSN)
    # The blocked tail: drop, but a handshake passes (one in `handshake_sample`).
    tail = len(code)
    for at in blocked_leaves:
        code[at] = (_JA, 0, 0, tail - at - 1)
    handshakes = [_ACCEPT_INSN]
    if handshake_sample > 1:
        handshakes[:0] = _sample(handshake_sample)
    code += [(_TXA, 0, 0, 0), (_JEQ_K, len(handshakes), 0, 0), *handshakes,
             *_sample(OTHERS_SAMPLE), _ACCEPT_INSN]
    return code


def _sample(ratio: int) -> list[Insn]:
    """Code that drops all but one in `ratio` at random, and falls through
    with that one."""
    return [_LD_RANDOM, (_MOD_K, 0, 0, ratio), (_JEQ_K, 1, 0, 0), _DROP_INSN]


def _jump_over(code: list[Insn]) -> Callable[[], None]:
    """Append a jump (32-bit offset) to where the code will be when the
    returned function is called."""
    at = len(code)
    code.append(_ACCEPT_INSN)  # a placeholder

    def land() -> None:
        code[at] = (_JA, 0, 0, len(code) - at - 1)

    return land


def _tree(code: list[Insn], values: Sequence[int],
          on_match: Callable[[int], None] | None, blocked_leaves: list[int],
          leaf_values: int) -> None:
    """Append code that, with a 32-bit word in A, runs the code on_match(it)
    appends (ending in a return) if it is one of `values` (sorted), or jumps
    to the blocked tail if on_match is None (a placeholder whose position
    goes in `blocked_leaves`, for `program` to aim); otherwise accepts it."""
    if len(values) > leaf_values:
        mid = len(values) // 2
        # Above the left half's largest: over the left half to the right one.
        code.append((_JGT_K, 0, 1, values[mid - 1]))
        over_left = _jump_over(code)
        _tree(code, values[:mid], on_match, blocked_leaves, leaf_values)
        over_left()
        _tree(code, values[mid:], on_match, blocked_leaves, leaf_values)
        return
    n = len(values)
    if on_match is None:  # each match jumps to the placeholder at the end
        code += [(_JEQ_K, n - j, 0, v) for j, v in enumerate(values)]
        code.append(_ACCEPT_INSN)
        blocked_leaves.append(len(code))
        code.append(_DROP_INSN)
        return
    for v in values:
        code.append((_JEQ_K, 1, 0, v))
        over_match = _jump_over(code)
        on_match(v)
        over_match()
    code.append(_ACCEPT_INSN)


def encode(insns: Sequence[Insn]) -> bytes:
    return b"".join(itertools.starmap(_INSN.pack, insns))


def attach(sock: socket.socket, code: bytes | None) -> None:
    """Replace the socket's filter with `code` (from `encode`) atomically;
    None: remove it."""
    if code is None:
        with contextlib.suppress(OSError):  # ENOENT: no filter attached
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return
    set_program(sock, SO_ATTACH_FILTER, code)


def set_program(sock: socket.socket, option: int, code: bytes) -> None:
    """setsockopt(SOL_SOCKET, `option`) with a classic BPF program (`encode`)."""
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog {u16 len; struct sock_filter *filter}: the kernel
    # copies the program during the call, so `buffer` only has to live until then.
    fprog = struct.pack("=HxxxxxxQ", len(code) // _INSN.size, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)


def apply(sock: socket.socket, keys: Sequence[str], handshake_sample: int = 1) -> None:
    """Filter out these guard keys on one socket, at once (tests, tools)."""
    parsed = [p for p in map(parse, keys) if p is not None]
    attach(sock, encode(program(parsed, handshake_sample)) if parsed else None)


class SourceFilter:
    """The blocked sources as the guard reported them, the filter program
    for them, when it may be built again, and the log's summary of blocks.

    Empty state: nothing blocked, nothing to build, nothing to log.
    Invariant: `_blocked` holds each blocked key once, in the order of its
    latest block (the newest last), parsed."""

    def __init__(self) -> None:
        self._blocked: dict[str, Parsed] = {}
        self._dirty = False
        self._urgent = False  # a handshake lifted a block: rebuild at once
        self._built_at = float("-inf")
        self.filtered = 0  # sources in the last program built
        self._trimmed = False  # ... which could not hold them all
        # For the log: blocks since the last summary line.
        self._new_blocks = 0
        self._examples: list[str] = []
        self._logged_at = float("-inf")
        # Sampling of blocked sources' handshakes (see the module doc).
        self.handshake_sample = 1  # wanted
        self._sample_built = 1  # in the last program built
        self._noted_at = float("-inf")
        self._noted_total = 0

    def __len__(self) -> int:
        return len(self._blocked)

    def update(self, blocked: Iterable[str], unblocked: Iterable[str],
               urgent: bool = False) -> None:
        """The guard's changes (see Endpoint.block_changes)."""
        table = self._blocked
        for key in unblocked:
            if table.pop(key, None) is not None:
                self._dirty = True
                self._urgent = self._urgent or urgent
        for key in blocked:
            parsed = table.pop(key, None)
            if parsed is None:
                parsed = parse(key)
                if parsed is None:
                    continue
                self._new_blocks += 1
                if len(self._examples) < LOG_EXAMPLES:
                    self._examples.append(key)
                self._dirty = True
            table[key] = parsed  # the newest block last

    def note_handshakes(self, total: int, now: float) -> None:
        """`total`: the handshakes from blocked sources the core has read
        so far.  At most every SAMPLE_REVIEW_S: the rate offered (what was
        read, times the ratio the kernel sampled them with) sets the ratio
        that keeps them under BLOCKED_HANDSHAKES_PER_S; a change (up, or
        down by half or more) asks for a rebuild."""
        elapsed = now - self._noted_at
        if elapsed < SAMPLE_REVIEW_S:
            return
        if elapsed < 2 * SAMPLE_REVIEW_S + 1.0:  # else a first note, or after a pause
            offered = (total - self._noted_total) / elapsed * self._sample_built
            want = min(MAX_HANDSHAKE_SAMPLE,
                       max(1, math.ceil(offered / BLOCKED_HANDSHAKES_PER_S)))
            if want > self.handshake_sample or want <= self.handshake_sample // 2:
                self.handshake_sample = want
                self._dirty = self._dirty or bool(self._blocked)
        self._noted_at, self._noted_total = now, total

    def next_due(self) -> float | None:
        """When `rebuild`, `summary` or `note_handshakes` next has something
        to do."""
        due = []
        if self._blocked and self._noted_at > float("-inf"):  # (the first note comes
            due.append(self._noted_at + SAMPLE_REVIEW_S)  # with the first rebuild)
        if self._dirty:
            due.append(float("-inf") if self._urgent
                       else self._built_at + 1.0 / MAX_REBUILDS_PER_S)
        if self._new_blocks:
            due.append(self._logged_at + LOG_INTERVAL_S)
        return min(due, default=None)

    def rebuild(self, now: float) -> tuple[bool, bytes | None]:
        """(True, the program) if the blocked set changed and a rebuild is
        allowed now (None: no source blocked, remove the filter), else
        (False, None)."""
        if not self._dirty or (not self._urgent
                               and now < self._built_at + 1.0 / MAX_REBUILDS_PER_S):
            return False, None
        self._dirty = self._urgent = False
        self._built_at = now
        if not self._blocked:
            self.filtered, self._trimmed = 0, False
            return True, None
        newest = list(self._blocked.values())
        sample = self._sample_built = self.handshake_sample
        for leaf in LEAF_SIZES:
            insns = program(newest, sample, leaf)
            if len(insns) <= BPF_MAXINSNS:
                break
        while len(insns) > BPF_MAXINSNS:  # too many: the oldest go (each is an instruction)
            newest = newest[len(insns) - BPF_MAXINSNS:]
            insns = program(newest, sample, leaf)
        self.filtered = len(newest)
        self._trimmed = self.filtered < len(self._blocked)
        return True, encode(insns)

    def summary(self, now: float) -> str | None:
        """One line about the blocks since the last one, at most every
        LOG_INTERVAL_S."""
        if not self._new_blocks or now < self._logged_at + LOG_INTERVAL_S:
            return None
        new, examples = self._new_blocks, ", ".join(self._examples)
        self._new_blocks, self._examples = 0, []
        since = ("" if self._logged_at == float("-inf")
                 else f" in the last {now - self._logged_at:.0f} s")
        self._logged_at = now
        kernel = (f"; the kernel filter holds the newest {self.filtered}"
                  if self._trimmed else "")
        return (f"source guard: {new} source{'s' if new != 1 else ''} blocked{since} "
                f"(e.g. {examples}), {len(self._blocked)} blocked now: nothing but junk from "
                f"them; a block lasts {BLOCK_S:g} s, twice as long each time the junk goes on "
                f"(up to {BLOCK_MAX_S:g} s), and the kernel drops their datagrams "
                f"meanwhile{kernel}")
