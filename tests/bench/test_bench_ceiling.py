"""Issue-7 bench pieces that need no root: wireguard-go's keys and UAPI text,
nftables loss rules, UDP rate options, efficiency and memory figures, where
UDP loss happened, the ceiling table, and the profile's stack parsing and
flame graph layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import build_parser, options_from
from bench.lab import Direction, Lab, LabNames, LinkSpec, nft_loss_ruleset
from bench.lab.iperf import client_command, parse, parse_rate_mbit
from bench.lab.procs import vm_hwm_mb
from bench.lab.udp_drops import UdpDrops, between, parse_snmp_rcvbuf_errors, parse_socket_drops
from bench.measure import RunRecord
from bench.profile import (
    call_tree,
    flame_boxes,
    parse_collapsed,
    top_functions,
    top_text,
    write_flame_svg,
)
from bench.report.analysis import mbit_per_cpu_second, summarize, system_order, udp_drop_percent
from bench.report.tables import ceiling_table, profiles_section, results_markdown
from bench.runner import CEILING_UDP_LEN, Options, count_runs, flows_for, plan_for
from bench.scenarios import ALIASES, SCENARIOS, resolve
from bench.systems.wireguard_go import KeyPair, interface_names, uapi_errno, uapi_set

DATA = Path(__file__).parent / "data"

# RFC 7748, section 6.1: Alice's key pair.
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


# -- wireguard-go ----------------------------------------------------------


def test_x25519_public_key_matches_rfc7748() -> None:
    pair = KeyPair.from_private(bytes.fromhex(ALICE_PRIVATE))
    assert pair.public.hex() == ALICE_PUBLIC
    # Clamped as `wg genkey` does.
    assert pair.private[0] & 7 == 0 and pair.private[31] & 0xC0 == 0x40
    with pytest.raises(ValueError):
        KeyPair.from_private(b"short")


def test_generated_keys_differ() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    assert a.private != b.private and len(a.public) == 32


def test_uapi_set_request() -> None:
    text = uapi_set(b"\x01" * 32, 51820, b"\x02" * 32, "10.201.0.2/32", "10.0.0.2:51820")
    assert text == (
        "set=1\n"
        f"private_key={'01' * 32}\n"
        "listen_port=51820\n"
        "replace_peers=true\n"
        f"public_key={'02' * 32}\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.201.0.2/32\n"
        "endpoint=10.0.0.2:51820\n"
        "\n"
    )
    assert "endpoint" not in uapi_set(b"\x01" * 32, 1, b"\x02" * 32, "10.201.0.1/32")


def test_uapi_errno() -> None:
    assert uapi_errno("errno=0\n\n") == 0
    assert uapi_errno("protocol_version=1\nerrno=22\n\n") == 22
    for bad in ("", "errno=x\n\n", "hello\n\n"):
        with pytest.raises(ValueError):
            uapi_errno(bad)


def test_interface_names_unique_per_lab_and_short() -> None:
    a = interface_names(LabNames.for_prefix("sb1234", 2))
    b = interface_names(LabNames.for_prefix("sb5678", 2))
    assert a == ("sb1234wgc", "sb1234wgs")
    assert not set(a) & set(b)
    assert all(len(n) <= 15 for n in a)


# -- nftables loss ---------------------------------------------------------


def test_nft_loss_ruleset() -> None:
    rules = nft_loss_ruleset("loss0", "sb1234s0", 0.01)
    assert 'hook ingress device "sb1234s0"' in rules
    assert "meta protocol ip numgen random mod 1000000 < 10000 counter drop" in rules
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            nft_loss_ruleset("loss0", "x", bad)


def test_nft_lab_needs_no_middle_and_refuses_delay(tmp_path: Path) -> None:
    names = LabNames.for_prefix("sb0000", 2)
    lossy = (LinkSpec.symmetric(None, loss=0.01),) * 2
    lab = Lab(names, lossy, tmp_path, impairment="nftables", topology="local")
    assert not lab.impaired and not lab.via_middle and not lab.uses_emulator
    assert "nftables" in lab.impairment_used
    # The same links without nftables would need the (slow) emulator.
    assert Lab(names, lossy, tmp_path).uses_emulator
    delayed = (LinkSpec(Direction(delay_ms=5, loss=0.01), Direction()),) * 2
    with pytest.raises(ValueError, match="no delay"):
        Lab(names, delayed, tmp_path, impairment="nftables", topology="local")


# -- scenarios, flows, options --------------------------------------------


def test_ceiling_scenarios() -> None:
    assert ALIASES["ceiling"] == ("ceiling-1", "ceiling-2", "ceiling-8", "ceiling-lossy")
    assert len(SCENARIOS["ceiling-8"].links) == 8
    lossy = SCENARIOS["ceiling-lossy"]
    assert lossy.kind == "ceiling" and lossy.impairment == "nftables"
    assert all(s.up.loss == s.down.loss == 0.01 and s.up.rate_mbit is None for s in lossy.links)


@pytest.mark.parametrize(
    ("text", "mbit"),
    [("600M", 600.0), ("1.5G", 1500.0), ("800k", 0.8), ("2000000", 2.0), ("600Mbit/s", 600.0)],
)
def test_parse_rate(text: str, mbit: float) -> None:
    assert parse_rate_mbit(text) == pytest.approx(mbit)


@pytest.mark.parametrize("text", ["", "fast", "0M", "-5M", "infG", "nanM"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate_mbit(text)


def test_udp_flows_ceiling_vs_shaped() -> None:
    (ceiling,) = flows_for(SCENARIOS["ceiling-2"], ["udp"], udp_rate_mbit=600)
    assert (ceiling.udp_rate_mbit, ceiling.udp_len) == (600, CEILING_UDP_LEN) == (600, 1372)
    assert ceiling.label == "udp600M-1372B"
    cmd = client_command("10.201.0.2", 5201, 5, ceiling, None)
    assert cmd[cmd.index("-b") + 1] == "600M" and cmd[cmd.index("-l") + 1] == "1372"
    # Shaped scenarios keep 90 % of their links' sum and 1200-byte payloads.
    (shaped,) = flows_for(SCENARIOS["equal"], ["udp"], udp_rate_mbit=600)
    assert (shaped.udp_rate_mbit, shaped.udp_len, shaped.label) == (9.0, 1200, "udp9M")
    (forced,) = flows_for(SCENARIOS["ceiling-1"], ["udp"], udp_len=1400)
    assert forced.udp_len == 1400 and forced.label == "udp1000M-1400B"


def _options(*argv: str) -> Options:
    parser = build_parser()
    return options_from(parser.parse_args(list(argv)), parser)


def test_cli_issue7_command() -> None:
    opts = _options(
        "run",
        "ceiling",
        "--systems",
        "link,wireguard-go,stripe",
        "--flows",
        "tcp,udp",
        "--udp-rate",
        "600M",
    )
    assert [s.name for s in opts.scenarios] == list(ALIASES["ceiling"])
    assert opts.udp_rate_mbit == 600.0 and opts.udp_len is None and opts.profile == "off"
    assert opts.systems == ["link", "wireguard-go", "stripe"]
    assert _options("run", "ceiling-2", "--udp-len", "1400").udp_len == 1400


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "ceiling-2", "--udp-rate", "lots"],
        ["run", "ceiling-2", "--udp-len", "8"],
        ["run", "ceiling-2", "--native"],  # only when profiling
    ],
)
def test_cli_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _options(*argv)


def test_cli_profile_defaults() -> None:
    opts = _options("profile", "ceiling-2")
    assert opts.profile == "all" and not opts.profile_native
    assert (opts.repeat, opts.seconds, opts.systems, opts.schedulers) == (
        1,
        10.0,
        ["stripe"],
        ["adaptive"],
    )
    assert _options("profile", "ceiling-1", "--seconds", "5", "--native").profile_native
    extra = _options("run", "ceiling-1", "--profile")
    plan = plan_for(extra.scenarios[0], extra)
    assert (extra.profile, plan.repeat, plan.seconds) == ("extra", 3, 20.0)


def test_ceiling_run_count_includes_wireguard_go() -> None:
    opts = Options(resolve(["ceiling-2"]), repeat=3, flows=["tcp", "udp"], schedulers=["adaptive"])
    # link0 + wireguard-go + stripe-adaptive, two flows, three repeats.
    assert count_runs(opts) == 3 * 2 * 3
    # --profile: one more (profiled) stripe run per flow.
    opts.profile = "extra"
    assert count_runs(opts) == 3 * 2 * 3 + 2


# -- efficiency, memory, summaries, report ----------------------------------


def test_mbit_per_cpu_second() -> None:
    cpu = {"stripe-server": 2.0, "stripe-client": 4.0, "idle": 0.0}
    assert mbit_per_cpu_second(8000.0, cpu) == {"stripe-server": 4000.0, "stripe-client": 2000.0}
    assert mbit_per_cpu_second(None, cpu) == {} and mbit_per_cpu_second(0.0, cpu) == {}


def test_vm_hwm() -> None:
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n"
    assert vm_hwm_mb(status) == pytest.approx(52.4)
    assert vm_hwm_mb("Name:\tkthreadd\n") is None


def test_parse_received_megabits() -> None:
    tcp = parse((DATA / "iperf3-tcp.json").read_text())
    assert tcp.received_mbit == pytest.approx(4564616 * 8 / 1e6)
    assert parse("garbage").received_mbit is None


def _ceiling_record(system: str, goodput: float, flow: str = "tcp", **kw: Any) -> dict[str, Any]:
    rec = RunRecord(system, flow, None, 10, goodput_mbit=goodput, link_share=[1.0, 0.0])
    return rec.to_json() | {"scenario": "ceiling-2", "repeat": 1} | kw


def test_summary_efficiency_median_and_peak_rss_max() -> None:
    runs = [
        _ceiling_record(
            "stripe-adaptive",
            g,
            repeat=i,
            mbit_per_cpu_s={"stripe-server": e, "stripe-client": e + 100},
            peak_rss_mb={"stripe-server": rss, "stripe-client": 40.0},
        )
        for i, (g, e, rss) in enumerate([(900, 1000, 50.0), (1000, 1200, 61.5), (950, 1100, 55.0)])
    ]
    (s,) = summarize(runs)
    assert s.mbit_per_cpu_s == {"stripe-client": 1200.0, "stripe-server": 1100.0}
    assert s.peak_rss_mb == {"stripe-client": 40.0, "stripe-server": 61.5}


def test_ceiling_table_ratios_and_processes() -> None:
    records = [
        _ceiling_record("link0", 20000.0),
        _ceiling_record(
            "wireguard-go",
            400.0,
            cpu_percent={"wireguard-go-server": 80.0, "wireguard-go-client": 90.0},
        ),
        _ceiling_record(
            "stripe-adaptive",
            1600.0,
            cpu_percent={"stripe-server": 95.0, "stripe-client": 99.0, "emulator": 1.0},
            mbit_per_cpu_s={"stripe-server": 1684.2},
            peak_rss_mb={"stripe-server": 61.5},
        ),
    ]
    summaries = summarize(records)
    table = "\n".join(ceiling_table(summaries))
    row = next(line for line in table.splitlines() if line.startswith("| stripe-adaptive"))
    assert "| 0.08 | 4.00 |" in row  # x link0, x wireguard-go
    assert "client 99 / server 95" in row and "emulator" not in row
    assert "server 1684" in row and "server 61.5" in row
    wg = next(line for line in table.splitlines() if line.startswith("| wireguard-go"))
    assert "client 90 / server 80" in wg
    assert system_order("link0") < system_order("wireguard-go") < system_order("stripe-adaptive")
    md = results_markdown(records, {"command": "x", "profiled": "all", "profiles": []})
    assert "Mbit per CPU-s" in md and "under py-spy" in md


def test_profiles_section_links() -> None:
    assert profiles_section([]) == []
    lines = profiles_section(["profiles/ceiling-2/run/stripe-server.txt"])
    assert any(
        "(profiles/ceiling-2/run/stripe-server.txt)" in x
        and "(profiles/ceiling-2/run/stripe-server.svg)" in x
        for x in lines
    )


# -- profile ----------------------------------------------------------------

COLLAPSED = """\
main (m.py:1);loop (m.py:5);send (m.py:9) 60
main (m.py:1);loop (m.py:5);recv (m.py:20);decrypt (m.py:30) 30
main (m.py:1);loop (m.py:5) 8
main (m.py:1);walk (m.py:40);walk (m.py:40) 2
not a sample line
"""


def test_parse_collapsed_and_top_functions() -> None:
    stacks = parse_collapsed(COLLAPSED)
    assert sum(stacks.values()) == 100 and len(stacks) == 4
    top = {f.function: f for f in top_functions(stacks)}
    assert top["send (m.py:9)"].self_samples == 60
    assert top["loop (m.py:5)"].self_samples == 8 and top["loop (m.py:5)"].total_samples == 98
    assert top["main (m.py:1)"].total_samples == 100
    # Recursion counts once per sample.
    assert top["walk (m.py:40)"].total_samples == 2
    first = top_functions(stacks, 1)[0]
    assert first.function == "send (m.py:9)"
    text = top_text(stacks, "stripe-server")
    assert text.startswith("stripe-server: 100 samples")
    assert "   60.0    60.0  send (m.py:9)" in text
    assert "0 samples" in top_text({}, "empty")


def test_flame_layout() -> None:
    root = call_tree(parse_collapsed(COLLAPSED))
    assert root.samples == 100 and root.children["main (m.py:1)"].samples == 100
    boxes = flame_boxes(root, min_share=0.05)
    by_name = {(name, depth): (x, width) for x, depth, width, name in boxes}
    assert by_name[("all", 0)] == (0.0, 1.0)
    assert by_name[("loop (m.py:5)", 2)][1] == pytest.approx(0.98)
    # Children sit side by side inside their parent.
    recv_x, recv_w = by_name[("recv (m.py:20)", 3)]
    send_x, send_w = by_name[("send (m.py:9)", 3)]
    assert recv_x == pytest.approx(0.0) and send_x == pytest.approx(recv_w)
    assert (recv_w, send_w) == (pytest.approx(0.3), pytest.approx(0.6))
    assert ("walk (m.py:40)", 2) not in by_name  # 2 % < 5 %
    assert flame_boxes(call_tree({})) == []


def test_flame_svg(tmp_path: Path) -> None:
    path = tmp_path / "flame.svg"
    write_flame_svg(parse_collapsed(COLLAPSED), path, "stripe-client: 100 samples")
    svg = path.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


# -- where UDP loss happened ------------------------------------------------

SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
Udp: 161661 0 2302 1 2302 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
UdpLite: 0 0 0 0 0 0 0
"""


