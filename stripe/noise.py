"""Noise Protocol Framework handshakes (revision 34): NN, IK and IKpsk2.

Theory of operation
-------------------
A protocol name such as ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` selects a
handshake pattern (``PATTERNS``), the DH function (25519 only), a cipher
(``CIPHERS``: ChaChaPoly or AESGCM) and a hash (``HASHES``: BLAKE2s or
SHA256). The layering follows the spec, section 5:

* ``CipherState`` holds an AEAD key ``k`` (or none) and an implicit nonce ``n``.
* ``SymmetricState`` holds the chaining key ``ck``, the transcript hash ``h``
  and a ``CipherState``; every token of every handshake message moves it.
* ``HandshakeState`` walks the pattern table: message ``i`` is written by the
  initiator when ``i`` is even and by the responder when ``i`` is odd.
  Pre-messages are hashed at construction. After the last message
  ``is_complete`` is true and ``split()`` yields the transport ciphers.

DH tokens name the initiator's key first: ``es`` is DH(initiator e,
responder s); each side maps the two letters to its own and the peer's keys.

The data path does not use implicit nonces: ``TransportKey`` encrypts each
packet at an explicit 64-bit counter (as WireGuard does), so packets may be
lost or reordered; the caller owns the counter and the replay check.

Errors: ``NoiseError`` is raised for anything a peer can cause (bad tag, bad
length, invalid public key, a message out of turn) and for calls out of turn.
Local misuse (unknown protocol name, missing or malformed local key or psk,
encrypting at a counter out of range) raises ``ValueError``. Replay of
message 1 is not detected here (WireGuard puts a timestamp in the payload).
A failed ``read_message`` or ``write_message`` restores
the handshake to its state before the call, so a forged message cannot
poison a pending handshake: the caller may keep waiting for the genuine one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

# Protocol constants (Noise revision 34, sections 4, 5 and 9).
DH_LEN_BYTES = 32
KEY_LEN_BYTES = 32
HASH_LEN_BYTES = 32  # both supported hashes
TAG_LEN_BYTES = 16
PSK_LEN_BYTES = 32
MAX_MESSAGE_LEN_BYTES = 65535
MAX_NONCE = 2**64 - 1  # reserved by the spec: never used to encrypt

Aead: TypeAlias = ChaCha20Poly1305 | AESGCM


class NoiseError(Exception):
    """A handshake or transport message was rejected, or a call came out of turn."""


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """An AEAD: how to build it from a key, and its nonce layout.

    ``nonce_format`` packs the 64-bit counter after 4 zero bytes: little-endian
    for ChaChaPoly, big-endian for AESGCM (spec section 12).
    """

    name: str
    make_aead: Callable[[bytes], Aead]
    nonce_format: struct.Struct


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """Pre-message tokens of each side and the token list of each message.

    Only ``s`` occurs in pre-messages; message ``i`` is sent by the initiator
    iff ``i`` is even.
    """

    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    @property
    def has_psk(self) -> bool:
        return any("psk" in tokens for tokens in self.messages)


CIPHERS: dict[str, CipherSuite] = {
    "ChaChaPoly": CipherSuite("ChaChaPoly", ChaCha20Poly1305, struct.Struct("<4xQ")),
    "AESGCM": CipherSuite("AESGCM", AESGCM, struct.Struct(">4xQ")),
}
# Noise hash name -> hashlib name; both have HASHLEN 32 and BLOCKLEN 64.
HASHES: dict[str, str] = {"BLAKE2s": "blake2s", "SHA256": "sha256"}
PATTERNS: dict[str, HandshakePattern] = {
    "NN": HandshakePattern((), (), (("e",), ("e", "ee"))),
    "IK": HandshakePattern((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    "IKpsk2": HandshakePattern((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se", "psk"))),
}


def parse_protocol_name(name: str) -> tuple[HandshakePattern, CipherSuite, str]:
    """Split ``Noise_<pattern>_25519_<cipher>_<hash>`` into table entries."""
    parts = name.split("_")
    if len(parts) == 5 and parts[0] == "Noise" and parts[2] == "25519":
        with contextlib.suppress(KeyError):
            return PATTERNS[parts[1]], CIPHERS[parts[3]], HASHES[parts[4]]
    raise ValueError(
        f"unsupported Noise protocol {name!r}: patterns {sorted(PATTERNS)}, "
        f"DH 25519, ciphers {sorted(CIPHERS)}, hashes {sorted(HASHES)}"
    )


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 ``(private, public)`` pair, 32 raw bytes each."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_from_private(private: bytes) -> bytes:
    """Return the raw X25519 public key for a raw 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def decode_key(text: str) -> bytes:
    """A base64 32-byte key, as `stripe genkey` prints it.  ValueError if not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes, a key has 32")
    return raw


def encode_key(raw: bytes) -> str:
    """A 32-byte key as base64, the form configs and `stripe genkey` use."""
    return base64.b64encode(raw).decode()


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; a malformed or low-order peer key (all-zero output) is a NoiseError."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise NoiseError("invalid public key") from exc


# Loading a private key computes its public key: a scalar multiplication,
# as dear as a DH.  A static key is the same for every handshake, so its
# loaded form is kept (it is in memory as bytes anyway); an ephemeral one is
# loaded once per handshake and dropped with it (forward secrecy).
_STATIC_KEYS: dict[bytes, X25519PrivateKey] = {}
_STATIC_KEYS_MAX = 16


def _static_key(private: bytes) -> X25519PrivateKey:
    key = _STATIC_KEYS.get(private)
    if key is None:
        if len(_STATIC_KEYS) >= _STATIC_KEYS_MAX:  # a reload changed keys: start over
            _STATIC_KEYS.clear()
        key = _STATIC_KEYS[private] = X25519PrivateKey.from_private_bytes(private)
    return key


def _hkdf(hash_name: str, chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """Noise HKDF (section 4.3): ``outputs`` (2 or 3) blocks of HASH_LEN bytes."""
    temp_key = hmac.digest(chaining_key, ikm, hash_name)
    blocks = [hmac.digest(temp_key, b"\x01", hash_name)]
    for i in range(2, outputs + 1):
        blocks.append(hmac.digest(temp_key, blocks[-1] + bytes([i]), hash_name))
    return blocks


def aead_for_key(cipher_name: str, key: bytes) -> Aead:
    """Build the AEAD object for a 32-byte key (build once, reuse per packet)."""
    if cipher_name not in CIPHERS or len(key) != KEY_LEN_BYTES:
        raise ValueError(f"need a cipher in {sorted(CIPHERS)} and a 32-byte key")
    return CIPHERS[cipher_name].make_aead(key)


def nonce_builder(cipher_name: str) -> Callable[[int], bytes]:
    """Return the function mapping a 64-bit counter to the cipher's 12-byte nonce."""
    if cipher_name not in CIPHERS:
        raise ValueError(f"unknown Noise cipher {cipher_name!r}")
    return CIPHERS[cipher_name].nonce_format.pack


