"""A link's minimum round trip, kept true when its base delay changes.

Theory of operation
-------------------
The minimum RTT sizes a link's window (its pipe, see `window`) and the
queue target (`aqm`).  The least sample of all time is wrong once the base
delay grows (a Starlink satellite's reconfiguration, a handover to a
farther cell, a route change): the link keeps a window sized for the delay
it had, too small to fill it, for as long as it runs.  The least sample of
the last few seconds is wrong the other way: a queue that stays longer
than that (a sender that never backs off, a UDP stream above the bond's
capacity, keeps every window full) passes for base delay, the window grows
by its gain over it, the queue with it, and so on without bound.

So, as BBR's min_rtt filter and its PROBE_RTT: the minimum stands until a
sample at or near it confirms it (CONFIRM_SLACK); one not confirmed for
EXPIRE_S is measured again, on a probe that no queue of ours can delay
(`linkctl` decides which, from the link's window):

- a probe sent while the link has no more in flight than it delivers over
  its minimum RTT (an idle link, a lightly used one) finds no queue of
  ours: its round trip is the base;
- a link its window holds back (nearly full) drains (`start_drain`): its
  window is capped at that, which leaves no room for a queue, and the
  first probe sent a round trip later (what was queued has left by then)
  measures the base (and the next REMEASURE_SAMPLES - 1, sent
  DRAIN_PROBE_SPACING_S or half a round trip apart: see below).  The cap
  costs the link the share of its rate that the report gap is of its round
  trip, for about three round trips (DRAIN_ANSWER_S more at most), once in
  EXPIRE_S, and only when the minimum was not seen for that long: a link
  whose base delay grew, or one whose queue never drains.  Not while
  another link is out of the schedule (a fade, an outage): the bond is
  short already, and a drain under way then is given up;
- any other link keeps the minimum it has until it is one of those: one
  paced below its window, or one carrying a download's acks (more in
  flight only because the peer's reports wait behind the peer's queue;
  draining it would hold the acks back, and the download with them).

The new minimum is the least of REMEASURE_SAMPLES such samples, not the
first: on a jittery link (a cellular one, whose radio sends in slots) one
sample is a typical round trip, not the base, and a window sized from it
holds more queue than the link needs, which a fade then holds up.

A sample lower than the minimum counts at once, from any probe.  The
round trip includes the peer's queue towards us, which only the peer's
own drain clears: while both ways hold queues, each end's minimum may keep
part of the other's, which each end's drain bounds.

The stall limit (`estimator.stalled`) keeps the least sample of all time
(`least_s`): twice a re-measured minimum of 0.24 s is a dead link kept in
the schedule 0.75 s, against 0.3 s from the least (test_minrtt).  Its cost
on a link whose base delay grew: one that goes from idle to busy may be
taken for stalled before its first report (out of the schedule until that
report comes).

Empty state: no minimum (None), no drain.  Invariant: `drain_probe_at` is
None unless draining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .window import CWND_MIN_BYTES, DEFAULT_RTT_S, USED_SHARE

if TYPE_CHECKING:
    from .links import Link

# BBR's min_rtt filter: 10 s.
EXPIRE_S = 10.0
# A sample within this of the minimum confirms it (a jittery link's minimum
# was a lucky sample, seldom met exactly again).
CONFIRM_SLACK = 0.05
CONFIRM_SLACK_S = 0.001
# A drain whose probe found no answer this long after it was due is given
# up (the minimum kept, tried again EXPIRE_S later): a probe interval and a
# base round trip, a geostationary satellite's included.
DRAIN_ANSWER_S = 1.0
# A minimum measured again is the least of this many clean samples: one
# alone, on a jittery link (a cellular one waits for its radio's slots),
# is a typical round trip, not the base, and a window sized from it holds
# more than the link needs (see the module doc).
REMEASURE_SAMPLES = 3
# A drain's probes go this far apart (at least; half a round trip if
# longer): a drain is short, and its samples are what it is for.
DRAIN_PROBE_SPACING_S = 0.02


def drain_probe_spacing_s(srtt_s: float) -> float:
    """How far apart a drain's probes go (see DRAIN_PROBE_SPACING_S)."""
    return max(DRAIN_PROBE_SPACING_S, srtt_s / 2)


