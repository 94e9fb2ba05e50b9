"""One set of transport keys with a peer: counters, replay window, reordering.

A session is born from a completed handshake and dies on rekey or expiry.
The links, the scheduler and the queue belong to the peer (see `endpoint`)
and outlive sessions; the counter space does not: a new session starts at
counter 0 under new keys, so a nonce is never reused.

Data and control messages use two disjoint counter ranges under the same
key: data counts up from 0 and is what the receiver reorders by; control
(probes, feedback) counts up from `CONTROL_COUNTER_BASE` = 2**63 and is
acted on as it arrives, so a probe crossing a slow link never holds up data
behind it.  Each range has its own replay window.  A redundant copy of data
message n (DATA_COPY) carries counter n but is sealed at nonce
n + `COPY_NONCE_OFFSET` = 2**62: data counters stay below 2**62, so the
three nonce ranges never meet.  Whichever of a message and its copy
arrives second fails the replay window and is counted as a `duplicate`,
not as a replay.  A message gets at most one copy (a redundant one, or the
re-send of a message whose link went down under it: see `can_copy`), since
a second would reuse the copy nonce under another header.

Empty state (just after the handshake): both counters at their base, empty
replay windows and reorder buffer, not yet `confirmed` unless we initiated.
Invariants: each counter only grows and stays inside its range, so a nonce
is never reused; nothing reaches the reorder buffer before it authenticated
and passed the replay window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from . import wire
from .flows import FlowChains
from .noise import NoiseError, TransportKey
from .reorder import DelaySkew, ReorderBuffer
from .replay import ReplayWindow

# Protocol constants (as WireGuard's, scaled for our message rates).
CONTROL_COUNTER_BASE = 2**63
COPY_NONCE_OFFSET = 2**62
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = COPY_NONCE_OFFSET - 2**13  # per range
# Counters that arrived as a copy first: when the original comes after, it
# is a duplicate, not a replay (bounded; an older one is counted as replay).
COPIES_REMEMBERED = 4096
# Counters whose copy nonce we used (sending side), remembered up to this many;
# older ones count as used: a message is never copied twice.
COPIES_SEALED_REMEMBERED = 4096
REKEY_AFTER_S = 120.0
REJECT_AFTER_S = 180.0

_DATA, _COPY = wire.MessageType.DATA, wire.MessageType.DATA_COPY
_DATA_BYTE, _COPY_BYTE = _DATA.value, _COPY.value


@dataclass(slots=True)
class RecentCounters:
    """The last `limit` counters added, as a set; `forgotten_up_to`: the
    highest counter it had to let go of (-1: none)."""

    limit: int
    _members: set[int] = field(default_factory=set)
    _order: deque[int] = field(default_factory=deque)
    forgotten_up_to: int = -1

    def add(self, counter: int) -> None:
        if len(self._order) >= self.limit:
            oldest = self._order.popleft()
            self._members.discard(oldest)
            self.forgotten_up_to = max(self.forgotten_up_to, oldest)
        self._order.append(counter)
        self._members.add(counter)

    def __contains__(self, counter: int) -> bool:
        return counter in self._members


class DecryptError(Exception):
    """A transport packet that failed authentication or the replay check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Session:
    local_index: int
    remote_index: int
    send_key: TransportKey
    recv_key: TransportKey
    created: float
    initiator: bool
    confirmed: bool = False
    send_counter: int = 0  # next data counter
    control_counter: int = CONTROL_COUNTER_BASE
    last_received: float = float("-inf")
    # The offload features the peer announced under this session (control
    # "o"): learnt anew with every session, so a peer restarted with an
    # older version is never sent what it does not take.
    peer_features: int = 0
    hold_update_due: float = 0.0
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    control_replay: ReplayWindow = field(default_factory=ReplayWindow)
    reorder: ReorderBuffer = field(default_factory=ReorderBuffer)
    skew: DelaySkew = field(default_factory=DelaySkew)
    # Received: counters that came as a copy first.  Sent: counters whose
    # copy nonce we used (one forgotten counts as used).
    copied: RecentCounters = field(default_factory=lambda: RecentCounters(COPIES_REMEMBERED))
    _copies_sealed: RecentCounters = field(
        default_factory=lambda: RecentCounters(COPIES_SEALED_REMEMBERED))
    flows: FlowChains = field(default_factory=FlowChains)

    def seal(
        self, mtype: wire.MessageType, link_id: int, link_mask: int, first_link_seq: int,
        payloads: list[bytes], now: float, copy_of: int = -1,
        flow_gap: int = wire.FLOW_IN_ORDER,
    ) -> list[bytes]:
        """Encrypt messages of one type for one link; returns the datagrams.

        DATA: each payload at the next data counter, at link sequences
        counting up from `first_link_seq` (a run: one header pack and one
        bounds check for all), with its flow gap (see `flows`).  CONTROL:
        one payload at the next control counter.  DATA_COPY: one payload,
        the copy of data message `copy_of`, at its copy nonce (once per
        message: see `can_copy`), with `flow_gap` (the original's, when the
        caller has it; else in counter order)."""
        stamp = int(now * 1e6)
        if mtype is _DATA:
            first = self.send_counter
            if first + len(payloads) >= REJECT_AFTER_MESSAGES:
                raise RuntimeError("session exhausted its counters; a rekey is overdue")
            self.send_counter = first + len(payloads)
            headers = wire.encode_transport_headers(
                mtype, link_id, link_mask, self.remote_index, first, first_link_seq,
                self.flows.gaps(first, payloads), stamp)
            return self.send_key.encrypt_run(first, headers, payloads)
        if len(payloads) != 1:
            raise ValueError(f"one {mtype.name} message at a time, got {len(payloads)}")
        if mtype is _COPY:
            counter = copy_of
            if not 0 <= counter < self.send_counter:
                raise ValueError(f"no data message {counter} to copy")
            if not self.can_copy(counter):
                raise ValueError(f"data message {counter} was copied already (nonce reuse)")
            self._copies_sealed.add(counter)
            nonce = counter + COPY_NONCE_OFFSET
        else:
            counter = nonce = self.control_counter
            if counter - CONTROL_COUNTER_BASE >= REJECT_AFTER_MESSAGES:
                raise RuntimeError("session exhausted its counters; a rekey is overdue")
            self.control_counter = counter + 1
            flow_gap = wire.FLOW_FIRST
        header = wire.encode_transport_header(
            mtype, link_id, link_mask, self.remote_index, counter, first_link_seq, stamp,
            flow_gap)
        return [header + self.send_key.encrypt_at(nonce, header, payloads[0])]

    def can_copy(self, counter: int) -> bool:
        """True if data message `counter` may still get its one DATA_COPY."""
        sealed = self._copies_sealed
        return counter > sealed.forgotten_up_to and counter not in sealed

    def open(self, mtype: int, counter: int, datagram: bytes, now: float) -> bytes:
        """Authenticate and decrypt a transport datagram whose header says
        `mtype` (DATA, CONTROL or DATA_COPY) and `counter`: the range check,
        the replay window, the AEAD, then the bookkeeping of a message that
        authenticated.  Raises DecryptError with a counter name."""
        if mtype == _DATA_BYTE:
            if counter >= CONTROL_COUNTER_BASE:
                raise DecryptError("bad_counter")
            replay, nonce = self.replay, counter
        elif mtype == _COPY_BYTE:
            if counter >= COPY_NONCE_OFFSET:
                raise DecryptError("bad_counter")
            replay, nonce = self.replay, counter + COPY_NONCE_OFFSET
        else:
            if counter < CONTROL_COUNTER_BASE:
                raise DecryptError("bad_counter")
            replay, nonce = self.control_replay, counter
        if not replay.check(counter):
            raise DecryptError("duplicate" if mtype == _COPY_BYTE or counter in self.copied
                               else "replay")
        try:
            plaintext = self.recv_key.decrypt_at(
                nonce, datagram[:wire.TRANSPORT_HEADER_SIZE],
                datagram[wire.TRANSPORT_HEADER_SIZE:])
        except NoiseError:
            raise DecryptError("bad_tag") from None
        replay.mark(counter)  # checked above, before the AEAD
        if mtype == _COPY_BYTE:
            self.copied.add(counter)
        self.last_received = now
        self.confirmed = True
        return plaintext

    def needs_rekey(self, now: float) -> bool:
        return self.initiator and (
            self.send_counter >= REKEY_AFTER_MESSAGES
            or self.control_counter - CONTROL_COUNTER_BASE >= REKEY_AFTER_MESSAGES
            or now - self.created >= REKEY_AFTER_S
        )

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_S
