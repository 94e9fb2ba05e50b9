"""stripe's handshake: Noise IKpsk2 framed in the datagrams of `wire`.

The client (initiator) knows the server's static key; the server (responder)
learns the client's static key from message 1 and accepts it only if it is a
configured peer.  Message 1 carries a TAI64N timestamp so a captured
initiation cannot be replayed to reset a session (WireGuard's rule: the
timestamp must grow).  mac1 lets the server discard datagrams from anyone who
does not even know its public key before spending a Diffie-Hellman on them.

We run the AESGCM variant: with AES-NI, which the CPUs stripe serves have,
AES-GCM seals a full-size packet in about half the time ChaCha20-Poly1305
takes (docs/design.md), and the data path uses the same cipher as the
handshake.  The Noise code is generic; the test
suite checks it against the ChaChaPoly/BLAKE2s vectors.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import wire
from .noise import HandshakeState, NoiseError, TransportKey

PROTOCOL_NAME = "Noise_IKpsk2_25519_AESGCM_BLAKE2s"
PROLOGUE = b"stripe v2 bonding tunnel"
NO_PSK = bytes(32)  # Noise IKpsk2 with an all-zero psk when none is configured

_TAI64_BASE = 2**62 + 10  # TAI64 label of 1970-01-01 (10 s of TAI-UTC offset)
_TAI64N = struct.Struct("!QI")


def tai64n(wall_time: float) -> bytes:
    seconds = int(wall_time)
    nanos = int((wall_time - seconds) * 1e9)
    return _TAI64N.pack(_TAI64_BASE + seconds, nanos)


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    send_key: TransportKey
    recv_key: TransportKey
    remote_index: int


class PendingInitiation:
    """The client's half-done handshake: waits for the response."""

    def __init__(
        self, static_private: bytes, server_public: bytes, psk: bytes | None,
        sender_index: int, link_id: int, wall_time: float,
        mac2: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.sender_index = sender_index
        self.sent_at = 0.0  # the caller's clock, for an RTT sample
        self._static_public: bytes | None = None
        self._state = HandshakeState(
            PROTOCOL_NAME, True, PROLOGUE, static_private=static_private,
            remote_static=server_public, psk=psk or NO_PSK,
        )
        noise_message = self._state.write_message(tai64n(wall_time))
        self.datagram = wire.encode_handshake_init(
            link_id, sender_index, noise_message, wire.mac1_key(server_public), mac2
        )
        offset = wire.HANDSHAKE_INIT_MAC1_OFFSET
        self.mac1 = self.datagram[offset : offset + wire.MAC_SIZE]  # a cookie reply's AD

    def consume_response(self, resp: wire.HandshakeResp, mac1_key: bytes,
                         datagram: bytes) -> HandshakeResult:
        """Raises NoiseError when the response is not from our server."""
        if not wire.mac1_valid(datagram, wire.HANDSHAKE_RESP_MAC1_OFFSET, mac1_key):
            raise NoiseError("bad mac1")
        self._state.read_message(resp.noise_message)
        send, recv = self._state.transport_keys()
        return HandshakeResult(send, recv, resp.sender_index)


class UnknownPeer(KeyError):
    """A valid initiation from a key this process does not accept."""

    def __init__(self, public_key: bytes) -> None:
        super().__init__("unknown peer")
        self.public_key = public_key


@dataclass(frozen=True, slots=True)
class AcceptedInitiation:
    peer_public: bytes
    timestamp: bytes
    state: HandshakeState


def read_initiation(
    init: wire.HandshakeInit, static_private: bytes, psk_for: dict[bytes, bytes | None]
) -> AcceptedInitiation:
    """Server side: authenticate message 1.  `psk_for` maps each accepted
    client public key to its psk.  Raises NoiseError (bad crypto) or
    UnknownPeer (a valid handshake from a key we do not accept)."""
    state = HandshakeState(PROTOCOL_NAME, False, PROLOGUE, static_private=static_private)
    payload = state.read_message(init.noise_message)
    peer = state.remote_static
    assert peer is not None
    if peer not in psk_for:
        raise UnknownPeer(peer)
    psk = psk_for[peer]
    state.set_psk(psk or NO_PSK)
    if len(payload) != wire.TIMESTAMP_SIZE:
        raise NoiseError("bad timestamp")
    return AcceptedInitiation(peer, payload, state)


def write_response(
    accepted: AcceptedInitiation, link_id: int, sender_index: int, receiver_index: int,
) -> tuple[bytes, HandshakeResult]:
    noise_message = accepted.state.write_message(b"")
    send, recv = accepted.state.transport_keys()
    datagram = wire.encode_handshake_resp(
        link_id, sender_index, receiver_index, noise_message,
        wire.mac1_key(accepted.peer_public),
    )
    return datagram, HandshakeResult(send, recv, receiver_index)
