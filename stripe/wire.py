"""Byte layouts of every stripe datagram, in one place.

All multi-byte integers are big-endian (network order).  Each layout is a
`struct.Struct`; sizes are derived from the structs, never typed by hand.

Transport header (DATA, CONTROL and DATA_COPY), 26 bytes, sent in clear and
used as the AEAD associated data, so every field is authenticated::

    offset size field
     0      1   type            MessageType.DATA, CONTROL or DATA_COPY
     1      1   link_id         sender's link index (0..255)
     2      2   link_mask       bit i set: link i (i < 12) is in the sender's
                                data rotation now, so the receiver's loss
                                inference waits for it; bits 12-15 reserved
                                (0) for key phase / batching
     4      4   receiver_index  the receiving side's session index
     8      8   counter         per-direction message counter: AEAD nonce,
                                replay-window key and reorder sequence in one
    16      4   link_seq        per-link sequence (per-link loss feedback)
    20      4   send_time_us    sender clock in microseconds mod 2**32
                                (one-way delay skew and jitter estimates)
    24      2   flow_gap        DATA: how many counters back the previous
                                message of the same inner flow is (see
                                `flows`): 0 none this session, FLOW_IN_ORDER
                                (0xFFFF) not said, in counter order as any
                                message; 0 in CONTROL
    26      n   ciphertext      inner IP packet (DATA) or msgpack (CONTROL)
    26+n   16   tag             AEAD tag

DATA_COPY is a second copy of a DATA message, sent on another link (see
`redundancy` in the config): same counter (the receiver keeps whichever
arrives first and drops the other as a duplicate), its own link id and
link_seq, and sealed at nonce counter + COPY_NONCE_OFFSET (`session`), so a
key never seals two messages at one nonce.

Handshake initiation (Noise IKpsk2 message 1), 148 bytes::

     0  1  type=HANDSHAKE_INIT  1  1  link_id   2  2  reserved (0)
     4  4  sender_index         8 32  ephemeral public key
    40 48  encrypted static (32 + tag)
    88 28  encrypted payload: TAI64N timestamp (12 + tag)
   116 16  mac1 = BLAKE2s-128(key=H("mac1----" || responder static), bytes 0..115)
   132 16  mac2 = BLAKE2s-128(key=cookie, bytes 0..131), or zero without a
           cookie (see `cookie`: demanded only while the server is under load)

Handshake response (Noise IKpsk2 message 2), 92 bytes::

     0  1  type=HANDSHAKE_RESP  1  1  link_id   2  2  reserved (0)
     4  4  sender_index         8  4  receiver_index (the initiator's index)
    12 32  ephemeral public key
    44 16  encrypted empty payload (tag only)
    60 16  mac1 (keyed with the initiator's static key)
    76 16  mac2 (zero in v1)

Everything here is pure parsing; callers treat `WireError` as "drop and
count", never as a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class MessageType(IntEnum):
    HANDSHAKE_INIT = 1
    HANDSHAKE_RESP = 2
    COOKIE_REPLY = 3  # stateless cookie under handshake load (layout in `cookie`)
    DATA = 4
    CONTROL = 5
    DATA_COPY = 6  # a redundant copy of a DATA message (see above)


# Byte -> member without Enum.__call__ (~0.5 us): it is on every datagram.
_TYPE_OF_BYTE: dict[int, MessageType] = {member.value: member for member in MessageType}


class WireError(Exception):
    """A datagram that does not parse.  `reason` is a short counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


TRANSPORT_HEADER = struct.Struct("!BBHIQIIH")
TRANSPORT_HEADER_SIZE = TRANSPORT_HEADER.size
AEAD_TAG_SIZE = 16
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
# What a tunnel packet costs on the wire beyond the inner packet: our
# header + tag, UDP (8) and IPv4 (20).  Used to derive the default MTU.
WIRE_OVERHEAD_IPV4 = TRANSPORT_OVERHEAD + 8 + 20
WIRE_OVERHEAD_IPV6 = TRANSPORT_OVERHEAD + 8 + 40

