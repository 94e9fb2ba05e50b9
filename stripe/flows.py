"""Inner flows, so that one flow's gap does not hold back another's packets.

The receiver puts data back in counter order, and a gap (a packet still
crossing a slower link, or lost) holds back everything behind it.  Within
one inner flow that is the point: a TCP stream must not see its segments
reordered.  Between flows it is only harm: a ping, a DNS query or a call's
audio sent on the fast link waits for a bulk download's packets queued
on the slow one, so the bond's latency under load is its slowest link's
whatever the link each packet took.

So the sender tells, in each DATA header's `flow_gap`, how many counters
back the previous message of the same inner flow is (`wire`), and the
receiver (`reorder`) releases a packet as soon as that one is delivered or
given up, instead of waiting for every smaller counter.  A flow is the
5-tuple of a TCP, UDP, SCTP, DCCP or UDP-Lite packet that is not a
fragment, and the address pair and protocol of anything else (ICMP, ESP,
fragments: a fragment carries no ports); flows are folded into
`FLOW_BUCKETS` buckets, and a bucket is chained as one flow: two flows
that share one keep their order between them, which is only what every
flow had before.  The first message of a bucket in a session has
`FLOW_FIRST` (nothing to wait for); one whose predecessor is more than
`wire.FLOW_IN_ORDER` - 1 counters back gets FLOW_IN_ORDER, in counter
order like every message before flows were told.

Empty state: no bucket has sent.  Invariant: `_last[b]` is the counter of
the newest message of bucket b sealed in this session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .wire import FLOW_FIRST, FLOW_IN_ORDER

FLOW_BUCKETS = 1024
_BUCKET_MASK = FLOW_BUCKETS - 1
# IP protocols whose first 4 payload bytes are the source and destination ports.
_PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite


def flow_bucket(packet: bytes) -> int:
    """The bucket of an inner IP packet's flow (see the module doc)."""
    if len(packet) < 20:
        return 0  # not an IP packet (the egress lets none through): one bucket
    first, protocol = packet[0], packet[9]
    if first == 0x45 and protocol in _PORT_PROTOCOLS and not (packet[6] & 0x3F or packet[7]):
        # Most packets: a 20-byte IPv4 header, not a fragment.  Addresses and
        # ports are contiguous: one slice (the general case below gives the
        # same bucket for the same flow).
        return (hash(packet[12:24]) ^ protocol) & _BUCKET_MASK
    version = first >> 4
    if version == 4:
        # Not a fragment: MF clear and offset 0 (the flags' top bit is reserved).
        if protocol in _PORT_PROTOCOLS and not (packet[6] & 0x3F or packet[7]):
            start = (first & 0x0F) << 2
            return (hash(packet[12:20] + packet[start:start + 4]) ^ protocol) & _BUCKET_MASK
        return hash((protocol, packet[12:20])) & _BUCKET_MASK
    # IPv6: the next header right after the fixed header, or the address
    # pair alone (extension headers, fragments).
    protocol = packet[6]
    if protocol in _PORT_PROTOCOLS:
        return (hash(packet[8:44]) ^ protocol) & _BUCKET_MASK
    return hash((protocol, packet[8:40])) & _BUCKET_MASK


@dataclass(slots=True)
class FlowChains:
    """The sending side of one session: each message's `flow_gap`."""

    _last: dict[int, int] = field(default_factory=dict)

    def gaps(self, first_counter: int, packets: list[bytes]) -> list[int]:
        """The flow gaps of `packets`, sealed at counters from `first_counter` on."""
        last = self._last
        gaps: list[int] = []
        counter = first_counter
        # A run is mostly one flow (the segments of one TCP super-packet): an
        # unfragmented IPv4 packet with a 20-byte header whose addresses,
        # ports and protocol are the previous packet's follows it (gap 1),
        # without hashing; its bucket's entry is written when the streak ends.
        same: bytes = b""
        protocol = bucket = -1
        for packet in packets:
            whole_v4 = packet[0] == 0x45 and not (packet[6] & 0x3F or packet[7])
            if whole_v4 and packet[9] == protocol and packet[12:24] == same:
                gaps.append(1)
                counter += 1
                continue
            if bucket >= 0:
                last[bucket] = counter - 1
            bucket = flow_bucket(packet)
            previous = last.get(bucket)
            if previous is None:
                gaps.append(FLOW_FIRST)
            else:
                gap = counter - previous
                gaps.append(gap if gap < FLOW_IN_ORDER else FLOW_IN_ORDER)
            same, protocol = (packet[12:24], packet[9]) if whole_v4 else (b"", -1)
            counter += 1
        if bucket >= 0:
            last[bucket] = counter - 1
        return gaps
