"""Path MTU: the tunnel MTU derived from the links, probed per link, and
what happens to inner packets that do not fit.

Theory of operation
-------------------
Sizes here are IP packet sizes.  A link's *path MTU* is the largest outer
datagram (IP + UDP + our header + tag) that crosses it; the tunnel carries
inner packets of at most path MTU - `overhead(family)` (70 bytes over
IPv4, 90 over IPv6).

1. At start (`derive_tunnel_mtu`): the TUN MTU is the smallest of what each
   link's interface or route allows, minus the overhead, within
   [576 (1280 with IPv6 in the tunnel), 9000].
2. While running (`PmtuSearch`, optional, RFC 8899 in spirit): each end
   probes each link's path in its sending direction with padded PMTU_PROBE
   control messages, sent with DF and without the kernel's fragmentation
   or ICMP-learned PMTU (the driver sets IP_PMTUDISC_PROBE on the link
   sockets), so nothing depends on ICMP reaching us.  A size passes when
   the peer acknowledges it; it fails after `MAX_PROBES` unanswered tries,
   each one followed by a small (health) probe that did come back, so an
   outage is never taken for "too big".  The search confirms the base size, tries the
   largest useful size (the TUN MTU + overhead) first, then halves the
   interval down to the byte.  A confirmed path MTU is re-confirmed every
   `CONFIRM_INTERVAL_S` if the link carried data since the last probe
   (else when it next does: see `resting`) and sooner after the link lost
   data; a failed confirmation (a black hole) or a local "message too
   long" for a size it allowed starts a new search; a lower path is
   searched upwards again every `RAISE_INTERVAL_S`.  The published
   `path_mtu` changes only when a search completes, so a false alarm that
   the next probe disproves costs nothing.
3. The effective MTU of a peer is the smallest over its up links (the
   scheduler may put any packet on any link), never above the TUN MTU.
   `Oversize` handles an inner packet above it: IPv4 with DF and IPv6 get
   an ICMP "too big" answer back on the TUN (rate limited); IPv4 without DF
   is fragmented (see `icmp`).

Everything here is pure: no clock, no sockets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from . import icmp
from .wire import WIRE_OVERHEAD_IPV4, WIRE_OVERHEAD_IPV6

# Protocol constants.
MIN_MTU_IPV4 = 576  # every IPv4 host reassembles this much (RFC 791)
MIN_MTU_IPV6 = icmp.IPV6_MIN_MTU
MAX_MTU = 9000
BASE_PMTU = {4: MIN_MTU_IPV4, 6: MIN_MTU_IPV6}  # outer sizes assumed to work

# Implementation constants.
FALLBACK_PATH_MTU = 1500  # Ethernet, when nothing better is known
MAX_PROBES = 3  # unanswered tries before a size counts as too big (RFC 8899)
PROBE_TIMEOUT_MIN_S = 0.2
PROBE_TIMEOUT_MAX_S = 2.0
PROBE_TIMEOUT_RTTS = 3.0
CONFIRM_INTERVAL_S = 10.0  # black hole detection: re-probe the current size
CONFIRM_AFTER_LOSS_S = 1.0  # ... sooner after data loss, but not more often
RAISE_INTERVAL_S = 600.0  # look for a larger path again (RFC 8899 PMTU_RAISE_TIMER)
ERROR_RETRY_S = 60.0  # base size unanswered: try again this much later
EVIDENCE_WAIT_S = 0.1  # a try timed out: look again for a sign the path lives
LOSS_SIGNAL = 0.02  # estimated data loss on a link that triggers a confirmation
# ICMP answers: a token bucket over all destinations.  One answer per inner
# flow is enough for it to adapt; the cap bounds what a flood of oversized
# packets makes us write to the TUN (Linux allows 1000/s overall).
ICMP_RATE_PER_S = 100.0
ICMP_BURST = 20


def overhead(family: int) -> int:
    """Bytes a tunnel packet adds to the inner packet over an IPv4 or IPv6 link."""
    return WIRE_OVERHEAD_IPV6 if family == 6 else WIRE_OVERHEAD_IPV4


def min_tunnel_mtu(ipv6_inside: bool) -> int:
    return MIN_MTU_IPV6 if ipv6_inside else MIN_MTU_IPV4


# -- 1. derivation at start ------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkPath:
    """What the system says about one link's path: its MTU and where from."""

    name: str
    path_mtu: int
    family: int  # 4 or 6: the outer IP version
    source: str  # e.g. "interface eth0", "route via wlan0"

    @property
    def allows(self) -> int:
        return self.path_mtu - overhead(self.family)


