"""Operations against running processes: routing automation (route_all,
link_routes), NAT on the server, the Prometheus endpoint, and the
capabilities kept after dropping root.

Routing set-up for the route tests: both client links reach the server at
10.9.0.2 (on the server's lo, not on either link's subnet), the client's
main table has one default route via link 0 and nothing via link 1, and the
link sockets are bound to a source address only (a socket bound to an
interface would bypass the tunnel's routes on its own).  So without
stripe's rules link 1 would leave through link 0, and with route_all the
datagrams to 10.9.0.2 would loop into the tunnel.

A "behind" namespace hangs off the server (10.88.0.0/24): the host behind
the server that the client reaches through the tunnel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import REPO_ROOT, SOURCE, Tunnel

from bench.lab import Proc, run

pytestmark = pytest.mark.integration

SERVER_LO_ADDR = "10.9.0.2"  # bench.lab's ECMP address, on the server's lo
BEHIND_SERVER_ADDR = "10.88.0.1"
BEHIND_HOST_ADDR = "10.88.0.2"
METRICS_ADDR = "127.0.0.1:9586"
NOBODY_UID = "65534"
# CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13).
KEPT_CAPS = (1 << 10) | (1 << 12) | (1 << 13)


def start(tunnel: Tunnel, server_lines: tuple[str, ...] = (),
          client_lines: tuple[str, ...] = (),
          edit_client: Callable[[str], str] = lambda text: text) -> tuple[Proc, Proc]:
    """Start with extra [interface] keys and an edited client config."""
    spath, cpath = tunnel.write_configs()
    for path, lines in ((spath, server_lines), (cpath, client_lines)):
        text = path.read_text().replace("[peer]", "\n".join([*lines, "[peer]"]), 1)
        path.write_text(edit_client(text) if path == cpath else text)
    server = tunnel.stripe(tunnel.server_ns, "server", "-c", str(spath), log="server")
    client = tunnel.stripe(tunnel.client_ns, "client", "-c", str(cpath), log="client")
    tunnel.wait_ping()
    return server, client


def via_server_lo(text: str) -> str:
    """Client links by source address only, both to the server's lo address;
    link 1's gateway given (the main table has no route through it)."""
    text = re.sub(r'(?m)^interface = ".*"\n', "", text)
    text = text.replace('remote = "10.0.0.2:5000"', f'remote = "{SERVER_LO_ADDR}:5000"')
    return text.replace('remote = "10.1.0.2:5000"',
                        f'remote = "{SERVER_LO_ADDR}:5000"\ngateway = "10.1.0.2"')


def default_route_via_link0(tunnel: Tunnel) -> None:
    ns = tunnel.client_ns
    run(["ip", "route", "del", f"{SERVER_LO_ADDR}/32"], ns=ns)  # the lab's ECMP route
    run(["ip", "route", "add", "default", "via", "10.0.0.2", "dev",
         tunnel.lab.names.links[0].client_if], ns=ns)


def routing_state(ns: str) -> str:
    """Rules and IPv4 routes of every table, and IPv6 rules."""
    return "\n".join(run(cmd, ns=ns).stdout for cmd in (
        ["ip", "rule"], ["ip", "-6", "rule"], ["ip", "-4", "route", "show", "table", "all"]))


def route_dev(ns: str, *args: str) -> str:
    out = run(["ip", "route", "get", *args], ns=ns).stdout
    match = re.search(r" dev (\S+)", out)
    assert match, out
    return match.group(1)


@pytest.fixture
def behind(make_tunnel: Any) -> Iterator[Callable[[Tunnel, bool], str]]:
    """Adds a namespace behind the server; returns its name.  Deleted after."""
    made: list[str] = []

    def factory(tunnel: Tunnel, route_back: bool) -> str:
        prefix = tunnel.client_ns[:-3]
        ns, near, far = f"{prefix}bhd", f"{prefix}b0", f"{prefix}b1"
        run(["ip", "netns", "add", ns])
        made.append(ns)
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        run(["ip", "link", "add", near, "netns", tunnel.server_ns, "type", "veth", "peer", "name",
             far, "netns", ns])
        run(["ip", "addr", "add", f"{BEHIND_SERVER_ADDR}/24", "dev", near], ns=tunnel.server_ns)
        run(["ip", "addr", "add", f"{BEHIND_HOST_ADDR}/24", "dev", far], ns=ns)
        run(["ip", "link", "set", near, "up"], ns=tunnel.server_ns)
        run(["ip", "link", "set", far, "up"], ns=ns)
        if route_back:
            run(["ip", "route", "add", "default", "via", BEHIND_SERVER_ADDR], ns=ns)
        return ns

    try:
        yield factory
    finally:
        for ns in made:
            run(["ip", "netns", "delete", ns], check=False)


