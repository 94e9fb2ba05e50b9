"""Operations without a network: config keys, the routing plan, the undo
record, metric families from a real snapshot, and (as root, in a forked
child) the capability-keeping privilege drop."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.core.netsim import Sim, SimLink, ip_packet

from stripe import config
from stripe.aqm import VARIABILITY_ALLOWANCE_SCALE
from stripe.estimator import SPREAD_UNKNOWN
from stripe.io.network import in_thread
from stripe.io.undo import Undo
from stripe.noise import encode_key, generate_keypair
from stripe.spec import Role
from stripe.status import render
from stripe.window import variability_queue_s

PRIV = encode_key(generate_keypair()[0])
PUB = encode_key(generate_keypair()[1])


def client_text(interface: str = "", links: str = "") -> str:
    return f"""
[interface]
address = ["10.2.0.1/24"]
private_key = "{PRIV}"
{interface}
[peer]
public_key = "{PUB}"
{links or '''
[[link]]
name = "dsl"
source = "192.0.2.1"
remote = "198.51.100.1:5000"
[[link]]
name = "lte"
interface = "eth0"
remote = "198.51.100.1:5000"
gateway = "203.0.113.1"
table = 77
'''}
"""


def load(tmp_path: Path, text: str, role: Role = Role.CLIENT) -> config.Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(0o600)  # it holds a private key
    return config.load(path, role, interface_exists=lambda name: name in ("eth0", "eth1"))


def test_operations_are_off_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, client_text())
    assert cfg.metrics is None and not cfg.route_all and not cfg.link_routes
    assert cfg.masquerade == ()
    assert [cfg.link_table(i) for i in range(2)] == [config.LINK_TABLE_BASE, 77]
    assert cfg.links[1].gateway == "203.0.113.1" and cfg.links[0].gateway is None


def test_operation_keys_parse(tmp_path: Path) -> None:
    cfg = load(tmp_path, client_text(
        'metrics = "[::1]:9586"\nroute_all = true\nlink_routes = true'))
    assert cfg.metrics == ("::1", 9586) and cfg.route_all and cfg.link_routes
    server = load(tmp_path, f"""