@dataclass(frozen=True, slots=True)
class Derivation:
    mtu: int
    explanation: str  # "mtu 1430 = link wan 1500 (interface eth0) - 70"
    warnings: tuple[str, ...] = ()


def derive_tunnel_mtu(paths: Sequence[LinkPath], ipv6_inside: bool) -> Derivation:
    """The TUN MTU for `mtu = "auto"`: the smallest link allowance, clamped."""
    floor = min_tunnel_mtu(ipv6_inside)
    if not paths:
        mtu = max(FALLBACK_PATH_MTU - WIRE_OVERHEAD_IPV4, floor)
        return Derivation(mtu, f"mtu {mtu} = {FALLBACK_PATH_MTU} (no link interface known: "
                               f"assuming Ethernet) - {WIRE_OVERHEAD_IPV4}")
    tightest = min(paths, key=lambda p: p.allows)
    mtu = min(max(tightest.allows, floor), MAX_MTU)
    text = (f"mtu {mtu} = link {tightest.name} {tightest.path_mtu} ({tightest.source}) - "
            f"{overhead(tightest.family)}")
    warnings: tuple[str, ...] = ()
    if tightest.allows < floor:
        text += f", raised to the minimum {floor}"
        warnings = (f"link {tightest.name} allows only {tightest.allows} bytes inside the "
                    f"tunnel, below the minimum {floor}: larger packets on it will be lost",)
    elif tightest.allows > MAX_MTU:
        text += f", capped at {MAX_MTU}"
    return Derivation(mtu, text, warnings)


def check_configured_mtu(mtu: int, paths: Sequence[LinkPath]) -> list[str]:
    """Warnings for a fixed `mtu` that a link cannot carry (not fatal: the
    path may be better than the interface says, or the user knows)."""
    return [
        f"mtu {mtu} is larger than link {p.name} allows: {p.path_mtu} ({p.source}) - "
        f"{overhead(p.family)} = {p.allows}; inner packets above {p.allows} bytes will be "
        "fragmented or refused"
        for p in paths if mtu > p.allows
    ]


# -- 2. probing per link ---------------------------------------------------


class SearchState(Enum):
    BASE = "base"  # confirming the base size
    SEARCHING = "searching"
    COMPLETE = "complete"  # path_mtu confirmed; re-confirmed now and then
    ERROR = "error"  # not even the base size is answered (or the peer cannot)


