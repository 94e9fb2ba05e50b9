"""The real-links scenarios without root: their definitions (both
directions, traces recorded or synthetic, per-scenario defaults), the
flows, the example configs' variant, the suite's length, and the report
(stalls, ping, transitions, results.md and plots) on canned records."""

from __future__ import annotations

import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench import reallinks
from bench.lab import LabNames, LinkSpec
from bench.lab.iperf import DOWNLOAD, UPLOAD, client_command, parse
from bench.lab.traces import RECORDED_MEAN_MBIT, TraceLibrary, traces_dir_from
from bench.measure import RunRecord
from bench.realrun import align, flow_start_s, parse_ping_times
from bench.report import reallinks as report
from bench.report.analysis import summarize
from bench.report.tables import results_markdown, write_report
from bench.runner import (
    REAL_INTERVAL_S,
    REAL_UDP_OFFER_FRACTION,
    Options,
    _flows,
    _variants,
    count_runs,
    estimate_seconds,
    flows_for,
    link_sources,
    plan_for,
    real_udp_offer_mbit,
)
from bench.scenarios import ALIASES, EXTRA_REAL_LINKS, REAL_LINKS, SCENARIOS, resolve
from bench.systems import stripe_config
from bench.systems.stripe_config import Keys, StripeSettings, client_config, server_config

CARRIERS = ("TMobile-LTE-short", "Verizon-LTE-short")


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A directory of (tiny) recorded traces under the real names."""
    directory = tmp_path / "traces"
    directory.mkdir()
    for carrier in CARRIERS:
        for way in ("up", "down"):
            (directory / f"{carrier}.{way}").write_text("1\n5\n5\n9\n")
    return directory


def test_the_suite_and_its_scenarios() -> None:
    assert REAL_LINKS == ("lte-pair", "lte-dsl", "handover", "starlink", "bloat")
    assert resolve(["real-links"]) == [SCENARIOS[n] for n in REAL_LINKS]
    assert EXTRA_REAL_LINKS == ("lte-3g", "van", "adsl-pair", "delay-step")
    for name in REAL_LINKS + EXTRA_REAL_LINKS:
        s = SCENARIOS[name]
        assert s.kind == "reallinks" and s.directions == (UPLOAD, DOWNLOAD)
        assert s.default_seconds == 60 and len(s.links) == (4 if name == "van" else 2)
        # Every direction is shaped by the emulator, none by tbf.
        for link in s.links:
            for d in (link.up, link.down):
                assert d.bottleneck and d.rate_mbit is None


def test_plans_per_scenario_and_overrides() -> None:
    opts = Options(resolve(["real-links"]))
    lte = plan_for(SCENARIOS["lte-pair"], opts)
    assert (lte.repeat, lte.seconds, lte.ccs) == (3, 60, ["cubic", "bbr"])
    assert lte.schedulers == ["default", "example"] and lte.directions == [UPLOAD, DOWNLOAD]
    for name in REAL_LINKS[1:]:
        plan = plan_for(SCENARIOS[name], opts)
        assert (plan.repeat, plan.seconds, plan.ccs) == (1, 60, ["cubic"])
    forced = Options(resolve(["lte-pair"]), repeat=1, seconds=10, ccs=["bbr"],
                     directions=[DOWNLOAD], schedulers=["adaptive"])
    plan = plan_for(SCENARIOS["lte-pair"], forced)
    assert (plan.repeat, plan.seconds, plan.ccs, plan.directions, plan.schedulers) == (
        1, 10, ["bbr"], [DOWNLOAD], ["adaptive"])
    # The fixed-link scenarios keep theirs.
    equal = plan_for(SCENARIOS["equal"], Options(resolve(["equal"])))
    assert (equal.repeat, equal.seconds, equal.directions) == (3, 20, [""])


def test_real_flows_run_both_ways_in_100ms_bins() -> None:
    up, down = flows_for(SCENARIOS["lte-pair"], ["tcp"])
    assert (up.label, down.label) == ("tcp-up", "tcp-down")
    assert up.interval_s == down.interval_s == REAL_INTERVAL_S
    cmd = client_command("10.0.0.2", 5201, 60, down, "cubic")
    assert "-R" in cmd and cmd[cmd.index("-i") + 1] == "0.1"
    assert "-R" not in client_command("10.0.0.2", 5201, 60, up, "cubic")
    # Four parallel flows run there too (`tcp4`), and a UDP stream whose
    # rate the lab's traces set (`real_udp_offer_mbit`), unless given.
    flows = flows_for(SCENARIOS["lte-pair"], ["tcp4", "udp"])
    assert [f.label for f in flows] == ["tcp-x4-up", "tcp-x4-down", "udp0M-up", "udp0M-down"]
    assert all(f.interval_s == REAL_INTERVAL_S for f in flows)
    assert flows[2].udp_len == 1200
    given = flows_for(SCENARIOS["lte-pair"], ["udp"], udp_rate_mbit=6.0)
    assert [f.label for f in given] == ["udp6M-up", "udp6M-down"]
    # A fixed-link scenario may run both ways too, and is unchanged otherwise.
    assert [f.label for f in flows_for(SCENARIOS["equal"], ["tcp"])] == ["tcp"]
    both = flows_for(SCENARIOS["equal"], ["tcp"], directions=[UPLOAD, DOWNLOAD])
    assert [f.label for f in both] == ["tcp-up", "tcp-down"]


class _TracedLab:
    """What `real_udp_offer_mbit` asks of a lab: its links' capacity per second."""

    def __init__(self, up: list[list[float]], down: list[list[float]]) -> None:
        self.specs = up
        self._series = {True: up, False: down}

    def capacity_mbit(self, i: int, up: bool, seconds: int) -> list[float]:
        return self._series[up][i][:seconds]


