"""``python -m bench attack``: the attacker's pieces, the accounting, the report.

Everything but the last test needs no root; the last one runs the whole
bench briefly (3 s flows, 1 repeat) in namespaces.
"""

from __future__ import annotations

import json
import random
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from tests.bench.bench_support import lab_skip_reason

from bench.__main__ import attack_options_from, build_parser
from bench.attack import flood
from bench.attack.records import PhaseRecord
from bench.attack.report import (
    accounting,
    compact,
    flood_rates,
    goodput_ratio,
    results_markdown,
    summarize,
    summary_line,
    verdict,
)
from bench.attack.runner import (
    MAX_FLOOD_PACKETS,
    AttackLab,
    AttackOptions,
    counter_increase,
    initiations,
    link_packets,
    new_prefix,
    run_attack,
)
from bench.lab import list_namespaces
from bench.systems.stripe_config import Keys, client_config, server_config
from stripe import wire
from stripe.noise import encode_key, generate_keypair

# -- the attacker (bench.attack.flood) -----------------------------------------


def test_parse_mix() -> None:
    assert flood.parse_mix("replay:4, init:1") == {
        "replay": 4,
        "forged": 0,
        "malformed": 0,
        "init": 1,
    }
    for bad, why in (
        ("replay:4,nope:1", "not one of"),
        ("replay", "KIND:WEIGHT"),
        ("replay:-1", "KIND:WEIGHT"),
        ("replay:0,init:0", "nothing to send"),
    ):
        with pytest.raises(ValueError, match=why):
            flood.parse_mix(bad)


def test_the_forgers_header_is_stripes() -> None:
    assert flood.TRANSPORT_HEADER.format == wire.TRANSPORT_HEADER.format
    assert flood.DATA_TYPE == wire.MessageType.DATA
    assert flood.AEAD_TAG_BYTES == wire.AEAD_TAG_SIZE


def _data_datagram(counter: int, link_seq: int = 7, body: int = 100) -> bytes:
    header = wire.TRANSPORT_HEADER.pack(4, 1, 3, 0xABCD, counter, link_seq, 55, 1)
    return header + bytes(body + wire.AEAD_TAG_SIZE)


def test_forge_keeps_the_session_moves_the_counter_randomizes_the_rest() -> None:
    original = _data_datagram(1000, link_seq=0xFFFF_FFF0)
    forged = flood.forge(original, random.Random(1))
    assert forged is not None and len(forged) == len(original)
    mtype, link, mask, receiver, counter, _seq, _sent, _gap = wire.TRANSPORT_HEADER.unpack_from(
        forged)
    assert (mtype, link, mask, receiver) == (4, 1, 3, 0xABCD)
    low, high = flood.FORGED_COUNTER_AHEAD
    assert 1000 + low <= counter < 1000 + high  # a link_seq near 2**32 wraps, no error
    assert forged[wire.TRANSPORT_HEADER_SIZE :] != original[wire.TRANSPORT_HEADER_SIZE :]
    assert flood.forge(b"\x01" + original[1:], random.Random(1)) is None  # not data
    assert flood.forge(original[:30], random.Random(1)) is None  # too short


def test_malformed_are_short() -> None:
    rng = random.Random(2)
    sizes = [len(flood.malformed(rng)) for _ in range(500)]
    assert min(sizes) == 0 and max(sizes) < flood.MALFORMED_MAX_BYTES


def _ipv4_udp(dport: int, payload: bytes, proto: int = 17, ihl: int = 5) -> bytes:
    ip = bytearray(ihl * 4)
    ip[0] = 0x40 | ihl
    ip[9] = proto
    return bytes(ip) + struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload


def test_udp_payload() -> None:
    assert flood.udp_payload(_ipv4_udp(5000, b"abc"), 5000) == b"abc"
    assert flood.udp_payload(_ipv4_udp(5000, b"abc", ihl=6), 5000) == b"abc"
    assert flood.udp_payload(_ipv4_udp(5001, b"abc"), 5000) is None
    assert flood.udp_payload(_ipv4_udp(5000, b"abc", proto=6), 5000) is None
    assert flood.udp_payload(b"\x60" + bytes(60), 5000) is None  # IPv6
    assert flood.udp_payload(b"\x45", 5000) is None


