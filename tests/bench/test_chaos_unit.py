"""The chaos scenario's pure parts: its schedule, traffic tool, configs and
verdict (no root, no namespaces)."""

from __future__ import annotations

import argparse
import threading
import time
import tomllib
from typing import Any

import pytest

from bench.__main__ import build_parser, chaos_options_from
from bench.chaos import report, schedule, traffic
from bench.chaos.runner import client_config, link_specs, server_config
from bench.chaos.schedule import Fault, Plan, make_plan
from bench.lab import LabNames
from bench.lab.emulator import Lane
from bench.systems.stripe_config import Keys


@pytest.mark.parametrize("seed", range(1, 9))
def test_a_long_plan_has_every_fault_in_order_and_in_time(seed: int) -> None:
    plan = make_plan(600, seed)
    assert plan == make_plan(600, seed)  # seeded
    kinds = [f.kind for f in plan.faults]
    assert set(kinds) == set(schedule.KINDS)
    assert kinds.count(schedule.ADD) == kinds.count(schedule.REMOVE) == 1
    assert kinds.index(schedule.ADD) < kinds.index(schedule.REMOVE)
    assert kinds.count(schedule.RESTART) == 1
    flood = next(f for f in plan.faults if f.kind == schedule.FLOOD)
    assert flood.duration_s == 30
    for before, after in zip(plan.faults, plan.faults[1:], strict=False):
        assert after.start_s >= before.end_s + schedule.LONG.gap_s[0] - 0.11
    assert plan.faults[0].start_s >= schedule.LONG.warmup_s
    assert plan.faults[-1].end_s <= 600 - schedule.LONG.tail_s
    # Faults only touch links the client has then.
    active = set(plan.initial_links)
    for f in plan.faults:
        if f.kind == schedule.ADD:
            assert f.link == plan.spare_link and f.link not in active
            active.add(f.link)
        elif f.link is not None:
            assert f.link in active, f
            if f.kind == schedule.REMOVE:
                assert f.link != plan.spare_link
                active.remove(f.link)
    assert len(active) >= 2


def test_a_short_plan_takes_the_important_faults_first() -> None:
    plan = make_plan(50, 1)
    kinds = [f.kind for f in plan.faults]
    assert kinds[:5] == [schedule.DOWN, schedule.RESTART, schedule.BLACKHOLE, schedule.ADD,
                         schedule.ROAM]
    assert plan.faults[-1].end_s <= 50 - schedule.SHORT.tail_s
    with pytest.raises(ValueError):
        make_plan(8, 1)
    with pytest.raises(ValueError):
        make_plan(600, 1, n_links=2)


def test_loss_bursts_reach_the_emulator_as_windows() -> None:
    plan = Plan(60, 1, 3, (Fault(schedule.LOSS, 10.0, 5.0, 1), Fault(schedule.DOWN, 20.0, 3.0, 0)))
    specs = link_specs(plan)
    assert specs[0].up.burst_loss is None
    assert specs[1].up.burst_windows == ((10.0, 5.0),)
    emulated = specs[1].emulator_spec("a", "b")["a_to_b"]
    assert isinstance(emulated, dict) and emulated["ge_windows"] == [[10.0, 5.0]]
    lane = Lane("x", None, 0.0, 0.0, 0.0, ge_windows=((10.0, 15.0),))  # type: ignore[arg-type]
    assert not lane.bursting(9.9) and lane.bursting(10.0) and not lane.bursting(15.0)
    assert Lane("y", None, 0.0, 0.0, 0.0).bursting(1e6)  # type: ignore[arg-type]


def test_configs_bind_client_links_to_interfaces_and_server_links_to_addresses() -> None:
    names = LabNames.for_prefix("cx0000", 3)
    keys = Keys("a" * 43 + "=", "b" * 43 + "=", "c" * 43 + "=", "d" * 43 + "=")
    server = tomllib.loads(server_config(names, keys, "cx0000tun"))
    assert [(ln["source"], ln["port"]) for ln in server["link"]] == [
        ("10.0.0.2", 5000), ("10.1.0.2", 5001), ("10.2.0.2", 5002)]
    assert all("interface" not in ln for ln in server["link"])
    client = tomllib.loads(client_config(names, keys, "cx0000tun", [2, 0]))
    assert [ln["name"] for ln in client["link"]] == ["link0", "link2"]
    assert client["link"][1] == {"name": "link2", "interface": "cx0000c2",
                                 "remote": "10.2.0.2:5002"}