def test_a_udp_stream_is_offered_a_share_of_the_links_capacity() -> None:
    lab: Any = _TracedLab(up=[[4.0, 6.0, 99.0], [5.0, 7.0, 99.0]],
                          down=[[10.0, 10.0, 0.0], [2.0, 2.0, 0.0]])
    # The run's first 2 s: up 5 + 6 Mbit/s of IP packets, down 10 + 2.
    payload = 1200 / 1228
    assert real_udp_offer_mbit(lab, True, 2, 1200) == round(
        REAL_UDP_OFFER_FRACTION * 11 * payload, 1)
    assert real_udp_offer_mbit(lab, False, 2, 1200) == round(
        REAL_UDP_OFFER_FRACTION * 12 * payload, 1)
    opts = Options(resolve(["lte-pair"]), flows=["tcp", "udp"], seconds=2)
    flows = _flows(SCENARIOS["lte-pair"], opts, lab)
    assert [f.label for f in flows] == ["tcp-up", "tcp-down", "udp7.5M-up", "udp8.2M-down"]
    # --udp-rate wins; without a lab (before it is up) the rate is not known yet.
    opts.udp_rate_mbit = 3.0
    assert [f.label for f in _flows(SCENARIOS["lte-pair"], opts, lab)][2:] == [
        "udp3M-up", "udp3M-down"]
    lab.capacity_mbit = lambda i, up, seconds: None
    opts.udp_rate_mbit = None
    with pytest.raises(ValueError, match="--udp-rate"):
        _flows(SCENARIOS["lte-pair"], opts, lab)


def test_the_suite_fits_90_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Once the example configs say what the default does, their variant is
    # not run again (see _variants): then the suite's plan is this one.
    monkeypatch.setattr(stripe_config, "EXAMPLE_DIR", _examples(tmp_path, "adaptive"))
    opts = Options(resolve(["real-links"]))
    # lte-pair: 2 links + MPTCP + stripe, 3 repeats, 2 cc, 2 directions; the
    # others: the same systems, 1 repeat, 1 cc, 2 directions.
    assert count_runs(opts) == 4 * 12 + 4 * 4 * 2
    assert estimate_seconds(opts) <= 90 * 60


def test_links_from_recorded_traces(recorded: Path, tmp_path: Path) -> None:
    library = TraceLibrary(recorded, tmp_path / "work", seed=3)
    links = SCENARIOS["lte-pair"].links_for(library, 60)
    assert links[0].up.trace == str(recorded / "TMobile-LTE-short.up")
    assert links[1].down.trace == str(recorded / "Verizon-LTE-short.down")
    assert links[0].up.source.startswith("recorded")
    assert links[0].up.queue_ms == reallinks.LTE_QUEUE_MS
    assert links[0].up.delay_ms == reallinks.LTE_DELAY_MS
    assert set(library.sources) == {f"{c}.{w}" for c in CARRIERS for w in ("up", "down")}
    assert not (tmp_path / "work").exists()  # nothing generated