@dataclass(slots=True)
class MinRtt:
    value_s: float | None = None
    # The least sample of all time: the stall limit's round trip (a limit
    # from a re-measured, higher minimum would hold a fade longer).
    least_s: float | None = None
    confirmed_at: float = float("-inf")
    # Clean samples since the minimum expired: their least, and how many.
    candidate_s: float = float("inf")
    candidates: int = 0
    # Draining: probes sent from then on measure the base (see module doc).
    drain_probe_at: float | None = None
    drain_deadline: float = float("-inf")
    drains: int = 0  # for status: how often the link was drained to measure it

    @property
    def draining(self) -> bool:
        return self.drain_probe_at is not None

    def expired(self, now: float, since: float = float("-inf")) -> bool:
        """Not confirmed for EXPIRE_S (counted from `since` if later: a link
        that woke from idle has had no chance to confirm it)."""
        return self.value_s is not None and now - max(self.confirmed_at, since) > EXPIRE_S

    def clean_at(self, now: float) -> bool:
        """A probe sent now measures the base: the drain has had its round trip."""
        return self.drain_probe_at is not None and now >= self.drain_probe_at

    def sample(self, rtt_s: float, now: float, clean: bool) -> None:
        """A probe's round trip; `clean`: no queue of ours could delay it."""
        if self.least_s is None or rtt_s < self.least_s:
            self.least_s = rtt_s
        least = self.value_s
        if least is None or rtt_s <= least:
            self._confirm(rtt_s, now)
        elif rtt_s <= least * (1 + CONFIRM_SLACK) + CONFIRM_SLACK_S:
            self._confirm(least, now)
        elif clean and self.expired(now):
            self.candidate_s = min(self.candidate_s, rtt_s)
            self.candidates += 1
            if self.candidates >= REMEASURE_SAMPLES:
                self._confirm(self.candidate_s, now)

    def _confirm(self, value_s: float, now: float) -> None:
        self.value_s, self.confirmed_at = value_s, now
        self.candidate_s, self.candidates = float("inf"), 0

    def start_drain(self, now: float, srtt_s: float) -> None:
        self.drain_probe_at = now + srtt_s
        self.drain_deadline = now + srtt_s + DRAIN_ANSWER_S
        self.drains += 1

    def drain_over(self, now: float) -> bool:
        """Draining, and measured (no longer expired) or given up."""
        return self.draining and (not self.expired(now) or now >= self.drain_deadline)

    def end_drain(self, now: float) -> None:
        if self.expired(now):  # given up: the minimum stands, for another EXPIRE_S
            assert self.value_s is not None
            self._confirm(self.value_s, now)
        self.drain_probe_at = None


# The link-level side: which probes are clean, and when a link drains.

def queueless_bytes(link: Link) -> float:
    """What `link` may have in flight without a queue of ours on it: what it
    delivers now over its minimum RTT (at least a few packets)."""
    min_rtt = link.health.min_rtt_s
    if min_rtt is None:
        return CWND_MIN_BYTES
    return max(link.est.delivery_bps / 8 * min_rtt, CWND_MIN_BYTES)


def probe_is_clean(link: Link, now: float) -> bool:
    """A probe of `link` sent now has no queue of ours in front of it: its
    round trip is the link's base."""
    return link.window.inflight_bytes <= queueless_bytes(link) or link.health.min_rtt.clean_at(now)


def space_drain_probes(link: Link, now: float) -> None:
    """After a probe sent now: a drain measures on a few probes in quick
    succession."""
    health = link.health
    if health.min_rtt.clean_at(now):
        spacing = drain_probe_spacing_s(health.srtt_s or DEFAULT_RTT_S)
        health.next_probe_time = min(health.next_probe_time, now + spacing)


def refresh_drain(link: Link, now: float, hold: bool) -> bool:
    """Drain a busy link whose minimum is due to be measured again; end the
    drain once measured or given up, or when `hold` (the bond is short, the
    peer idle).  True if a drain ended (the link has room again)."""
    health, window = link.health, link.window
    min_rtt = health.min_rtt
    if min_rtt.draining:
        if min_rtt.drain_over(now) or not link.up or hold:
            min_rtt.end_drain(now)
            window.drain_cap_bytes = float("inf")
            return True
        return False
    if not link.up or hold or not min_rtt.expired(now, since=health.woke_at):
        return False
    cap = queueless_bytes(link)
    # Only a link its window holds back can hold a queue of ours: one that
    # carries the acks of a download has more in flight than that only
    # because the peer's reports wait behind the peer's own queue.
    if window.inflight_bytes > cap and window.inflight_bytes >= USED_SHARE * window.cwnd_bytes:
        min_rtt.start_drain(now, DEFAULT_RTT_S if health.srtt_s is None else health.srtt_s)
        window.drain_cap_bytes = cap
        if min_rtt.drain_probe_at is not None:
            health.next_probe_time = min(health.next_probe_time, min_rtt.drain_probe_at)
    return False