def test_transfer_content_is_indexed_and_its_hash_reproducible() -> None:
    base, span = traffic.content(7)
    first, second = traffic.chunk(base, span, 0), traffic.chunk(base, span, 1)
    assert len(first) == traffic.CHUNK_BYTES and first[:8] == bytes(8)
    assert second[:8] == (1).to_bytes(8, "big") and first[8:] != second[8:]
    assert traffic.expected_sha256(100_000, 7) == traffic.expected_sha256(100_000, 7)
    assert traffic.expected_sha256(100_000, 7) != traffic.expected_sha256(100_000, 8)


def test_tcp_transfer_over_loopback_matches_and_records_arrivals() -> None:
    result: dict[str, Any] = {}
    port = 47000 + int(time.monotonic() * 1000) % 1000
    receiver = threading.Thread(target=lambda: result.update(traffic.tcp_recv(port, 20)))
    receiver.start()
    time.sleep(0.3)
    sent = traffic.tcp_send("127.0.0.1", port, 400_000, 40.0, 3, 20)
    receiver.join(25)
    assert sent["error"] is None and sent["bytes"] == 400_000
    assert sent["sha256"] == result["sha256"] == traffic.expected_sha256(400_000, 3)
    assert sent["peer"] == {"sha256": sent["sha256"], "bytes": 400_000}
    assert sum(result["arrivals"]["bins"]) == 400_000


def test_arrivals_record_stalls() -> None:
    a = traffic.Arrivals(100.0)
    for t in (100.05, 100.1, 100.6, 100.65, 101.0):
        a.add(t, 10)
    assert a.gaps == [(100.1, 100.6), (100.65, 101.0)]
    assert a.bins == [10, 10, 0, 0, 0, 0, 20, 0, 0, 0, 10]


def _record(**extra: Any) -> dict[str, Any]:
    t0 = 1000.0
    faults = [
        {"kind": "down", "label": "down link0", "t_on": 10.0, "t_off": 15.0},
        {"kind": "restart", "label": "restart", "t_on": 25.0, "t_off": 25.6,
         "on": {"restarted_after_s": 0.6}},
        {"kind": "blackhole", "label": "blackhole link1", "t_on": 35.0, "t_off": 40.0,
         "error": "CommandError: nft"},
    ]  # fmt: skip
    arrivals = {"t0": t0 + 1.0, "bin_s": 0.1, "bins": [125_000] * 500,
                "gaps": [[t0 + 11.0, t0 + 11.4], [t0 + 25.1, t0 + 27.5], [t0 + 5.0, t0 + 5.3]]}
    status = {"drops": {"replay": 5}, "io_errors": {"send_ENETUNREACH": 2},
              "peers": [{"queue": {"dropped": 3}, "reorder": {"lost": 1, "late": 0},
                         "resent_packets": 4, "resend_failed": 0}]}
    record: dict[str, Any] = {
        "plan": {"seconds": 60, "n_links": 3}, "t0": t0,
        "options": {"tcp_rate_mbit": 1.0, "seconds": 60, "seed": 1, "udp_pps": 100,
                    "udp_len": 400},
        "faults": faults,
        "traffic": {
            "tcp-send": {"bytes": 7_500_000, "sha256": "ab", "peer": {"sha256": "ab"},
                         "sent_by": 60.1, "error": None},
            "tcp-recv": {"bytes": 7_500_000, "sha256": "ab", "arrivals": arrivals},
            "udp-send": {"sent": 6000}, "udp-recv": {"received": 5990, "arrivals": None},
            "ping": "300 packets transmitted, 298 received, 0.6% packet loss\n"
                    "rtt min/avg/max/mdev = 30.1/35.2/900.5/3.0 ms\n",
        },
        "rss_start": {"client": 40.0, "server": 41.0}, "rss_end": {"client": 42.0, "server": 50.0},
        "rss_restarts": {"server-1-end": 43.0, "server-2-start": 44.0},
        "status_end": {"client": status, "server": status},
        "status_before_restarts": {"server-1": {"drops": {"replay": 2, "bad tag?": 1}}},
        "tcp_mib_start": {"client": {"EstabResets": 1}, "server": {}},
        "tcp_mib_end": {"client": {"EstabResets": 1}, "server": {}},
        "logs": {"tracebacks": 0, "error_lines": 0, "first": []},
    }  # fmt: skip
    record.update(extra)
    return record