def test_links_from_synthetic_stand_ins(tmp_path: Path) -> None:
    library = TraceLibrary(None, tmp_path, seed=3)
    link = SCENARIOS["lte-pair"].links_for(library, 60)[0]
    assert link.up.trace is not None and Path(link.up.trace).is_file()
    assert "synthetic cellular, mean 13.3 Mbit/s, seed 3" in link.up.source
    again = TraceLibrary(None, tmp_path / "again", seed=3)
    twin = SCENARIOS["lte-pair"].links_for(again, 60)[0]
    assert twin.up.trace is not None
    assert Path(twin.up.trace).read_text() == Path(link.up.trace).read_text()
    assert set(RECORDED_MEAN_MBIT) >= {f"{c}.{w}" for c in CARRIERS for w in ("up", "down")}


def test_the_report_lists_each_traces_silences_in_the_run(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for carrier in CARRIERS:
        (traces / f"{carrier}.up").write_text("".join(f"{t}\n" for t in range(1, 2001)))
        # An opportunity every ms to 500, then silent to 1700, to 2400 and
        # to the trace's end at 3000 (a 3 s run sees no second loop).
        (traces / f"{carrier}.down").write_text(
            "".join(f"{t}\n" for t in range(1, 501)) + "1700\n2400\n3000\n")
    links = SCENARIOS["lte-pair"].links_for(TraceLibrary(traces, tmp_path / "work"), 3)
    sources = link_sources(links, 3)
    assert sources[0]["up"].endswith("; in its first 3 s no silence of 0.3 s or more")
    assert sources[1]["down"].endswith(
        "; in its first 3 s silent at 0.5 s for 1.20 s, at 1.7 s for 0.70 s, "
        "at 2.4 s for 0.60 s")
    dsl = link_sources(SCENARIOS["lte-dsl"].links_for(TraceLibrary(traces, tmp_path), 3), 3)[1]
    assert dsl["up"] == "constant 10 Mbit/s"  # no trace, nothing to list


def test_traces_option(recorded: Path) -> None:
    assert traces_dir_from(str(recorded)) == recorded
    assert traces_dir_from("none") is None
    with pytest.raises(ValueError, match="no such directory"):
        traces_dir_from(str(recorded / "missing"))


def test_the_other_scenarios_links(tmp_path: Path) -> None:
    library = TraceLibrary(None, tmp_path, seed=1)
    lte, dsl = SCENARIOS["lte-dsl"].links_for(library, 60)
    assert lte.up.trace is not None
    assert (dsl.up.emulated_mbit, dsl.up.delay_ms, dsl.up.queue_ms) == (10, 20, 100)
    handover = SCENARIOS["handover"].links_for(library, 60)
    outages = sorted((o.start_s, o.start_s + o.duration_s) for link in handover
                     for o in link.outages)
    assert outages and all(not o.flush for link in handover for o in link.outages)
    assert all(b[0] > a[1] for a, b in itertools.pairwise(outages))
    sat, verizon = SCENARIOS["starlink"].links_for(library, 60)
    assert [o.start_s for o in sat.outages] == [15, 30, 45, 60, 75]  # horizon 60 + 30
    assert sat.up.delay_steps == sat.down.delay_steps and len(sat.up.delay_steps) == 6
    assert "Starlink" in sat.down.source and verizon.up.trace is not None
    lte_3g, slow = SCENARIOS["lte-3g"].links_for(library, 60)
    assert lte_3g.down.trace is not None and "Verizon" in lte_3g.down.trace
    assert (slow.up.delay_ms, slow.up.queue_ms) == (60, 500) and "3G" in slow.down.source
    # Synthetic at the 3G means, seeded: the same file again for the same seed.
    assert slow.down.trace is not None and slow.up.trace is not None
    down_mbit = len(Path(slow.down.trace).read_text().split()) * 12000 / 140e3 / 1e3
    assert down_mbit == pytest.approx(1.2, rel=0.05)
    # The van: both recorded carriers, then two synthetic ones at their own means.
    van = SCENARIOS["van"].links_for(library, 60)
    assert [link.down.delay_ms for link in van] == [20, 20, 30, 40]
    assert "TMobile" in str(van[0].up.trace) and "Verizon" in str(van[1].down.trace)
    for link, (_, up, down, _) in zip(van[2:], reallinks.VAN_SYNTHETIC, strict=True):
        for d, mean in ((link.up, up), (link.down, down)):
            assert d.trace is not None and d.queue_ms == 300 and "LTE-like" in d.source
            mbit = len(Path(d.trace).read_text().split()) * 12000 / 140e3 / 1e3
            assert mbit == pytest.approx(mean, rel=0.05)
    bloat = SCENARIOS["bloat"].links_for(library, 60)
    assert all(d.emulated_mbit == 10 and d.queue_ms == 500 for link in bloat
               for d in (link.up, link.down))
    adsl = SCENARIOS["adsl-pair"].links_for(library, 60)
    assert [(link.down.emulated_mbit, link.up.emulated_mbit) for link in adsl] == [
        (16, 1), (8, 0.8)]
    assert all((link.down.queue_ms, link.up.queue_ms) == (100, 500) for link in adsl)
    assert [link.up.delay_ms for link in adsl] == [link.down.delay_ms for link in adsl] == [10, 15]
    steady, farther = SCENARIOS["delay-step"].links_for(library, 60)
    for d in (steady.up, steady.down, farther.up, farther.down):
        assert (d.emulated_mbit, d.delay_ms, d.queue_ms) == (10, 10, 100)
    assert not steady.up.delay_steps and not steady.down.delay_steps
    assert farther.up.delay_steps == farther.down.delay_steps == ((20.0, 60.0),)
    assert farther.up.emulator_spec()["delay_steps"] == [[20.0, 60.0]]


def _examples(tmp_path: Path, scheduler: str, extra: str = "", weight: int = 1) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.toml").write_text(
        f'[interface]\nname = "s0"\nprivate_key = "k"\nlisten_port = 5000\n'
        f'scheduler = "{scheduler}"\n{extra}\n[peer]\npublic_key = "p"\n'
        '[[link]]\nname = "l0"\ninterface = "veth1"\nsource = "10.0.0.2"\n')
    (tmp_path / "b.toml").write_text(
        f'[interface]\nname = "s0"\nprivate_key = "k"\nscheduler = "{scheduler}"\n{extra}\n'
        '[peer]\npublic_key = "p"\n'
        f'[[link]]\nname = "l0"\nremote = "10.0.0.2:5000"\nweight = {weight}\n'
        f'[[link]]\nname = "l1"\nremote = "10.1.0.2:5000"\nweight = {weight}\n'
        'backup = false\n')
    return tmp_path


