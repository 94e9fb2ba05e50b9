"""Random and mutated datagrams never raise out of the receive path, and
unauthenticated input changes no session state."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, server_addr

from stripe import control, wire


def _established() -> tuple[Sim, list[bytes]]:
    """A fresh pair with a live session, and the datagrams it exchanged (its
    own replay material): one per example, so no example sees another's
    leftovers."""
    # Redundancy on for small packets, so redundant copies (DATA_COPY) are captured too.
    sim = Sim([SimLink(), SimLink()], seed=11, duplicate_below=100)
    sim.run(1.0)
    sim.run(0.5, [(sim.now, "up", ip_packet(i, 200 if i % 2 else 60)) for i in range(20)])
    return sim, [d for _, _, d in sim.wire_log]


def test_captured_datagrams_include_redundant_copies() -> None:
    _, captured = _established()
    assert any(d[0] == wire.MessageType.DATA_COPY for d in captured)


def _snapshot(sim: Sim) -> tuple[object, ...]:
    peer = sim.server.peers[0]
    session = peer.current
    assert session is not None
    return (session.replay.highest, session.reorder.next_seq, session.send_counter,
            peer.handshake.last_init_timestamp, tuple(sorted(sim.server._sessions.table)),
            tuple(link.path for link in peer.links.values()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1600))
def test_random_bytes_never_raise(data: bytes) -> None:
    _sim, _ = _established()
    before = _snapshot(_sim)
    _sim.server.receive_datagram(0, data, client_addr(0), _sim.now)
    _sim.client.receive_datagram(1, data, server_addr(1), _sim.now)
    assert _snapshot(_sim) == before
    assert not _sim.server.packets_to_deliver()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_trains_of_random_and_replayed_datagrams_never_raise(data: st.DataObject) -> None:
    """The batched entry (a GRO read) with garbage and replays mixed in."""
    _sim, captured = _established()
    train = data.draw(st.lists(st.one_of(st.binary(max_size=1600), st.sampled_from(captured)),
                               max_size=8), label="train")
    before = _snapshot(_sim)
    _sim.server.receive_datagrams(0, train, client_addr(0), _sim.now)
    _sim.client.receive_datagrams(0, train, server_addr(0), _sim.now)
    assert _snapshot(_sim) == before
    assert not _sim.server.packets_to_deliver()
    _sim.server.datagrams_to_send()
    _sim.client.datagrams_to_send()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)),
                           min_size=1, max_size=4), st.integers(0, 64))
def test_mutated_real_datagrams_never_raise(draw: st.DataObject, flips: list[tuple[int, int]],
                                            cut: int) -> None:
    _sim, captured = _established()
    base = draw.draw(st.sampled_from(captured), label="base")
    data = bytearray(base)
    for pos, value in flips:
        if pos < len(data):
            data[pos] ^= value or 1
    mutated = bytes(data[: len(data) - cut] if cut < len(data) else data)
    before = _snapshot(_sim)
    _sim.server.receive_datagrams(0, [mutated], client_addr(0), _sim.now)
    _sim.client.receive_datagrams(0, [mutated], server_addr(0), _sim.now)
    if mutated != base:
        assert _snapshot(_sim) == before
    assert not _sim.server.packets_to_deliver()
    _sim.server.datagrams_to_send()
    _sim.client.datagrams_to_send()


@given(st.binary(max_size=300))
def test_control_decode_only_raises_control_error(data: bytes) -> None:
    with contextlib.suppress(control.ControlError):
        control.decode(data)
