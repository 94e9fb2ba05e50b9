"""A server of several workers (`workers = N`), its pure half: which worker
owns a peer and a session index, and initiations handed to their owner.
The kernel's steering is played here by `steering.worker_of` (its BPF
program is tested in tests/shell/test_reuseport_program.py)."""

from __future__ import annotations

import ipaddress

import pytest
from tests.core.test_multipeer import SERVER_ADDR, Net, ipv4

from stripe import steering, wire
from stripe.endpoint import Endpoint
from stripe.noise import generate_keypair
from stripe.spec import EndpointSpec, LinkSpec, PeerSpec, Role


def test_session_indices_name_their_worker() -> None:
    assert steering.session_index(0, 0xFFFFFFFF) == 0x0FFFFFFF
    assert steering.session_index(3, 0x12345678) == 0x32345678
    assert steering.session_index(15, 0) == 0xF0000000
    for worker in range(steering.MAX_WORKERS):
        assert steering.worker_of(steering.session_index(worker, 0xDEADBEEF)) == worker
    with pytest.raises(ValueError):
        steering.session_index(16, 0)


def test_peers_are_owned_by_a_hash_of_their_key() -> None:
    # Known answers: every process of a server computes these alike.
    assert steering.owner_of(bytes(32), 2) == 1
    assert steering.owner_of(bytes(range(32)), 2) == 1
    assert steering.owner_of(bytes(range(32)), 3) == 2
    assert steering.owner_of(bytes(range(32)), 1) == 0
    # And the share is even: 1,000 random keys over 4 workers.
    counts = [0] * 4
    for _ in range(1000):
        counts[steering.owner_of(generate_keypair()[1], 4)] += 1
    assert min(counts) > 200, counts


def _keys_for_every_worker(n: int, workers: int) -> list[tuple[bytes, bytes]]:
    """n key pairs, as many owned by each worker (random keys could leave one idle)."""
    wanted = {w: n // workers for w in range(workers)}
    keys = []
    while len(keys) < n:
        pair = generate_keypair()
        owner = steering.owner_of(pair[1], workers)
        if wanted[owner]:
            wanted[owner] -= 1
            keys.append(pair)
    return keys


class Workers(Net):
    """Two workers of one server and four clients; the kernel's part played
    here: transport datagrams go to the worker their receiver index names,
    everything else to worker 0 (so half the initiations need a handoff)."""

    def __init__(self, n_clients: int = 4, workers: int = 2) -> None:
        super().__init__(0)
        server_priv, server_pub = generate_keypair()
        self.keys = _keys_for_every_worker(n_clients, workers)
        self.tunnel_ips = [f"10.2.0.{11 + i}" for i in range(n_clients)]
        peers = [PeerSpec(pub, None, (ipaddress.ip_network(f"{ip}/32"),))
                 for (_, pub), ip in zip(self.keys, self.tunnel_ips, strict=True)]
        self.owner = [steering.owner_of(pub, workers) for _, pub in self.keys]
        self.workers = [
            Endpoint(EndpointSpec(
                Role.SERVER, server_priv,
                tuple(p for p in peers if steering.owner_of(p.public_key, workers) == w),
                worker=w, workers=workers,
                foreign_peers=frozenset(p.public_key for p in peers
                                        if steering.owner_of(p.public_key, workers) != w)),
                self.now)
            for w in range(workers)]
        self.clients = [
            Endpoint(EndpointSpec(Role.CLIENT, priv, (PeerSpec(server_pub),),
                                  (LinkSpec(0, "l0", remote=SERVER_ADDR),)), self.now)
            for priv, _ in self.keys]
        self.addrs = [(f"198.51.100.{i + 1}", 40000) for i in range(n_clients)]
        self.handed_off = 0

    def to_server(self, data: bytes, source: tuple[str, int]) -> None:
        worker = 0
        if data[0] in (wire.MessageType.DATA, wire.MessageType.CONTROL,
                       wire.MessageType.DATA_COPY) and len(data) >= 8:
            worker = steering.worker_of(int.from_bytes(data[4:8], "big"))
        self.workers[worker if worker < len(self.workers) else 0].receive_datagram(
            0, data, source, self.now)

    def server_turn(self) -> bool:
        moved = False
        for w, worker in enumerate(self.workers):
            worker.handle_timer(self.now)
            for owner, sock, data, addr in worker.handoffs_to_send():
                moved = True
                self.handed_off += 1
                assert owner != w
                self.workers[owner].receive_handoff(sock, data, addr, self.now)
            moved = self.from_server(worker, w) or moved
        return moved


def test_initiations_reach_the_owner_and_each_session_stays_with_it() -> None:
    net = Workers()
    net.pump(1.0)
    for i, client in enumerate(net.clients):
        assert client.peers[0].current is not None, f"client {i} not connected"
    # Worker 1's clients came in through worker 0, handed over whole.
    assert net.handed_off >= net.owner.count(1)
    for w, worker in enumerate(net.workers):
        for peer in worker.peers:
            assert peer.current is not None
            assert steering.worker_of(peer.current.local_index) == w
        assert worker.drops["unknown_peer"] == 0
        assert worker.drops["unknown_session"] == 0
    # Each client's data is delivered by its owner and only there.
    for i, client in enumerate(net.clients):
        client.send_packet(ipv4(net.tunnel_ips[i], "10.2.0.1"), net.now)
    net.pump(0.2)
    for w in range(len(net.workers)):
        sources = sorted(str(ipaddress.ip_address(p[12:16])) for p in net.delivered.get(w, []))
        assert sources == sorted(ip for ip, owner in zip(net.tunnel_ips, net.owner,
                                                         strict=True) if owner == w)


def test_a_key_no_worker_serves_is_not_handed_off() -> None:
    net = Workers(n_clients=4)
    stranger = Endpoint(EndpointSpec(
        Role.CLIENT, generate_keypair()[0], (net.clients[0].spec.peers[0],),
        (LinkSpec(0, "l0", remote=SERVER_ADDR),)), net.now)
    stranger.handle_timer(net.now)
    for _sock, data, _addr in stranger.datagrams_to_send():
        net.workers[0].receive_datagram(0, data, ("203.0.113.9", 1), net.now)
    assert net.workers[0].handoffs_to_send() == []
    assert net.workers[0].drops["unknown_peer"] == 1