def test_example_variant_takes_the_example_configs_settings(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(stripe_config, "EXAMPLE_DIR",
                        _examples(tmp_path, "weighted", "queue_target_ms = 0", weight=3))
    names = LabNames.for_prefix("sb0000", 2)
    specs = (LinkSpec.symmetric(8), LinkSpec.symmetric(2))
    keys = Keys("cpriv", "cpub", "spriv", "spub")
    client = tomllib.loads(client_config(names, specs, keys, "example", "t"))
    server = tomllib.loads(server_config(names, keys, "example", "t"))
    for config in (client, server):
        assert config["interface"]["scheduler"] == "weighted"
        assert config["interface"]["queue_target_ms"] == 0
        assert config["interface"]["name"] == "t"  # the lab's, not the example's
    assert [link["weight"] for link in client["link"]] == [3, 3]
    assert client["link"][0]["remote"] == "10.0.0.2:5000"  # the lab's addresses
    assert "scheduler" not in tomllib.loads(client_config(names, specs, keys, "default", "t"))[
        "interface"]
    assert not StripeSettings.from_examples().same_as_default("weighted")  # queue_target_ms


@pytest.mark.parametrize(
    ("scheduler", "extra", "weight", "same"),
    [("adaptive", "", 1, True), ("weighted", "", 1, False), ("adaptive", "", 2, False),
     ("adaptive", "reorder_hold_ms = 40.0", 1, False)],
)
def test_example_variant_is_left_out_only_when_it_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str, extra: str, weight: int,
    same: bool,
) -> None:
    monkeypatch.setattr(stripe_config, "EXAMPLE_DIR", _examples(tmp_path, scheduler, extra, weight))
    skipped: dict[str, str] = {}
    kept = _variants(["default", "example"], skipped)
    assert kept == (["default"] if same else ["default", "example"])
    assert ("stripe-example" in skipped) is same
    # Without the default variant in the run, the example variant always runs.
    assert _variants(["example"], {}) == ["example"]


