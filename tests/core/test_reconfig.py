"""Hot reload in the core: links added, removed and re-weighted, peers and
settings changed, under traffic, through the simulated network."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter

import msgpack
import pytest
from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, packet_seq
from tests.core.test_multipeer import Net, ipv4

from stripe import control
from stripe.linkctl import LINK_DRAIN_S
from stripe.links import LinkState
from stripe.noise import generate_keypair
from stripe.reconfig import ReconfigError, plan
from stripe.spec import EndpointSpec, LinkSpec, PeerSpec, Role
from stripe.wire import MessageType


def flow(start: float, count: int, interval: float, direction: str = "up",
         first: int = 0) -> list[tuple[float, str, bytes]]:
    return [(start + i * interval, direction, ip_packet(first + i, 1200)) for i in range(count)]


def seqs(sim: Sim, side: str) -> list[int]:
    return [packet_seq(p) for p in sim.delivered[side]]


def reload(sim: Sim, *links: LinkSpec, **changes: object) -> tuple[str, ...]:
    """Give the client a new spec with these links; returns what changed."""
    spec = dataclasses.replace(sim.client.spec, links=links, **changes)  # type: ignore[arg-type]
    change = sim.client.plan_reconfigure(spec)
    sim.client.reconfigure(change, sim.now)
    return change.changes


def both_ways(sim: Sim, seconds: float, first: int, count: int) -> list[tuple[float, str, bytes]]:
    """`count` packets each way, over the first 80 % of `seconds` (so they
    have arrived by the end of a run of `seconds`)."""
    interval = 0.8 * seconds / count
    return flow(sim.now, count, interval, first=first) + flow(sim.now, count, interval, "down",
                                                              first=first)


def test_link_added_under_traffic_carries_data_and_nothing_is_lost() -> None:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.015), SimLink(delay_s=0.012)],
              configured=2)
    sim.run(1.0)
    peer = sim.client.peers[0]
    session, l0, l1 = peer.current, peer.links[0], peer.links[1]
    sim.run(0.5, both_ways(sim, 0.5, 0, 500))
    changes = reload(sim, sim.link_spec(0), sim.link_spec(1), sim.link_spec(2))
    assert changes == ("link l2 added",)
    added_at = sim.now
    sim.run(2.0, both_ways(sim, 2.0, 500, 2000))
    # Unchanged links keep their ids and state; the session survives.
    assert peer.links[0] is l0 and peer.links[1] is l1 and peer.current is session
    l2 = peer.links[2]
    assert l2.name == "l2" and l2.health.state is LinkState.UP
    assert l2.counters.tx_packets > 400  # a third of 2000, less probes' start-up
    server_l2 = sim.server.peers[0].links[2]
    assert server_l2.name == "l2" and server_l2.counters.tx_packets > 400
    assert sim.links[2].carried["up"] and sim.now - added_at < 3
    assert seqs(sim, "server") == list(range(2500))
    assert seqs(sim, "client") == list(range(2500))


def test_link_removed_under_traffic_gets_no_more_data_and_nothing_is_lost() -> None:
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.030), SimLink(delay_s=0.020)]
    sim = Sim(links, reorder_hold_s=0.200)
    sim.run(1.0)
    sim.run(0.5, both_ways(sim, 0.5, 0, 500))
    before = {d: links[1].carried[d] for d in ("up", "down")}
    assert reload(sim, sim.link_spec(0), sim.link_spec(2)) == ("link l1 removed",)
    removed_at = sim.now
    # Right away the client sends nothing on it but its final marker.
    sim.run(0.001)
    assert links[1].carried["up"] == before["up"] + 1
    sim.run(1.0, both_ways(sim, 1.0, 500, 1000))
    # The server heard (LINKS) and stopped within about a one-way delay.
    assert 1 not in sim.server.peers[0].links
    assert links[1].carried["down"] - before["down"] < 30
    assert links[1].carried["up"] == before["up"] + 1
    after = dict(links[1].carried)
    sim.run(1.0, both_ways(sim, 1.0, 1500, 500))
    assert links[1].carried == after
    # Everything in flight on the removed link was still delivered, in order,
    # and no reorder buffer waited for its hold deadline on the removed link.
    assert seqs(sim, "server") == list(range(2000))
    assert seqs(sim, "client") == list(range(2000))
    for ep in (sim.client, sim.server):
        stats = ep.peers[0].current.reorder.stats  # type: ignore[union-attr]
        assert stats.deadline_releases == 0 and stats.lost == 0 and stats.late == 0
    # The removed link's socket closes once drained, not before.
    assert sim.closed_sockets == [1]
    assert sim.now - removed_at >= LINK_DRAIN_S


def test_after_its_final_marker_a_removed_link_holds_up_no_loss_inference() -> None:
    links = [SimLink(delay_s=0.010), SimLink(delay_s=0.010), SimLink(delay_s=0.010)]
    sim = Sim(links, scheduler="roundrobin", reorder_hold_s=0.200, loss_repair=False)
    sim.run(1.0)
    sim.run(0.1, flow(sim.now, 90, 0.001))  # all three links carry data
    reload(sim, sim.link_spec(0), sim.link_spec(2))
    sim.run(0.05)  # the final marker on l1 has arrived
    links[0].up = links[2].up = False
    sim.run(0.001, flow(sim.now, 1, 0.001, first=90))  # lost
    links[0].up = links[2].up = True
    sent = sim.now
    sim.run(0.02, flow(sim.now, 10, 0.001, first=91))
    # Released by inference as soon as both remaining links passed the gap
    # (l1, whose last data is 60 ms old, would otherwise count as active and
    # hold the gap for the 200 ms deadline).
    assert seqs(sim, "server") == [*range(90), *range(91, 101)]
    assert sim.now - sent <= 0.02
    stats = sim.server.peers[0].current.reorder.stats  # type: ignore[union-attr]
    assert stats.deadline_releases == 0 and stats.inferred_releases == 1


def test_socket_closes_exactly_after_the_drain_time() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    reload(sim, sim.link_spec(0))
    removed_at = sim.now
    sim.run(LINK_DRAIN_S - 0.01)
    assert sim.closed_sockets == []
    assert sim.client.get_timer() is not None
    sim.run(0.02)
    assert sim.closed_sockets == [1]
    assert sim.now - removed_at >= LINK_DRAIN_S


def test_reweight_changes_shares_and_the_server_learns_the_weights() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    heavy = dataclasses.replace(sim.link_spec(0), weight=3)
    assert reload(sim, heavy, sim.link_spec(1)) == ("link l0 weight 1->3",)
    sim.run(0.1)
    assert sim.server.peers[0].links[0].weight == 3
    start = len(sim.wire_log)
    sim.run(2.0, both_ways(sim, 2.0, 0, 1000))
    data = Counter((direction, link) for direction, link, datagram in sim.wire_log[start:]
                   if datagram[0] == MessageType.DATA)
    assert data["up", 0] / data["up", 1] == pytest.approx(3.0, rel=0.05)
    assert data["down", 0] / data["down", 1] == pytest.approx(3.0, rel=0.05)
    assert seqs(sim, "server") == list(range(1000))


def test_backup_flag_and_scheduler_and_hold_change_live() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    session = sim.client.peers[0].current
    backup = dataclasses.replace(sim.link_spec(1), backup=True)
    changes = reload(sim, sim.link_spec(0), backup, scheduler="roundrobin", reorder_hold_s=0.08)
    assert changes == ("link l1 now a backup", "scheduler weighted -> roundrobin",
                       "reorder hold measured -> 80 ms")
    assert session is not None and session.reorder.hold_s == 0.08
    sim.run(0.1)
    assert sim.server.peers[0].links[1].backup
    base = sim.client.peers[0].links[1].counters.tx_packets
    sim.run(1.0, flow(sim.now, 400, 0.002))
    assert sim.client.peers[0].links[1].counters.tx_packets - base <= 12  # probes only
    assert sim.client.peers[0].current is session


def test_queue_target_changes_live_and_keeps_the_counts() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    peer = sim.client.peers[0]
    assert peer.aqm is not None
    peer.aqm.drops = 3
    changes = reload(sim, sim.link_spec(0), sim.link_spec(1), queue_target_s=0.02)
    assert changes == ("queue target 5 ms -> 20 ms",)
    assert peer.aqm.target_s == 0.02 and peer.aqm.drops == 3
    assert reload(sim, sim.link_spec(0), sim.link_spec(1), queue_target_s=None) == (
        "queue target 20 ms -> off",)
    assert peer.aqm is None


def test_loss_repair_off_by_reload_stops_asking_at_once() -> None:
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.015, loss=0.05)],
              scheduler="roundrobin", seed=7)
    sim.run(1.0)
    sim.run(2.0, flow(sim.now, 1000, 0.002))
    reorder = sim.server.peers[0].current.reorder  # type: ignore[union-attr]
    asked = reorder.stats.repair_requests
    assert asked > 0 and reorder.repair_wait_s > 0
    server = sim.server
    plan = server.plan_reconfigure(dataclasses.replace(server.spec, loss_repair=False))
    assert plan.changes == ("loss repair on -> off",)
    server.reconfigure(plan, sim.now)
    assert reorder.repair_wait_s == 0.0
    sim.run(2.0, flow(sim.now, 1000, 0.002, first=1000))
    assert reorder.stats.repair_requests == asked and reorder.repair_wait_s == 0.0
    assert reorder.stats.lost > 0  # given up at once now


def test_removed_id_is_used_again_after_the_drain() -> None:
    links = [SimLink(), SimLink(), SimLink()]
    sim = Sim(links, configured=2)
    sim.run(1.0)
    reload(sim, sim.link_spec(0))
    sim.run(0.5)
    # While l1 drains, a new link gets a fresh id, not its one.
    early = sim.client.plan_reconfigure(dataclasses.replace(
        sim.client.spec, links=(sim.link_spec(0), sim.link_spec(2, "lte"))))
    assert [x.link_id for x in early.added_links] == [2]
    sim.run(LINK_DRAIN_S)
    assert sim.closed_sockets == [1]
    # Drained: its id is free again; the server starts that id afresh, at the
    # address the new link comes from (another path: sim link 2).
    reused = LinkSpec(0, "dsl", remote=sim.link_spec(2).remote)
    assert reload(sim, sim.link_spec(0), reused) == ("link dsl added",)
    sim.run(0.5)
    assert sim.client.peers[0].links[1].name == "dsl"
    server_link = sim.server.peers[0].links[1]
    assert server_link.name == "dsl" and server_link.up
    assert server_link.path == (2, client_addr(2))
    sim.run(1.0, both_ways(sim, 1.0, 0, 400))
    assert server_link.counters.tx_packets > 150
    assert seqs(sim, "server") == list(range(400))
    assert seqs(sim, "client") == list(range(400))


def test_an_older_link_table_overtaken_by_a_newer_one_is_ignored() -> None:
    # l0 is slow: a LINKS sent on it is overtaken by one sent on fast l1.
    links = [SimLink(delay_s=0.100), SimLink(delay_s=0.005), SimLink(delay_s=0.005)]
    sim = Sim(links)
    sim.run(1.0)
    # A reweight announces on the first up link (l0); removing l0 right
    # after announces on l1: the newer table arrives first.
    reload(sim, sim.link_spec(0), sim.link_spec(1), dataclasses.replace(sim.link_spec(2),
                                                                         weight=2))
    reload(sim, sim.link_spec(1), dataclasses.replace(sim.link_spec(2), weight=2))
    sim.run(0.5)
    assert sorted(sim.server.peers[0].links) == [1, 2]
    assert sim.server.peers[0].links[2].weight == 2


def test_moved_link_is_a_new_link_under_the_old_name() -> None:
    sim = Sim([SimLink(), SimLink(), SimLink()], configured=2)
    sim.run(1.0)
    moved = sim.link_spec(2, "l1")  # same name, another remote
    assert reload(sim, sim.link_spec(0), moved) == (
        "link l1 moved (to 10.1.0.2:5000 -> to 10.2.0.2:5000)",)
    sim.run(0.6, flow(sim.now, 200, 0.002))
    link = sim.client.peers[0].links[2]
    assert link.name == "l1" and link.up and 1 not in sim.client.peers[0].links
    assert seqs(sim, "server") == list(range(200))


def test_what_needs_a_restart_is_refused_and_nothing_changes() -> None:
    sim = Sim([SimLink(), SimLink()])
    sim.run(1.0)
    spec = sim.client.spec
    other_key = generate_keypair()
    for changed, key in [
        (dataclasses.replace(spec, role=Role.SERVER), "role"),
        (dataclasses.replace(spec, private_key=other_key[0]), "interface.private_key"),
        (dataclasses.replace(spec, peers=(PeerSpec(other_key[1]),)), "peer.public_key"),
    ]:
        with pytest.raises(ReconfigError, match="needs a restart") as info:
            sim.client.plan_reconfigure(changed)
        assert key in str(info.value)
    assert sim.client.spec is spec


def test_no_free_link_id_is_refused() -> None:
    _, pub = generate_keypair()
    old = EndpointSpec(Role.CLIENT, bytes(32), (PeerSpec(pub),),
                       (LinkSpec(0, "a", remote=("10.0.0.1", 1)),))
    new = dataclasses.replace(old, links=(*old.links, LinkSpec(0, "b", remote=("10.0.0.1", 2))))
    with pytest.raises(ReconfigError, match="link b: no free link id"):
        plan(old, new, set(range(1, 256)))
    assert plan(old, old, set()).changes == ()


def test_server_peers_added_removed_and_rerouted_live() -> None:
    net = Net(3)
    net.pump(1.0)
    server = net.server
    spec = server.spec
    gone, kept, moved = spec.peers
    new_ip = "10.2.0.50"
    # Client 2 speaks from its old address first (the server caches the check).
    net.clients[2].send_packet(ipv4(net.tunnel_ips[2], "10.2.0.1"), net.now)
    net.pump(0.2)
    assert len(net.delivered["server"]) == 1
    net.delivered["server"].clear()
    moved_new = dataclasses.replace(moved, allowed_ips=(ipaddress.ip_network(f"{new_ip}/32"),))
    change = server.plan_reconfigure(dataclasses.replace(spec, peers=(kept, moved_new)))
    assert change.removed_peers == (gone,) and change.added_peers == ()
    assert any("removed" in c for c in change.changes)
    assert any("allowed_ips [10.2.0.13/32] -> [10.2.0.50/32]" in c for c in change.changes)
    kept_session = server.peers[1].current
    server.reconfigure(change, net.now)
    assert len(server.peers) == 2 and server.peers[0].current is kept_session
    net.clients[2].send_packet(ipv4(net.tunnel_ips[2], "10.2.0.1"), net.now)  # no longer its
    net.pump(0.2)
    # The removed client's packets are refused; the others go on.
    for i, src in enumerate([net.tunnel_ips[0], net.tunnel_ips[1], new_ip]):
        net.clients[i].send_packet(ipv4(src, "10.2.0.1"), net.now)
    net.pump(0.2)
    assert len(net.delivered["server"]) == 2
    assert server.drops["unknown_session"] >= 1
    assert server.drops["spoofed_source"] == 1
    server.send_packet(ipv4("10.2.0.1", new_ip, 130), net.now)
    server.send_packet(ipv4("10.2.0.1", net.tunnel_ips[2], 131), net.now)  # old address
    net.pump(0.2)
    assert [len(p) for p in net.delivered[2]] == [130]
    assert server.drops["no_route"] == 1
    # Added back: the client's next handshake is accepted.
    server.reconfigure(server.plan_reconfigure(spec), net.now)
    net.pump(5.0)
    assert server.peers[-1].current is not None
    net.clients[0].send_packet(ipv4(net.tunnel_ips[0], "10.2.0.1", 140), net.now)
    net.pump(0.2)
    assert [len(p) for p in net.delivered["server"]][-1] == 140


def test_final_marker_round_trips_and_a_bad_flag_is_a_control_error() -> None:
    for marker in (control.Marker(), control.Marker(final=True)):
        assert control.decode(control.encode(marker, 7)) == (marker, 7)
    with pytest.raises(control.ControlError, match="bad_marker"):
        control.decode(msgpack.packb({"t": 5, "f": 1, "d": 0}))