def test_parse_udp_stats() -> None:
    assert parse_snmp_rcvbuf_errors(SNMP) == 2302
    with pytest.raises(ValueError):
        parse_snmp_rcvbuf_errors("Ip: a\nIp: 1\n")
    tables = (DATA / "proc-net-udp.txt").read_text()  # udp, then udp6
    assert parse_socket_drops(tables) == {41001: 7, 41002: 0, 41003: 3}
    assert parse_socket_drops("") == {}


def test_udp_drops_split_tunnel_sockets_from_iperf3() -> None:
    # The tunnel's sockets 1 and 2 were open throughout; 3 is gone (iperf3's
    # test socket would not even be in the first read); 4 is new.
    before = UdpDrops(100, {1: 5, 2: 0, 3: 9})
    after = UdpDrops(160, {1: 15, 2: 20, 4: 1})
    assert between(before, after) == {"all": 60, "tunnel_sockets": 30}


def test_udp_drop_percent_and_summary() -> None:
    runs = [
        _ceiling_record(
            "link0",
            550.0,
            flow="udp600M-1372B",
            repeat=i,
            udp_drops={"all": d, "tunnel_sockets": 0},
            udp_packets=100_000,
        )
        for i, d in enumerate((2000, 3000, 4000))
    ]
    assert udp_drop_percent(runs[0]) == {"iperf3": 2.0, "tunnel": 0.0}
    assert udp_drop_percent(_ceiling_record("link0", 1.0)) == {}
    (s,) = summarize(runs)
    assert s.udp_drop_percent == {"iperf3": 3.0, "tunnel": 0.0}
    s.lost_percent_median = 3.1
    row = next(r for r in ceiling_table([s]) if r.startswith("| link0"))
    assert "| 3.10 (3.00 / 0.00) |" in row