@dataclass(slots=True)
class PmtuSearch:
    """The probing state of one link in our sending direction.

    Empty state: BASE, nothing confirmed (`path_mtu` None), no probe out,
    no notes.
    Invariants: `lo` < `hi`; in a search every size <= `lo` was acknowledged
    and `hi` (when <= `max_size`) failed; at most one size is being probed
    (`size`), and `probe_ids` maps the ids of its tries to it.  `wake_at` is
    the timeout of the probe out, else when the next one is due.
    """

    base: int
    max_size: int
    overhead: int = WIRE_OVERHEAD_IPV4  # for the notes: what the tunnel carries
    state: SearchState = SearchState.BASE
    path_mtu: int | None = None
    lo: int = 0
    hi: int = 0
    size: int | None = None  # the size being probed
    tries: int = 0
    probe_ids: dict[int, int] = field(default_factory=dict)
    next_id: int = 0
    wake_at: float = 0.0
    last_probe: float = float("-inf")
    confirm_due: float = float("inf")
    raise_due: float = float("inf")
    searches: int = 0
    black_holes: int = 0
    # A try timed out and no small probe sent after it has come back yet:
    # nothing to do before one does (an idle owner polls at its probes).
    awaiting_evidence: bool = False
    notes: list[str] = field(default_factory=list)  # for the log, see take_notes

    def __post_init__(self) -> None:
        self.max_size = max(self.max_size, self.base)
        self.lo, self.hi = self.base - 1, self.max_size + 1

    def take_notes(self) -> list[str]:
        """What happened since the last call, in words (a new `path_mtu`, a
        black hole, no answers): the caller logs them and re-reads `path_mtu`."""
        notes, self.notes = self.notes, []
        return notes

    def next_timer(self) -> float:
        if self.size is None and self.state is SearchState.COMPLETE:
            return min(self.confirm_due, self.raise_due)
        return self.wake_at

    def poll(self, now: float, timeout_s: float, path_alive_at: float) -> tuple[int, int] | None:
        """Time passes.  Returns (probe id, size) of a probe to send now, or None.

        `path_alive_at`: when the newest small probe that the peer answered
        was sent (`LinkHealth.last_acked_sent`).  An unanswered try counts
        as "too big" only once a small probe sent after it came back: lost
        on a path that works, not lost to an outage (RFC 8899 5.3 asks the
        same: tell probe loss from path loss).
        """
        if self.size is not None:
            if now < self.wake_at:
                return None
            if path_alive_at < self.last_probe:
                self.wake_at = now + EVIDENCE_WAIT_S
                self.awaiting_evidence = True
                return None
            self.awaiting_evidence = False
            if self.tries < MAX_PROBES:
                return self._probe(self.size, now, timeout_s)
            self._failed(self.size, now)
        if now < self.next_timer():
            return None
        if self.state is SearchState.ERROR:
            self._restart(now)
        if self.state is SearchState.BASE:
            return self._probe(self.base, now, timeout_s)
        if self.state is SearchState.SEARCHING:
            # Most paths carry the full size: try it first, then halve.
            size = self.max_size if self.hi > self.max_size else (self.lo + self.hi) // 2
            return self._probe(size, now, timeout_s)
        assert self.path_mtu is not None  # COMPLETE
        if now >= self.raise_due:
            self.raise_due = now + RAISE_INTERVAL_S
            if self.path_mtu < self.max_size:
                self._search(self.path_mtu, self.max_size + 1, now)
                return self._probe(self.max_size, now, timeout_s)
        if now >= self.confirm_due:
            self.confirm_due = now + CONFIRM_INTERVAL_S
            return self._probe(self.path_mtu, now, timeout_s)
        return None

    def on_ack(self, probe_id: int, now: float) -> None:
        """A PMTU_ACK came back."""
        size = self.probe_ids.pop(probe_id, None)
        if size is None:
            return  # unknown, or a try of a size already written off
        self._forget_probe(now)
        if self.state is SearchState.BASE:
            self._search(size, self.hi, now)
        elif self.state is SearchState.SEARCHING:
            self.lo = max(self.lo, size)
        self._maybe_complete(now)  # (COMPLETE: a confirmation, nothing to do)

    def on_too_big(self, size: int, now: float) -> None:
        """The OS refused to send `size` bytes on this link (EMSGSIZE: the
        local interface or route got smaller than that)."""
        confirmed = self.path_mtu if self.state is SearchState.COMPLETE else (
            self.lo if self.state is SearchState.SEARCHING else None)
        if confirmed is not None and size <= confirmed:
            self._black_hole(f"the system refuses {size}-byte datagrams", now)
        if self.state in (SearchState.BASE, SearchState.SEARCHING):
            self.hi = max(min(self.hi, size), self.lo + 1)
            if self.size is not None and self.size >= self.hi:
                self._forget_probe(now)  # that one never left: no need to wait for it
            if self.hi <= self.base:  # not even the base size leaves this host
                self._error(f"the system refuses even {size}-byte datagrams", now)
            self._maybe_complete(now)

    def resting(self, last_data_sent: float) -> bool:
        """Complete, no try under way, and no data sent on the link since
        our last probe: nothing for a confirmation to protect (a black hole
        eats only data), so the owner skips the confirmation and raise
        timers until data comes (a server with a thousand idle clients
        would otherwise confirm 2,000 links from both ends every
        CONFIRM_INTERVAL_S)."""
        return (self.size is None and self.state is SearchState.COMPLETE
                and last_data_sent <= self.last_probe)

    def owner_timer(self, last_data_sent: float, idle: bool) -> float | None:
        """`next_timer` as the owner should arm it: none while `resting`,
        nor while idle and waiting for a small probe to come back (it polls
        at its probes then, rather than every EVIDENCE_WAIT_S)."""
        if self.resting(last_data_sent) or (idle and self.awaiting_evidence):
            return None
        return self.next_timer()

    def confirm_soon(self, now: float) -> None:
        """The link lost data or came back: confirm the size soon (if large
        packets die there, that starts a new search)."""
        if self.state is SearchState.COMPLETE:
            self.confirm_due = min(self.confirm_due,
                                   max(now, self.last_probe + CONFIRM_AFTER_LOSS_S))

    # -- transitions ----------------------------------------------------------

    def _probe(self, size: int, now: float, timeout_s: float) -> tuple[int, int]:
        if size != self.size:
            self.size, self.tries = size, 0
            self.probe_ids.clear()
        self.tries += 1
        probe_id = self.next_id
        self.next_id = (probe_id + 1) & 0xFFFFFFFF
        self.probe_ids[probe_id] = size
        self.wake_at = now + timeout_s
        self.last_probe = now
        return probe_id, size

    def _forget_probe(self, now: float) -> None:
        self.size, self.tries = None, 0
        self.awaiting_evidence = False
        self.probe_ids.clear()
        self.wake_at = now

    def _failed(self, size: int, now: float) -> None:
        self._forget_probe(now)
        if self.state is SearchState.BASE:
            self._error(f"no answer to {size}-byte probes (does the peer probe?)", now)
        elif self.state is SearchState.SEARCHING:
            self.hi = size
            self._maybe_complete(now)
        elif size == self.path_mtu:  # COMPLETE, a confirmation failed
            self._black_hole(f"{size}-byte probes vanish", now)

    def _black_hole(self, why: str, now: float) -> None:
        self.black_holes += 1
        self.notes.append(f"{why}: searching the path mtu again")
        self._restart(now)

    def _error(self, why: str, now: float) -> None:
        self.notes.append(f"{why}; path mtu unknown, retrying in {ERROR_RETRY_S:.0f} s")
        self.state = SearchState.ERROR
        self.wake_at = now + ERROR_RETRY_S

    def _restart(self, now: float) -> None:
        self._forget_probe(now)
        self.state = SearchState.BASE
        self.lo, self.hi = self.base - 1, self.max_size + 1

    def _search(self, lo: int, hi: int, now: float) -> None:
        self.state = SearchState.SEARCHING
        self.searches += 1
        self.lo, self.hi = lo, max(hi, lo + 1)
        self.wake_at = now

    def _maybe_complete(self, now: float) -> None:
        if self.state is not SearchState.SEARCHING or self.hi - self.lo > 1:
            return
        self.state = SearchState.COMPLETE
        if self.lo != self.path_mtu:
            self.notes.append(f"path mtu {self.lo} (carries {self.lo - self.overhead} inside "
                              "the tunnel)")
        self.path_mtu = self.lo
        self.confirm_due = now + CONFIRM_INTERVAL_S
        self.raise_due = now + RAISE_INTERVAL_S


