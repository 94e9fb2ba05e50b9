"""What an endpoint keeps of an old session: nothing, once it expired or was
replaced, and no plaintext of what it sent, once too old to re-send, even
when no packet comes to push it out."""

from __future__ import annotations

import gc
import types
from typing import Any

from tests.core.netsim import Sim, SimLink, ip_packet

from stripe.endpoint import Endpoint
from stripe.links import KEEP_S
from stripe.session import REJECT_AFTER_S


def reachable(root: object) -> set[int]:
    """The ids of every object reachable from `root` through references,
    not through modules, classes or the globals of functions."""
    seen = {id(root)}
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, types.FunctionType):
            refs: list[Any] = [cell.cell_contents for cell in obj.__closure__ or ()]
            refs += list(obj.__defaults__ or ())
        else:
            refs = gc.get_referents(obj)
        for ref in refs:
            if isinstance(ref, type | types.ModuleType) or id(ref) in seen:
                continue
            seen.add(id(ref))
            stack.append(ref)
    return seen


def secrets_of(endpoint: Endpoint) -> list[object]:
    """The sessions an endpoint holds now, and their keys."""
    return [x for peer in endpoint.peers for s in peer.sessions()
            for x in (s, s.send_key, s.recv_key)]


def traffic(sim: Sim) -> list[bytes]:
    packets = [ip_packet(i, 600) for i in range(200)]
    sim.run(0.5, [(sim.now + 0.002 * i, "up" if i % 2 else "down", p)
                  for i, p in enumerate(packets)])
    return packets


def assert_gone(endpoint: Endpoint, old: list[object]) -> None:
    ids = reachable(endpoint)
    left = [type(x).__name__ for x in old if id(x) in ids]
    assert not left, left


def test_an_idle_tunnel_keeps_no_old_keys_or_packets() -> None:
    """Both ends up, no traffic for 400 s: rekeys replaced the session
    (twice over), and what the links carried is long past re-sending."""
    sim = Sim([SimLink(), SimLink()], seed=31)
    sim.run(1.0)
    packets = traffic(sim)
    old = secrets_of(sim.client) + secrets_of(sim.server)
    sim.run(400.0)
    assert sim.client.peers[0].current is not None  # alive, on newer keys
    for endpoint in (sim.client, sim.server):
        assert_gone(endpoint, old + packets)


def test_a_vanished_peer_leaves_no_keys_or_packets() -> None:
    """The links go dead for 400 s: each end's session expires (REJECT_AFTER_S)
    and is forgotten then, with what it sent."""
    links = [SimLink(), SimLink()]
    sim = Sim(links, seed=32)
    sim.run(1.0)
    packets = traffic(sim)
    old = secrets_of(sim.client) + secrets_of(sim.server)
    for link in links:
        link.up = False
    sim.run(REJECT_AFTER_S + 1.0)
    assert sim.server.peers[0].current is None
    assert sim.server.peers[0].sessions() == []
    sim.run(400.0 - REJECT_AFTER_S - 1.0)
    for endpoint in (sim.client, sim.server):
        assert_gone(endpoint, old + packets)


def test_sent_packets_go_once_older_than_they_are_kept() -> None:
    sim = Sim([SimLink(), SimLink()], seed=33)
    sim.run(1.0)
    start = sim.now
    sim.run(0.2, [(start + 0.002 * i, "up", ip_packet(i, 600)) for i in range(100)])
    assert any(link.recent.runs for link in sim.client.peers[0].links.values())
    sim.run(start + 0.198 + KEEP_S + 1e-6 - sim.now)  # the last send, then the window
    for endpoint in (sim.client, sim.server):
        for link in endpoint.peers[0].links.values():
            assert not link.recent.runs and link.recent.packets == 0, link.name


def test_a_next_session_the_client_never_used_expires() -> None:
    """The server answered an initiation while it had a session (the new one
    waits as NEXT for the client's first packet), and then the client was
    gone: the unused session goes when it would have expired."""
    links = [SimLink()]
    sim = Sim(links, seed=34)
    sim.run(1.0)
    # The same client, started again later (a newer timestamp), initiates.
    again = Endpoint(sim.client.spec, sim.now, wall_offset=1.7e9 + 10)
    again.handle_timer(sim.now)
    (_sock, init, _addr), = again.datagrams_to_send()
    for link in links:
        link.up = False
    sim.server.receive_datagram(0, init, ("10.0.0.1", 40000), sim.now)
    peer = sim.server.peers[0]
    unused = peer.next_session
    assert unused is not None
    old = [unused, unused.send_key, unused.recv_key]
    sim.run(400.0)
    assert peer.next_session is None and peer.sessions() == []
    assert not sim.server._sessions.table
    assert_gone(sim.server, old)