# flow_gap values with a meaning of their own (see the layout above).
FLOW_FIRST = 0
FLOW_IN_ORDER = 0xFFFF

MAC_SIZE = 16
KEY_SIZE = 32
TIMESTAMP_SIZE = 12

HANDSHAKE_INIT = struct.Struct("!BBHI32s48s28s16s16s")
HANDSHAKE_INIT_SIZE = HANDSHAKE_INIT.size
HANDSHAKE_INIT_MAC1_OFFSET = HANDSHAKE_INIT_SIZE - 2 * MAC_SIZE
HANDSHAKE_RESP = struct.Struct("!BBHII32s16s16s16s")
HANDSHAKE_RESP_SIZE = HANDSHAKE_RESP.size
HANDSHAKE_RESP_MAC1_OFFSET = HANDSHAKE_RESP_SIZE - 2 * MAC_SIZE

# The Noise message bytes inside the handshake datagrams.
NOISE_INIT_SLICE = slice(8, HANDSHAKE_INIT_MAC1_OFFSET)
NOISE_RESP_SLICE = slice(12, HANDSHAKE_RESP_MAC1_OFFSET)

MAX_LINKS = 256
MASKABLE_LINKS = 12  # links 0..11 can be announced in link_mask
LINK_MASK_BITS = (1 << MASKABLE_LINKS) - 1
ZERO_MAC = bytes(MAC_SIZE)
MAC1_LABEL = b"mac1----"


@dataclass(frozen=True, slots=True)
class TransportHeader:
    type: MessageType
    link_id: int
    link_mask: int
    receiver_index: int
    counter: int
    link_seq: int
    send_time_us: int
    flow_gap: int = FLOW_FIRST


@dataclass(frozen=True, slots=True)
class HandshakeInit:
    link_id: int
    sender_index: int
    noise_message: bytes  # ephemeral || encrypted static || encrypted timestamp
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class HandshakeResp:
    link_id: int
    sender_index: int
    receiver_index: int
    noise_message: bytes  # ephemeral || encrypted empty payload
    mac1: bytes
    mac2: bytes


def encode_transport_header(
    mtype: MessageType,
    link_id: int,
    link_mask: int,
    receiver_index: int,
    counter: int,
    link_seq: int,
    send_time_us: int,
    flow_gap: int = FLOW_FIRST,
) -> bytes:
    return TRANSPORT_HEADER.pack(
        mtype, link_id, link_mask, receiver_index, counter, link_seq & 0xFFFFFFFF,
        send_time_us & 0xFFFFFFFF, flow_gap,
    )


def encode_transport_headers(
    mtype: MessageType, link_id: int, link_mask: int, receiver_index: int, first_counter: int,
    first_link_seq: int, flow_gaps: list[int], send_time_us: int,
) -> list[bytes]:
    """`encode_transport_header` for consecutive messages to one link
    (counters and link sequence numbers counting up from the firsts), one
    per flow gap."""
    pack, stamp = TRANSPORT_HEADER.pack, send_time_us & 0xFFFFFFFF
    return [pack(mtype, link_id, link_mask, receiver_index, first_counter + i,
                 (first_link_seq + i) & 0xFFFFFFFF, stamp, gap)
            for i, gap in enumerate(flow_gaps)]


def decode_transport_header(datagram: bytes) -> TransportHeader:
    if len(datagram) < TRANSPORT_OVERHEAD:
        raise WireError("short")
    mtype, link_id, mask, receiver, counter, link_seq, ts, gap = TRANSPORT_HEADER.unpack_from(
        datagram
    )
    if mask & ~LINK_MASK_BITS:
        raise WireError("bad_flags")
    return TransportHeader(_TYPE_OF_BYTE[mtype], link_id, mask, receiver, counter, link_seq, ts,
                           gap)