# Accepts one TCP connection on argv[1]:9000; prints the peer's address and
# the SHA-256 of what it received.
PEER_SINK = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 9000))
srv.settimeout(60)
conn, peer = srv.accept()
h = hashlib.sha256()
while chunk := conn.recv(1 << 16):
    h.update(chunk)
print(peer[0], h.hexdigest())
"""


def tcp_to_behind(tunnel: Tunnel, behind_ns: str, size_bytes: int) -> tuple[str, str, str]:
    """(sent digest, received digest, source address the host behind saw)."""
    payload = tunnel.workdir / "behind.bin"
    payload.write_bytes(os.urandom(size_bytes))
    sink = subprocess.Popen(["ip", "netns", "exec", behind_ns, sys.executable, "-c", PEER_SINK,
                             BEHIND_HOST_ADDR], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        sent = run([sys.executable, "-c", SOURCE, BEHIND_HOST_ADDR, str(payload)],
                   ns=tunnel.client_ns, timeout_s=60).stdout.strip()
        peer, received = sink.communicate(timeout=10)[0].split()
        return sent, received, peer
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def stop_all(tunnel: Tunnel) -> None:
    """SIGTERM both; each exits 0 having undone all it changed."""
    for proc in reversed(tunnel.procs):
        assert proc.stop() == 0, proc.log.read_text()
        assert "could not undo" not in proc.log.read_text()


def test_route_all_reaches_behind_the_server_without_a_loop_and_cleans_up(
        make_tunnel: Any, behind: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(20.0, 20.0), start=False)
    default_route_via_link0(tunnel)
    behind_ns = behind(tunnel, True)
    run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], ns=tunnel.server_ns)
    before = routing_state(tunnel.client_ns)
    start(tunnel, client_lines=("route_all = true",), edit_client=lambda text: via_server_lo(
        text.replace('"10.77.0.1/24"', '"10.77.0.1/24", "fd77::1/64"')))
    ns, tun = tunnel.client_ns, tunnel.tun_name
    c0, c1 = (link.client_if for link in tunnel.lab.names.links)

    # The tunnel is the default route (IPv6 too, with an IPv6 tunnel
    # address); each link's datagrams to the server still leave through
    # their own uplink.
    assert route_dev(ns, BEHIND_HOST_ADDR) == tun
    assert route_dev(ns, "2001:db8::1") == tun
    assert route_dev(ns, SERVER_LO_ADDR) == tun  # from the tunnel's address: inside
    assert route_dev(ns, SERVER_LO_ADDR, "from", "10.0.0.1") == c0
    assert route_dev(ns, SERVER_LO_ADDR, "from", "10.1.0.1") == c1

    out = run(["ping", "-c3", "-i0.2", "-W1", BEHIND_HOST_ADDR], ns=ns).stdout
    assert " 0% packet loss" in out
    links_before = tunnel.lab.counters()
    sent, received, peer = tcp_to_behind(tunnel, behind_ns, 2_000_000)
    assert sent and sent == received, tunnel.logs()
    assert peer == "10.77.0.1"  # no NAT here: the client's tunnel address
    # No loop: the bytes crossed the physical links (both of them), once.
    links_after = tunnel.lab.counters()
    tx = [a.tx_bytes - b.tx_bytes for a, b in zip(links_after, links_before, strict=True)]
    assert all(n > 500_000 for n in tx), tx
    assert sum(tx) < 3_000_000, tx

    stop_all(tunnel)
    assert run(["ip", "link", "show", tun], ns=ns, check=False).returncode != 0
    assert routing_state(ns) == before
    v6 = run(["ip", "-6", "route", "show", "table", "all"], ns=ns).stdout
    assert tun not in v6 and "table 53" not in v6


def test_link_routes_send_each_link_through_its_own_uplink(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(20.0, 20.0), start=False)
    default_route_via_link0(tunnel)
    ns = tunnel.client_ns
    c0, c1 = (link.client_if for link in tunnel.lab.names.links)
    before = routing_state(ns)
    assert route_dev(ns, SERVER_LO_ADDR, "from", "10.1.0.1") == c0  # without stripe
    start(tunnel, client_lines=("link_routes = true",), edit_client=via_server_lo)
    assert route_dev(ns, SERVER_LO_ADDR, "from", "10.0.0.1") == c0
    assert route_dev(ns, SERVER_LO_ADDR, "from", "10.1.0.1") == c1
    rules = run(["ip", "rule"], ns=ns).stdout
    assert "5300:\tfrom 10.0.0.1 lookup 5300" in rules, rules
    assert "5301:\tfrom 10.1.0.1 lookup 5301" in rules, rules
    assert "default via 10.1.0.2 dev " + c1 in run(
        ["ip", "route", "show", "table", "5301"], ns=ns).stdout

    links_before = tunnel.lab.counters()
    out = run(["ping", "-c20", "-i0.05", "-s1000", "-W1", "10.77.0.2"], ns=ns).stdout
    assert " 0% packet loss" in out
    links_after = tunnel.lab.counters()
    tx = [a.tx_bytes - b.tx_bytes for a, b in zip(links_after, links_before, strict=True)]
    # Weighted 1:1: each uplink carries about half of 20 x 1 kB pings.
    assert all(n > 5_000 for n in tx), tx

    stop_all(tunnel)
    assert routing_state(ns) == before
    assert route_dev(ns, SERVER_LO_ADDR, "from", "10.1.0.1") == c0


def test_masquerade_the_host_behind_sees_the_server_address(make_tunnel: Any,
                                                             behind: Any) -> None:
    tunnel: Tunnel = make_tunnel(start=False)
    behind_ns = behind(tunnel, False)  # no route back to the tunnel: only NAT answers
    near = tunnel.client_ns[:-3] + "b0"
    forwarding = "/proc/sys/net/ipv4/ip_forward"
    assert run(["cat", forwarding], ns=tunnel.server_ns).stdout.strip() == "0"
    start(tunnel, server_lines=(f'masquerade = "{near}"',))
    tun = tunnel.tun_name
    table = "stripe_" + tun
    assert run(["cat", forwarding], ns=tunnel.server_ns).stdout.strip() == "1"
    assert table in run(["nft", "list", "tables"], ns=tunnel.server_ns).stdout
    run(["ip", "route", "add", "10.88.0.0/24", "dev", tun], ns=tunnel.client_ns)

    sent, received, peer = tcp_to_behind(tunnel, behind_ns, 500_000)
    assert sent and sent == received, tunnel.logs()
    assert peer == BEHIND_SERVER_ADDR

    # The server ran as nobody; its exit still removes the table and puts
    # the forwarding setting back (CAP_NET_ADMIN kept).
    stop_all(tunnel)
    assert table not in run(["nft", "list", "tables"], ns=tunnel.server_ns).stdout
    assert run(["cat", forwarding], ns=tunnel.server_ns).stdout.strip() == "0"


def failing_client(tunnel: Tunnel, edit: Callable[[str], str]) -> str:
    """Run the client with an edited config; it must exit 1 without a
    traceback and without a TUN left.  Returns its stderr."""
    _, cpath = tunnel.write_configs()
    cpath.write_text(edit(cpath.read_text()))
    result = subprocess.run(
        ["ip", "netns", "exec", tunnel.client_ns, sys.executable, "-m", "stripe", "client", "-c",
         str(cpath)], capture_output=True, text=True, timeout=30, check=False, cwd=REPO_ROOT)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert run(["ip", "link", "show", tunnel.tun_name], ns=tunnel.client_ns,
               check=False).returncode != 0
    return result.stderr


def test_setup_failures_roll_back_and_say_why_in_one_line(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(start=False)
    ns = tunnel.client_ns
    c1 = tunnel.lab.names.links[1].client_if
    default_route_via_link0(tunnel)

    # No gateway given for link 1 and none to be found: refused before any change.
    def no_gateway(text: str) -> str:
        text = via_server_lo(text).replace('\ngateway = "10.1.0.2"', "")
        return text.replace("[peer]", "link_routes = true\n[peer]", 1)

    before = routing_state(ns)
    last = failing_client(tunnel, no_gateway).strip().splitlines()[-1]
    assert last == (f"stripe: link[1] (link1): no route to the server {SERVER_LO_ADDR} through "
                    f"{c1} in the main table; give the uplink's gateway as link[1].gateway")
    assert routing_state(ns) == before

    # Someone else's half-default route: route_all's last step collides
    # after the per-link tables and rules were added, which are undone.
    run(["ip", "route", "add", "0.0.0.0/1", "via", "10.0.0.2"], ns=ns)
    before = routing_state(ns)
    stderr = failing_client(tunnel, lambda text: via_server_lo(text).replace(
        "[peer]", "route_all = true\n[peer]", 1))
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"stripe: ip route add 0.0.0.0/1 dev {tunnel.tun_name}: EEXIST"), last
    assert "undone ip rule add from 10.1.0.1 to 10.9.0.2 lookup 5301" in stderr
    assert routing_state(ns) == before


# Fetches the metrics page; prints it.
SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode())
"""


