"""Put striped packets back in order.

Theory of operation
-------------------
The sender numbers every encrypted message of a direction with one counter
and spreads them over its links.  Each link is FIFO (a UDP path does not
reorder much by itself), so when counter `n` is missing and *every link
still carrying data* has already delivered a counter above `n`, `n` was lost:
release what follows at once instead of waiting (loss inference).

"Carrying data" is the union of the links the sender announces in its
newest packet's link mask (so a link that has not delivered yet is waited
for) and the links that delivered data in the last few hold times (packets
may still be in flight on a link the sender just dropped from rotation).

A gap loss inference gives up is, when the peer repairs (it said so:
`repair_wait_s` > 0), asked for again instead (`repair_wanted`, which the
caller sends as a REPAIR message): the sender still has the packet and sends
it again as a DATA_COPY on its fastest link, and the gap waits for it up to
`repair_wait_s` (about a round trip of that link) before it is given up.  A
link that drops a packet then costs the inner flow a round trip of delay,
not a loss: each loss costs a loss-based TCP a third of its window, and the
bond's losses are the links' business (their windows), as each MPTCP
subflow repairs its own.  Every missing counter below the inference
frontier is asked for at once (not one gap at a time: the later gaps would
be asked a wait apart, and be gone from the sender), each once; a run of
more than MAX_REPAIR_GAP missing counters (an outage, not a drop) is given
up as before.  The copies of a burst of losses leave together and arrive
one after the other, so each that arrives extends the wait of the rest.

A link that goes silent without us knowing (a blackholed ISP) would stall
that rule, so a hold deadline is the backstop: no packet waits longer than
`hold_s` for the gap before it.  `hold_s` comes from the measured one-way
delay skew between links plus their jitter (see `DelaySkew`), capped.

A gap at its deadline is asked for again too, when the peer repairs
("overdue", `repair_overdue`, sent as a REPAIR that says so): every counter
missing below the newest packet that has waited `hold_s`, by the same runs
of at most MAX_REPAIR_GAP, and the gap waits for its repair as a lost one
does.  Such a gap is most often behind a link whose delay just jumped past
the hold (a cellular queue; the packet comes, late) or one that went silent
(a satellite's reconfiguration, a handover, a blackhole: its queue is lost
or stuck), and inference cannot settle it, since it waits for that very
link.  Given up, it cost the inner flow a loss event either way: a late
packet is reordering its TCP takes for loss once its later packets are
acknowledged, and an outage's packets are gone.  Asked for, the copy comes
over a link that is delivering, or the original ends its wait: either way
in order.  The request says "overdue", not "lost": the sender does not
count it against the link's window (see `egress.repair`).

A packet that arrives after its gap was given up ("late": a cellular link
that stopped delivering for longer than the hold, then resumed) is
delivered at once, out of order, not dropped.  To the inner TCP it is then
a reordering, which it tolerates (and, having retransmitted, detects as
spurious and undoes the window cut it made); dropped, it would be a loss,
and every loss costs a loss-based TCP a third of its window.  The replay
window still lets each counter through once.

Order is kept within each inner flow, not between flows (see `flows`):
each data message says how many counters back the previous message of its
flow is, and a message whose predecessor has been delivered or given up is
released at once, ahead of the gaps in front of it ("ahead"), so a ping
does not wait for a bulk flow's packets queued on a slower link.  It keeps
its slot (a placeholder, `_RELEASED`): the gaps before it still have their
deadline and their loss inference, and the frontier steps over it.  A held
message waits on its predecessor (`_waiting`), and goes as soon as that one
is delivered, released ahead or skipped.  A message without a flow gap
(FLOW_IN_ORDER: a re-send after a link died) waits for every smaller
counter, as all did before flows were told.

Only data messages are reordered (control messages have their own counter
range).  A data packet that failed inner validation is pushed as `None`: it
fills its slot but delivers nothing.  A control message tells, through
`note_progress`, that its link has nothing older in flight, so an idle link
does not hold up loss inference.

Empty state: `next_seq == 0`, nothing held, no link seen.
Invariants:
- the packets of one flow are released in increasing counter order, except
  late ones (below `next_seq` when they arrive), released alone as they
  come; with FLOW_IN_ORDER everywhere, every packet is;
- at most `max_held` packets are held; beyond that the oldest gap is skipped;
- no held packet waits more than `hold_s` after its arrival (or, behind a
  gap asked for again, `hold_s` + `repair_wait_s`), provided the caller
  calls `poll()` at `deadline()`.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from .wire import FLOW_FIRST, FLOW_IN_ORDER, MASKABLE_LINKS

HOLD_MIN_S = 0.020
# Enough for a geostationary hop beside a terrestrial line (~280 ms one way
# apart, 1.5 x that held) and for cellular queues that drift 300-500 ms
# apart: a packet the hold gives up on arrives anyway, late, and the inner
# TCP takes it for a loss.  The hold ends early whenever loss inference can
# settle a gap, and order is per flow, so only the flow behind the gap waits.
HOLD_MAX_S = 1.000
HOLD_MARGIN_S = 0.005
# Until two links have reported delays we cannot know the skew; a link we
# have not heard from yet may be slow.  With one link, FIFO loss inference
# releases gaps at once anyway, so a generous hold costs nothing there.
HOLD_UNMEASURED_S = 0.050
MAX_HELD_PACKETS = 8192
# A late packet means the hold was too short for the links' actual skew:
# add this (growing x1.5 per late packet, capped), decaying by half in 5 s.
LATE_BONUS_STEP_S = 0.005
LATE_BONUS_MAX_S = 0.200
LATE_BONUS_HALF_LIFE_S = 5.0
# A link that carried data within this multiple of the hold time is assumed
# to still have packets in flight, so loss inference waits for it.
ACTIVE_HOLD_MULTIPLE = 2.0
ACTIVE_MIN_S = 0.050
ACTIVE_MAX_S = 0.500

# The last skips (gaps given up) remembered, to tell how late a late packet
# is: enough for the gaps of a few hold times on a lossy bond.
REMEMBERED_SKIPS = 256

# The widest gap asked for again (wider: the link lost more than a drop-tail
# queue does at once, and waiting would cost more than the loss).
MAX_REPAIR_GAP = 64
# The most counters waiting for their repair at once.
MAX_REPAIRS_ASKED = 1024
# Each repair that comes extends the wait of those still missing by this
# share of the repair wait (the copies of a burst leave together, and come
# one after the other).
REPAIR_FLOWING_SHARE = 0.25

# Stale heap entries tolerated beyond twice the held packets (see `push`).
HEAP_SLACK = 1024

_MISSING = object()
_RELEASED = object()  # a slot whose packet went ahead of the gaps before it


@dataclass(slots=True)
class ReorderStats:
    delivered: int = 0
    lost: int = 0  # counters skipped by inference or deadline (includes control slots)
    late: int = 0  # arrived after their slot was skipped: delivered out of order
    inferred_releases: int = 0
    deadline_releases: int = 0
    overflow_releases: int = 0
    ahead: int = 0  # released ahead of another flow's gap (see the module doc)
    max_held: int = 0
    # Of the late packets: those whose gap loss inference had given up (it
    # was wrong: a link reordered, or carried data it was not known to), and
    # how long after the skip they came (of the skips still remembered,
    # `REMEMBERED_SKIPS`): by how much the hold fell short.
    late_after_inference: int = 0
    late_after_count: int = 0  # late packets whose skip was remembered
    late_after_sum_s: float = 0.0
    late_after_max_s: float = 0.0
    max_wait_s: float = 0.0
    repair_requests: int = 0  # counters asked for again (see the module doc)
    overdue_requests: int = 0  # of those, asked at the hold deadline, not found lost
    repaired: int = 0  # of those, arrived (as a copy) before their gap was given up
    repair_timeouts: int = 0  # gaps given up after waiting for their repair


@dataclass(slots=True)
class _LinkProgress:
    highest: int = -1
    last_data_time: float = float("-inf")


@dataclass(slots=True)
class ReorderBuffer:
    hold_s: float = 0.05
    max_held: int = MAX_HELD_PACKETS
    next_seq: int = 0
    stats: ReorderStats = field(default_factory=ReorderStats)
    ready: list[bytes] = field(default_factory=list)
    _held: dict[int, object] = field(default_factory=dict)  # bytes, None or _RELEASED
    _released_held: int = 0  # how many of `_held` are _RELEASED
    # Predecessor counter -> the held message of its flow waiting on it.
    _waiting: dict[int, int] = field(default_factory=dict)
    _held_heap: list[int] = field(default_factory=list)
    _arrivals: deque[tuple[float, int]] = field(default_factory=deque)
    _links: dict[int, _LinkProgress] = field(default_factory=dict)
    _mask: int = 0
    _mask_seq: int = -1
    _late_bonus_s: float = 0.0
    _late_bonus_time: float = 0.0
    # The last skips: (first counter given up, the counter after the last,
    # when, by loss inference (True) or by deadline or overflow).
    _skips: deque[tuple[int, int, float, bool]] = field(
        default_factory=lambda: deque(maxlen=REMEMBERED_SKIPS))
    # Why the last release attempt stopped: (next_seq, the link holding the
    # frontier back, now, mask, hold_s).  While all of it is unchanged, a
    # packet from another link cannot move the frontier (a minimum over
    # links), so the search is skipped: it ran once per held packet.
    _stuck: tuple[int, int, float, int, float] | None = None
    _blocking: int = -1
    # Loss repair: how long a gap waits for it (0: the peer does not repair),
    # counters to ask for, found lost or overdue (the caller sends and clears
    # them), and when each asked-for counter is given up; the last gap asked
    # for, (first counter, end, given up at): it is looked at again on every
    # packet while it waits.
    repair_wait_s: float = 0.0
    repair_wanted: list[int] = field(default_factory=list)
    repair_overdue: list[int] = field(default_factory=list)
    overdue_link: int = -1  # the link the overdue gaps wait on (-1: not known)
    _repairs: dict[int, float] = field(default_factory=dict)
    _repair_gap: tuple[int, int, float] = (-1, -1, 0.0)
    _scanned_to: int = 0  # counters below this were looked at for asking
    _repairs_flowing_until: float = 0.0  # a repair came lately: the rest may follow

    @property
    def held(self) -> int:
        """Packets waiting (not the slots of those released ahead)."""
        return len(self._held) - self._released_held

    def push(
        self, seq: int, payload: bytes | None, link_id: int, now: float, link_mask: int = 0,
        copy: bool = False, flow_gap: int = FLOW_IN_ORDER,
    ) -> bool:
        """Accept an authenticated, non-replayed message, whose flow's
        previous message is `flow_gap` counters back (see `flows`).  False if
        it is late (delivered at once, out of order).  A late `copy` (a
        second try, re-sent after its link died) says nothing about the
        links' skew, so it does not lengthen the hold."""
        if seq > self._mask_seq:
            self._mask, self._mask_seq = link_mask, seq
        link = self._links.get(link_id)
        if link is None:
            link = self._links[link_id] = _LinkProgress()
        if seq > link.highest:
            link.highest = seq
        if payload is not None:
            link.last_data_time = now
        if copy and self._repairs and seq in self._repairs and seq >= self.next_seq:
            self.stats.repaired += 1
            # The copies of a burst of losses come one after the other:
            # while they do, the rest are on their way too.
            self._repairs_flowing_until = now + self.repair_wait_s * REPAIR_FLOWING_SHARE
        if seq < self.next_seq:
            if payload is None:
                return True  # an invalid packet: nothing is lost
            self.stats.late += 1
            self.ready.append(payload)  # late, not lost (see the module docstring)
            self._note_late(seq, now)
            if not copy:
                # We gave up on it too early: hold longer for a while.
                bonus = self.late_bonus(now)
                self._late_bonus_s = min(bonus * 1.5 + LATE_BONUS_STEP_S, LATE_BONUS_MAX_S)
                self._late_bonus_time = now
            return False
        held = self._held
        if seq == self.next_seq:
            # At the frontier (most packets): delivered now, never held.
            self._deliver(seq, payload)
            # What it uncovers: held packets right behind it, or gaps that
            # loss inference may now give up.  Neither when the next slot is
            # empty and this packet is its link's newest: that link's highest
            # is then below the frontier, so inference cannot move.
            if held and (seq + 1 in held or payload is None or link.highest != seq):
                self._release(now)
            return True
        if seq in held:
            return True  # duplicate of a held packet (the replay window normally stops these)
        # Its flow's previous message delivered or given up (see the module
        # doc)?  Inline: this runs for every packet that waits.
        previous = seq - flow_gap
        if flow_gap == FLOW_IN_ORDER:
            ahead = False
        elif flow_gap == FLOW_FIRST:
            ahead = True
        else:
            ahead = previous < self.next_seq or held.get(previous) is _RELEASED
        if ahead:
            self._release_ahead(seq, payload)
            if self._waiting:
                self._wake(seq)
        else:
            held[seq] = payload
            if flow_gap != FLOW_IN_ORDER and flow_gap != FLOW_FIRST:
                waiting = self._waiting
                waiting[previous] = seq
                if len(waiting) > 2 * len(held) + HEAP_SLACK:
                    self._compact_waiting()
        heap = self._held_heap
        if len(heap) > 2 * len(self._held) + HEAP_SLACK:
            # Packets released in order leave their heap entries behind (only
            # the smallest is ever looked at): compact, or it grows forever.
            heap[:] = sorted(self._held)  # a sorted list is a heap
        else:
            heapq.heappush(heap, seq)
        self._arrivals.append((now, seq))
        if len(self._held) > self.stats.max_held:
            self.stats.max_held = len(self._held)
        if self._stuck != (self.next_seq, self._blocking, now, self._mask, self.hold_s) or (
                link_id == self._blocking or seq == self.next_seq):
            self._release(now)
        while len(self._held) > self.max_held:
            self.stats.overflow_releases += 1
            self._skip_to_oldest_held(now)
        return True

    def late_bonus(self, now: float) -> float:
        """Extra hold learnt from late packets, halving every LATE_BONUS_HALF_LIFE_S."""
        if not self._late_bonus_s:
            return 0.0
        age = now - self._late_bonus_time
        return float(self._late_bonus_s * 0.5 ** (age / LATE_BONUS_HALF_LIFE_S))

    def note_progress(self, link_id: int, next_seq: int, now: float) -> None:
        """Everything below `next_seq` sent on `link_id` has arrived or is lost."""
        link = self._links.get(link_id)
        if link is None:
            link = self._links[link_id] = _LinkProgress()
        if next_seq - 1 > link.highest:
            link.highest = next_seq - 1
            if self._held:
                self._release(now)

    def forget_link(self, link_id: int, now: float) -> None:
        """`link_id` left the sender's links and everything it carried has
        arrived or is lost (its final MARKER came, after its last data: links
        are FIFO), so loss inference stops waiting on it at once instead of
        for the activity window."""
        self._links.pop(link_id, None)
        if link_id < MASKABLE_LINKS:
            self._mask &= ~(1 << link_id)
        if self._held:
            self._release(now)

    def deadline(self) -> float | None:
        """When the oldest held packet has waited `hold_s` (or the gap in
        front of it, lost, its repair), or None."""
        if not self._held:
            return None
        self._drop_stale_arrivals()
        if self._repairs:
            due = self._repairs.get(self.next_seq)
            if due is not None:
                return self._repair_deadline(due)
        return self._arrivals[0][0] + self.hold_s

    def poll(self, now: float) -> None:
        """Release past gaps whose hold deadline (or repair) has passed."""
        while self._held:
            self._drop_stale_arrivals()
            due = self._repairs.get(self.next_seq) if self._repairs else None
            if due is not None:
                # Lost, and asked for again: the repair's time, not the hold's.
                if self._repair_deadline(due) > now:
                    break
                self.stats.repair_timeouts += 1
                self._skip_to(self._smallest_held(), now, inferred=True)
                self._release(now)
                continue
            if self._arrivals[0][0] + self.hold_s > now:
                break
            if self.repair_wait_s > 0.0 and self._ask_overdue(now):
                continue  # the gap waits for its repair now
            self.stats.deadline_releases += 1
            self._skip_to_oldest_held(now)

    # -- internals -------------------------------------------------------

    def _wake(self, seq: int) -> None:
        """`seq` was delivered, released ahead or given up: release ahead the
        message of its flow that waits on it, and so on down the chain."""
        waiting, held = self._waiting, self._held
        follower = waiting.pop(seq, None)
        while follower is not None:
            if follower <= self.next_seq:
                return  # next in order anyway: `_release`'s loop takes it (not ahead)
            payload = held.get(follower, _MISSING)
            if payload is _MISSING or payload is _RELEASED:
                return  # gone already (released in order, or a stale entry)
            self._release_ahead(follower, payload)  # type: ignore[arg-type]
            follower = waiting.pop(follower, None)

    def _release_ahead(self, seq: int, payload: bytes | None) -> None:
        """Deliver `seq` before the gaps in front of it; its slot stays, as
        a placeholder the frontier steps over (see the module doc)."""
        self._held[seq] = _RELEASED
        self._released_held += 1
        self.stats.ahead += 1
        if payload is not None:
            self.ready.append(payload)
            self.stats.delivered += 1

    def _compact_waiting(self) -> None:
        """Entries of messages released in order stay behind until nothing
        is held: drop them, or they pile up while something always is."""
        held, next_seq = self._held, self.next_seq
        self._waiting = {
            previous: follower for previous, follower in self._waiting.items()
            if previous >= next_seq and follower in held and held[follower] is not _RELEASED}

    def _note_late(self, seq: int, now: float) -> None:
        """Count how late `seq` is, if its skip is still remembered."""
        for first, end, when, inferred in reversed(self._skips):
            if first <= seq < end:
                stats = self.stats
                after = now - when
                stats.late_after_count += 1
                stats.late_after_sum_s += after
                if after > stats.late_after_max_s:
                    stats.late_after_max_s = after
                if inferred:
                    stats.late_after_inference += 1
                return

    def _skip_to(self, target: int, now: float, inferred: bool) -> None:
        """Give up on the counters from `next_seq` up to `target`."""
        start, skipped = self.next_seq, target - self.next_seq
        self.stats.lost += skipped
        self._skips.append((start, target, now, inferred))
        self.next_seq = target
        waiting = self._waiting
        if waiting:
            # Over the shorter of the two: a counter far ahead (a peer's bug)
            # must not make this a loop over billions of counters.
            if skipped <= len(waiting):
                woken = [seq for seq in range(start, target) if seq in waiting]
            else:
                woken = sorted(seq for seq in waiting if start <= seq < target)
            for seq in woken:
                self._wake(seq)

    def _frontier(self, now: float) -> int:
        """Every missing counter below this is known lost."""
        window = min(max(self.hold_s * ACTIVE_HOLD_MULTIPLE, ACTIVE_MIN_S), ACTIVE_MAX_S)
        frontier = -1
        mask = self._mask
        pending = mask
        while pending:  # each announced link (set bit), lowest first
            bit = pending & -pending
            if bit.bit_length() - 1 not in self._links:
                self._blocking = bit.bit_length() - 1
                return -1  # announced but never heard from: wait for it
            pending ^= bit
        for link_id, link in self._links.items():
            active = now - link.last_data_time <= window or (
                link_id < MASKABLE_LINKS and mask >> link_id & 1
            )
            if active and (frontier < 0 or link.highest < frontier):
                frontier = link.highest
                self._blocking = link_id
        return frontier

    def _release(self, now: float) -> None:
        held = self._held
        while held:
            seq = self.next_seq
            payload = held.pop(seq, _MISSING)
            if payload is _RELEASED:
                self.next_seq = seq + 1  # went ahead already
                self._released_held -= 1
                continue
            if payload is not _MISSING:
                self._deliver(seq, payload)  # type: ignore[arg-type]
                continue
            self._blocking = -1
            frontier = self._frontier(now)
            if frontier <= self.next_seq:
                self._stuck = (self.next_seq, self._blocking, now, self._mask, self.hold_s)
                return
            target = min(frontier, self._smallest_held())
            if self.repair_wait_s > 0.0 and self._await_repair(frontier, target, now) > now:
                self._stuck = (self.next_seq, self._blocking, now, self._mask, self.hold_s)
                return
            self.stats.inferred_releases += 1
            self._skip_to(target, now, inferred=True)
        self._held_heap.clear()  # all released: what is left there is stale
        self._arrivals.clear()
        self._waiting.clear()

    def _await_repair(self, frontier: int, target: int, now: float) -> float:
        """Every missing counter below `frontier` is lost: ask for each
        again (once, all of them now: asked one gap at a time, the later
        ones would be asked a repair time later each, and be gone from the
        sender), and return when to stop waiting for those from `next_seq`
        to `target` (`now`: not asked, a gap too wide to repair)."""
        start = self.next_seq
        gap_start, gap_end, until = self._repair_gap
        if gap_start == start and target <= gap_end and frontier <= self._scanned_to:
            # Asked already (most calls: every packet while it waits).
            return self._repair_deadline(until)
        self._ask_missing(max(start, self._scanned_to), frontier, now)
        repairs = self._repairs
        until = now
        for seq in range(start, target):
            due = repairs.get(seq)
            if due is None:
                return now  # not asked (too wide a gap): give it up
            if due > until:
                until = due
        self._repair_gap = (start, target, until)
        return self._repair_deadline(until)

    def _ask_overdue(self, now: float) -> bool:
        """The oldest held packet waited `hold_s`: ask again for every
        counter missing below the newest that has (see the module doc).
        True if the gap in front, at `next_seq`, is asked for now."""
        held, hold_s = self._held, self.hold_s
        newest = -1
        for arrived, seq in self._arrivals:
            if arrived + hold_s > now:
                break
            if seq > newest and seq in held:
                newest = seq
        self._frontier(now)
        self.overdue_link = self._blocking
        self._ask_missing(max(self.next_seq, self._scanned_to), newest, now, overdue=True)
        return self.next_seq in self._repairs

    def _repair_deadline(self, due: float) -> float:
        """When to give up a gap whose repair was `due`: later while the
        copies of the same burst are still arriving."""
        return max(due, self._repairs_flowing_until)

    def _ask_missing(self, first: int, end: int, now: float, overdue: bool = False) -> None:
        """Ask for the counters from `first` to `end` not held, by runs of
        at most MAX_REPAIR_GAP (a longer run is an outage: not asked), as
        lost or, at the hold deadline, `overdue`.  Each counter is looked at
        once (`_scanned_to`)."""
        self._scanned_to = max(self._scanned_to, end)
        if end - first > self.max_held + MAX_REPAIR_GAP:
            return  # a jump no link's drops explain (see the invariants)
        repairs, held = self._repairs, self._held
        # Counters go in ascending (each is looked at once, in order), so the
        # first is the oldest: forget those the frontier passed once the
        # table is full, or it would stay full and nothing more be asked.
        if len(repairs) >= MAX_REPAIRS_ASKED and next(iter(repairs)) < self.next_seq:
            self._repairs = repairs = {
                seq: due for seq, due in repairs.items() if seq >= self.next_seq}
        due = now + self.repair_wait_s
        wanted = self.repair_overdue if overdue else self.repair_wanted
        stats = self.stats
        run: list[int] = []
        for seq in range(first, end + 1):
            if seq < end and seq not in held:
                run.append(seq)
                continue
            if run and len(run) <= MAX_REPAIR_GAP and len(repairs) < MAX_REPAIRS_ASKED:
                for missing in run:
                    if missing not in repairs:
                        repairs[missing] = due
                        wanted.append(missing)
                        stats.repair_requests += 1
                        if overdue:
                            stats.overdue_requests += 1
            run = []

    def _deliver(self, seq: int, payload: bytes | None) -> None:
        """`seq`, the next counter, goes in order; the message of its flow
        waiting on it goes ahead of the gaps, if any is left behind them."""
        self.next_seq = seq + 1
        if payload is not None:
            self.ready.append(payload)
            self.stats.delivered += 1
        waiting = self._waiting
        if waiting:
            # What waits for it is most often the next in order anyway (one
            # flow: `_wake` would stop at once): no call then.
            follower = waiting.get(seq)
            if follower is not None:
                if follower > self.next_seq:
                    self._wake(seq)
                else:
                    del waiting[seq]

    def _smallest_held(self) -> int:
        heap = self._held_heap
        while heap[0] not in self._held:
            heapq.heappop(heap)
        return heap[0]

    def _drop_stale_arrivals(self) -> None:
        arrivals = self._arrivals
        while arrivals and arrivals[0][1] not in self._held:
            arrivals.popleft()

    def _skip_to_oldest_held(self, now: float) -> None:
        """Give up on the gap in front of the held packets, then release in order."""
        self._drop_stale_arrivals()
        if self._arrivals:
            waited = now - self._arrivals[0][0]
            if waited > self.stats.max_wait_s:
                self.stats.max_wait_s = waited
        self._skip_to(self._smallest_held(), now, inferred=False)
        self._release(now)


