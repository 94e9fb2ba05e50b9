"""The batched data path (TUN TSO, UDP GSO/GRO, coalesced TUN writes) and
its fallback, both end to end with real processes and real traffic."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from tests.integration.conftest import SERVER_TUN_ADDR, Tunnel, sha256_transfer
from tests.integration.test_status import status

from bench.lab import run

pytestmark = pytest.mark.integration


def datapath(tunnel: Tunnel, role: str) -> dict[str, Any]:
    result = status(tunnel, role, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["datapath"])


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_file_transfer_intact_with_and_without_offloads(make_tunnel: Any, offload: bool) -> None:
    tunnel: Tunnel = make_tunnel(
        rates_mbit=(None, None), interface_extra=(f"offload = {str(offload).lower()}",))
    sent, received = sha256_transfer(tunnel, 30_000_000, timeout_s=90)
    assert sent == received, tunnel.logs()
    client, server = datapath(tunnel, "client"), datapath(tunnel, "server")
    if offload:
        assert client["tun"].startswith("vnet_hdr"), client
        assert client["udp_gso"] == "on" and server["udp_gro"] == "on", (client, server)
        # The sender's kernel handed over TCP super-packets that were cut up,
        # GSO carried several datagrams per send, and the receiver wrote
        # fewer, coalesced buffers to its TUN than it received packets.
        assert client["tun_packets_in"] > 2 * client["tun_reads"], client
        assert client["udp_datagrams_out"] > 2 * client["udp_sends"], client
        assert server["tun_packets_out"] > 2 * server["tun_writes"], server
        # Both ends said they take partial checksums: none was summed, and
        # the receiving kernel found every one right.
        assert partial_csum(tunnel) == (True, True)
    else:
        assert client["tun"] == "off: disabled in the config", client
        assert client["udp_gso"] == "off" and server["udp_gro"] == "off", (client, server)
        assert client["tun_packets_in"] == client["tun_reads"], client
        assert client["udp_datagrams_out"] == client["udp_sends"], client
        assert server["tun_packets_out"] == server["tun_writes"], server
        assert partial_csum(tunnel) == (False, False)
    assert tcp_in_csum_errors(tunnel.server_ns) == tcp_in_csum_errors(tunnel.client_ns) == 0


def partial_csum(tunnel: Tunnel) -> tuple[bool, bool]:
    """Whether each end leaves inner checksums partial on the way to the other."""
    ends = []
    for role in ("client", "server"):
        result = status(tunnel, role, "--json")
        assert result.returncode == 0, result.stderr
        ends.append(bool(json.loads(result.stdout)["peers"][0]["partial_csum"]))
    return ends[0], ends[1]


def tcp_in_csum_errors(ns: str) -> int:
    lines = [line.split() for line in run(["cat", "/proc/net/snmp"], ns=ns).stdout.splitlines()
             if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("InCsumErrors")])


def test_one_end_without_offload_gets_complete_checksums(make_tunnel: Any) -> None:
    """What an older stripe or a TUN without offload looks like to the other
    end: it announces nothing, so the offload end completes every checksum
    it sends there, and takes partial ones from nowhere; both ways intact."""
    tunnel: Tunnel = make_tunnel(rates_mbit=(None, None), server_extra=("offload = false",))
    sent, received = sha256_transfer(tunnel, 10_000_000, timeout_s=90)
    assert sent == received, tunnel.logs()
    assert datapath(tunnel, "client")["tun"].startswith("vnet_hdr")
    assert datapath(tunnel, "server")["tun"] == "off: disabled in the config"
    assert partial_csum(tunnel) == (False, False)
    assert tcp_in_csum_errors(tunnel.server_ns) == 0


def test_udp_and_icmp_over_the_offload_path(make_tunnel: Any) -> None:
    """No TSO for these: each datagram is its own packet, and must still
    arrive intact (iperf3 UDP counts loss; ping checks ICMP both ways).  At
    20 Mbit/s, well within what any machine of ours carries: loss at the
    edge of a machine's capacity is the benchmark's business (at 50 Mbit/s a
    loaded CI machine lost 2.3-2.6 %)."""
    tunnel: Tunnel = make_tunnel(rates_mbit=(None, None), interface_extra=("offload = true",))
    ping = run(["ping", "-c", "5", "-i", "0.2", "-s", "1300", SERVER_TUN_ADDR],
               ns=tunnel.client_ns, check=False)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    server = subprocess.Popen(["ip", "netns", "exec", tunnel.server_ns, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = run(["iperf3", "-c", SERVER_TUN_ADDR, "-u", "-b", "20M", "-l", "1300", "-t", "3",
                   "-J"], ns=tunnel.client_ns).stdout
    finally:
        server.wait(timeout=10)
    end = json.loads(out)["end"]["sum"]
    assert end["packets"] > 5_000, end
    assert end["lost_percent"] < 2.0, end
