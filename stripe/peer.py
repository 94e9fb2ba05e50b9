"""Everything an endpoint keeps about one peer, in parts named for their job.

A peer is the other end of the tunnel: the server for a client, one client
for a server.  Its state outlives sessions (a rekey changes keys, not
links): the links and their estimates, the scheduler, the packets waiting
for a session or a usable link, queue management, and the parts below.
Each part belongs to one module of the core, which is the only one that
writes it:

- `sessions` (and `handshake` progress in `PeerHandshake`): current,
  previous and next session, the pending initiation, retry timing;
- `linkctl`: the links, the link mask, the link table exchange, retired
  links, feedback timing (`FeedbackClock`);
- `egress`: the queue, redundancy and re-send counters (`CopyCounters`),
  the peer's MTU;
- `ingress`: the cached good inner source address.

Empty state (a configured peer before any handshake): no session, no
pending initiation, handshake due at creation, no links on a server (the
client's come from its spec), an empty queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .aqm import CoDel
from .cookie import CookieJar
from .handshake import PendingInitiation
from .links import Link
from .scheduler import Scheduler
from .sendqueue import SendQueue
from .session import Session
from .spec import PeerSpec

# A peer with no data either way for this long is idle: its links are
# probed rarely (see links).  Data sent or received makes it busy again.
IDLE_AFTER_S = 1.0


@dataclass(slots=True)
class PeerHandshake:
    """Where the handshake with this peer stands.

    Client: the initiation in flight, when the next one is due and how many
    went unanswered (the retry backoff).  Server: the newest initiation
    timestamp accepted (an older or equal one is a replay).  Both: when the
    last handshake completed (status)."""

    due: float = 0.0
    attempts: int = 0
    pending: PendingInitiation | None = None
    last_completed: float | None = None
    last_init_timestamp: bytes = b""
    cookie_jar: CookieJar | None = None


@dataclass(slots=True)
class FeedbackClock:
    """When this end next reports to the peer what it received (see
    `estimator`): while data arrives, every FEEDBACK_INTERVAL_S; when it
    stops arriving, reports of nothing for a while (see `linkctl`)."""

    due: float = 0.0
    data_since: bool = False  # data arrived since the last report
    data_at: float = float("-inf")  # when data last arrived
    silence_due: float = 0.0  # the next report of nothing, if nothing arrives
    silence_interval: float = 0.0  # the wait before it (doubles from report to report)


@dataclass(slots=True)
class CopyCounters:
    """Redundancy and re-sends, for status: copies sent (and their bytes),
    copies that arrived before their original (the copy was worth it), data
    re-sent because its link went down before the peer reported it,
    re-sends that found no other usable link, and messages re-sent because
    the peer found them lost and asked (`repaired`; `repair_missing`: asked
    for, but no longer kept or copied once already)."""

    copies_sent: int = 0
    copy_bytes: int = 0
    copies_first: int = 0
    resent: int = 0
    resend_failed: int = 0
    repaired: int = 0
    repair_missing: int = 0


@dataclass(slots=True)
class Peer:
    spec: PeerSpec
    scheduler: Scheduler
    handshake: PeerHandshake
    links: dict[int, Link] = field(default_factory=dict)
    current: Session | None = None
    previous: Session | None = None
    next_session: Session | None = None
    # The links announced in every packet's link mask (see `reorder`).
    link_mask: int = 0
    feedback: FeedbackClock = field(default_factory=FeedbackClock)
    links_announce_due: float = float("inf")
    # Server: control counter of the newest LINKS applied in the current
    # session (an older one overtaken on a faster link must not undo it).
    links_seen: int = -1
    # Links removed by a reload, still draining: link id -> (link, until).
    retired: dict[int, tuple[Link, float]] = field(default_factory=dict)
    copies: CopyCounters = field(default_factory=CopyCounters)
    # Inner packets waiting for a session or for room on a link.
    queue: SendQueue = field(default_factory=SendQueue)
    # The inner source address last found in this peer's allowed_ips.
    last_good_source: bytes = b""
    mtu: int | None = None  # largest inner packet the links that are up carry now
    aqm: CoDel | None = None  # None: queue management off
    # Idle links (see links): busy until `busy_until` (data sent or received
    # IDLE_AFTER_S ago), idle after; `verifying`: woke with two or more links
    # up and none heard from since, so data goes on two links (see egress).
    idle: bool = False
    woke_at: float = float("-inf")  # when data last ended an idle spell
    busy_until: float = float("-inf")
    verifying: bool = False

    def keep_busy(self, now: float) -> None:
        """Data went to or came from the peer: its links stay busy (probed
        at the busy rate) for IDLE_AFTER_S more."""
        self.busy_until = max(self.busy_until, now + IDLE_AFTER_S)

    def sessions(self) -> list[Session]:
        return [s for s in (self.current, self.previous, self.next_session) if s is not None]