def test_parse_reverse_run_in_100ms_bins() -> None:
    intervals = [{"sum": {"start": i / 10, "end": (i + 1) / 10, "seconds": 0.1,
                          "bytes": 125_000 * (i % 10 + 1) // 10,
                          "bits_per_second": 1e6 * (i % 10 + 1)}} for i in range(20)]
    data = {
        "start": {"test_start": {"protocol": "TCP", "reverse": 1}},
        "intervals": intervals,
        "server_output_json": {"intervals": [{"sum": {"seconds": 2.0, "bits_per_second": 1}}]},
        "end": {"sum_received": {"bits_per_second": 5.5e6, "bytes": 1_375_000},
                "sum_sent": {"retransmits": 4}},
    }
    result = parse(json.dumps(data))
    assert result.bin_s == 0.1 and len(result.bins_mbit) == 20
    assert result.bins_mbit[:3] == [1.0, 2.0, 3.0]
    assert result.per_second_mbit == [5.5, 5.5]  # the client's own, received
    assert result.goodput_mbit == 5.5 and result.retransmits == 4


def test_parse_a_udp_stream_either_way() -> None:
    """The receiver's loss and jitter: with -R the client's, not the
    server's, whose own sum is the sender's (iperf3 3.12's JSON, trimmed)."""
    received = {"bits_per_second": 8e6, "bytes": 10_000_000, "jitter_ms": 1.5,
                "lost_packets": 25, "packets": 1000, "lost_percent": 2.5, "sender": False}
    sender = received | {"jitter_ms": 0, "lost_packets": 0, "lost_percent": 0, "sender": True}
    data = {"start": {"test_start": {"protocol": "UDP", "reverse": 1}},
            "intervals": [], "end": {"sum": received, "sum_sent": sender,
                                     "sum_received": received},
            "server_output_json": {"end": {"sum": sender}}}
    result = parse(json.dumps(data))
    assert (result.lost_percent, result.jitter_ms, result.goodput_mbit) == (2.5, 1.5, 8.0)
    # An older iperf3 without sum_received: the client's sum.
    del data["end"]["sum_received"]  # type: ignore[attr-defined]
    assert parse(json.dumps(data)).lost_percent == 2.5


def test_ping_times_relative_to_the_restart() -> None:
    out = ("[100.250000] 64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=50.0 ms\n"
           "[100.100000] 64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=100 ms\n"
           "3 packets transmitted, 2 received, 33% packet loss, time 400ms\n")
    replies, sent = parse_ping_times(out, 99.0)
    assert replies == [[1.0, 100.0], [1.2, 50.0]] and sent == 3


# -- the report on canned records ---------------------------------------------


def _real(links: int = 2, outages: list[list[Any]] | None = None) -> dict[str, Any]:
    return {
        "direction": "up", "flow_offset_s": 0.5,
        "ping": [[0.2 * k, 40.0 + k] for k in range(50)], "ping_sent": 52,
        "links": [{"capacity_mbit": [5.0 + i] * 11, "carried_mbit": [4.0 + i] * 11,
                   "reverse_carried_mbit": [0.1] * 11,
                   "drops": {"queue_drop": 1, "outage_drop": 0, "lost": 0}}
                  for i in range(links)],
        "outages": outages or [],
    }


def _rec(system: str, goodput: float, flow: str = "tcp-up", **kw: Any) -> dict[str, Any]:
    rec = RunRecord(system, flow, "cubic", 10, goodput_mbit=goodput, link_share=[0.5, 0.5],
                    link_bytes=[6_250_000, 6_250_000],  # 10 Mbit/s over the 10 s
                    bins_mbit=[goodput] * 100, bin_s=0.1, real=_real())
    return rec.to_json() | {"scenario": "lte-pair", "repeat": 1} | kw


