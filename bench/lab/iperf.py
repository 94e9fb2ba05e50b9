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


def udp_payload_share(payload_bytes: int) -> float:
    """The share of a UDP datagram's IP packet that is payload (what iperf3
    counts), the UDP and IPv4 headers being the rest."""
    return payload_bytes / (payload_bytes + IPV4_UDP_HEADERS)


UPLOAD = "up"  # the client sends
DOWNLOAD = "down"  # the server sends (iperf3 -R)


@dataclass
class Flow:
    """What traffic to offer: one TCP flow, N TCP flows, or UDP at a rate;
    ``direction`` "" (the client sends, unnamed), ``UPLOAD`` or ``DOWNLOAD``;
    the receiver reports every ``interval_s``."""

    kind: str = "tcp"  # "tcp" | "udp"
    parallel: int = 1
    udp_rate_mbit: float = 0.0
    udp_len: int = UDP_PAYLOAD_BYTES  # iperf3 -l: UDP payload bytes per datagram
    direction: str = ""
    interval_s: float = 1.0

    @property
    def label(self) -> str:
        if self.kind == "udp":
            size = "" if self.udp_len == UDP_PAYLOAD_BYTES else f"-{self.udp_len}B"
            base = f"udp{self.udp_rate_mbit:g}M{size}"
        else:
            base = "tcp" if self.parallel == 1 else f"tcp-x{self.parallel}"
        return f"{base}-{self.direction}" if self.direction else base

    @property
    def reverse(self) -> bool:
        return self.direction == DOWNLOAD


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
    per_second_mbit: list[float]  # receiver side, one value per second
    lost_percent: float | None = None  # UDP only
    error: str | None = None
    received_mbit: float | None = None  # megabits the receiver got in all
    udp_packets: int | None = None  # UDP only: datagrams sent
    # UDP only: the receiver's smoothed variation of the datagrams' transit
    # time (RFC 3550's interarrival jitter), what a media player buffers for.
    jitter_ms: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    # Receiver side at the reporting interval when it is under a second
    # (--interval 0.1): Mbit/s per bin of `bin_s`, from the flow's start.
    bins_mbit: list[float] = field(default_factory=list)
    bin_s: float | None = None


def start_server(
    ns: str,
    port: int,
    log: Path,
    wrapper: Sequence[str] = (),
    bind: str | None = None,
    interval_s: float = 1.0,
) -> Proc:
    """An iperf3 server; it reports every ``interval_s`` (it is the receiver
    of an upload, whose intervals the client fetches)."""
    cmd = [*wrapper, "iperf3", "-s", "-J", "-p", str(port)] + (["-B", bind] if bind else [])
    if interval_s != 1.0:
        cmd += ["-i", f"{interval_s:g}"]
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
        f"{flow.interval_s:g}",
        "-J",
        "--get-server-output",
    ]
    if flow.reverse:
        cmd.append("-R")
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
        per_second, bins, bin_s = _receiver_series(data)
        return IperfResult(0.0, None, per_second, error=str(data["error"]), raw=data,
                           bins_mbit=bins, bin_s=bin_s)
    end = data.get("end", {})
    per_second, bins, bin_s = _receiver_series(data)
    if "sum_received" in end:
        goodput = end["sum_received"]["bits_per_second"] / 1e6
    else:
        goodput = end.get("sum", {}).get("bits_per_second", 0.0) / 1e6
    retransmits = end.get("sum_sent", {}).get("retransmits")
    lost = packets = jitter = None
    if data.get("start", {}).get("test_start", {}).get("protocol") == "UDP":
        # The receiver's figures: the client's "sum_received" (iperf3 3.12
        # has them both ways); with -R the server's own "sum" is the
        # sender's (no loss, no jitter), so it is only the last resort.
        server_end = data.get("server_output_json", {}).get("end", {})
        sums = (end.get("sum_received"), end.get("sum"), server_end.get("sum"))
        received_sum: dict[str, Any] = next(
            (d for d in sums if d and "lost_percent" in d), {})
        lost = received_sum.get("lost_percent")
        jitter = received_sum.get("jitter_ms")
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
        jitter_ms=jitter,
        bins_mbit=bins,
        bin_s=bin_s,
    )


def _receiver_intervals(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The receiving end's interval sums: the server's (fetched with
    --get-server-output), or with -R the client's own."""
    if data.get("start", {}).get("test_start", {}).get("reverse"):
        intervals = data.get("intervals", [])
    else:
        intervals = data.get("server_output_json", {}).get("intervals", [])
    return [i["sum"] for i in intervals if "sum" in i]


def _receiver_series(data: dict[str, Any]) -> tuple[list[float], list[float], float | None]:
    """Receiver goodput per second (Mbit/s), and per reporting interval if
    that is shorter than a second (with the interval's length)."""
    sums = _receiver_intervals(data)
    lengths = sorted(float(s.get("seconds", 1.0)) for s in sums)
    nominal = lengths[len(lengths) // 2] if lengths else 1.0
    if nominal >= MIN_INTERVAL_S:
        # The last interval is often a sliver of a second whose rate means little.
        per_second = [round(s["bits_per_second"] / 1e6, 3) for s in sums
                      if s.get("seconds", 1.0) >= MIN_INTERVAL_S]
        return per_second, [], None
    bin_s = round(nominal, 3)
    full = [s for s in sums if float(s.get("seconds", 0.0)) >= bin_s / 2]
    bins = [round(s["bits_per_second"] / 1e6, 3) for s in full]
    seconds: dict[int, list[float]] = {}
    for s in full:
        second = seconds.setdefault(int(float(s.get("start", 0.0)) + 1e-6), [0.0, 0.0])
        second[0] += float(s.get("bytes", 0)) * 8
        second[1] += float(s.get("seconds", 0.0))
    per_second = [round(bits / length / 1e6, 3) for _, (bits, length) in sorted(seconds.items())
                  if length >= MIN_INTERVAL_S]
    return per_second, bins, bin_s