OWD_MIN_WINDOW_S = 5.0  # the minimum is taken over the last 5-10 s


@dataclass(slots=True)
class _LinkDelay:
    mean_us: float
    dev_us: float
    last_time: float
    interval_sum_us: float = 0.0  # since the last feedback report
    interval_count: int = 0
    interval_low_us: float = float("inf")  # the lowest since the last report
    min_us: float = float("inf")  # over the current window
    prev_min_us: float = float("inf")  # over the window before
    window_start: float = 0.0

    def floor_us(self) -> float:
        return min(self.min_us, self.prev_min_us)


@dataclass(slots=True)
class DelaySkew:
    """One-way delay skew and jitter between links, for the hold deadline.

    Each transport header carries the sender's clock (µs mod 2**32).  The
    receive time minus that is the one-way delay plus an unknown but constant
    clock offset; the offset cancels when links are compared, which is all the
    hold time needs.  Samples are taken relative to the first one so the
    32-bit wrap never splits links apart.

    Empty state: no reference, no links; `hold_s()` returns
    `HOLD_UNMEASURED_S` until two links report.
    """

    gain: float = 1 / 16
    stale_after_s: float = 2.0
    _ref_us: int | None = None
    _links: dict[int, _LinkDelay] = field(default_factory=dict)

    def sample(self, link_id: int, send_time_us: int, now: float) -> None:
        rel = (int(now * 1e6) - send_time_us) & 0xFFFFFFFF
        if self._ref_us is None:
            self._ref_us = rel
        d = ((rel - self._ref_us + 2**31) & 0xFFFFFFFF) - 2**31
        link = self._links.get(link_id)
        if link is None:
            self._links[link_id] = _LinkDelay(float(d), 0.0, now, min_us=float(d),
                                              prev_min_us=float(d), window_start=now)
            return
        if now - link.window_start >= OWD_MIN_WINDOW_S:
            link.prev_min_us, link.min_us, link.window_start = link.min_us, float(d), now
        elif d < link.min_us:
            link.min_us = float(d)
        link.interval_sum_us += d
        link.interval_count += 1
        if d < link.interval_low_us:
            link.interval_low_us = float(d)
        err = d - link.mean_us
        link.mean_us += self.gain * err
        link.dev_us += self.gain * (abs(err) - link.dev_us)
        link.last_time = now

    def hold_s(self, now: float) -> float:
        live = [x for x in self._links.values() if now - x.last_time <= self.stale_after_s]
        if len(live) < 2:
            return HOLD_UNMEASURED_S
        slowest = max(x.mean_us + 4 * x.dev_us for x in live)
        fastest = min(x.mean_us for x in live)
        # 1.5 x: queues move faster than the smoothed means follow them, and a
        # hold that is too long costs a little latency in rare gaps while one
        # that is too short costs the inner TCP a retransmission.
        hold = 1.5 * (slowest - fastest) / 1e6 + HOLD_MARGIN_S
        return min(max(hold, HOLD_MIN_S), HOLD_MAX_S)

    def take_owd_us(self, link_id: int) -> tuple[int, int, int] | None:
        """(mean since the last call, windowed minimum, lowest since the last
        call) one-way delay of a link in our relative frame, for a feedback
        report; the smoothed mean for mean and lowest when no packet came
        since the last call.  The lowest is what no packet of the interval
        escaped, a standing queue; the mean also carries the link's jitter."""
        link = self._links.get(link_id)
        if link is None:
            return None
        if link.interval_count:
            mean = link.interval_sum_us / link.interval_count
            low = link.interval_low_us
            link.interval_sum_us, link.interval_count = 0.0, 0
            link.interval_low_us = float("inf")
        else:
            mean = low = link.mean_us
        return round(mean), round(link.floor_us()), round(low)

    def skew_ms(self, now: float) -> dict[int, float]:
        """Each live link's mean delay above the fastest one, in ms (for status)."""
        live = {k: x for k, x in self._links.items() if now - x.last_time <= self.stale_after_s}
        if not live:
            return {}
        fastest = min(x.mean_us for x in live.values())
        return {k: (x.mean_us - fastest) / 1000 for k, x in live.items()}
