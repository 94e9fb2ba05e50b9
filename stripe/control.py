"""Control messages: msgpack maps inside authenticated CONTROL packets.

Every control message also carries "d", the sender's next data counter when
it was sent: a link is FIFO, so once a control message arrives on a link,
every data counter below "d" that was sent on that link has arrived too.
That lets the receiver's loss inference move on past idle links.

They are rare (a few per link per second), so msgpack's flexibility is worth
its ~0.5 µs; the per-packet path never touches this module.  Even though a
control message has passed the AEAD check, its content is validated field by
field: a buggy peer must not crash us.

    PROBE      {"t": 1, "i": probe_id}            answered at once on the same link
               {"t": 1, "i": probe_id, "r": srtt_us}  the sender holds the link
               up and its previous probe came back: evidence for the
               receiver that the link works both ways, with the sender's
               smoothed RTT (an older peer ignores the key)
    PROBE_ACK  {"t": 2, "i": probe_id}
    LINKS      {"t": 3, "l": [[id, name, weight, backup], ...]}
               the client's link table, so the server can schedule its
               direction by the same weights without configuring them
    FEEDBACK   {"t": 4, "l": [[id, rx_packets, rx_bytes, highest_link_seq,
                               owd_us, owd_min_us, owd_low_us], ...]}
               what the receiver got on each link (see estimator);
               owd_low_us (the lowest delay of the interval, for queue
               management) may be missing: a peer from before it was added
               {"t": 4, "l": [...], "c": clock_us}  with the receiver's clock
               when it sent the report (µs, any origin): delivery rates are
               measured on it, not on when reports happen to arrive (an
               older peer ignores the key, an older sender does not send it)
    MARKER     {"t": 5}   sent on a link shortly after its last data packet of
               a burst: its "d" tells the receiver nothing older is still in
               flight there, so a gap can be declared lost without waiting
               {"t": 5, "f": true}  the last message on a link that leaves
               (reload): the receiver stops waiting on that link at all
    PMTU_PROBE {"t": 6, "i": probe_id, "p": padding (bin)}
               padded to the datagram size being probed (see pmtu)
    PMTU_ACK   {"t": 7, "i": probe_id}   answered at once on the same link
    REPAIR     {"t": 8, "s": [data_counter, ...]}   data messages the receiver
               found lost (their link delivered past them, see reorder) and
               waits for: the sender sends each again as a DATA_COPY, if it
               still has it (at most MAX_REPAIR_COUNTERS a message; sent only
               to a peer that announced FEATURE_REPAIR)
               {"t": 8, "s": [...], "w": true}  overdue, not known lost: the
               receiver's hold for them ran out (their link is late or
               silent); the sender does not count them as its links' losses
               (an older sender ignores the key and does)

Any message may also carry "o", the offload features its sender takes
(bits, see FEATURE_*; absent: none), so that a peer learns them from the
first probe or report of a session.  An older peer ignores the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import msgpack

MAX_LINK_NAME_BYTES = 32

# "o" bits.  PARTIAL_CSUM: the sender of the message takes inner TCP/UDP
# packets whose checksum field holds only the pseudo-header sum (it writes
# them to its TUN with NEEDS_CSUM; see `offload.partial_csum_at`).
FEATURE_PARTIAL_CSUM = 0x1
# REPAIR: the sender of the message answers REPAIR requests (see `egress.repair`).
FEATURE_REPAIR = 0x2
MAX_REPAIR_COUNTERS = 64


class ControlType(IntEnum):
    PROBE = 1
    PROBE_ACK = 2
    LINKS = 3
    FEEDBACK = 4
    MARKER = 5
    PMTU_PROBE = 6
    PMTU_ACK = 7
    REPAIR = 8


class ControlError(Exception):
    """Malformed control message from the peer (drop and count)."""


@dataclass(frozen=True, slots=True)
class Probe:
    probe_id: int
    up_srtt_us: int | None = None  # the sender holds the link up, with this RTT


@dataclass(frozen=True, slots=True)
class ProbeAck:
    probe_id: int


@dataclass(frozen=True, slots=True)
class LinkInfo:
    link_id: int
    name: str
    weight: int
    backup: bool


@dataclass(frozen=True, slots=True)
class Links:
    links: tuple[LinkInfo, ...]


@dataclass(frozen=True, slots=True)
class LinkReport:
    link_id: int
    rx_packets: int
    rx_bytes: int
    highest_link_seq: int  # 32-bit, as on the wire
    owd_us: int  # receiver clock minus sender clock: compare between links only
    owd_min_us: int
    owd_low_us: int | None = None  # the lowest of the interval; None: not sent


@dataclass(frozen=True, slots=True)
class Feedback:
    reports: tuple[LinkReport, ...]
    clock_us: int | None = None  # the receiver's clock at sending; None: not sent


@dataclass(frozen=True, slots=True)
class Marker:
    final: bool = False  # the link leaves: nothing will follow on it


@dataclass(frozen=True, slots=True)
class PmtuProbe:
    probe_id: int
    padding: int  # bytes of padding


@dataclass(frozen=True, slots=True)
class PmtuAck:
    probe_id: int


@dataclass(frozen=True, slots=True)
class Repair:
    counters: tuple[int, ...]  # data counters, at most MAX_REPAIR_COUNTERS
    overdue: bool = False  # waited past the hold, not known lost (see reorder)


ControlMessage = Probe | ProbeAck | Links | Feedback | Marker | PmtuProbe | PmtuAck | Repair


def encode(message: ControlMessage, next_data_counter: int, features: int = 0) -> bytes:
    if isinstance(message, Probe):
        body: dict[str, object] = {"t": ControlType.PROBE, "i": message.probe_id}
        if message.up_srtt_us is not None:
            body["r"] = message.up_srtt_us
    elif isinstance(message, ProbeAck):
        body = {"t": ControlType.PROBE_ACK, "i": message.probe_id}
    elif isinstance(message, Marker):
        body = {"t": ControlType.MARKER}
        if message.final:
            body["f"] = True
    elif isinstance(message, PmtuProbe):
        body = {"t": ControlType.PMTU_PROBE, "i": message.probe_id, "p": bytes(message.padding)}
    elif isinstance(message, PmtuAck):
        body = {"t": ControlType.PMTU_ACK, "i": message.probe_id}
    elif isinstance(message, Repair):
        body = {"t": ControlType.REPAIR, "s": list(message.counters)}
        if message.overdue:
            body["w"] = True
    elif isinstance(message, Links):
        body = {
            "t": ControlType.LINKS,
            "l": [[x.link_id, x.name, x.weight, x.backup] for x in message.links],
        }
    else:
        body = {
            "t": ControlType.FEEDBACK,
            "l": [[r.link_id, r.rx_packets, r.rx_bytes, r.highest_link_seq, r.owd_us,
                   r.owd_min_us, r.owd_us if r.owd_low_us is None else r.owd_low_us]
                  for r in message.reports],
        }
        if message.clock_us is not None:
            body["c"] = message.clock_us
    body["d"] = next_data_counter
    if features:
        body["o"] = features
    data: bytes = msgpack.packb(body)
    return data


def encode_pmtu_probe(probe_id: int, size: int, next_data_counter: int) -> bytes:
    """A PMTU_PROBE of exactly `size` bytes (or the smallest one possible)."""
    padding = 0
    for _ in range(4):  # msgpack's bin header grows with the length: converge
        data = encode(PmtuProbe(probe_id, padding), next_data_counter)
        if len(data) == size or (padding == 0 and len(data) > size):
            break
        padding = max(padding + size - len(data), 0)
    return data


def _uint(value: object, bits: int) -> int:
    if type(value) is not int or not 0 <= value < 2**bits:
        raise ControlError("bad_integer")
    return value


def _sint(value: object, bits: int) -> int:
    if type(value) is not int or not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise ControlError("bad_integer")
    return value


def _entries(body: dict[str, object], *widths: int) -> list[list[object]]:
    entries = body.get("l")
    if not isinstance(entries, list) or len(entries) > 256:
        raise ControlError("bad_list")
    for entry in entries:
        if not isinstance(entry, list) or len(entry) not in widths:
            raise ControlError("bad_list")
    return entries


def decode(data: bytes) -> tuple[ControlMessage, int]:
    """The message and the sender's next data counter; ControlError if malformed."""
    message, counter, _features = decode_with_features(data)
    return message, counter


