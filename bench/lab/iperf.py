"""iperf3 runs between lab namespaces, and what we read from their JSON."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lab.procs import Proc
from bench.lab.sh import in_ns

# UDP payload that fits a 1400-byte tunnel MTU with IPv4+UDP headers, so the
# UDP test never measures IP fragmentation.
UDP_PAYLOAD_BYTES = 1200
IPV4_UDP_HEADERS = 28
# Beyond the test itself: connection set-up and result exchange.
CLIENT_SLACK_S = 25.0
MIN_INTERVAL_S = 0.5


@dataclass
class Flow:
    """What traffic to offer: one TCP flow, N TCP flows, or UDP at a rate."""

    kind: str = "tcp"  # "tcp" | "udp"
    parallel: int = 1
    udp_rate_mbit: float = 0.0
    udp_len: int = UDP_PAYLOAD_BYTES  # iperf3 -l: UDP payload bytes per datagram

    @property
    def label(self) -> str:
        if self.kind == "udp":
            size = "" if self.udp_len == UDP_PAYLOAD_BYTES else f"-{self.udp_len}B"
            return f"udp{self.udp_rate_mbit:g}M{size}"
        return "tcp" if self.parallel == 1 else f"tcp-x{self.parallel}"


RATE_SUFFIXES = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}


def parse_rate_mbit(text: str) -> float:
    """A rate as iperf3 -b takes it (bits/s, suffix K, M or G: ``600M``,
    ``1.5G``), in Mbit/s; ValueError with the reason otherwise."""
    value = text.strip().upper().removesuffix("BIT/S").removesuffix("BPS")
    suffix = value[-1:] if value[-1:] in ("K", "M", "G") else ""
    try:
        number = float(value.removesuffix(suffix))
    except ValueError:
        raise ValueError(f"{text!r} is not a rate like 600M or 1.5G") from None
    if not 0 < number < float("inf"):
        raise ValueError(f"{text!r}: the rate must be positive")
    return number * RATE_SUFFIXES[suffix]


@dataclass
class IperfResult:
    goodput_mbit: float  # receiver side
    retransmits: int | None
    per_second_mbit: list[float]  # receiver side, one value per interval
    lost_percent: float | None = None  # UDP only
    error: str | None = None
    received_mbit: float | None = None  # megabits the receiver got in all
    udp_packets: int | None = None  # UDP only: datagrams sent
    raw: dict[str, Any] = field(default_factory=dict)


def start_server(
    ns: str, port: int, log: Path, wrapper: Sequence[str] = (), bind: str | None = None
) -> Proc:
    cmd = [*wrapper, "iperf3", "-s", "-J", "-p", str(port)] + (["-B", bind] if bind else [])
    proc = Proc("iperf3-server", cmd, ns, log)
    time.sleep(0.3)  # let it bind before the client connects
    return proc


def client_command(
    target: str,
    port: int,
    seconds: float,
    flow: Flow,
    cc: str | None,
    bind: str | None = None,
) -> list[str]:
    cmd = [
        "iperf3",
        "-c",
        target,
        "-p",
        str(port),
        "-t",
        str(seconds),
        "-i",
        "1",
        "-J",
        "--get-server-output",
    ]
    if flow.kind == "udp":
        cmd += ["-u", "-b", f"{flow.udp_rate_mbit}M", "-l", str(flow.udp_len)]
    elif cc:
        cmd += ["-C", cc]
    if flow.parallel > 1:
        cmd += ["-P", str(flow.parallel)]
    if bind:
        cmd += ["-B", bind]
    return cmd


def run_client(
    ns: str,
    target: str,
    port: int,
    seconds: float,
    flow: Flow,
    cc: str | None,
    bind: str | None = None,
    wrapper: Sequence[str] = (),
) -> IperfResult:
    cmd = [*wrapper, *client_command(target, port, seconds, flow, cc, bind)]
    try:
        proc = subprocess.run(
            in_ns(ns, cmd),
            capture_output=True,
            text=True,
            timeout=seconds + CLIENT_SLACK_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return IperfResult(0.0, None, [], error="iperf3 client timed out")
    return parse(proc.stdout, proc.stderr)


def parse(stdout: str, stderr: str = "") -> IperfResult:
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        return IperfResult(0.0, None, [], error=(stderr or stdout).strip()[:500] or "no output")
    if "error" in data and not data.get("end", {}).get("sum_received"):
        # A flow that died mid-run still reports its intervals.
        return IperfResult(0.0, None, _server_intervals(data), error=str(data["error"]), raw=data)
    end = data.get("end", {})
    per_second = _server_intervals(data)
    if "sum_received" in end:
        goodput = end["sum_received"]["bits_per_second"] / 1e6
    else:
        goodput = end.get("sum", {}).get("bits_per_second", 0.0) / 1e6
    retransmits = end.get("sum_sent", {}).get("retransmits")
    lost = packets = None
    if data.get("start", {}).get("test_start", {}).get("protocol") == "UDP":
        server_end = data.get("server_output_json", {}).get("end", {})
        lost = server_end.get("sum", end.get("sum", {})).get("lost_percent")
        packets = end.get("sum", {}).get("packets")
    received = end.get("sum_received", {}).get("bytes")
    return IperfResult(
        goodput,
        retransmits,
        per_second,
        lost,
        data.get("error"),
        raw=data,
        received_mbit=None if received is None else received * 8 / 1e6,
        udp_packets=packets,
    )


def _server_intervals(data: dict[str, Any]) -> list[float]:
    intervals = data.get("server_output_json", {}).get("intervals", [])
    # The last interval is often a sliver of a second whose rate means little.
    return [
        round(i["sum"]["bits_per_second"] / 1e6, 3)
        for i in intervals
        if i["sum"].get("seconds", 1.0) >= MIN_INTERVAL_S
    ]