def _status(downs: list[int]) -> dict[str, Any]:
    links = [{"name": f"link{i}", "downs": d, "ups": d} for i, d in enumerate(downs)]
    return {role: {"peers": [{"links": links}]} for role in ("client", "server")}


def test_stalls_and_the_stall_beyond_an_outage() -> None:
    bins = [10.0] * 20 + [0.0] * 15 + [0.2] + [10.0] * 20
    assert report.stalls(bins, 0.1) == [(2.0, 1.6)]
    record = {"bins_mbit": bins, "bin_s": 0.1, "per_second_mbit": [],
              "real": {"flow_offset_s": 0.5, "outages": [[1, 2.5, 1.0, False]]}}
    assert report.longest_stall_s(record) == 1.6
    # Outage at 2.0-3.0 s of the flow (2.5 - 0.5 offset); the stall ends at 3.6.
    assert report.stall_beyond_outages_s(record) == pytest.approx(0.6)
    record["real"]["outages"] = [[0, 8.0, 1.0, False]]  # nowhere near the stall
    assert report.stall_beyond_outages_s(record) == 0.0
    record["real"]["outages"] = []
    assert report.stall_beyond_outages_s(record) is None
    assert report.stalls([0.0, 0.0], 0.1) == [(0.0, 0.2)]  # nothing at all: all stalled


def test_ping_capacity_and_transitions() -> None:
    rec = _rec("stripe-default", 9.0, system_status=_status([0, 2]))
    assert report.ping_stats(rec) == {"p50": 64.0, "p95": 87.0, "lost": 2}
    assert report.capacity_mbit(rec) == 11.0  # both links: 5 + 6
    assert report.capacity_mbit(_rec("link1", 5.0)) == 6.0
    assert report.link_transitions(rec) == {"downs": [0, 4], "ups": [0, 4]}
    assert report.link_transitions(_rec("stripe-default", 9.0)) is None
    assert report.wire_mbit(rec) == 10.0
    assert report.wire_mbit(rec | {"link_bytes": []}) is None  # an older record


