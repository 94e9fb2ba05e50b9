"""One set of transport keys with a peer: counters, replay window, reordering.

A session is born from a completed handshake and dies on rekey or expiry.
The links, the scheduler and the queue belong to the peer (see `endpoint`)
and outlive sessions; the counter space does not: a new session starts at
counter 0 under new keys, so a nonce is never reused.

Data and control messages use two disjoint counter ranges under the same
key: data counts up from 0 and is what the receiver reorders by; control
(probes, feedback) counts up from `CONTROL_COUNTER_BASE` = 2**63 and is
acted on as it arrives, so a probe crossing a slow link never holds up data
behind it.  Each range has its own replay window.

Empty state (just after the handshake): both counters at their base, empty
replay windows and reorder buffer, not yet `confirmed` unless we initiated.
Invariants: each counter only grows and stays inside its range, so a nonce
is never reused; nothing reaches the reorder buffer before it authenticated
and passed the replay window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import wire
from .noise import NoiseError, TransportKey
from .reorder import DelaySkew, ReorderBuffer
from .replay import ReplayWindow

# Protocol constants (as WireGuard's, scaled for our message rates).
CONTROL_COUNTER_BASE = 2**63
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = CONTROL_COUNTER_BASE - 2**13  # per range
REKEY_AFTER_S = 120.0
REJECT_AFTER_S = 180.0


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
    hold_update_due: float = 0.0
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    control_replay: ReplayWindow = field(default_factory=ReplayWindow)
    reorder: ReorderBuffer = field(default_factory=ReorderBuffer)
    skew: DelaySkew = field(default_factory=DelaySkew)

    def seal(
        self, mtype: wire.MessageType, link_id: int, link_mask: int, link_seq: int,
        payload: bytes, now: float,
    ) -> bytes:
        """Encrypt one message at the next counter of its range; returns the datagram."""
        if mtype is wire.MessageType.DATA:
            counter = self.send_counter
            self.send_counter = counter + 1
        else:
            counter = self.control_counter
            self.control_counter = counter + 1
        if counter - (counter & CONTROL_COUNTER_BASE) >= REJECT_AFTER_MESSAGES:
            raise RuntimeError("session exhausted its counters; a rekey is overdue")
        header = wire.encode_transport_header(
            mtype, link_id, link_mask, self.remote_index, counter, link_seq, int(now * 1e6)
        )
        return header + self.send_key.encrypt_at(counter, header, payload)

    def seal_data_run(
        self, link_id: int, link_mask: int, first_link_seq: int, payloads: list[bytes],
        now: float,
    ) -> list[bytes]:
        """`seal` for several data messages to one link at once."""
        first = self.send_counter
        if first + len(payloads) >= REJECT_AFTER_MESSAGES:
            raise RuntimeError("session exhausted its counters; a rekey is overdue")
        self.send_counter = first + len(payloads)
        headers = wire.encode_data_headers(link_id, link_mask, self.remote_index, first,
                                           first_link_seq, len(payloads), int(now * 1e6))
        return self.send_key.encrypt_run(first, headers, payloads)

    def open(self, header: wire.TransportHeader, datagram: bytes, now: float) -> bytes:
        """Authenticate and decrypt; raises DecryptError with a counter name."""
        counter = header.counter
        is_control = counter >= CONTROL_COUNTER_BASE
        if is_control != (header.type is wire.MessageType.CONTROL):
            raise DecryptError("bad_counter")
        replay = self.control_replay if is_control else self.replay
        if not replay.check(counter):
            raise DecryptError("replay")
        try:
            plaintext = self.recv_key.decrypt_at(
                counter,
                datagram[: wire.TRANSPORT_HEADER_SIZE],
                datagram[wire.TRANSPORT_HEADER_SIZE :],
            )
        except NoiseError:
            raise DecryptError("bad_tag") from None
        replay.mark(counter)  # checked above, before the AEAD
        self.last_received = now
        self.confirmed = True
        self.skew.sample(header.link_id, header.send_time_us, now)
        return plaintext

    def needs_rekey(self, now: float) -> bool:
        return self.initiator and (
            self.send_counter >= REKEY_AFTER_MESSAGES
            or self.control_counter - CONTROL_COUNTER_BASE >= REKEY_AFTER_MESSAGES
            or now - self.created >= REKEY_AFTER_S
        )

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_S