class TransportKey:
    """One direction's transport key, used with explicit per-packet counters.

    Invariants: the key and AEAD object never change; the caller never
    encrypts twice at the same counter; counters lie in ``[0, MAX_NONCE)``.
    """

    __slots__ = ("_aead", "_nonce", "cipher_name")

    def __init__(self, cipher_name: str, key: bytes) -> None:
        self.cipher_name = cipher_name
        self._aead = aead_for_key(cipher_name, key)
        self._nonce = nonce_builder(cipher_name)

    def encrypt_at(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt at counter ``n``; ``n`` out of range is local misuse (ValueError)."""
        if not 0 <= n < MAX_NONCE:
            raise ValueError(f"counter {n} out of range")
        return self._aead.encrypt(self._nonce(n), plaintext, ad)

    def encrypt_run(self, first: int, ads: list[bytes], plaintexts: list[bytes]) -> list[bytes]:
        """ad || encrypt for counters first, first + 1, ... (one bounds check,
        no per-call overhead: this is the data path's inner loop)."""
        if first < 0 or first + len(plaintexts) > MAX_NONCE:
            raise ValueError(f"counters {first}+{len(plaintexts)} out of range")
        encrypt, nonce = self._aead.encrypt, self._nonce
        return [ad + encrypt(nonce(n), plaintext, ad)
                for n, ad, plaintext in zip(range(first, first + len(plaintexts)), ads,
                                            plaintexts, strict=True)]

    def decrypt_at(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt at counter ``n``; any failure is a NoiseError."""
        if not 0 <= n < MAX_NONCE:
            raise NoiseError(f"counter {n} out of range")
        try:
            return self._aead.decrypt(self._nonce(n), ciphertext, ad)
        except InvalidTag as exc:
            raise NoiseError("decryption failed") from exc


class CipherState:
    """Noise CipherState: key ``k`` (or None) and implicit nonce ``n``.

    Empty state: no key, ``n == 0``; encryption is then the identity.
    Invariants: ``n`` grows by one per successful operation and never reaches
    ``MAX_NONCE``; a failed decryption leaves ``n`` unchanged.
    """

    __slots__ = ("_transport", "k", "n")

    def __init__(self, suite: CipherSuite, k: bytes | None = None) -> None:
        self.k, self.n = k, 0
        self._transport = None if k is None else TransportKey(suite.name, k)

    @property
    def has_key(self) -> bool:
        return self.k is not None

    @property
    def key(self) -> bytes:
        """The 32-byte key (raises NoiseError if there is none)."""
        if self.k is None:
            raise NoiseError("cipher state has no key")
        return self.k

    def transport_key(self) -> TransportKey:
        """This key for the explicit-counter data path (same AEAD object)."""
        if self._transport is None:
            raise NoiseError("cipher state has no key")
        return self._transport

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._transport is None:
            return plaintext
        ciphertext = self._transport.encrypt_at(self.n, ad, plaintext)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._transport is None:
            return ciphertext
        plaintext = self._transport.decrypt_at(self.n, ad, ciphertext)
        self.n += 1
        return plaintext


class SymmetricState:
    """Noise SymmetricState: chaining key ``ck``, hash ``h`` and a CipherState.

    Empty state: ``h`` is the protocol name padded (or hashed) to HASH_LEN,
    ``ck == h``, no key. ``mix_key`` installs a fresh CipherState (n = 0).
    """

    __slots__ = ("cipher", "ck", "h", "hash_name", "suite")

    def __init__(self, protocol_name: str, hash_name: str, suite: CipherSuite) -> None:
        name = protocol_name.encode()
        self.hash_name, self.suite = hash_name, suite
        self.h = name.ljust(HASH_LEN_BYTES, b"\0")
        if len(name) > HASH_LEN_BYTES:
            self.h = hashlib.new(hash_name, name).digest()
        self.ck = self.h
        self.cipher = CipherState(suite)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.hash_name, self.ck, ikm, 2)
        self.cipher = CipherState(self.suite, temp_k[:KEY_LEN_BYTES])

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.new(self.hash_name, self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.hash_name, self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(self.suite, temp_k[:KEY_LEN_BYTES])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = (k[:KEY_LEN_BYTES] for k in _hkdf(self.hash_name, self.ck, b"", 2))
        return CipherState(self.suite, k1), CipherState(self.suite, k2)


class HandshakeState:
    """One side of one handshake; discard it after ``split()``.

    Empty state: pre-messages hashed, no message sent (``_index == 0``).
    Invariants: ``_index`` counts completed messages; a message step either
    completes or leaves every field as it was (keys learnt from the peer,
    ``_re`` and ``_rs``, are kept only if their whole message verified).
    The psk may be given late (``set_psk``), e.g. once an IK responder has
    learnt ``remote_static`` from message 1 and looked the peer up.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        prologue: bytes = b"",
        *,
        static_private: bytes | None = None,
        remote_static: bytes | None = None,
        psk: bytes | None = None,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self.pattern, suite, hash_name = parse_protocol_name(protocol_name)
        self.initiator = initiator
        keys = {"static_private": static_private, "remote_static": remote_static}
        keys |= {"psk": psk, "ephemeral_private": ephemeral_private}
        for what, value in keys.items():
            if value is not None and len(value) != DH_LEN_BYTES:
                raise ValueError(f"{what} must be 32 bytes, got {len(value)}")
        pre = (self.pattern.initiator_pre, self.pattern.responder_pre)
        my_pre, their_pre = pre if initiator else pre[::-1]
        my_tokens = set(my_pre).union(*self.pattern.messages[int(not initiator) :: 2])
        if static_private is None and "s" in my_tokens:
            raise ValueError(f"{protocol_name} needs static_private on this side")
        if remote_static is None and "s" in their_pre:
            raise ValueError(f"{protocol_name} needs remote_static on this side")
        if psk is not None and not self.pattern.has_psk:
            raise ValueError(f"{protocol_name} takes no psk")
        self._s = None if static_private is None else _static_key(static_private)
        self._e = (None if ephemeral_private is None
                   else X25519PrivateKey.from_private_bytes(ephemeral_private))
        self._rs = remote_static
        self._s_pub = None if self._s is None else self._s.public_key().public_bytes_raw()
        self._psk = psk
        self._re: bytes | None = None
        self._index = 0
        self._sym = SymmetricState(protocol_name, hash_name, suite)
        self._sym.mix_hash(prologue)
        for tokens, owner_is_me in zip(pre, (initiator, not initiator), strict=True):
            if "s" in tokens:  # the only pre-message token in PATTERNS
                key = self._s_pub if owner_is_me else self._rs
                assert key is not None  # checked above
                self._sym.mix_hash(key)

    def set_psk(self, psk: bytes) -> None:
        """Supply (or replace) the psk; only effective before the ``psk`` token."""
        if len(psk) != PSK_LEN_BYTES:
            raise ValueError(f"psk must be {PSK_LEN_BYTES} bytes, got {len(psk)}")
        self._psk = psk

    @property
    def is_complete(self) -> bool:
        return self._index == len(self.pattern.messages)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (IK responder: after message 1)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The final transcript hash ``h`` (channel binding); only after completion."""
        self._require_complete()
        return self._sym.h

    def split(self) -> tuple[CipherState, CipherState]:
        """Return ``(c1, c2)``: the initiator sends with c1 and receives with c2;
        the responder sends with c2 and receives with c1."""
        self._require_complete()
        return self._sym.split()

    def transport_keys(self) -> tuple[TransportKey, TransportKey]:
        """Return this side's ``(send, receive)`` TransportKeys."""
        c1, c2 = self.split()
        send, receive = (c1, c2) if self.initiator else (c2, c1)
        return send.transport_key(), receive.transport_key()

    def write_message(self, payload: bytes) -> bytes:
        return self._step(True, lambda: self._write(payload))

    def read_message(self, message: bytes) -> bytes:
        return self._step(False, lambda: self._read(message))

    def _require_complete(self) -> None:
        if not self.is_complete:
            raise NoiseError("handshake not complete")

    def _step(self, writing: bool, step: Callable[[], bytes]) -> bytes:
        """Run one message; on any error restore the state from before it."""
        if self.is_complete or ((self._index % 2 == 0) == self.initiator) != writing:
            raise NoiseError("handshake message out of turn")
        sym, cipher = self._sym, self._sym.cipher
        saved = (sym.ck, sym.h, cipher, cipher.n, self._e, self._re, self._rs)
        try:
            result = step()
        except BaseException:
            sym.ck, sym.h, sym.cipher, cipher.n, self._e, self._re, self._rs = saved
            raise
        self._index += 1
        return result

    def _mix_token(self, token: str) -> None:
        """Process a ``psk`` or DH token (the same for reader and writer)."""
        if token == "psk":
            if self._psk is None:
                raise ValueError("psk needed before this message: call set_psk")
            self._sym.mix_key_and_hash(self._psk)
            return
        mine, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        local = self._e if mine == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        assert local is not None and remote is not None  # guaranteed by the pattern
        self._sym.mix_key(_dh(local, remote))

    def _mix_ephemeral(self, public: bytes) -> None:
        self._sym.mix_hash(public)
        if self.pattern.has_psk:
            self._sym.mix_key(public)

    def _write(self, payload: bytes) -> bytes:
        out = bytearray()
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                e_pub = self._e.public_key().public_bytes_raw()
                out += e_pub
                self._mix_ephemeral(e_pub)
            elif token == "s":
                assert self._s_pub is not None
                out += self._sym.encrypt_and_hash(self._s_pub)
            else:
                self._mix_token(token)
        out += self._sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN_BYTES:
            raise ValueError(f"handshake message would be {len(out)} bytes")
        return bytes(out)

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN_BYTES:
            raise NoiseError("handshake message too long")
        pos = 0
        for token in self.pattern.messages[self._index]:
            if token not in ("e", "s"):
                self._mix_token(token)
                continue
            size = DH_LEN_BYTES
            if token == "s" and self._sym.cipher.has_key:
                size += TAG_LEN_BYTES
            if len(message) - pos < size:
                raise NoiseError("handshake message too short")
            field, pos = message[pos : pos + size], pos + size
            if token == "e":
                self._re = field
                self._mix_ephemeral(field)
            else:
                self._rs = self._sym.decrypt_and_hash(field)
        return self._sym.decrypt_and_hash(message[pos:])