def test_results_table_and_plots(tmp_path: Path) -> None:
    records = []
    for flow in ("tcp-up", "tcp-down"):
        records += [
            _rec("link0", 4.0, flow), _rec("link1", 5.0, flow), _rec("mptcp", 8.0, flow),
            _rec("stripe-default", 8.5, flow, system_status=_status([0, 1])),
            _rec("stripe-default", 7.5, flow, repeat=2, system_status=_status([0, 0])),
        ]
    meta = {"command": "python -m bench run lte-pair", "traces": "/x", "seed": 1,
            "links": {"lte-pair": [{"up": "recorded, /x/a.up", "down": "recorded, /x/a.down"},
                                   {"up": "synthetic", "down": "synthetic"}]}}
    rows = report.real_summaries(records, summarize(records))
    stripe = next(s for s in rows if s.system == "stripe-default" and s.flow == "tcp-up")
    assert (stripe.goodput_median, stripe.share_of_reference, stripe.ratio_to_mptcp) == (
        8.0, round(8.0 / 9.0, 3), 1.0)
    assert stripe.downs == [0, 2] and stripe.runs == 2
    write_report(tmp_path, records, meta)
    text = (tmp_path / "results.md").read_text()
    assert "| lte-pair | upload | cubic | 9.00 | 87 | 8.00 (0.89), 87 | 8.00 (0.89, 1.00), 87 |" \
        in text
    assert ("| upload | cubic | stripe-default | 8.00 [7.50-8.50] | 0.89 | 1.00 | 11.00 "
            "| 10.00 (0.800) | ") in text
    assert "| **reference** (sum of links alone) | 9.00 |" in text
    assert "0/0 · 2/2" in text and "recorded, /x/a.up" in text
    for name in ("real-lte-pair-upload-cubic.png", "real-lte-pair-download-cubic.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000
        assert f"](plots/{name})" in text
    assert "## Plots" not in text  # no other plots
    assert results_markdown(records, meta) == text


def _udp_rec(system: str, goodput: float, lost: float, way: str = "up",
             **kw: Any) -> dict[str, Any]:
    real = _real() | {"udp_offer_mbit": 9.0, "udp_payload_bytes": 1200, "direction": way}
    # link0 5 Mbit/s, link1 6, but link1 silent in the flow's 3rd second.
    real["links"][1]["capacity_mbit"][3] = 0.0
    rec = RunRecord(system, f"udp9M-{way}", None, 10, goodput_mbit=goodput, lost_percent=lost,
                    jitter_ms=1.25,
                    link_share=[0.5, 0.5], link_bytes=[6_250_000, 6_250_000],
                    bins_mbit=[goodput] * 100, bin_s=0.1, real=real)
    return rec.to_json() | {"scenario": "lte-pair", "repeat": 1} | kw


def test_a_udp_stream_against_what_its_links_could_carry(tmp_path: Path) -> None:
    share = 1200 / 1228
    # The flow starts 0.5 s after the mark: its seconds are 0-9 of the traces.
    both = _udp_rec("stripe-default", 8.0, 3.0)
    assert report.deliverable_mbit(both) == pytest.approx(
        (9 * min(9.0, 11 * share) + min(9.0, 5 * share)) / 10, abs=1e-3)
    assert report.deliverable_mbit(_udp_rec("link1", 5.0, 40.0)) == pytest.approx(
        9 * 6 * share / 10, abs=1e-3)
    assert report.deliverable_mbit(_rec("stripe-default", 8.0)) is None  # a TCP flow
    records = [_rec("link0", 4.0), _rec("mptcp", 8.0), _rec("stripe-default", 8.5)]
    for way in ("up", "down"):
        records += [_udp_rec("link0", 4.6, 49.0, way), _udp_rec("link1", 5.2, 42.0, way),
                    _udp_rec("stripe-default", 8.1, 2.5, way, system_status=_status([0, 1]))]
    write_report(tmp_path, records, {"command": "python -m bench run lte-pair --flows udp"})
    text = (tmp_path / "results.md").read_text()
    # The TCP tables keep TCP rows only; the UDP stream has its own.
    assert "| lte-pair | upload | cubic |" in text and "| lte-pair | upload, UDP" not in text
    # Deliverable over both links: (9 x 9 + 5 x 1200/1228) / 10; link1 alone 9 x 6 x ... / 10.
    assert ("| lte-pair | upload | 9.00 | 8.59 | link1: 5.20 (0.98), 42.0 %, 87 "
            "| 8.10 (0.94), 2.5 %, 87 |") in text
    assert ("| download | stripe-default | 9.00 | 8.59 | 8.10 [8.10-8.10] | 0.94 | 2.5 | 1.2 "
            "| 10.00 (0.810) | 64 / 87 (2) | 0/0 · 2/2 | 1 |") in text
    assert "| upload | link0 | 9.00 | 4.89 | 4.60 [4.60-4.60] | 0.94 | 49.0 |" in text
    for name in ("real-lte-pair-upload-udp-default.png", "real-lte-pair-download-udp-default.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000


def test_all_and_real_links_partition_the_scenarios() -> None:
    assert set(ALIASES["all"]).isdisjoint(REAL_LINKS + EXTRA_REAL_LINKS)


def test_the_flow_start_is_found_on_the_links_delivery() -> None:
    rates = [3.0, 9.0, 2.0, 8.0, 8.0, 1.0, 6.0, 7.0, 0.5, 9.0] * 4
    delivered = [0.01] * 3 + rates + [0.0] * 10  # the flow begins 0.3 s after the mark
    receiver = [0.96 * r for r in rates]
    assert flow_start_s(receiver, 0.1, delivered, 0.01) == pytest.approx(0.3)
    # Nothing to go by: the launch.
    assert flow_start_s([0.0] * 40, 0.1, delivered, 0.01) == 0.01
    assert flow_start_s(receiver, 1.0, delivered, 0.01) == 0.01
    real = {"launch_offset_s": 0.01, "links": [
        {"carried_100ms_mbit": [d / 2 for d in delivered]},
        {"carried_100ms_mbit": [d / 2 for d in delivered[:20]]},
    ]}
    align(real, receiver, 0.1)
    assert real["flow_offset_s"] == pytest.approx(0.3)
