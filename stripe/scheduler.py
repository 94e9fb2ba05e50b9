"""Which link carries the next packet.

Strategies sit behind a small base class and a registry (the shape of
aioquic's congestion controllers), so a config names one by string and later
strategies (the adaptive one) plug in without touching the session.

Backup links carry data only while no primary link is up: `usable_links`
applies that rule once, for every strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from .links import Link


def usable_links(links: Sequence[Link]) -> list[Link]:
    """UP primary links, or UP backup links when no primary is up."""
    primary = [link for link in links if link.up and not link.backup]
    if primary:
        return primary
    return [link for link in links if link.up]


class Scheduler:
    """Base class: `pick` returns the link for a packet of `size` bytes, or None."""

    name: ClassVar[str] = ""

    def pick(self, links: Sequence[Link], size: int, now: float) -> Link | None:
        raise NotImplementedError


class WeightedScheduler(Scheduler):
    """Smooth weighted round robin (as nginx does it): over any window of
    sum(weights) packets each link gets exactly its weight, interleaved
    rather than in bursts, so a link's share never lumps up.

    Empty state: no credit.  Invariant: credits of the links considered sum
    to zero after each pick.
    """

    name = "weighted"

    def __init__(self) -> None:
        self._credit: dict[int, int] = {}

    def weight_of(self, link: Link) -> int:
        return link.weight

    def pick(self, links: Sequence[Link], size: int, now: float) -> Link | None:
        candidates = usable_links(links)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        credit = self._credit
        total = 0
        best: Link | None = None
        best_credit = 0
        for link in candidates:
            w = self.weight_of(link)
            total += w
            c = credit.get(link.link_id, 0) + w
            credit[link.link_id] = c
            if best is None or c > best_credit:
                best, best_credit = link, c
        assert best is not None
        credit[best.link_id] = best_credit - total
        return best


class RoundRobinScheduler(WeightedScheduler):
    """Every usable link in turn, weights ignored."""

    name = "roundrobin"

    def weight_of(self, link: Link) -> int:
        return 1


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (RoundRobinScheduler, WeightedScheduler)
}


def make_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        known = ", ".join(sorted(SCHEDULERS))
        raise ValueError(f"unknown scheduler {name!r}; choose one of {known}") from None