def test_plan_interleaves_by_weight_and_skips_what_it_cannot_send() -> None:
    material = flood.pools([_data_datagram(i) for i in range(10)], [], random.Random(0))
    assert material["init"] == [] and len(material["forged"]) == 256
    mix = {"replay": 3, "forged": 1, "malformed": 0, "init": 2}
    p = flood.plan(mix, material)
    assert p.per_round == {"replay": 3 * flood.ROUND_REPEAT, "forged": flood.ROUND_REPEAT}
    assert len(p.rounds) == flood.ROUNDS_PREBUILT
    for datagrams, kinds in zip(p.rounds, p.kinds, strict=True):
        assert len(datagrams) == p.round_len
        counts = {flood.KINDS[k]: kinds.count(k) for k in set(kinds)}
        assert counts == p.per_round
    # The replay pool is walked in order across rounds, not resent from its start.
    first = [d for d, k in zip(p.rounds[0], p.kinds[0], strict=True) if k == 0]
    assert first[:10] == material["replay"][:10]
    with pytest.raises(ValueError, match="nothing to send"):
        flood.plan({"init": 1}, material)


@pytest.fixture
def sink() -> Any:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    yield receiver
    receiver.close()


def _drain(receiver: socket.socket) -> int:
    n = 0
    try:
        while True:
            receiver.recv(2048)
            n += 1
    except TimeoutError:
        return n


def _small_plan() -> flood.Plan:
    material = flood.pools([_data_datagram(i) for i in range(4)], [b"i" * 148], random.Random(0))
    return flood.plan(dict(flood.DEFAULT_MIX), material)


def test_send_stops_at_its_packet_budget(sink: socket.socket) -> None:
    p = _small_plan()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        result = flood.send(sock, sink.getsockname(), p, 10.0, 10 * p.round_len + 5)
    assert result.stopped_by == "packets"
    assert result.sent == {k: 10 * n for k, n in p.per_round.items()}
    assert result.errors == dict.fromkeys(p.per_round, 0)
    assert sum(result.payload_bytes.values()) == sum(sum(r.values()) for r in p.round_bytes[:10])
    assert _drain(sink) == 10 * p.round_len


def test_send_stops_at_its_time_budget_and_paces(sink: socket.socket) -> None:
    p = _small_plan()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        result = flood.send(sock, sink.getsockname(), p, 0.3, MAX_FLOOD_PACKETS, pps=2000)
    assert result.stopped_by == "time"
    assert 0.3 <= result.elapsed_s < 1.0
    # Paced: never ahead of 2000/s (one round of slack), loosely not far behind.
    total = sum(result.sent.values())
    assert 100 <= total <= 2000 * result.elapsed_s + p.round_len