def probe_timeout_s(srtt_s: float | None) -> float:
    if srtt_s is None:
        return PROBE_TIMEOUT_MAX_S / 2
    return min(max(PROBE_TIMEOUT_RTTS * srtt_s, PROBE_TIMEOUT_MIN_S), PROBE_TIMEOUT_MAX_S)


def effective_mtu(tunnel_mtu: int, allowances: Sequence[int]) -> int:
    """What a peer's tunnel carries now: the TUN MTU, or less when a link
    that is up allows less (never below the IPv4 minimum)."""
    return max(min(tunnel_mtu, *allowances), MIN_MTU_IPV4) if allowances else tunnel_mtu


# -- 3. oversized inner packets --------------------------------------------


@dataclass(slots=True)
class Oversize:
    """What to do with inner packets above the effective MTU (the caller
    counts the ones dropped).

    Empty state: a full token bucket, zero counters.
    """

    tokens: float = ICMP_BURST
    refilled_at: float = 0.0
    counters: Counter[str] = field(default_factory=Counter)

    def handle(self, packet: bytes, mtu: int, now: float) -> tuple[list[bytes], bytes | None]:
        """(packets to send instead, an ICMP answer for the TUN or None).
        `packet` is larger than `mtu`."""
        if packet[0] >> 4 == 4 and not icmp.ipv4_dont_fragment(packet):
            fragments = icmp.fragment_ipv4(packet, mtu)
            if fragments is not None:
                self.counters["fragmented"] += 1
                self.counters["fragments"] += len(fragments)
                return fragments, None
        answer = (icmp.frag_needed(packet, mtu) if packet[0] >> 4 == 4
                  else icmp.packet_too_big(packet, max(mtu, MIN_MTU_IPV6)))
        if answer is None:
            self.counters["icmp_not_allowed"] += 1
            return [], None
        if not self._take(now):
            self.counters["icmp_rate_limited"] += 1
            return [], None
        self.counters["icmp_sent"] += 1
        return [], answer

    def _take(self, now: float) -> bool:
        self.tokens = min(ICMP_BURST, self.tokens + (now - self.refilled_at) * ICMP_RATE_PER_S)
        self.refilled_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