[interface]
address = ["10.2.0.2/24"]
private_key = "{PRIV}"
listen_port = 5000
masquerade = ["eth0", "eth1"]
[peer]
public_key = "{PUB}"
""", Role.SERVER)
    assert server.masquerade == ("eth0", "eth1")


@pytest.mark.parametrize(("interface", "links", "role", "message"), [
    ('metrics = "9586"', "", Role.CLIENT, 'interface.metrics: expected "HOST:PORT"'),
    ('route_all = "yes"', "", Role.CLIENT, "interface.route_all: expected bool"),
    ('masquerade = "eth0"', "", Role.CLIENT, "interface.masquerade: NAT of the clients"),
    ('masquerade = "eth9"\nlisten_port = 1', "", Role.SERVER,
     "interface.masquerade: interface 'eth9' does not exist"),
    ("masquerade = [1]\nlisten_port = 1", "", Role.SERVER, "interface.masquerade: expected"),
    ("route_all = true\nlisten_port = 1", "", Role.SERVER,
     "interface.route_all: only a client"),
    ("link_routes = true", '[[link]]\nname = "a"\nremote = "198.51.100.1:1"', Role.CLIENT,
     "link[0]: link_routes needs the link's source or interface"),
    ("route_all = true", '[[link]]\nname = "a"\nremote = "198.51.100.1:1"\ntable = 254',
     Role.CLIENT, "link[0].table: expected a table number"),
    ("route_all = true", '[[link]]\nname = "a"\nremote = "198.51.100.1:1"\ntable = 5301\n'
     '[[link]]\nname = "b"\nremote = "198.51.100.1:1"', Role.CLIENT,
     "link: two links use the same routing table: [5301, 5301]"),
    ("", '[[link]]\nname = "a"\nremote = "198.51.100.1:1"\ngateway = "gw"', Role.CLIENT,
     "link[0].gateway: expected an IP address, got 'gw'"),
])
def test_operation_key_errors(tmp_path: Path, interface: str, links: str, role: Role,
                              message: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, client_text(interface, links), role)
    assert message in str(info.value), str(info.value)


# -- the routing plan ---------------------------------------------------------


def plan_lines(tmp_path: Path, interface: str, address: str = '["10.2.0.1/24"]') -> list[str]:
    from stripe.io.routes import Uplink, plan

    text = client_text(interface).replace('["10.2.0.1/24"]', address)
    cfg = load(tmp_path, text)
    uplinks = [Uplink("eth1", 3, "192.0.2.254"), Uplink("eth0", 2, "203.0.113.1")]
    return [change.describe() for change in plan(cfg, uplinks, "stripe0", 9)]


def test_plan_route_all_keeps_each_link_outside_the_tunnel(tmp_path: Path) -> None:
    assert plan_lines(tmp_path, "route_all = true", '["10.2.0.1/24", "fd00::1/64"]') == [
        "ip route add 198.51.100.1/32 via 192.0.2.254 dev eth1 table 5300",
        "ip rule add from 192.0.2.1 to 198.51.100.1 lookup 5300 pref 5300",
        "ip route add 198.51.100.1/32 via 203.0.113.1 dev eth0 table 77",
        "ip rule add to 198.51.100.1 oif eth0 lookup 77 pref 5301",
        "ip route add 0.0.0.0/1 dev stripe0",
        "ip route add 128.0.0.0/1 dev stripe0",
        "ip route add ::/1 dev stripe0",
        "ip route add 8000::/1 dev stripe0",
    ]


def test_plan_link_routes_one_table_per_uplink(tmp_path: Path) -> None:
    assert plan_lines(tmp_path, "link_routes = true") == [
        "ip route add default via 192.0.2.254 dev eth1 table 5300",
        "ip rule add from 192.0.2.1 lookup 5300 pref 5300",
        "ip route add default via 203.0.113.1 dev eth0 table 77",
        "ip rule add oif eth0 lookup 77 pref 5301",
    ]


def test_plan_netlink_arguments() -> None:
    from stripe.io.routes import Route, Rule

    on_link = Route(ipaddress.ip_network("2001:db8::1/128"), "ppp0", 4, None, 5300)
    assert on_link.netlink() == {"family": 10, "dst": "2001:db8::1/128", "oif": 4,
                                 "table": 5300, "scope": 253}
    assert on_link.describe() == "ip route add 2001:db8::1/128 dev ppp0 table 5300"
    rule = Rule(6, 5301, 77, src=ipaddress.ip_network("2001:db8::2/128"))
    assert rule.netlink() == {"family": 10, "priority": 5301, "table": 77,
                              "src": "2001:db8::2", "src_len": 128}
    assert rule.describe() == "ip -6 rule add from 2001:db8::2 lookup 77 pref 5301"


# -- the undo record ----------------------------------------------------------


def test_undo_reverts_newest_first_and_past_failures() -> None:
    done: list[str] = []
    undo = Undo()

    def fail() -> None:
        raise OSError("gone")

    undo.record("first", lambda: done.append("first"))
    undo.record("second", fail)
    undo.record("third", lambda: done.append("third"))
    assert undo.rollback() == ["second"]
    assert done == ["third", "first"]
    assert len(undo) == 0 and undo.rollback() == []


def test_in_thread_returns_and_raises() -> None:
    assert in_thread(lambda: threading.current_thread().name) == "stripe-netlink"
    with pytest.raises(ZeroDivisionError):
        in_thread(lambda: 1 // 0)


# -- metrics ------------------------------------------------------------------


def running_sim() -> Sim:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.020)])
    sim.run(1.0)
    sim.run(1.0, [(sim.now + i * 0.001, "up", ip_packet(i, 1000)) for i in range(300)])
    return sim


def samples(status: dict[str, object]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    from stripe.io.metrics import families

    class Fixed:
        def collect(self) -> Iterator[object]:
            return families(status)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metric_families_carry_the_status_figures() -> None:
    sim = running_sim()
    status = sim.client.status(sim.now)
    status.update(io_errors={"send_EPERM": 2}, tun="stripe0", scheduler="adaptive",
                  uptime_s=2.0)
    got = samples(status)
    peer = status["peers"][0]  # type: ignore[index]
    label = peer["public_key"][:16]
    total = 0.0
    for link in peer["links"]:
        key = frozenset({("peer", label), ("link", link["name"])})
        assert got[("stripe_link_sent_bytes_total", key)] == link["tx_bytes"] > 0
        assert got[("stripe_link_received_packets_total", key)] == link["rx_packets"]
        assert got[("stripe_link_rtt_seconds", key)] == pytest.approx(link["rtt_ms"] / 1000)
        assert got[("stripe_link_loss_ratio", key)] == link["loss"]
        assert got[("stripe_link_state", key | {("state", "up")})] == 1
        total += got[("stripe_link_share_ratio", key)]
    assert total == pytest.approx(1.0)
    peer_key = frozenset({("peer", label)})
    assert got[("stripe_peer_last_handshake_age_seconds", peer_key)] == \
        peer["last_handshake_s_ago"]
    assert got[("stripe_reorder_held_packets", peer_key)] == peer["reorder"]["held"]
    assert got[("stripe_redundancy_copies_sent_total", peer_key)] == \
        peer["redundancy"]["copies_sent"]
    assert got[("stripe_queue_dropped_packets_total", peer_key)] == peer["queue"]["dropped"]
    assert got[("stripe_queue_marked_packets_total", peer_key)] == peer["queue"]["marked"]
    first = peer["links"][0]
    key = frozenset({("peer", label), ("link", first["name"])})
    assert got[("stripe_link_in_flight_packets", key)] == first["in_flight_packets"]
    assert got[("stripe_link_rtt_variance_seconds", key)] == \
        pytest.approx(first["rttvar_ms"] / 1000)
    assert got[("stripe_io_errors_total", frozenset({("kind", "send_EPERM")}))] == 2
    assert got[("stripe_info", frozenset({("role", "client"), ("tun", "stripe0"),
                                          ("scheduler", "adaptive")}))] == 1
    assert got[("stripe_up", frozenset())] == 1


def test_collector_reads_on_the_loop_and_reports_a_stalled_loop() -> None:
    pytest.importorskip("prometheus_client")
    from stripe.io import metrics

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    seen: list[threading.Thread] = []
    try:
        def status() -> dict[str, object]:
            seen.append(threading.current_thread())
            return {"role": "server", "peers": [], "drops": {"short": 3}}

        names = [f.name for f in metrics.StatusCollector(loop, status).collect()]
        assert "stripe_drops" in names and seen == [runner]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
    # The loop no longer runs: the scrape says so instead of hanging.
    old, metrics.SCRAPE_TIMEOUT_S = metrics.SCRAPE_TIMEOUT_S, 0.1
    try:
        down = list(metrics.StatusCollector(loop, status).collect())
    finally:
        metrics.SCRAPE_TIMEOUT_S = old
        loop.close()
    assert [(f.name, f.samples[0].value) for f in down] == [("stripe_up", 0)]


# -- privileges ---------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_drop_privileges_keeps_exactly_the_network_capabilities() -> None:
    from stripe.io.privileges import KEPT_CAPABILITIES, drop_privileges, mask

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops for good, reports, and exits
        try:
            os.close(read)
            drop_privileges("nobody")
            os.write(write, Path("/proc/self/status").read_bytes())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    fields = dict(line.split(":", 1) for line in text.splitlines())
    assert fields["Uid"].split() == ["65534"] * 4
    assert fields["Groups"].strip() == ""
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[key], 16) == mask(KEPT_CAPABILITIES), (key, fields[key])
    assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"


def test_status_shows_packets_in_flight_per_link() -> None:
    sim = Sim([SimLink(delay_s=0.040), SimLink(delay_s=0.040)])
    sim.run(1.0)
    # 2 ms apart for 0.5 s: while it flows, ~20 packets are on their way
    # (40 ms of delay) plus up to a report interval not yet reported.
    sim.run(0.25, [(sim.now + i * 0.002, "up", ip_packet(i, 1000)) for i in range(250)])
    flowing = sim.client.status(sim.now)["peers"][0]["links"]  # type: ignore[index]
    assert sum(link["in_flight_packets"] for link in flowing) >= 15, flowing
    sim.run(1.0)  # the rest sent and reported
    settled = sim.client.status(sim.now)["peers"][0]["links"]  # type: ignore[index]
    assert all(link["in_flight_packets"] == 0 for link in settled), settled
    assert all(link["rttvar_ms"] is not None for link in settled)
    assert "window KiB" in render(sim.client.status(sim.now))


def test_status_shows_queue_management() -> None:
    sim = Sim([SimLink(delay_s=0.040), SimLink(delay_s=0.040)])
    sim.run(1.0)
    queue = sim.client.status(sim.now)["peers"][0]["queue"]  # type: ignore[index]
    # The 80 ms round trip raises the 5 ms target to 40 ms (one flow keeps
    # the links busy through a window cut); links whose capacity swings are
    # not measured yet (no data) are allowed the queue a cellular link needs.
    allowance_ms = 1000 * VARIABILITY_ALLOWANCE_SCALE * variability_queue_s(0.080, SPREAD_UNKNOWN)
    expected_ms = 40 + allowance_ms
    assert queue["target_ms"] == 5.0
    assert queue["effective_target_ms"] == pytest.approx(expected_ms, abs=2)
    assert queue["dropped"] == queue["marked"] == 0 and queue["bond_queue_ms"] == 0.0
    assert f"queue management: target {queue['effective_target_ms']:g} ms" in render(
        sim.client.status(sim.now))
    off = Sim([SimLink()], queue_target_s=None)
    off.run(1.0)
    assert off.client.status(off.now)["peers"][0]["queue"] is None  # type: ignore[index]
    assert "queue management: off" in render(off.client.status(off.now))