def test_send_stops_on_sigterm(sink: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flood._Stop, "requested", True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        result = flood.send(sock, sink.getsockname(), _small_plan(), 10.0, MAX_FLOOD_PACKETS)
    assert result.stopped_by == "signal" and sum(result.sent.values()) == 0


def test_send_counts_refused_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        calls = 0

        def sendto(self, data: bytes, target: tuple[str, int]) -> int:
            self.calls += 1
            if self.calls % 4 == 0:
                raise OSError(105, "No buffer space available")
            return len(data)

    p = _small_plan()
    result = flood.send(Refusing(), ("127.0.0.1", 9), p, 10.0, 4 * p.round_len)  # type: ignore[arg-type]
    assert sum(result.errors.values()) == p.round_len  # one in four
    assert sum(result.sent.values()) == 3 * p.round_len


def test_spec_round_trips() -> None:
    spec = flood.Spec(
        ("10.99.0.2", 5000), [b"\x04abc"], [b"\x01" * 148], {"replay": 2}, 12.5, 99, 1e4, 3
    )
    assert flood.Spec.from_json(spec.to_json()) == spec
    spoofed = flood.Spec(("10.99.0.2", 5000), [], [], {"malformed": 1}, 1.0, 9, 0.0, 1, 4000, 128)
    assert flood.Spec.from_json(spoofed.to_json()) == spoofed


def test_spoofed_sources_are_distinct_addresses_in_the_spoofed_net() -> None:
    import ipaddress
    sources = flood.spoofed_sources(4000)
    net = ipaddress.IPv4Network(flood.SPOOFED_NET)
    assert len(set(sources)) == 4000
    assert all(ipaddress.IPv4Address(s) in net for s in sources)
    assert ipaddress.IPv4Address(sources[0]) == net.network_address + 1
    with pytest.raises(ValueError):
        flood.spoofed_sources(0)


def test_spoofing_sender_takes_each_source_for_a_burst() -> None:
    sent: list[bytes] = []

    class Raw:
        def sendto(self, data: bytes, _addr: tuple[str, int]) -> int:
            sent.append(data)
            return len(data)

    sender = flood.SpoofingSender.__new__(flood.SpoofingSender)  # no raw socket: not root
    sources = flood.spoofed_sources(3)
    sender.sock = Raw()  # type: ignore[assignment]
    sender._headers = [bytes(12) + s + bytes([10, 99, 0, 2]) for s in sources]
    sender._burst, sender._sent = 2, 0
    for _ in range(7):
        sender.sendto(b"xyz", ("10.99.0.2", 5000))
    assert [d[12:16] for d in sent] == [sources[i] for i in (0, 0, 1, 1, 2, 2, 0)]
    assert sent[0][20:28] == bytes.fromhex("9c40138800 0b0000".replace(" ", ""))  # ports, len


def test_initiations_carry_a_valid_mac1_from_an_unknown_key() -> None:
    _, server_public = generate_keypair()
    inits = initiations(encode_key(server_public), 4)
    assert len({d[4:8] for d in inits}) == 4  # distinct sender indexes
    for data in inits:
        assert len(data) == wire.HANDSHAKE_INIT_SIZE
        assert wire.mac1_valid(data, wire.HANDSHAKE_INIT_MAC1_OFFSET, wire.mac1_key(server_public))


# -- the bench (bench.attack.runner) -------------------------------------------


def test_counters_and_link_packets() -> None:
    assert counter_increase({"replay": 5, "late": 2}, {"replay": 9, "late": 2, "short": 3}) == {
        "replay": 4,
        "short": 3,
    }
    status = {"peers": [{"links": [{"tx_packets": 5, "rx_packets": 1}, {"tx_packets": 7}]}]}
    assert link_packets(status, "tx_packets") == 12
    assert link_packets(status, "rx_packets") == 1
    assert link_packets({}, "rx_packets") == 0


def test_prefix_and_names_fit_ifnamsiz(tmp_path: Path) -> None:
    prefix = new_prefix()
    assert prefix.startswith("sa") and len(prefix) == 6
    alab = AttackLab.for_prefix(prefix, 2, 50.0, tmp_path)
    names = [alab.attacker_ns, alab.attacker_if, alab.server_if, *alab.lab.namespaces]
    assert all(n.startswith(prefix) and len(n) <= 15 for n in names)
    assert alab.lab.topology == "local"
    assert all(s.up.rate_mbit == 50.0 == s.down.rate_mbit for s in alab.lab.specs)


def test_flood_budgets() -> None:
    opts = AttackOptions(seconds=10)
    assert opts.flood_budget_s() > 10
    assert opts.flood_max_packets() == MAX_FLOOD_PACKETS
    paced = AttackOptions(seconds=10, flood_pps=1000)
    assert paced.flood_max_packets() == int(1000 * paced.flood_budget_s()) + 1
    assert AttackOptions(max_packets=7).flood_max_packets() == 7


def test_one_port_configs() -> None:
    keys = Keys("cp", "cP", "sp", "sP")
    names = AttackLab.for_prefix("sa0000", 2, 50.0, Path("/tmp")).names
    specs = AttackLab.for_prefix("sa0000", 2, 50.0, Path("/tmp")).lab.specs
    server = server_config(names, keys, "adaptive", "sa0000tun", one_port=True)
    assert "listen_port = 5000" in server and "[[link]]" not in server
    client = client_config(names, specs, keys, "adaptive", "sa0000tun", one_port=True)
    assert 'remote = "10.0.0.2:5000"' in client and 'remote = "10.1.0.2:5000"' in client
    assert 'remote = "10.1.0.2:5001"' in client_config(names, specs, keys, "adaptive", "t")


def test_cli_options() -> None:
    parser = build_parser()
    opts = attack_options_from(parser.parse_args(["attack"]), parser)
    assert (opts.repeat, opts.seconds, opts.links, opts.rate_mbit) == (3, 10.0, 2, 50.0)
    assert opts.flood_pps == 0 and opts.mix == flood.DEFAULT_MIX
    args = ["attack", "--flood-mix", "init:1", "--flood-pps", "5000", "--links", "1"]
    opts = attack_options_from(parser.parse_args(args), parser)
    assert opts.mix["init"] == 1 and opts.mix["replay"] == 0 and opts.flood_pps == 5000
    for bad in (["--flood-mix", "syn:1"], ["--links", "0"], ["--seconds", "0"], ["--rate", "-1"]):
        with pytest.raises(SystemExit):
            attack_options_from(parser.parse_args(["attack", *bad]), parser)


# -- the report (bench.attack.report) ------------------------------------------


def _record(repeat: int, phase: str, goodput: float, **extra: Any) -> dict[str, Any]:
    return PhaseRecord(repeat, phase, 10.0, goodput_mbit=goodput, **extra).to_json()


FLOOD = {
    "sent": {"replay": 1000, "init": 500},
    "bytes": {"replay": 1_000_000, "init": 74_000},
    "errors": {"replay": 0, "init": 0},
    "elapsed_s": 2.0,
    "stopped_by": "signal",
}


def _records() -> list[dict[str, Any]]:
    common = {"client_sent": 900, "server_accepted": 890}
    return [
        _record(1, "unattacked", 95.0, cpu_percent={"stripe-server": 20.0}, **common),
        _record(
            1,
            "attacked",
            85.0,
            cpu_percent={"stripe-server": 60.0, "flood": 99.0},
            cpu_seconds={"stripe-server": 6.0},
            drops={"replay": 990, "handshake_cookie_sent": 480, "unknown_peer": 20, "late": 3},
            socket_drops=10,
            flood=FLOOD,
            **common,
        ),
        _record(2, "unattacked", 97.0, cpu_percent={"stripe-server": 22.0}, **common),
        _record(
            2,
            "attacked",
            91.0,
            cpu_percent={"stripe-server": 70.0, "flood": 98.0},
            drops={"replay": 1000, "handshake_cookie_sent": 500},
            flood=FLOOD,
            **common,
        ),
    ]


def test_flood_rates_and_compact() -> None:
    rates = flood_rates(FLOOD)
    assert rates == ({"replay": 500.0, "init": 250.0}, 750.0, 4.3)
    assert flood_rates({}) is None and flood_rates({"sent": {}, "bytes": {}}) is None
    assert [compact(x) for x in (12, 12345, 2_500_000)] == ["12", "12.3k", "2.50M"]


def test_accounting_counts_unauthenticated_drops_and_unread_datagrams() -> None:
    attacked = _records()[1]
    a = accounting(attacked)
    # "late" is an authenticated drop: the client's, not the attacker's.
    assert a["unauthenticated_drops"] == 1490
    assert a["counted"] == 1500 and a["accounted_percent"] == 100.0
    assert a["authenticated_ok"]
    short = accounting(attacked | {"drops": {"replay": 750}, "socket_drops": 0})
    assert short["accounted_percent"] == 50.0
    forged_in = accounting(attacked | {"server_accepted": 901})
    assert not forged_in["authenticated_ok"]
    assert accounting(_records()[0])["accounted_percent"] is None  # no attack


def test_summaries_ratio_and_verdict() -> None:
    records = _records()
    summaries = summarize(records)
    base, hit = summaries
    assert (base.phase, hit.phase) == ("unattacked", "attacked")
    assert (base.goodput_median, hit.goodput_median) == (96.0, 88.0)
    assert hit.flood_pps == {"replay": 500.0, "init": 250.0} and hit.flood_pps_total == 750.0
    assert base.flood_pps_total is None
    assert hit.cpu_percent["stripe-server"] == 65.0
    assert hit.drops["replay"] == 995.0
    assert goodput_ratio(summaries) == round(88 / 96, 3)
    v = verdict(records, summaries)
    assert v.ratio_met and v.accounted and v.authenticated_ok
    assert not v.notes  # socket drops, but every datagram accounted for
    short = [r | {"drops": {"replay": 100}} if r["phase"] == "attacked" else r for r in records]
    v = verdict(short, summarize(short))
    assert v.accounted is False and v.worst_accounted_percent is not None
    assert v.notes  # socket drops and a shortfall: the GRO caveat is stated
    failed = [r | {"goodput_mbit": 50.0} if r["phase"] == "attacked" else r for r in records]
    assert not verdict(failed, summarize(failed)).ratio_met
    # Flows the flood killed count as what they carried, not as missing.
    attacked = [r for r in records if r["phase"] == "attacked"]
    died = [r | {"goodput_mbit": 0.0, "error": "iperf3 client timed out"}
            if r is not attacked[-1] else r for r in records]
    assert summarize(died)[1].goodput_median == 45.5  # (0 + 91) / 2, not 91
    assert not verdict(died, summarize(died)).ratio_met


def test_results_markdown_and_summary_line(tmp_path: Path) -> None:
    records = _records()
    meta = {
        "command": "python -m bench attack",
        "options": {"links": 2, "rate_mbit": 50.0, "seconds": 10.0, "mix": flood.DEFAULT_MIX},
        "captured": 300,
    }
    text = results_markdown(records, meta)
    assert "| unattacked | 96.00 [95.00-97.00] | 1.00 | 21 |" in text
    assert "| attacked | 88.00 [85.00-91.00] | 0.92 | 65 |" in text
    assert "replay 500 / init 250" in text and "750, 4.3" in text
    assert "(issue 5 asks >= 0.80: yes)" in text
    assert "## Per flow" in text and "| 1 | attacked | 85.00 | 6.00 (60) | 1500 |" in text
    line = summary_line(records, tmp_path)
    assert line.startswith("attack: goodput 96.0 Mbit/s unattacked, 88.0 attacked (x0.92")
    assert "flood 750 pkt/s" in line and "all dropped: yes" in line


# -- the whole bench, briefly (root) -------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(lab_skip_reason() is not None, reason=lab_skip_reason() or "")
def test_attack_bench_runs_both_phases(tmp_path: Path) -> None:
    # Paced, so a CI machine is not saturated by the attacker: the figures are
    # the full run's business, this checks the machinery.
    opts = AttackOptions(repeat=1, seconds=3.0, flood_pps=20_000, capture=100, out=tmp_path)
    out = run_attack(opts)
    meta = json.loads((out / "meta.json").read_text())
    assert not [ns for ns in list_namespaces() if ns.startswith(meta["prefix"])]
    assert meta["captured"] > 0
    records = [json.loads(p.read_text()) for p in sorted((out / "raw").glob("*.json"))]
    assert [r["phase"] for r in records] == ["attacked", "unattacked"]  # sorted by name
    base = next(r for r in records if r["phase"] == "unattacked")
    hit = next(r for r in records if r["phase"] == "attacked")
    assert not base["error"] and not hit["error"], (base["error"], hit["error"])
    assert base["goodput_mbit"] > 0 and hit["goodput_mbit"] > 0
    assert all(hit["flood"]["sent"][k] > 0 for k in flood.KINDS), hit["flood"]
    assert not base["flood"]
    a = accounting(hit)
    assert a["authenticated_ok"] and a["counted"] > 0
    text = (out / "results.md").read_text()
    assert "| unattacked |" in text and "| attacked |" in text
