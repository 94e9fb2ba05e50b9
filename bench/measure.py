"""One measurement: one system, one offered flow, on a lab that is up."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.lab import Counters, Lab, Proc, run, udp_drops
from bench.lab.iperf import Flow, client_command, parse, run_client, start_server
from bench.realrun import RealRun, align
from bench.report.analysis import mbit_per_cpu_second
from bench.systems import System

IPERF_PORT = 5201
EMULATOR = "emulator"
SAMPLE_INTERVAL_S = 1.0

# (seconds after the flow starts, description, action)
Event = tuple[float, str, Callable[[], None]]


@dataclass
class RunRecord:
    system: str
    flow: str
    cc: str | None
    seconds: float
    goodput_mbit: float = 0.0
    retransmits: int | None = None
    lost_percent: float | None = None
    per_second_mbit: list[float] = field(default_factory=list)
    packets_per_s: int = 0  # sent on all links by the client side
    link_bytes: list[int] = field(default_factory=list)  # tx+rx, client side
    link_share: list[float] = field(default_factory=list)
    link_series_mbit: list[list[float]] = field(default_factory=list)  # [second][link], tx
    cpu_percent: dict[str, float] = field(default_factory=dict)
    # Per process of the system: CPU seconds over the flow, megabits the
    # receiver got per CPU-second of that process, peak RSS (VmHWM) in MB.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    mbit_per_cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # UDP: receive-buffer drops in the server namespace during the flow, all
    # and at the tunnel's own sockets (bench.lab.udp_drops); datagrams sent.
    udp_drops: dict[str, int] = field(default_factory=dict)
    udp_packets: int | None = None
    jitter_ms: float | None = None  # UDP: the receiver's interarrival jitter (iperf3)
    rtt_idle_ms: float | None = None  # ping averages
    rtt_loaded_ms: float | None = None
    rtt_idle_p95_ms: float | None = None  # and 95th percentiles
    rtt_loaded_p95_ms: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    # The wall clock (Unix time) at the events' zero, to read them against
    # the systems' own logs (a link's DOWN against its cut).
    events_zero_unix: float | None = None
    quiet_wait_s: float = 0.0  # waited before the run for the links to go idle (Lab.wait_quiet)
    system_status: dict[str, Any] = field(default_factory=dict)  # e.g. stripe status --json
    # Receiver goodput per iperf3 interval when it is under a second, and its length.
    bins_mbit: list[float] = field(default_factory=list)
    bin_s: float | None = None
    real: dict[str, Any] = field(default_factory=dict)  # real links: see bench.realrun
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Sampler(threading.Thread):
    """Reads link counters once a second and fires timed events (link cuts)."""

    def __init__(self, lab: Lab, events: list[Event]) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.pending = sorted(events, key=lambda e: e[0])
        self.fired: list[tuple[float, str]] = []
        self.samples: list[list[Counters]] = []
        self.failure: str | None = None
        self.zero_unix: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        self.zero_unix = time.time()
        tick = 0
        while not self._halt.is_set():
            elapsed = time.monotonic() - start
            while self.pending and self.pending[0][0] <= elapsed:
                at, what, action = self.pending.pop(0)
                try:
                    action()
                    self.fired.append((round(time.monotonic() - start, 2), what))
                except Exception as exc:  # reported in the record, not lost in a thread
                    self.failure = f"event {what!r} at {at}s failed: {exc}"
            try:
                self.samples.append(self.lab.counters())
            except Exception as exc:
                self.failure = f"counter sampling failed: {exc}"
            tick += 1
            next_at = tick * SAMPLE_INTERVAL_S
            if self.pending:
                next_at = min(next_at, self.pending[0][0])
            self._halt.wait(max(0.0, next_at - (time.monotonic() - start)))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _cpu(lab: Lab, system: System) -> dict[str, float]:
    """CPU seconds of the system's processes, and of the link emulator: it must
    stay far from 100 % or it, not the system, would be the bottleneck."""
    cpu = system.cpu_seconds()
    if lab.emulator is not None:
        cpu[EMULATOR] = lab.emulator.cpu_seconds()
    return cpu


def measure(
    lab: Lab,
    system: System,
    flow: Flow,
    seconds: float,
    cc: str | None,
    workdir: Path,
    events: list[Event] | None = None,
    real_links: bool = False,
) -> RunRecord:
    """Start ``system``, run iperf3 across it, stop it; never raises on a failed run.

    ``real_links``: the lab's traces restart right before the flow, a ping
    runs through the system during it, and the record's ``real`` holds the
    per-second figures of `bench.realrun`."""
    record = RunRecord(system.name, flow.label, cc if flow.kind == "tcp" else None, seconds)
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        target = system.start(lab, workdir)
        server = start_server(
            lab.names.server_ns,
            IPERF_PORT,
            workdir / "iperf3-server.log",
            target.wrapper,
            target.server_bind,
            flow.interval_s,
        )
        before = lab.counters()
        drops_before = udp_drops.read(lab.names.server_ns) if flow.kind == "udp" else None
        cpu_before = _cpu(lab, system)
        sampler = Sampler(lab, events or [])
        real = None
        if real_links:
            real = RealRun(lab, target.address, seconds, flow.direction, workdir)
        started = time.monotonic()
        sampler.start()
        try:
            if real is not None:
                real.start()
            result = run_client(
                lab.names.client_ns,
                target.address,
                IPERF_PORT,
                seconds,
                flow,
                cc,
                target.bind,
                target.wrapper,
            )
        finally:
            sampler.stop()
            if real is not None:
                record.real = real.finish()
                if flow.kind == "udp":
                    record.real["udp_offer_mbit"] = flow.udp_rate_mbit
                    record.real["udp_payload_bytes"] = flow.udp_len
        wall = time.monotonic() - started
        after = lab.counters()
        if drops_before is not None:
            record.udp_drops = udp_drops.between(
                drops_before, udp_drops.read(lab.names.server_ns)
            )
            record.udp_packets = result.udp_packets
        cpu_after = _cpu(lab, system)
        record.goodput_mbit = round(result.goodput_mbit, 3)
        record.retransmits = result.retransmits
        record.lost_percent = result.lost_percent
        record.jitter_ms = result.jitter_ms
        record.per_second_mbit = result.per_second_mbit
        record.bins_mbit, record.bin_s = result.bins_mbit, result.bin_s
        if record.real:
            align(record.real, record.bins_mbit, record.bin_s)
        record.error = result.error or sampler.failure or system.problem()
        record.system_status = system.status()
        record.events = sampler.fired
        record.events_zero_unix = sampler.zero_unix
        record.link_bytes = [
            (a.tx_bytes - b.tx_bytes) + (a.rx_bytes - b.rx_bytes)
            for a, b in zip(after, before, strict=True)
        ]
        total = sum(record.link_bytes)
        record.link_share = [round(x / total, 4) if total else 0.0 for x in record.link_bytes]
        record.link_series_mbit = [
            [
                round((cur[i].tx_bytes - prev[i].tx_bytes) * 8 / 1e6 / SAMPLE_INTERVAL_S, 3)
                for i in range(len(cur))
            ]
            for prev, cur in zip(sampler.samples, sampler.samples[1:], strict=False)
        ]
        record.packets_per_s = round(
            sum(a.tx_packets - b.tx_packets for a, b in zip(after, before, strict=True)) / wall
        )
        used = {k: cpu_after.get(k, 0.0) - v for k, v in cpu_before.items()}
        record.cpu_percent = {k: round(100 * v / wall, 1) for k, v in used.items()}
        record.cpu_seconds = {k: round(v, 3) for k, v in used.items()}
        record.mbit_per_cpu_s = mbit_per_cpu_second(
            result.received_mbit, {k: v for k, v in used.items() if k != EMULATOR}
        )
        # Before stop(): VmHWM is gone with the process.
        record.peak_rss_mb = system.peak_rss_mb()
        (workdir / "iperf3.json").write_text(json.dumps(result.raw, indent=1))
    except Exception as exc:
        record.error = str(exc)
    finally:
        if server is not None:
            server.stop()
        system.stop()
    return record


PING_INTERVAL_S = 0.2
LOAD_SETTLE_S = 2.0


@dataclass(frozen=True)
class PingStats:
    avg_ms: float
    p95_ms: float
    replies: int


def parse_ping(out: str) -> PingStats | None:
    """Average (ping's own summary) and 95th percentile (nearest rank, over
    the replies' `time=` values) of a `ping -n` output; None without replies."""
    times = sorted(float(t) for t in re.findall(r"time=([\d.]+) ms", out))
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not times or match is None:
        return None
    p95 = times[max(math.ceil(0.95 * len(times)) - 1, 0)]
    return PingStats(float(match.group(1)), p95, len(times))


def _ping_stats(ns: str, addr: str, count: int) -> PingStats | None:
    out = run(
        ["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL_S), "-W", "2", addr],
        ns=ns,
        check=False,
        timeout_s=count * PING_INTERVAL_S + 10,
    ).stdout
    return parse_ping(out)


def measure_latency(
    lab: Lab, system: System, seconds: float, cc: str | None, workdir: Path
) -> RunRecord:
    """Ping RTT through ``system``, idle and while one TCP flow saturates it."""
    record = RunRecord(system.name, "ping", cc, seconds)
    workdir.mkdir(parents=True, exist_ok=True)
    server = client = None
    ns = lab.names.client_ns
    try:
        target = system.start(lab, workdir)
        # Warm up (ARP, stripe handshake), then the idle measurement.
        _ping_stats(ns, target.address, 2)
        count = max(5, int((seconds - LOAD_SETTLE_S) / PING_INTERVAL_S))
        idle = _ping_stats(ns, target.address, count)
        if idle is not None:
            record.rtt_idle_ms, record.rtt_idle_p95_ms = idle.avg_ms, idle.p95_ms
        server = start_server(
            lab.names.server_ns, IPERF_PORT, workdir / "iperf3-server.log", bind=target.server_bind
        )
        client = Proc(
            "iperf3-client",
            client_command(target.address, IPERF_PORT, seconds, Flow(), cc, target.bind),
            ns,
            workdir / "iperf3-client.log",
        )
        time.sleep(LOAD_SETTLE_S)
        loaded = _ping_stats(ns, target.address, count)
        if loaded is not None:
            record.rtt_loaded_ms, record.rtt_loaded_p95_ms = loaded.avg_ms, loaded.p95_ms
        client.popen.wait(seconds + 20)
        result = parse(client.log.read_text(errors="replace"))
        record.goodput_mbit = round(result.goodput_mbit, 3)
        record.retransmits = result.retransmits
        record.per_second_mbit = result.per_second_mbit
        if record.rtt_idle_ms is None or record.rtt_loaded_ms is None:
            record.error = "no ping replies"
    except Exception as exc:
        record.error = str(exc)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.stop()
        system.stop()
    return record