def mac1_key(static_public: bytes) -> bytes:
    """The key under which messages *to* the owner of `static_public` carry mac1."""
    return hashlib.blake2s(MAC1_LABEL + static_public).digest()


def compute_mac1(key: bytes, covered: bytes) -> bytes:
    return hashlib.blake2s(covered, key=key, digest_size=MAC_SIZE).digest()


def encode_handshake_init(
    link_id: int, sender_index: int, noise_message: bytes, mac1_key_bytes: bytes,
    mac2: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """`mac2` maps the bytes it covers (everything before it) to the mac2."""
    body = HANDSHAKE_INIT.pack(
        MessageType.HANDSHAKE_INIT, link_id, 0, sender_index,
        noise_message[:32], noise_message[32:80], noise_message[80:108], ZERO_MAC, ZERO_MAC,
    )
    covered = body[:HANDSHAKE_INIT_MAC1_OFFSET]
    with_mac1 = covered + compute_mac1(mac1_key_bytes, covered)
    return with_mac1 + (mac2(with_mac1) if mac2 is not None else ZERO_MAC)


def decode_handshake_init(datagram: bytes) -> HandshakeInit:
    if len(datagram) != HANDSHAKE_INIT_SIZE:
        raise WireError("bad_handshake_size")
    _t, link_id, reserved, sender, eph, enc_static, enc_ts, mac1, mac2 = HANDSHAKE_INIT.unpack(
        datagram
    )
    if reserved != 0:
        raise WireError("bad_flags")
    return HandshakeInit(link_id, sender, eph + enc_static + enc_ts, mac1, mac2)


def encode_handshake_resp(
    link_id: int, sender_index: int, receiver_index: int, noise_message: bytes,
    mac1_key_bytes: bytes,
) -> bytes:
    body = HANDSHAKE_RESP.pack(
        MessageType.HANDSHAKE_RESP, link_id, 0, sender_index, receiver_index,
        noise_message[:32], noise_message[32:48], ZERO_MAC, ZERO_MAC,
    )
    covered = body[:HANDSHAKE_RESP_MAC1_OFFSET]
    return covered + compute_mac1(mac1_key_bytes, covered) + ZERO_MAC


def decode_handshake_resp(datagram: bytes) -> HandshakeResp:
    if len(datagram) != HANDSHAKE_RESP_SIZE:
        raise WireError("bad_handshake_size")
    _t, link_id, reserved, sender, receiver, eph, enc_empty, mac1, mac2 = HANDSHAKE_RESP.unpack(
        datagram
    )
    if reserved != 0:
        raise WireError("bad_flags")
    return HandshakeResp(link_id, sender, receiver, eph + enc_empty, mac1, mac2)


def mac1_valid(datagram: bytes, mac1_offset: int, key: bytes) -> bool:
    expected = compute_mac1(key, datagram[:mac1_offset])
    return hmac.compare_digest(expected, datagram[mac1_offset : mac1_offset + MAC_SIZE])


def peek_type(datagram: bytes) -> MessageType:
    """The message type of an untrusted datagram, or WireError."""
    if not datagram:
        raise WireError("short")
    mtype = _TYPE_OF_BYTE.get(datagram[0])
    if mtype is None:
        raise WireError("unknown_type")
    return mtype


def inner_packet_valid(packet: bytes) -> bool:
    """True when `packet` looks like one whole IPv4/IPv6 packet.

    The TUN would reject or misparse anything else; a packet that fails here
    came from a buggy or hostile (but authenticated) peer and is dropped.
    """
    n = len(packet)
    if n < 20:
        return False
    version = packet[0] >> 4
    if version == 4:
        return (packet[0] & 0x0F) >= 5 and ((packet[2] << 8) | packet[3]) == n
    if version == 6:
        return n >= 40 and ((packet[4] << 8) | packet[5]) + 40 == n
    return False
