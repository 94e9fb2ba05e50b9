"""Which link carries the next packet.

Strategies sit behind a small base class and a registry (the shape of
aioquic's congestion controllers), so a config names one by string and later
strategies (the adaptive one) plug in without touching the session.

The default is `adaptive`.  Backup links carry data only while no primary link is up: `usable_links`
applies that rule once, for every strategy.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

from .links import Link


def shortest_rtt(links: Collection[Link]) -> Link | None:
    """The link with the lowest smoothed RTT (those not measured yet last),
    or None: where a copy or a request goes when it is in a hurry."""
    return min(links, key=lambda x: x.health.srtt_s or float("inf"), default=None)


def shortest_rtt_avoiding(links: Collection[Link], avoid: Collection[Link]) -> Link | None:
    """`shortest_rtt` of the links not in `avoid` (late or silent ones, for
    what the peer waits on), or of all of them if no other is left."""
    return shortest_rtt([x for x in links if x not in avoid]) or shortest_rtt(links)


def usable_links(links: Collection[Link]) -> list[Link]:
    """UP primary links, or UP backup links when no primary is up; of
    those, the ones heard from since data started after idleness, if any
    (see links: a suspect link may have died unseen while idle)."""
    pool = [link for link in links if link.up and not link.backup]
    if not pool:
        pool = [link for link in links if link.up]
    if len(pool) > 1:
        verified = [link for link in pool if not link.health.suspect]
        if verified and len(verified) < len(pool):
            return verified
    return pool


class Scheduler:
    """Base class: `pick` returns the link for a packet of `size` bytes, or None."""

    name: ClassVar[str] = ""

    def pick(self, links: Collection[Link], size: int, now: float,
             within_window: bool = True) -> Link | None:
        """`within_window`: only links with room in their window, for the
        strategies that keep windows (a re-send of late data may overfill)."""
        raise NotImplementedError

    def charge(self, link: Link, size: int) -> None:
        """`size` more bytes went to `link`, the last pick, in the same run
        (see `Endpoint.send_packets`).  Counting strategies count picks."""

    def run_bytes(self, link: Link, links: Collection[Link], window_s: float) -> float:
        """How many bytes a run that starts with a pick of `link` may carry.
        Counting strategies: the same for every link (what the slowest
        carries in `window_s`), so shares by pick stay shares by bytes."""
        slowest = min((other.est.rate_bps for other in usable_links(links)),
                      default=link.est.rate_bps)
        return slowest * window_s / 8

    def forget(self, link_id: int) -> None:
        """The link was removed (reload): drop what the strategy kept about it,
        so an id used again later starts afresh."""


class WeightedScheduler(Scheduler):
    """Smooth weighted round robin (as nginx does it): over any window of
    sum(weights) packets each link gets exactly its weight, interleaved
    rather than in bursts, so a link's share never lumps up.

    Empty state: no credit.  Invariant: credits of the links considered sum
    to zero after each pick.
    """

    name = "weighted"

    def __init__(self) -> None:
        self._credit: dict[int, float] = {}

    def forget(self, link_id: int) -> None:
        self._credit.pop(link_id, None)

    def weight_of(self, link: Link) -> float:
        return link.weight

    def pick(self, links: Collection[Link], size: int, now: float,
             within_window: bool = True) -> Link | None:
        candidates = usable_links(links)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        credit = self._credit
        total = 0.0
        best: Link | None = None
        best_credit = 0.0
        for link in candidates:
            w = self.weight_of(link)
            total += w
            c = credit.get(link.link_id, 0.0) + w
            credit[link.link_id] = c
            if best is None or c > best_credit:
                best, best_credit = link, c
        assert best is not None
        credit[best.link_id] = best_credit - total
        return best


class RoundRobinScheduler(WeightedScheduler):
    """Every usable link in turn, weights ignored."""

    name = "roundrobin"

    def weight_of(self, link: Link) -> float:
        return 1.0


# A link losing this much more than the best link gets a smaller share:
# its assumed rate is cut by 5 x the excess (2 % extra loss -> 90 %).
LOSS_TOLERANCE = 0.005
LOSS_PENALTY_SLOPE = 5.0
LOSS_PENALTY_FLOOR = 0.1
# How much of a link's extra base delay counts against it.  All of it would
# be "earliest arrival" to the letter, but then a 50 ms link is used only once
# the 5 ms link holds a 45 ms queue, which a delay-based inner TCP (BBR)
# never builds and a loss-based one hits the modem's buffer limit with.
# Half: slow links join earlier with shorter queues; the receiver's reorder
# buffer absorbs the rest of the skew (the flow's delay is the same: the
# slowest link in use).  At light load the fastest link still takes all.
SKEW_WEIGHT = 0.5
# Under overload the virtual finish times run ahead of the clock; keep them
# within this horizon (shifting all links alike keeps their ratios).
MAX_LOOKAHEAD_S = 0.5


class AdaptiveScheduler(Scheduler):
    """Send each packet where it is expected to arrive first, without being
    told the links' speeds, and never beyond a link's window.

    Each link has a virtual finish time: when the packets already given to it
    will have gone through at its estimated rate (see `estimator`).  A new
    packet would arrive on a link at max(finish, now + the link's base delay
    above the fastest link (weighted by SKEW_WEIGHT) + its measured queueing
    delay) + its size / the link's rate; it goes to the link where that is
    earliest.  Consequences:

    - light load: the fastest link is idle, so it takes everything (a 40 ms
      link does not slow a 10 ms one, and reordering stays nil);
    - heavy load: packets spread in proportion to the links' rates, and a
      slower-but-longer link gets packets once the fast one's backlog would
      delay them as much (arrival times stay aligned: little reordering);
    - rates are learnt from peer feedback, lossy links are discounted.

    Finish times are kept as times, not bytes, so a change in a link's rate
    affects the packets to come, never reshuffles those already assigned.

    Each link takes packets only while what it has in flight is below its
    window (see `window`): its own feedback clocks it, as each subflow's
    ACKs clock an MPTCP subflow.  A link whose capacity drops fills its
    window and stops taking packets within a round trip, whatever its rate
    estimate still says; when every window is full, packets wait at the
    sending edge, where queue management sees them.
    """

    name = "adaptive"

    def __init__(self) -> None:
        self._finish: dict[int, float] = {}
        self._best_loss = 0.0

    def run_bytes(self, link: Link, links: Collection[Link], window_s: float) -> float:
        """What `link` carries in `window_s` at its estimated rate, within
        what its window has room for: the run is charged to its finish time
        like one big packet."""
        return min(link.est.rate_bps * window_s / 8, link.window.room_bytes())

    def charge(self, link: Link, size: int) -> None:
        rate = _effective_rate(link, self._best_loss)
        self._finish[link.link_id] = self._finish.get(link.link_id, 0.0) + size * 8 / rate

    def forget(self, link_id: int) -> None:
        self._finish.pop(link_id, None)

    def pick(self, links: Collection[Link], size: int, now: float,
             within_window: bool = True) -> Link | None:
        candidates = usable_links(links)
        if within_window:
            candidates = [link for link in candidates if link.window.has_room()]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        base: int | None = None
        best_loss = 1.0
        for link in candidates:
            owd = link.est.owd_min_us
            if owd is not None and (base is None or owd < base):
                base = owd
            best_loss = min(best_loss, link.est.loss)
        finish = self._finish
        best: Link | None = None
        best_finish = float("inf")
        bits = size * 8
        for link in candidates:
            est = link.est
            # Earliest start: after the link's extra base delay and the queue
            # the peer last measured on it (a standing queue our own model of
            # what we sent does not know about).
            start = now + est.queue_left_s(now)
            if base is not None and est.owd_min_us is not None:
                start += SKEW_WEIGHT * (est.owd_min_us - base) / 1e6
            previous = finish.get(link.link_id, start)
            if previous > start:
                start = previous
            done = start + bits / _effective_rate(link, best_loss)
            if done < best_finish:
                best, best_finish = link, done
        assert best is not None
        finish[best.link_id] = best_finish
        self._best_loss = best_loss
        ahead = best_finish - now - MAX_LOOKAHEAD_S
        if ahead > 0:
            for link_id in finish:
                finish[link_id] -= ahead
        return best


def _effective_rate(link: Link, best_loss: float) -> float:
    """The link's estimated rate, discounted for loss well above the best link's."""
    est = link.est
    rate = est.rate_bps
    excess = est.loss - best_loss - LOSS_TOLERANCE
    if excess > 0:
        rate *= max(1.0 - LOSS_PENALTY_SLOPE * excess, LOSS_PENALTY_FLOOR)
    return rate


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (AdaptiveScheduler, RoundRobinScheduler, WeightedScheduler)
}


def make_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        known = ", ".join(sorted(SCHEDULERS))
        raise ValueError(f"unknown scheduler {name!r}; choose one of {known}") from None