def test_summary_attributes_stalls_to_faults() -> None:
    s = report.summarize(_record())
    rows = {r["kind"]: r for r in s["faults"]}
    assert rows["down"]["stall_s"] == pytest.approx(0.4) and rows["down"]["ok"]
    # The restart's own downtime is taken off; its whole stall must be <= 3 s.
    assert rows["restart"]["stall_s"] == pytest.approx(2.4)
    assert rows["restart"]["beyond_s"] == pytest.approx(1.8) and rows["restart"]["ok"]
    assert not rows["blackhole"]["ok"]  # its action failed
    assert s["warmup_stall_s"] == pytest.approx(0.3)
    assert s["transfer"]["intact"] and s["connections_reset"] == 0
    assert s["per_second_mbit"][0] == 0.0 and s["per_second_mbit"][2] == pytest.approx(10.0)
    assert s["udp"]["lost"] == 10
    assert s["ping"] == {"sent": 300, "received": 298, "loss_percent": 0.67,
                         "rtt_avg_ms": 35.2, "rtt_max_ms": 900.5}


def test_summary_memory_drops_and_checks() -> None:
    s = report.summarize(_record())
    rss = {r["process"]: r for r in s["rss"]}
    assert rss["client"]["growth"] == 2.0 and rss["client"]["ok"]
    assert rss["server (life 1)"]["growth"] == 2.0
    assert rss["server (life 2)"]["growth"] == 6.0 and not rss["server (life 2)"]["ok"]
    assert s["drops"]["server"]["drops"] == {"bad tag?": 1, "replay": 7}
    assert s["drops"]["client"]["peer"]["queue_management_dropped"] == 3
    assert s["unnamed_drop_reasons"] == ["bad tag?"]
    assert not s["checks"]["every drop under a named reason"]
    assert not s["passed"]
    reset = report.summarize(_record(tcp_mib_end={"client": {"EstabResets": 2}, "server": {}}))
    assert reset["connections_reset"] == 1
    assert not report.summarize(_record(traffic={})) ["transfer"]["intact"]


def test_report_files(tmp_path: Any) -> None:
    summary = report.write_report(tmp_path, _record())
    text = (tmp_path / "results.md").read_text()
    assert "| 25 | restart | 0.6 | 2.4 | 1.8 | stall <= 3 s |" in text
    assert "| drops: replay | 5 | 7 |" in text
    assert (tmp_path / "plots" / "chaos-goodput.png").stat().st_size > 1000
    assert summary["passed"] is False


def _args(*argv: str) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = build_parser()
    return parser.parse_args(["run", *argv]), parser


def test_command_line() -> None:
    opts = chaos_options_from(*_args("chaos", "--seed", "4"))
    assert opts.seconds == 600 and opts.seed == 4
    assert chaos_options_from(*_args("chaos", "--minutes", "2")).seconds == 120
    assert chaos_options_from(*_args("chaos", "--seconds", "45")).seconds == 45
    for bad in (("chaos", "equal"), ("chaos", "--seconds", "5")):
        with pytest.raises(SystemExit):
            chaos_options_from(*_args(*bad))


def test_links_at_the_end_and_roams() -> None:
    def end(address: str) -> dict[str, Any]:
        return {"peers": [{"links": [{"name": "link0", "state": "up", "address": address},
                                     {"name": "link2", "state": "up", "address": "x"}]}]}

    roam = {"kind": "roam", "label": "roam link0", "t_on": 50.0, "t_off": 50.1, "link": 0,
            "on": {"from": "10.0.0.1/30", "to": "10.0.0.65/24"}}
    record = _record(status_end={"client": end("10.0.0.2:5000"), "server": end("10.0.0.65:4242")})
    record["faults"].append(roam)
    s = report.summarize(record)
    assert s["roams"] == [{"link": "link0", "to": "10.0.0.65",
                           "server_sends_to": "10.0.0.65:4242", "followed": True}]
    assert s["checks"]["every link up at the end, roamed ones followed"]
    record["status_end"]["server"] = end("10.0.0.1:4242")
    assert not report.summarize(record)["roams"][0]["followed"]
