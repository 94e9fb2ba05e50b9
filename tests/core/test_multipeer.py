"""One server endpoint, several clients: cryptokey routing both ways."""

from __future__ import annotations

import ipaddress
import struct

from stripe.endpoint import Endpoint
from stripe.noise import generate_keypair
from stripe.routing import AllowedIPs
from stripe.spec import EndpointSpec, LinkSpec, PeerSpec, Role

SERVER_ADDR = ("192.0.2.1", 5000)


def ipv4(src: str, dst: str, size: int = 100) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    struct.pack_into("!H", header, 2, size)
    header[9] = 17
    header[12:16] = ipaddress.ip_address(src).packed
    header[16:20] = ipaddress.ip_address(dst).packed
    return bytes(header) + bytes(size - 20)


class Net:
    """Zero-delay, lossless delivery between one server and N clients."""

    def __init__(self, n_clients: int) -> None:
        self.now = 100.0
        server_priv, server_pub = generate_keypair()
        keys = [generate_keypair() for _ in range(n_clients)]
        self.tunnel_ips = [f"10.2.0.{11 + i}" for i in range(n_clients)]
        self.server = Endpoint(EndpointSpec(Role.SERVER, server_priv, tuple(
            PeerSpec(pub, None, (ipaddress.ip_network(f"{ip}/32"),))
            for (_, pub), ip in zip(keys, self.tunnel_ips, strict=True))), self.now)
        self.clients = [
            Endpoint(EndpointSpec(Role.CLIENT, priv, (PeerSpec(server_pub),),
                                  (LinkSpec(0, "l0", remote=SERVER_ADDR),)), self.now)
            for priv, _ in keys
        ]
        self.addrs = [(f"198.51.100.{i + 1}", 40000) for i in range(n_clients)]
        self.delivered: dict[int | str, list[bytes]] = {"server": []}

    def pump(self, seconds: float = 1.0, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            for _ in range(20):
                moved = False
                for i, client in enumerate(self.clients):
                    client.handle_timer(self.now)
                    for _sock, data, _addr in client.datagrams_to_send():
                        moved = True
                        self.to_server(data, self.addrs[i])
                    self.delivered.setdefault(i, []).extend(client.packets_to_deliver())
                moved = self.server_turn() or moved
                if not moved:
                    break

    def to_server(self, data: bytes, source: tuple[str, int]) -> None:
        self.server.receive_datagram(0, data, source, self.now)

    def server_turn(self) -> bool:
        """The server's timers and outputs; True if it sent anything."""
        self.server.handle_timer(self.now)
        return self.from_server(self.server, "server")

    def from_server(self, server: Endpoint, name: int | str) -> bool:
        datagrams = server.datagrams_to_send()
        for _sock, data, addr in datagrams:
            self.clients[self.addrs.index(addr)].receive_datagram(0, data, SERVER_ADDR, self.now)
        self.delivered.setdefault(name, []).extend(server.packets_to_deliver())
        return bool(datagrams)


def test_allowed_ips_longest_prefix_match() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ipaddress.ip_network("10.0.0.0/8"), "wide")
    table.insert(ipaddress.ip_network("10.2.0.0/24"), "narrow")
    table.insert(ipaddress.ip_network("10.2.0.7/32"), "host")
    table.insert(ipaddress.ip_network("fd00::/64"), "v6")
    assert table.lookup(bytes([10, 2, 0, 7])) == "host"
    assert table.lookup(bytes([10, 2, 0, 8])) == "narrow"
    assert table.lookup(bytes([10, 9, 9, 9])) == "wide"
    assert table.lookup(bytes([11, 0, 0, 1])) is None
    assert table.lookup(ipaddress.ip_address("fd00::5").packed) == "v6"
    assert table.lookup(ipaddress.ip_address("fd01::5").packed) is None


def test_server_routes_each_client_by_its_tunnel_address() -> None:
    net = Net(3)
    net.pump(1.0)
    assert all(peer.current is not None for peer in net.server.peers)
    for i, ip in enumerate(net.tunnel_ips):
        net.server.send_packet(ipv4("10.2.0.1", ip, 120 + i), net.now)
    net.pump(0.2)
    for i in range(3):
        assert [len(p) for p in net.delivered[i]] == [120 + i]
    net.server.send_packet(ipv4("10.2.0.1", "10.2.0.99"), net.now)
    assert net.server.drops["no_route"] == 1


def test_client_cannot_spoof_another_clients_address() -> None:
    net = Net(2)
    net.pump(1.0)
    net.clients[0].send_packet(ipv4(net.tunnel_ips[0], "10.2.0.1"), net.now)
    net.clients[0].send_packet(ipv4(net.tunnel_ips[1], "10.2.0.1"), net.now)  # spoofed
    net.pump(0.2)
    assert len(net.delivered["server"]) == 1
    assert net.server.drops["spoofed_source"] == 1
