"""End to end: two real stripe processes, real TUNs, real traffic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from tests.integration.conftest import (
    CLIENT_TUN_ADDR,
    SERVER_TUN_ADDR,
    Tunnel,
    later,
    sha256_transfer,
)

from bench.lab import run

pytestmark = pytest.mark.integration


def test_ping_both_ways(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel()
    out = run(["ping", "-c5", "-i0.2", "-W1", SERVER_TUN_ADDR], ns=tunnel.client_ns).stdout
    assert " 0% packet loss" in out
    out = run(["ping", "-c3", "-i0.2", "-W1", CLIENT_TUN_ADDR], ns=tunnel.server_ns).stdout
    assert " 0% packet loss" in out


def test_20mb_file_arrives_intact_and_links_share_by_weight(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(40.0, 40.0), weights=(3, 1))
    before = tunnel.lab.counters()
    sent, received = sha256_transfer(tunnel, 20_000_000, timeout_s=120)
    assert sent and sent == received, tunnel.logs()
    after = tunnel.lab.counters()
    # Bytes, not packets: a GSO train counts as one packet on the veth.
    tx = [a.tx_bytes - b.tx_bytes for a, b in zip(after, before, strict=True)]
    share = tx[0] / sum(tx)
    assert 0.68 < share < 0.82, f"link byte counts {tx}: expected ~3:1"


def test_link_cut_mid_transfer_transfer_completes(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(10.0, 10.0))

    before = tunnel.lab.counters()[0]
    cut = later(1.5, lambda: tunnel.lab.set_link_up(1, False))
    sent, received = sha256_transfer(tunnel, 6_000_000, timeout_s=90, during=cut)
    assert sent and sent == received, tunnel.logs()
    # Both processes survive losing a link, and the survivor carried the rest.
    assert all(proc.alive() for proc in tunnel.procs), tunnel.logs()
    assert tunnel.lab.counters()[0].tx_bytes - before.tx_bytes > 3_000_000
    assert "link link1 is down" in tunnel.logs()
    # What link 1 carried last, unreported when it went down, went out again:
    # re-sent at DOWN, or earlier, when the server asked for the gaps its
    # hold gave up on (a repair; each packet gets one copy, so a gap asked
    # for first is not re-sent at DOWN as well).
    peer = tunnel.status("client")["peers"][0]
    assert peer["resent_packets"] + peer["repaired_packets"] >= 1, peer
    # Restore: the link comes back into use.
    tunnel.lab.set_link_up(1, True)
    time.sleep(3)
    assert "link link1 is up" in tunnel.logs()


def test_link_address_change_mid_transfer_is_followed(make_tunnel: Any) -> None:
    """A new DHCP lease on link 1: the client's socket, bound to the interface
    only, sends from the new address; the server answers there; no restart."""
    tunnel: Tunnel = make_tunnel(rates_mbit=(10.0, 10.0), scheduler="roundrobin",
                                 bind_source=False)
    link = tunnel.lab.names.links[1]
    new_addr = "10.1.0.6"

    def readdress() -> None:
        run(["ip", "addr", "add", f"{new_addr}/29", "dev", link.client_if], ns=tunnel.client_ns)
        run(["ip", "addr", "del", f"{link.client_addr}/30", "dev", link.client_if],
            ns=tunnel.client_ns)
        run(["ip", "route", "add", f"{new_addr}/32", "dev", link.server_if], ns=tunnel.server_ns)

    before = tunnel.lab.counters()[1]
    sent, received = sha256_transfer(tunnel, 6_000_000, timeout_s=90,
                                     during=later(1.0, readdress))
    assert sent and sent == received, tunnel.logs()
    # By id: the server lists links in the order it first heard from them.
    server_link = next(entry for entry in tunnel.status("server")["peers"][0]["links"]
                       if entry["id"] == 1)
    assert server_link["address"].startswith(f"{new_addr}:"), server_link
    assert server_link["state"] == "up", server_link
    # Link 1 kept carrying its half after the change (round robin).
    assert tunnel.lab.counters()[1].tx_bytes - before.tx_bytes > 2_000_000
    assert all(proc.alive() for proc in tunnel.procs), tunnel.logs()


def test_silent_blackhole_mid_transfer_transfer_completes(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(10.0, 10.0))

    cut = later(1.5, lambda: tunnel.lab.set_blackhole(1, True))
    sent, received = sha256_transfer(tunnel, 6_000_000, timeout_s=90, during=cut)
    assert sent and sent == received, tunnel.logs()
    assert "link link1 is down" in tunnel.logs()
    tunnel.lab.set_blackhole(1, False)


def test_iperf3_udp_through_tunnel(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(20.0, 20.0), scheduler="roundrobin")
    server = subprocess.Popen(["ip", "netns", "exec", tunnel.server_ns, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = run(["iperf3", "-c", SERVER_TUN_ADDR, "-u", "-b", "10M", "-t", "3", "-J"],
                  ns=tunnel.client_ns).stdout
    finally:
        server.wait(timeout=10)
    summary = json.loads(out)["end"]["sum"]
    assert summary["lost_percent"] < 2.0
    assert summary["bytes"] > 3_000_000


def test_bad_config_exit_2_without_traceback(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(start=False)
    _, cpath = tunnel.write_configs()
    text = cpath.read_text().replace(tunnel.lab.names.links[0].client_if, "nosuchif0", 1)
    cpath.write_text(text)
    result = subprocess.run(
        ["ip", "netns", "exec", tunnel.client_ns, sys.executable, "-m", "stripe", "client",
         "-c", str(cpath)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "link[0].interface: interface 'nosuchif0' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_unprivileged_and_sigterm_removes_the_tun(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel()
    for proc in tunnel.procs:
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert all(uid != "0" for uid in uids), (proc.name, uids)
    out = run(["ping", "-c2", "-i0.2", "-W1", SERVER_TUN_ADDR], ns=tunnel.client_ns).stdout
    assert " 0% packet loss" in out  # still works after dropping root
    tun = tunnel.tun_name
    for proc, ns in zip(tunnel.procs, (tunnel.server_ns, tunnel.client_ns), strict=True):
        assert proc.stop() == 0, tunnel.logs()
        assert run(["ip", "link", "show", tun], ns=ns, check=False).returncode != 0
