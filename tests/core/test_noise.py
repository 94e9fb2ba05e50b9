"""Tests for stripe.noise: cacophony vectors, then failure modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stripe import noise
from stripe.noise import (
    HandshakeState,
    NoiseError,
    TransportKey,
    aead_for_key,
    generate_keypair,
    nonce_builder,
    public_from_private,
)

# Public domain vectors of the cacophony project (data/README.md says more).
VECTORS_PATH = Path(__file__).resolve().parent / "data" / "cacophony-ik.json"
IKPSK2 = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
PSK = bytes(range(32))
# A point of order 8 on Curve25519 (X25519 with it gives an all-zero output).
LOW_ORDER_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def _load_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["vectors"]
    return vectors


VECTORS = _load_vectors()


def _opt(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return None if value is None else bytes.fromhex(value)


def _psk(vector: dict[str, Any], key: str) -> bytes | None:
    psks = vector.get(key, [])
    assert len(psks) <= 1, "only a single psk (psk2) is supported"
    return bytes.fromhex(psks[0]) if psks else None


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    name = vector["protocol_name"]
    initiator = HandshakeState(
        name,
        True,
        bytes.fromhex(vector["init_prologue"]),
        static_private=_opt(vector, "init_static"),
        remote_static=_opt(vector, "init_remote_static"),
        psk=_psk(vector, "init_psks"),
        ephemeral_private=_opt(vector, "init_ephemeral"),
    )
    responder = HandshakeState(
        name,
        False,
        bytes.fromhex(vector["resp_prologue"]),
        static_private=_opt(vector, "resp_static"),
        remote_static=_opt(vector, "resp_remote_static"),
        psk=_psk(vector, "resp_psks"),
        ephemeral_private=_opt(vector, "resp_ephemeral"),
    )
    messages = vector["messages"]
    handshake_len = len(initiator.pattern.messages)
    for i, message in enumerate(messages[:handshake_len]):
        sender, receiver = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        payload = bytes.fromhex(message["payload"])
        ciphertext = sender.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"], f"handshake message {i}"
        assert receiver.read_message(ciphertext) == payload
    assert initiator.is_complete and responder.is_complete
    if "init_static" in vector:
        assert responder.remote_static == public_from_private(bytes.fromhex(vector["init_static"]))
    if "handshake_hash" in vector:
        assert initiator.handshake_hash.hex() == vector["handshake_hash"]
        assert responder.handshake_hash.hex() == vector["handshake_hash"]

    # Transport: directions keep alternating (one_way is false in these vectors).
    assert not vector.get("init_one_way") and not vector.get("resp_one_way")
    i_c1, i_c2 = initiator.split()
    r_c1, r_c2 = responder.split()
    i_send, i_recv = initiator.transport_keys()
    r_send, r_recv = responder.transport_keys()
    counters = [0, 0]
    for i, message in enumerate(messages[handshake_len:], start=handshake_len):
        payload = bytes.fromhex(message["payload"])
        from_initiator = i % 2 == 0
        send_cs, recv_cs = (i_c1, r_c1) if from_initiator else (r_c2, i_c2)
        ciphertext = send_cs.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"], f"transport message {i}"
        assert recv_cs.decrypt_with_ad(b"", ciphertext) == payload
        # The explicit-counter data path produces the same bytes.
        send_tk, recv_tk = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        n = counters[not from_initiator]
        counters[not from_initiator] += 1
        assert send_tk.encrypt_at(n, b"", payload) == ciphertext
        assert recv_tk.decrypt_at(n, b"", ciphertext) == payload


def _pair(
    name: str = IKPSK2, *, resp_psk: bytes = PSK, init_remote: bytes | None = None
) -> tuple[HandshakeState, HandshakeState, bytes, bytes]:
    init_priv, init_pub = generate_keypair()
    resp_priv, resp_pub = generate_keypair()
    initiator = HandshakeState(
        name,
        True,
        b"stripe",
        static_private=init_priv,
        remote_static=init_remote or resp_pub,
        psk=PSK,
    )
    responder = HandshakeState(name, False, b"stripe", static_private=resp_priv, psk=resp_psk)
    return initiator, responder, init_pub, resp_pub


def test_aesgcm_ikpsk2_handshake_agrees() -> None:
    initiator, responder, init_pub, _ = _pair("Noise_IKpsk2_25519_AESGCM_BLAKE2s")
    assert responder.read_message(initiator.write_message(b"hello")) == b"hello"
    assert responder.remote_static == init_pub
    assert initiator.read_message(responder.write_message(b"world")) == b"world"
    assert initiator.handshake_hash == responder.handshake_hash
    assert [c.key for c in initiator.split()] == [c.key for c in responder.split()]
    i_send, i_recv = initiator.transport_keys()
    r_send, r_recv = responder.transport_keys()
    assert r_recv.decrypt_at(7, b"hdr", i_send.encrypt_at(7, b"hdr", b"up")) == b"up"
    assert i_recv.decrypt_at(3, b"hdr", r_send.encrypt_at(3, b"hdr", b"down")) == b"down"


def test_tampered_message_rejected_and_state_restored() -> None:
    initiator, responder, _, _ = _pair()
    message1 = initiator.write_message(b"payload")
    for index in (0, 40, len(message1) - 1):  # ephemeral, encrypted static, tag
        tampered = bytearray(message1)
        tampered[index] ^= 1
        with pytest.raises(NoiseError):
            responder.read_message(bytes(tampered))
        assert responder.remote_static is None
    with pytest.raises(NoiseError):
        responder.read_message(message1[:20])  # too short
    # A failed read leaves the state as it was: the genuine message still works.
    assert responder.read_message(message1) == b"payload"
    message2 = responder.write_message(b"")
    with pytest.raises(NoiseError):
        initiator.read_message(message2[:-1] + bytes([message2[-1] ^ 1]))
    assert initiator.read_message(message2) == b""
    assert initiator.handshake_hash == responder.handshake_hash


def test_wrong_responder_static_rejected_by_responder() -> None:
    _, wrong_pub = generate_keypair()
    initiator, responder, _, _ = _pair(init_remote=wrong_pub)
    with pytest.raises(NoiseError):
        responder.read_message(initiator.write_message(b""))


def test_wrong_psk_rejected_by_initiator() -> None:
    initiator, responder, _, _ = _pair(resp_psk=bytes(32))
    responder.read_message(initiator.write_message(b""))  # psk not yet mixed
    with pytest.raises(NoiseError):
        initiator.read_message(responder.write_message(b""))
    assert not initiator.is_complete


def test_low_order_public_key_rejected() -> None:
    initiator, responder, _, _ = _pair()
    message1 = initiator.write_message(b"")
    with pytest.raises(NoiseError):
        responder.read_message(LOW_ORDER_POINT + message1[32:])
    # NN: the responder only meets the bad ephemeral when it computes "ee".
    nn = "Noise_NN_25519_ChaChaPoly_BLAKE2s"
    nn_responder = HandshakeState(nn, False)
    nn_responder.read_message(LOW_ORDER_POINT)
    with pytest.raises(NoiseError):
        nn_responder.write_message(b"")
    # An IK initiator configured with a low-order server key fails at "es".
    bad = HandshakeState(
        IKPSK2,
        True,
        static_private=generate_keypair()[0],
        remote_static=bytes(32),
        psk=PSK,
    )
    with pytest.raises(NoiseError):
        bad.write_message(b"")


def test_out_of_turn() -> None:
    initiator, responder, _, _ = _pair()
    with pytest.raises(NoiseError):
        responder.write_message(b"")
    with pytest.raises(NoiseError):
        initiator.read_message(b"")
    with pytest.raises(NoiseError):
        initiator.split()
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    with pytest.raises(NoiseError):
        initiator.write_message(b"")


@pytest.mark.parametrize("cipher", ["ChaChaPoly", "AESGCM"])
def test_transport_key_roundtrip(cipher: str) -> None:
    key = bytes(range(32, 64))
    sender, receiver = TransportKey(cipher, key), TransportKey(cipher, key)
    for n in (0, 1, 2**32, 2**64 - 2):
        ciphertext = sender.encrypt_at(n, b"header", b"inner packet")
        assert receiver.decrypt_at(n, b"header", ciphertext) == b"inner packet"
    ciphertext = sender.encrypt_at(5, b"header", b"inner packet")
    for n, ad, data in (
        (6, b"header", ciphertext),
        (5, b"Header", ciphertext),
        (5, b"header", ciphertext[:-1]),
        (5, b"header", b""),
        (2**64 - 1, b"header", ciphertext),
    ):
        with pytest.raises(NoiseError):
            receiver.decrypt_at(n, ad, data)
    with pytest.raises(ValueError):
        sender.encrypt_at(2**64 - 1, b"", b"")


def test_nonce_layout() -> None:
    """ChaChaPoly: 4 zero bytes + LE counter; AESGCM: 4 zero bytes + BE counter."""
    key, n = bytes(range(32)), 0x0102030405060708
    layouts = {"ChaChaPoly": n.to_bytes(8, "little"), "AESGCM": n.to_bytes(8, "big")}
    for cipher, counter_bytes in layouts.items():
        nonce = bytes(4) + counter_bytes
        assert nonce_builder(cipher)(n) == nonce
        expected = aead_for_key(cipher, key).encrypt(nonce, b"data", b"ad")
        assert TransportKey(cipher, key).encrypt_at(n, b"ad", b"data") == expected


def test_bad_configuration_is_value_error() -> None:
    with pytest.raises(ValueError):
        HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2s", True)
    with pytest.raises(ValueError):
        HandshakeState(IKPSK2, True, static_private=bytes(32), psk=PSK)  # no remote_static
    with pytest.raises(ValueError):
        HandshakeState("Noise_NN_25519_ChaChaPoly_BLAKE2s", True, psk=PSK)  # NN takes no psk
    with pytest.raises(ValueError):
        HandshakeState(IKPSK2, False, static_private=bytes(32), psk=b"short")


def test_responder_psk_supplied_after_learning_the_client() -> None:
    init_priv, init_pub = generate_keypair()
    resp_priv, resp_pub = generate_keypair()
    psk_by_client = {init_pub: PSK}
    initiator = HandshakeState(
        IKPSK2, True, static_private=init_priv, remote_static=resp_pub, psk=PSK
    )
    responder = HandshakeState(IKPSK2, False, static_private=resp_priv)
    responder.read_message(initiator.write_message(b""))
    assert responder.remote_static is not None
    with pytest.raises(ValueError):  # psk missing: local misuse, state restored
        responder.write_message(b"")
    responder.set_psk(psk_by_client[responder.remote_static])
    initiator.read_message(responder.write_message(b"ok"))
    assert initiator.handshake_hash == responder.handshake_hash


def test_static_keys_are_loaded_once_and_ephemerals_never_kept() -> None:
    """Loading a private key costs a scalar multiplication: a static key is
    loaded once for every handshake it makes; an ephemeral one lives only
    in its handshake (forward secrecy), so the cache holds static keys only."""
    noise._STATIC_KEYS.clear()
    for _ in range(5):
        initiator, responder, _, _ = _pair(IKPSK2)
        responder.read_message(initiator.write_message(b""))
        initiator.read_message(responder.write_message(b""))
    # _pair makes a fresh static pair each time: 2 per handshake, no ephemerals.
    assert len(noise._STATIC_KEYS) == 10
    static = generate_keypair()[0]
    assert noise._static_key(static) is noise._static_key(static)