def scrape(tunnel: Tunnel) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = run([sys.executable, "-c", SCRAPE, METRICS_ADDR], ns=tunnel.client_ns).stdout
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_metrics_agree_with_status_and_capabilities_are_kept(make_tunnel: Any) -> None:
    pytest.importorskip("prometheus_client")
    tunnel: Tunnel = make_tunnel(rates_mbit=(20.0, 20.0), start=False)
    start(tunnel, client_lines=(f'metrics = "{METRICS_ADDR}"',))
    out = run(["ping", "-c30", "-i0.02", "-s1200", "-W1", "10.77.0.2"],
              ns=tunnel.client_ns).stdout
    assert " 0% packet loss" in out

    status = tunnel.status("client")
    samples = scrape(tunnel)
    peer = status["peers"][0]
    label = peer["public_key"][:16]
    assert samples[("stripe_up", frozenset())] == 1
    for link in peer["links"]:
        key = frozenset({("peer", label), ("link", link["name"])})
        # Probes keep flowing between the two reads: a few hundred bytes.
        sent = samples[("stripe_link_sent_bytes_total", key)]
        assert link["tx_bytes"] <= sent <= link["tx_bytes"] + 2_000, (link, sent)
        assert sent > 15_000  # half of the 30 pings of 1.2 kB at least
        packets = samples[("stripe_link_received_packets_total", key)]
        assert link["rx_packets"] <= packets <= link["rx_packets"] + 20
        assert samples[("stripe_link_state", key | {("state", "up")})] == 1
        assert samples[("stripe_link_state", key | {("state", "down")})] == 0
        assert samples[("stripe_link_rtt_seconds", key)] > 0
    shares = [samples[("stripe_link_share_ratio", frozenset({("peer", label), ("link", n)}))]
              for n in ("link0", "link1")]
    assert sum(shares) == pytest.approx(1.0)
    assert samples[("stripe_reorder_late_packets_total", frozenset({("peer", label)}))] == \
        peer["reorder"]["late"]

    # Both processes, every thread (capabilities belong to threads, and the
    # client's metrics server is one): uid nobody, exactly the three kept
    # capabilities, no way to gain more.
    for proc in tunnel.procs:
        tasks = sorted(Path(f"/proc/{proc.pid}/task").iterdir())
        assert len(tasks) >= (2 if proc.name == "client" else 1), (proc.name, tasks)
        for task in tasks:
            fields = dict(line.split(":", 1) for line in
                          (task / "status").read_text().splitlines())
            where = (proc.name, task.name)
            assert fields["Uid"].split() == [NOBODY_UID] * 4, (where, fields["Uid"])
            assert int(fields["CapEff"], 16) == KEPT_CAPS, (where, fields["CapEff"])
            assert int(fields["CapPrm"], 16) == KEPT_CAPS, (where, fields["CapPrm"])
            assert int(fields["CapBnd"], 16) == KEPT_CAPS, (where, fields["CapBnd"])
            assert int(fields["CapAmb"], 16) == 0, where
            assert fields["NoNewPrivs"].strip() == "1", where
    stop_all(tunnel)
