"""Path MTU with real processes: the TUN MTU derived from the veths, the
"fragmentation needed" answers inner senders get, and probing that finds a
link whose MTU shrank while nobody sends ICMP about it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tests.integration.conftest import SERVER_TUN_ADDR, Tunnel, sha256_transfer

from bench.lab import run
from stripe.pmtu import CONFIRM_INTERVAL_S

pytestmark = pytest.mark.integration

HOST_ADDR = "10.78.0.2"
HOST_GATEWAY = "10.78.0.1"


def set_mtu(tunnel: Tunnel, side: str, link: int, mtu: int) -> None:
    names = tunnel.lab.names.links[link]
    ns, dev = ((tunnel.client_ns, names.client_if) if side == "client"
               else (tunnel.server_ns, names.server_if))
    run(["ip", "link", "set", "dev", dev, "mtu", str(mtu)], ns=ns)


def ping(ns: str, size: int, target: str = SERVER_TUN_ADDR) -> str:
    """One ping of `size` payload bytes with DF set; its whole output."""
    result = run(["ping", "-n", "-c1", "-W2", "-M", "do", "-s", str(size), target], ns=ns,
                 check=False)
    return result.stdout + result.stderr


@contextmanager
def host_behind_client(tunnel: Tunnel) -> Iterator[str]:
    """A namespace 10.78.0.2 routed through the client's tunnel (as a LAN
    host behind a stripe router); deleted on the way out."""
    prefix = tunnel.lab.names.client_ns[:-3]
    host_ns, host_if, gw_if = f"{prefix}hst", f"{prefix}h0", f"{prefix}h1"
    run(["ip", "netns", "add", host_ns])
    try:
        run(["ip", "link", "add", host_if, "netns", host_ns, "type", "veth", "peer", "name",
             gw_if, "netns", tunnel.client_ns])
        run(["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", host_if], ns=host_ns)
        run(["ip", "link", "set", host_if, "up"], ns=host_ns)
        run(["ip", "route", "add", "default", "via", HOST_GATEWAY], ns=host_ns)
        run(["ip", "addr", "add", f"{HOST_GATEWAY}/24", "dev", gw_if], ns=tunnel.client_ns)
        run(["ip", "link", "set", gw_if, "up"], ns=tunnel.client_ns)
        run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], ns=tunnel.client_ns)
        run(["ip", "route", "add", "10.78.0.0/24", "dev", tunnel.tun_name], ns=tunnel.server_ns)
        yield host_ns
    finally:
        run(["ip", "netns", "delete", host_ns], check=False)


def wait_for(condition: Any, timeout_s: float, what: str, tunnel: Tunnel) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            states = {role: tunnel.status(role) for role in ("client", "server")}
            raise AssertionError(f"{what} within {timeout_s} s\n{states}\n{tunnel.logs()}")
        time.sleep(0.25)


def test_mtu_derived_from_the_veths_and_frag_needed_names_it(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(start=False)
    for side in ("client", "server"):
        set_mtu(tunnel, side, 1, 1400)
    tunnel.start()
    client = tunnel.status("client")
    assert client["mtu"]["tun"] == 1330, client["mtu"]
    link1 = tunnel.lab.names.links[1].client_if
    assert client["mtu"]["derivation"] == (
        f"mtu 1330 = link link1 1400 (route to 10.1.0.2 via {link1}) - 70")
    assert "mtu 1330 = link link1 1400" in tunnel.logs()
    # The server has no [[link]] and no default route: it assumes Ethernet,
    # then its own probes find link1's 1400 bytes.
    server = tunnel.status("server")
    assert server["mtu"]["tun"] == 1430 and "assuming Ethernet" in server["mtu"]["derivation"]
    wait_for(lambda: tunnel.status("server")["peers"][0]["mtu"] == 1330, 10,
             "the server's probes find link1", tunnel)
    with host_behind_client(tunnel) as host_ns:
        # A 1500-byte ping with DF from a host behind the client: the
        # client's kernel answers for its TUN, naming the tunnel MTU.
        out = ping(host_ns, 1472)
        assert "Frag needed and DF set (mtu = 1330)" in out, out
        assert " 0% packet loss" in ping(host_ns, 1330 - 28)
    # From the client itself the kernel refuses locally, with the same number.
    out = ping(tunnel.client_ns, 1472)
    assert "mtu=1330" in out or "mtu = 1330" in out, out
    # The server's TUN takes 1430 bytes, its link1 only 1400: stripe
    # itself answers for what the TUN let through.
    out = ping(tunnel.server_ns, 1430 - 28, target="10.77.0.1")
    assert "Frag needed and DF set (mtu = 1330)" in out, out
    assert tunnel.status("server")["mtu"]["icmp_sent"] >= 1


def test_probing_finds_a_shrunken_link_and_tcp_adapts(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(50.0, 50.0))
    client = tunnel.status("client")
    assert client["mtu"]["tun"] == 1430 and client["mtu"]["probing"]
    assert [link["path_mtu"] for link in client["peers"][0]["links"]] == [1500, 1500]
    with host_behind_client(tunnel) as host_ns:
        # The server end of link1 now takes 1300 bytes: larger datagrams from
        # the client vanish there, and no ICMP says so.
        set_mtu(tunnel, "server", 1, 1300)
        sent, received = sha256_transfer(tunnel, 4_000_000, timeout_s=120)
        assert sent and sent == received, tunnel.logs()
        # A veth takes frames up to its MTU plus a VLAN tag (4 bytes) from
        # its peer, so the path really is 1304 bytes: probing finds that
        # (the transfer may end first: the stalled link left the schedule).
        wait_for(lambda: [link["path_mtu"] for link in tunnel.status("client")["peers"][0][
            "links"]] == [1500, 1304], 15, "the client's probes find link1's 1304", tunnel)
        # A new connection starts with the TUN's MSS: stripe tells it the
        # smaller size (ICMP), and it adapts.
        sent, received = sha256_transfer(tunnel, 4_000_000, timeout_s=120)
        assert sent and sent == received, tunnel.logs()
        client = tunnel.status("client")
        assert client["peers"][0]["mtu"] == 1234
        assert client["mtu"]["icmp_sent"] >= 1  # the inner TCP was told
        assert "link link1: path mtu 1304 (carries 1234 inside the tunnel)" in tunnel.logs()
        # The server's larger sends on link1 fail locally (EMSGSIZE) since the
        # change: at its next confirmation (or its first large reply) it
        # searches too, and finds 1300 at once.
        wait_for(lambda: tunnel.status("server")["peers"][0]["mtu"] == 1230,
                 CONFIRM_INTERVAL_S + 5, "the server finds link1's 1300 bytes", tunnel)
        assert "link link1: path mtu 1300 (carries 1230 inside the tunnel)" in tunnel.logs()
        # A host behind the client gets stripe's answer (its kernel only
        # knows the TUN's 1430)...
        out = ping(host_ns, 1430 - 28)
        assert "From 10.77.0.2 icmp_seq=1 Frag needed and DF set (mtu = 1234)" in out, out
        assert " 0% packet loss" in ping(host_ns, 1234 - 28)
    # ... and so does the client (or its kernel, which learnt 1234 already).
    out = ping(tunnel.client_ns, 1430 - 28)
    assert "mtu = 1234" in out or "mtu=1234" in out, out
