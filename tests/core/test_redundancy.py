"""Redundancy: small or chosen-DSCP packets also travel as a DATA_COPY on a
second link; the receiver keeps the first to arrive, exactly once."""

from __future__ import annotations

import dataclasses

import pytest
from tests.core.netsim import Sim, SimLink, ip_packet, packet_seq

from stripe import wire
from stripe.noise import NoiseError, TransportKey
from stripe.reconfig import plan
from stripe.session import COPY_NONCE_OFFSET, DecryptError, Session
from stripe.spec import EndpointSpec, Role

SMALL, LARGE = 120, 1000
EF = 46  # DSCP "expedited forwarding" (voice)


def lossy_sim(loss_repair: bool = True, **redundancy: object) -> Sim:
    # Round robin: every other packet crosses the link that drops 30 %.
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.015, loss=0.3)],
              scheduler="roundrobin", loss_repair=loss_repair)
    sim.client.spec = dataclasses.replace(sim.client.spec, **redundancy)  # type: ignore[arg-type]
    sim.run(1.0)
    return sim


def mixed_traffic(sim: Sim, count: int) -> list[tuple[float, str, bytes]]:
    """Every fourth packet large, 5 ms apart."""
    return [(sim.now + i * 0.005, "up", ip_packet(i, LARGE if i % 4 == 3 else SMALL))
            for i in range(count)]


def delivered(sim: Sim) -> list[int]:
    return [packet_seq(p) for p in sim.delivered["server"]]


def test_small_packets_cross_a_lossy_link_exactly_once() -> None:
    sim = lossy_sim(duplicate_below=200)
    sim.run(3.0, mixed_traffic(sim, 400))
    got = delivered(sim)
    small = [i for i in range(400) if i % 4 != 3]
    assert set(small) <= set(got)  # none lost
    assert len(got) == len(set(got)) and got == sorted(got)  # once, in order
    assert len(got) < 400  # large ones still die on the lossy link: not copied
    peer = sim.client.peers[0]
    assert peer.copies.copies_sent == len(small)
    drops = sim.server.drops
    assert drops["duplicate"] > 0 and drops["replay"] == 0
    assert sim.server.peers[0].copies.copies_first > 0  # copies that replaced a lost original
    redundancy = _status_redundancy(sim)
    assert redundancy["copies_sent"] == len(small)
    assert 0 < redundancy["overhead_percent"] < 100


def test_without_redundancy_the_same_traffic_loses_small_packets() -> None:
    # TCP: a sparse flow's small packets that are not TCP go on two links
    # even without redundancy (see test_flows); these are not.  Nor are the
    # lost ones asked for again (see test_repair).
    sim = lossy_sim(loss_repair=False)
    traffic = [(t, d, p[:9] + bytes([6]) + p[10:]) for t, d, p in mixed_traffic(sim, 400)]
    sim.run(3.0, traffic)
    got = set(delivered(sim))
    assert any(i not in got for i in range(400) if i % 4 != 3)
    assert sim.client.peers[0].copies.copies_sent == 0


def test_a_dscp_class_is_copied_and_nothing_else() -> None:
    sim = lossy_sim(duplicate_dscp=frozenset({EF}))
    voice = []
    for i in range(200):
        packet = bytearray(ip_packet(i, LARGE))
        if i % 2 == 0:
            packet[1] = EF << 2
            voice.append(i)
        voice_or_not = bytes(packet)
        sim.run(0.005, [(sim.now, "up", voice_or_not)])
    sim.run(1.0)
    got = delivered(sim)
    assert set(voice) <= set(got) and len(got) == len(set(got))
    assert sim.client.peers[0].copies.copies_sent == len(voice)


def test_a_single_link_sends_no_copies() -> None:
    sim = Sim([SimLink(delay_s=0.010)])
    sim.client.spec = dataclasses.replace(sim.client.spec, duplicate_below=200)
    sim.run(1.0)
    sim.run(1.0, mixed_traffic(sim, 40))
    assert sim.client.peers[0].copies.copies_sent == 0
    assert delivered(sim) == list(range(40))


def _sessions() -> tuple[Session, Session]:
    key_ab, key_ba = bytes(range(32)), bytes(range(1, 33))
    a = Session(1, 2, TransportKey("AESGCM", key_ab), TransportKey("AESGCM", key_ba), 0.0, True)
    b = Session(2, 1, TransportKey("AESGCM", key_ba), TransportKey("AESGCM", key_ab), 0.0, False)
    return a, b


def test_a_copy_is_sealed_at_its_own_nonce() -> None:
    a, b = _sessions()
    packet = ip_packet(7, SMALL)
    (original,) = a.seal(wire.MessageType.DATA, 0, 0b11, 5, [packet], 1.0)
    (copy,) = a.seal(wire.MessageType.DATA_COPY, 1, 0b11, 9, [packet], 1.0, copy_of=0)
    header = wire.decode_transport_header(copy)
    assert header.type is wire.MessageType.DATA_COPY and header.counter == 0
    # Not the original's nonce: decrypting the copy there fails.
    with pytest.raises(NoiseError):
        b.recv_key.decrypt_at(0, copy[:wire.TRANSPORT_HEADER_SIZE],
                              copy[wire.TRANSPORT_HEADER_SIZE:])
    assert b.recv_key.decrypt_at(COPY_NONCE_OFFSET, copy[:wire.TRANSPORT_HEADER_SIZE],
                                 copy[wire.TRANSPORT_HEADER_SIZE:]) == packet
    # A copy relabelled as plain data does not authenticate (the type is AD).
    forged = bytes([wire.MessageType.DATA]) + copy[1:]
    with pytest.raises(DecryptError, match="bad_tag"):
        b.open(forged[0], 0, forged, 1.0)
    # The copy first, then the original: the original is a duplicate, not a replay.
    assert b.open(copy[0], 0, copy, 1.0) == packet
    with pytest.raises(DecryptError, match="duplicate"):
        b.open(original[0], 0, original, 1.0)
    # And a replayed copy is a duplicate as well.
    with pytest.raises(DecryptError, match="duplicate"):
        b.open(copy[0], 0, copy, 1.0)
    with pytest.raises(ValueError):  # nothing sealed at counter 1 yet
        a.seal(wire.MessageType.DATA_COPY, 1, 0b11, 10, [packet], 1.0, copy_of=1)


def test_redundancy_changes_live_on_reload() -> None:
    old = EndpointSpec(Role.SERVER, bytes(32), ())
    new = dataclasses.replace(old, duplicate_below=200, duplicate_dscp=frozenset({EF}))
    assert plan(old, new, set()).changes == ("redundancy off -> <= 200 B or dscp 46",)


def _status_redundancy(sim: Sim) -> dict[str, float]:
    return sim.client.status(sim.now)["peers"][0]["redundancy"]  # type: ignore[no-any-return]
