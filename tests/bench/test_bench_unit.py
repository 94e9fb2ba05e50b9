"""Bench logic that needs no root: names, shaping, parsing, summaries, configs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import build_parser, options_from
from bench.demo import format_table
from bench.lab import MAX_LINKS, Direction, LabNames, LinkSpec, netem_args, new_prefix, tbf_args
from bench.lab.iperf import Flow, client_command, parse
from bench.measure import RunRecord, parse_ping
from bench.report.analysis import failover_metrics, summarize
from bench.runner import (
    MIN_FITTED_SECONDS,
    Options,
    count_runs,
    estimate_seconds,
    flows_for,
    plan_for,
)
from bench.scenarios import ALIASES, EXTRA_REAL_LINKS, SCENARIOS, resolve
from bench.systems.stripe_config import Keys, client_config, server_config, split_variant

DATA = Path(__file__).parent / "data"


def test_names_fit_ifnamsiz() -> None:
    prefix = new_prefix()
    assert prefix.startswith("sb") and len(prefix) == 6
    names = LabNames.for_prefix(prefix, MAX_LINKS)
    for n in names.links:
        for dev in (n.client_if, n.server_if, n.mid_client_if, n.mid_server_if):
            assert len(dev) <= 15
    assert all(len(ns) <= 15 for ns in (names.client_ns, names.server_ns, names.mid_ns))


def test_classic_names_match_example_configs() -> None:
    names = LabNames.classic()
    assert (names.client_ns, names.server_ns) == ("devicea", "deviceb")
    assert [(n.client_if, n.client_addr, n.server_if, n.server_addr) for n in names.links] == [
        ("veth0", "10.0.0.1", "veth1", "10.0.0.2"),
        ("veth2", "10.1.0.1", "veth3", "10.1.0.2"),
    ]


def test_tbf_burst_and_queue() -> None:
    assert tbf_args(5, 50) == ["tbf", "rate", "5000kbit", "burst", "6250", "latency", "50ms"]
    # Slow links still get a bucket of two full frames.
    assert tbf_args(1, 50)[4] == str(2 * 1514)


def test_netem_args() -> None:
    assert netem_args(Direction(delay_ms=10)) == ["netem", "delay", "10ms"]
    assert netem_args(Direction(delay_ms=40, jitter_ms=5, loss=0.02)) == [
        "netem",
        "delay",
        "40ms",
        "5ms",
        "loss",
        "random",
        "2%",
    ]


def test_parse_tcp_receiver_side() -> None:
    r = parse((DATA / "iperf3-tcp.json").read_text())
    assert r.error is None
    assert r.goodput_mbit == pytest.approx(9.10, abs=0.01)
    assert r.retransmits == 51
    assert r.per_second_mbit[:4] == [9.168, 9.08, 9.08, 9.08]


def test_parse_udp_loss() -> None:
    r = parse((DATA / "iperf3-udp.json").read_text())
    assert r.goodput_mbit == pytest.approx(9.0, abs=0.01)
    assert r.lost_percent == 0
    assert r.retransmits is None


def test_parse_garbage_is_an_error_not_an_exception() -> None:
    r = parse("not json", "iperf3: error - unable to connect to server")
    assert r.goodput_mbit == 0.0 and r.error is not None and "unable to connect" in r.error


def test_client_command_flows() -> None:
    udp = client_command("10.0.0.2", 5201, 5, Flow("udp", 1, 9.0), "cubic")
    assert "-u" in udp and "-C" not in udp and "1200" in udp
    tcp4 = client_command("10.9.0.2", 5201, 5, Flow(parallel=4), "bbr", bind="10.9.0.1")
    assert tcp4[tcp4.index("-C") + 1] == "bbr" and "-P" in tcp4 and "-B" in tcp4


def test_scenarios_resolve_and_document() -> None:
    assert [s.name for s in resolve(["failover"])] == ["failover-down", "failover-blackhole"]
    assert len(resolve(["all", "real-links", *EXTRA_REAL_LINKS])) == len(SCENARIOS)
    with pytest.raises(KeyError):
        resolve(["nope"])
    for s in SCENARIOS.values():
        assert s.doc and 1 <= len(s.links) <= MAX_LINKS
    suites = set(ALIASES["all"]) | set(ALIASES["real-links"])
    assert suites | set(EXTRA_REAL_LINKS) == set(SCENARIOS)
    assert not set(ALIASES["all"]) & set(ALIASES["real-links"])
    assert SCENARIOS["four-links"].shaped_sum_mbit == 20
    assert flows_for(SCENARIOS["equal"], ["udp"])[0].udp_rate_mbit == 9.0


def test_count_runs() -> None:
    opts = Options(
        resolve(["equal"]),
        repeat=3,
        ccs=["cubic", "bbr"],
        flows=["tcp", "udp"],
        schedulers=["roundrobin"],
    )
    # 2 links + ecmp + mptcp + 1 scheduler = 5 systems; tcp x 2 cc + udp x 1 = 3.
    assert count_runs(opts) == 5 * 3 * 3


def _record(system: str, goodput: float, **kw: Any) -> dict[str, Any]:
    rec = RunRecord(system, "tcp", "cubic", 20, goodput_mbit=goodput, link_share=[0.5, 0.5])
    return rec.to_json() | {"scenario": "equal", "repeat": 1} | kw


def test_summary_median_range_and_reference() -> None:
    records = [
        _record("link0", 4.7),
        _record("link1", 4.8),
        _record("stripe-weighted", 9.0),
        _record("stripe-weighted", 8.0, repeat=2),
        _record("stripe-weighted", 8.8, repeat=3),
    ]
    by_system = {s.system: s for s in summarize(records)}
    stripe = by_system["stripe-weighted"]
    assert (stripe.goodput_median, stripe.goodput_min, stripe.goodput_max) == (8.8, 8.0, 9.0)
    assert stripe.runs == 3
    assert stripe.share_of_reference == round(8.8 / 9.5, 3)


def test_no_reference_without_every_link() -> None:
    summaries = summarize([_record("link0", 4.7), _record("stripe-weighted", 9.0)])
    assert all(s.share_of_reference is None for s in summaries)


def test_failover_metrics() -> None:
    # 9 Mbit/s on both, cut at 10 s: 2 s of trouble, then link 0 alone;
    # restored at 20 s, link 1 carries again from 21 s.
    per_second = [9.0] * 10 + [1.0, 2.0] + [4.6] * 8 + [6.0] + [9.0] * 9
    links = [[4.5, 4.5]] * 10 + [[4.6, 0.0]] * 11 + [[4.5, 4.5]] * 9
    rec = _record("stripe-weighted", 8.0, per_second_mbit=per_second, link_series_mbit=links)
    m = failover_metrics(rec, 10, 20, remaining_link_mbit=4.75, cut_link_mbit=4.75)
    assert m["survived"] is True
    assert m["cut_to_steady_s"] == 2
    assert m["restore_to_both_s"] == 1
    dead = failover_metrics(
        _record("link1", 3.0, per_second_mbit=[4.7] * 10 + [0.0] * 20), 10, 20, 4.75, 4.75
    )
    assert dead["survived"] is False and dead["cut_to_steady_s"] is None
    stalled_then_back = failover_metrics(
        _record("mptcp", 6.0, per_second_mbit=[9.0] * 25 + [0.0, 0.0, 0.0, 0.5, 9.0]),
        10,
        20,
        4.75,
        4.75,
    )
    assert stalled_then_back["survived"] is True
    assert stalled_then_back["stall_s"] is None  # no 100 ms reports: nothing finer


def test_failover_metrics_to_100_ms() -> None:
    # Reports every 100 ms; the cut made at 10.05 s: 0.6 s of nothing, then
    # 0.2 s at half the link, then link 0 alone from 10.9 s.
    bins = [9.0] * 100 + [0.0] * 6 + [2.0] * 2 + [1.0] + [4.6] * 91 + [9.0] * 100
    rec = _record("stripe-default", 7.0, per_second_mbit=[9.0] * 30, bins_mbit=bins,
                  bin_s=0.1, events=[[10.05, "link1 blackhole"], [20.0, "link1 restored"]])
    m = failover_metrics(rec, 10, 20, remaining_link_mbit=4.75, cut_link_mbit=4.75)
    assert m["cut_to_recovered_s"] == 0.75  # from 10.8 s the half second averages 3.88
    assert m["stall_s"] == 0.6  # the 1.0 Mbit/s report after 2.0 ones is a stall of its own


def test_demo_table() -> None:
    rec = RunRecord(
        "stripe", "tcp", None, 20, goodput_mbit=9.05, retransmits=12, link_share=[0.5, 0.5]
    )
    failed = RunRecord("ecmp", "tcp", None, 20, error="boom")
    table = format_table([rec, failed], 2)
    assert "9.05" in table and "50 %" in table and "failed" in table


def test_generated_stripe_configs_parse() -> None:
    names = LabNames.for_prefix("sb0000", 2)
    specs = (LinkSpec.symmetric(8), LinkSpec.symmetric(2))
    keys = Keys("cpriv", "cpub", "spriv", "spub")
    client = tomllib.loads(client_config(names, specs, keys, "weighted", "sb0000tun"))
    server = tomllib.loads(server_config(names, keys, "weighted", "sb0000tun"))
    assert client["interface"]["scheduler"] == "weighted"
    assert [link["weight"] for link in client["link"]] == [8, 2]
    assert client["link"][1]["remote"] == "10.1.0.2:5001"
    assert client["peer"]["public_key"] == "spub"
    assert server["peer"]["public_key"] == "cpub"
    assert [link["port"] for link in server["link"]] == [5000, 5001]


def test_scheduler_variants_carry_interface_settings() -> None:
    names = LabNames.for_prefix("sb0000", 2)
    specs = (LinkSpec.symmetric(5), LinkSpec.symmetric(5))
    keys = Keys("cpriv", "cpub", "spriv", "spub")
    variant = "adaptive:queue_target_ms=0+reorder_hold_ms=50"
    for text in (client_config(names, specs, keys, variant, "t"),
                 server_config(names, keys, variant, "t")):
        interface = tomllib.loads(text)["interface"]
        assert interface["scheduler"] == "adaptive"
        assert interface["queue_target_ms"] == 0 and interface["reorder_hold_ms"] == 50
    assert split_variant("weighted") == ("weighted", [])
    with pytest.raises(ValueError, match="SCHEDULER"):
        split_variant("adaptive:queue_target_ms")
    with pytest.raises(SystemExit):
        _options("equal", "--schedulers", "adaptive,adaptive:=3")


def test_a_link_setting_in_a_variant_goes_to_that_client_link_alone() -> None:
    """"default:link1.backup=true": the client's second link is a backup; the
    first link, the interface and the server are as in "default"."""
    names = LabNames.for_prefix("sb0000", 2)
    specs = (LinkSpec.symmetric(8), LinkSpec.symmetric(2))
    keys = Keys("cpriv", "cpub", "spriv", "spub")
    variant = "default:link1.backup=true+link0.weight=5+reorder_hold_ms=50"
    client = tomllib.loads(client_config(names, specs, keys, variant, "t"))
    assert [(link["weight"], link["backup"]) for link in client["link"]] == [(5, False), (2, True)]
    assert client["interface"] == {**client["interface"], "reorder_hold_ms": 50}
    assert not any(key.startswith("link") for key in client["interface"])
    server = tomllib.loads(server_config(names, keys, variant, "t"))
    assert "scheduler" not in server["interface"] and server["interface"]["reorder_hold_ms"] == 50
    assert not any(key.startswith("link") for key in server["interface"])
    assert client_config(names, specs, keys, "default:link1.backup=true", "t").count(
        "backup = true") == 1
    with pytest.raises(ValueError, match="link2, but the lab has links 0-1"):
        client_config(names, specs, keys, "default:link2.backup=true", "t")


def test_a_workers_variant_is_the_servers_alone() -> None:
    """"default:workers=2": the server runs two workers (its peer then needs
    narrow allowed_ips); the client, which has no workers, gets nothing."""
    names = LabNames.for_prefix("sb0000", 2)
    specs = (LinkSpec.symmetric(5), LinkSpec.symmetric(5))
    keys = Keys("cpriv", "cpub", "spriv", "spub")
    server = tomllib.loads(server_config(names, keys, "default:workers=2", "t"))
    client = tomllib.loads(client_config(names, specs, keys, "default:workers=2", "t"))
    assert server["interface"]["workers"] == 2
    assert server["peer"]["allowed_ips"] == ["10.200.0.1/32"]
    assert "workers" not in client["interface"]
    assert "allowed_ips" not in tomllib.loads(server_config(names, keys, "default", "t"))["peer"]


def test_final_sliver_interval_is_dropped() -> None:
    intervals = [{"sum": {"bits_per_second": 5e6, "seconds": 1.0}}] * 3 + [
        {"sum": {"bits_per_second": 40e6, "seconds": 0.04}}
    ]
    data = {
        "end": {"sum_received": {"bits_per_second": 5e6}},
        "server_output_json": {"intervals": intervals},
    }
    assert parse(json.dumps(data)).per_second_mbit == [5.0, 5.0, 5.0]


def _options(*argv: str) -> Options:
    parser = build_parser()
    return options_from(parser.parse_args(["run", *argv]), parser)


def test_cli_run_options() -> None:
    opts = _options(
        "equal",
        "failover",
        "--repeat",
        "2",
        "--seconds",
        "7",
        "--cc",
        "cubic,bbr",
        "--flows",
        "tcp,tcp4,udp",
        "--systems",
        "link0,stripe",
        "--schedulers",
        "weighted",
        "--topology",
        "local",
        "--impairment",
        "userspace",
        "--latest",
        "ab",
        "--out",
        "/tmp/x",
    )
    assert opts.publish_as == "ab"
    assert [s.name for s in opts.scenarios] == ["equal", "failover-down", "failover-blackhole"]
    assert (opts.repeat, opts.seconds, opts.ccs) == (2, 7.0, ["cubic", "bbr"])
    assert opts.flows == ["tcp", "tcp4", "udp"] and opts.systems == ["link0", "stripe"]
    assert (opts.schedulers, opts.topology, opts.impairment) == (["weighted"], "local", "userspace")
    quick = _options("equal", "--quick")
    plan = plan_for(quick.scenarios[0], quick)
    assert (plan.repeat, plan.seconds, plan.ccs, quick.topology) == (1, 4.0, [None], "network")


def test_latest_names_the_published_report(capsys: pytest.CaptureFixture[str]) -> None:
    """One scenario or alias names it; several need a name; a path is refused
    (before the run: a bad name must not cost the run's results)."""
    assert _options("real-links", "--latest").publish_as == "real-links"
    assert _options("equal", "lossy", "--latest", "main").publish_as == "main"
    assert _options("equal").publish_as is None
    for argv, why in ((["equal", "lossy", "--latest"], "name the published report"),
                      (["equal", "--latest", "../main"], "not a plain lower-case name"),
                      (["equal", "--latest", "Main"], "not a plain lower-case name")):
        with pytest.raises(SystemExit):
            _options(*argv)
        assert why in capsys.readouterr().err


def test_minutes_budget_picks_run_length() -> None:
    opts = _options("all", "--repeat", "1", "--minutes", "15")
    assert estimate_seconds(opts) == pytest.approx(15 * 60, rel=0.02)
    assert MIN_FITTED_SECONDS <= opts.seconds <= 20
    with pytest.raises(SystemExit):
        _options("all", "--repeat", "3", "--minutes", "15")  # failover alone nearly fills it


@pytest.mark.parametrize("argv", [["nope"], ["equal", "--cc", "reno"], ["equal", "--flows", "x"]])
def test_cli_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _options(*argv)


def test_parse_ping_average_and_p95() -> None:
    replies = "".join(f"64 bytes from 10.200.0.2: icmp_seq={i} ttl=64 time={t} ms\n"
                      for i, t in enumerate([1.0] * 18 + [40.0, 90.0], start=1))
    out = ("PING 10.200.0.2 (10.200.0.2) 56(84) bytes of data.\n" + replies
           + "\n--- 10.200.0.2 ping statistics ---\n"
           "20 packets transmitted, 20 received, 0% packet loss, time 3800ms\n"
           "rtt min/avg/max/mdev = 1.000/7.400/90.000/20.000 ms\n")
    stats = parse_ping(out)
    assert stats is not None
    # ping's own average; the 19th of 20 sorted replies (nearest rank)
    assert (stats.avg_ms, stats.p95_ms, stats.replies) == (7.4, 40.0, 20)
    assert parse_ping("2 packets transmitted, 0 received, 100% packet loss\n") is None