def decode_with_features(data: bytes) -> tuple[ControlMessage, int, int]:
    """`decode`, and the features the sender takes ("o", 0 when absent)."""
    body = _body(data)
    return _message(body), _uint(body.get("d"), 63), _uint(body.get("o", 0), 32)


def _body(data: bytes) -> dict[str, object]:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ControlError("bad_msgpack") from exc
    if not isinstance(body, dict):
        raise ControlError("not_a_map")
    return body


def _message(body: dict[str, object]) -> ControlMessage:
    kind = body.get("t")
    if kind == ControlType.PROBE:
        srtt = body.get("r")
        return Probe(_uint(body.get("i"), 32), None if srtt is None else _uint(srtt, 32))
    if kind == ControlType.PROBE_ACK:
        return ProbeAck(_uint(body.get("i"), 32))
    if kind == ControlType.MARKER:
        final = body.get("f", False)
        if not isinstance(final, bool):
            raise ControlError("bad_marker")
        return Marker(final)
    if kind == ControlType.PMTU_PROBE:
        padding = body.get("p")
        if not isinstance(padding, bytes):
            raise ControlError("bad_padding")
        return PmtuProbe(_uint(body.get("i"), 32), len(padding))
    if kind == ControlType.PMTU_ACK:
        return PmtuAck(_uint(body.get("i"), 32))
    if kind == ControlType.FEEDBACK:
        clock = body.get("c")
        return Feedback(tuple(
            LinkReport(_uint(e[0], 8), _uint(e[1], 64), _uint(e[2], 64), _uint(e[3], 32),
                       _sint(e[4], 64), _sint(e[5], 64),
                       _sint(e[6], 64) if len(e) > 6 else None)
            for e in _entries(body, 6, 7)
        ), None if clock is None else _uint(clock, 64))
    if kind == ControlType.REPAIR:
        counters = body.get("s")
        if not isinstance(counters, list) or not 0 < len(counters) <= MAX_REPAIR_COUNTERS:
            raise ControlError("bad_repair")
        overdue = body.get("w", False)
        if not isinstance(overdue, bool):
            raise ControlError("bad_repair")
        return Repair(tuple(_uint(counter, 63) for counter in counters), overdue)
    if kind == ControlType.LINKS:
        infos = []
        for entry in _entries(body, 4):
            link_id, name, weight, backup = entry
            if not isinstance(name, str) or len(name.encode()) > MAX_LINK_NAME_BYTES:
                raise ControlError("bad_link_name")
            if not isinstance(backup, bool):
                raise ControlError("bad_links")
            infos.append(LinkInfo(_uint(link_id, 8), name, _uint(weight, 16), backup))
        return Links(tuple(infos))
    raise ControlError("unknown_control_type")
