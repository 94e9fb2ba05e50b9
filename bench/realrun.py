"""What a run over real links records beyond goodput (issue 17).

Right before the flow starts, the emulator's traces and outage schedules
restart (`Lab.mark`), so every system's run replays the same stretch of
every trace; a ping runs through the system's path during the flow (the
tunnel for stripe, the link itself for a plain link, link 0 for MPTCP,
whose ping is not MPTCP); when the flow ends, a second mark returns what
each link carried per second.  Each link's capacity per second comes from
its trace and outages (`Lab.capacity_mbit`).

All of it goes into the run record's ``real`` dict:
``{"direction": "up"|"down", "launch_offset_s": iperf3 started this long
after the mark, "flow_offset_s": its first receiver interval began this
long after the mark (`flow_start_s`), "ping": [[send time s from the mark,
rtt ms], ...], "ping_sent": n, "links": [{"capacity_mbit": [per second,
the flow's direction], "carried_mbit": [...], "reverse_carried_mbit": [the
other way], "carried_100ms_mbit": [the flow's direction, per 100 ms],
"drops": {queue_drop, outage_drop, lost: in the flow's direction}}],
"outages": [[link, start_s, duration_s, flush], ...]}``, and for a UDP
stream ``"udp_offer_mbit"`` and ``"udp_payload_bytes"`` (`bench.measure`
adds them); the report's figures (stalls, percentiles, transitions, a
UDP stream's deliverable) are computed from it in `bench.report.reallinks`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.lab import Lab, Proc
from bench.lab.iperf import DOWNLOAD

PING_INTERVAL_S = 0.2
PING_GRACE_S = 3.0  # ping's own deadline: this long after the flow's length
PING_LAST_REPLY_S = 1.5  # after the flow and the mark, wait this long for the last replies
PING_LINE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+).*time=([\d.]+) ms", re.MULTILINE)
PING_SENT = re.compile(r"(\d+) packets transmitted")


def parse_ping_times(out: str, t0_wall: float) -> tuple[list[list[float]], int]:
    """From ``ping -D -n`` output: ``[[send time - t0_wall (s), rtt ms], ...]``
    in order of sending, and how many were sent (0 if unknown)."""
    replies = []
    for stamp, _seq, rtt in PING_LINE.findall(out):
        rtt_ms = float(rtt)
        replies.append([round(float(stamp) - rtt_ms / 1000 - t0_wall, 3), rtt_ms])
    replies.sort()
    sent = PING_SENT.search(out)
    return replies, int(sent.group(1)) if sent else 0


def _per_second_mbit(seconds: list[dict[str, int]], key: str = "delivered_bytes") -> list[float]:
    return [round(s.get(key, 0) * 8 / 1e6, 3) for s in seconds]


EMULATOR_BIN_S = 0.1  # the emulator's finer delivered counts
MAX_START_LAG_S = 2.0  # iperf3's set-up (connections, parameters) takes less


def flow_start_s(receiver: list[float], bin_s: float | None, delivered: list[float],
                 launched_s: float) -> float:
    """When the receiver's first interval began, in seconds from the mark.

    iperf3 counts its intervals from its test start, a few round trips
    after it was launched (``launched_s``), and says not when that was: the
    answer is the shift of its receiver bins (Mbit/s per ``bin_s``) against
    what the links delivered in the flow's direction (``delivered``, Mbit/s
    per `EMULATOR_BIN_S` from the mark) that correlates best, from
    ``launched_s`` to `MAX_START_LAG_S` after it.  ``launched_s`` when
    that cannot be told (other bins, no data, flat series)."""
    if bin_s is None or abs(bin_s - EMULATOR_BIN_S) > 1e-6 or sum(receiver) <= 0:
        return launched_s
    first = int(launched_s / EMULATOR_BIN_S)
    best, best_shift = -2.0, None
    for shift in range(first, first + int(MAX_START_LAG_S / EMULATOR_BIN_S) + 1):
        window = delivered[shift:shift + len(receiver)]
        if len(window) < len(receiver) // 2:
            break
        try:
            score = statistics.correlation(receiver[:len(window)], window)
        except statistics.StatisticsError:
            continue
        if score > best:
            best, best_shift = score, shift
    return launched_s if best_shift is None else round(best_shift * EMULATOR_BIN_S, 3)


class RealRun:
    """One run's trace restart, ping and per-link records; `start` right
    before the flow, `finish` right after it."""

    def __init__(self, lab: Lab, address: str, seconds: float, direction: str,
                 workdir: Path) -> None:
        self.lab = lab
        self.address = address
        self.seconds = seconds
        self.direction = direction
        self.log = workdir / "ping.log"
        self.ping: Proc | None = None
        self.t0_mono = 0.0
        self.wall_minus_mono = 0.0
        self.flow_started = 0.0

    def start(self) -> None:
        """Restart the traces, start the ping; the flow starts right after."""
        self.lab.mark()  # what came before this run: not its figures
        self.t0_mono = time.monotonic()
        self.wall_minus_mono = time.time() - time.monotonic()
        deadline = int(self.seconds + PING_GRACE_S)
        self.ping = Proc(
            "ping",
            ["ping", "-D", "-n", "-i", f"{PING_INTERVAL_S:g}",
             "-c", str(int(self.seconds / PING_INTERVAL_S)), "-w", str(deadline), self.address],
            self.lab.names.client_ns,
            self.log,
        )
        self.flow_started = time.monotonic()

    def finish(self) -> dict[str, Any]:
        """The run's ``real`` record (see the module's doc)."""
        try:
            record = self.lab.mark()
        finally:
            if self.ping is not None:
                # The last replies may still come through deep queues; then
                # stop it (SIGINT: it prints its summary).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.ping.popen.wait(PING_LAST_REPLY_S)
                self.ping.stop(sig=signal.SIGINT)
        emulator_t0 = float(record["t0"])  # type: ignore[arg-type]
        # The emulator's clock is this machine's CLOCK_MONOTONIC, as ours.
        offset = self.flow_started - emulator_t0
        t0_wall = emulator_t0 + self.wall_minus_mono
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        ping, sent = parse_ping_times(text, t0_wall)
        lanes: dict[str, list[dict[str, int]]] = record.get("lanes", {})  # type: ignore[assignment]
        tenths: dict[str, list[int]] = record.get("delivered_100ms", {})  # type: ignore[assignment]
        n_seconds = max(1, int(self.seconds + offset + 0.999))
        up = self.direction != DOWNLOAD
        links = []
        for i in range(len(self.lab.specs)):
            up_lane, down_lane = self.lab.lane_names(i)
            forward, backward = (up_lane, down_lane) if up else (down_lane, up_lane)
            counts = lanes.get(forward, [])
            links.append({
                "capacity_mbit": self.lab.capacity_mbit(i, up, n_seconds),
                "carried_mbit": _per_second_mbit(counts)[:n_seconds],
                "reverse_carried_mbit": _per_second_mbit(lanes.get(backward, []))[:n_seconds],
                "carried_100ms_mbit": [round(b * 8 / 1e6 / EMULATOR_BIN_S, 3)
                                       for b in tenths.get(forward, [])],
                "drops": {key: sum(s.get(key, 0) for s in counts)
                          for key in ("queue_drop", "outage_drop", "lost")},
            })
        outages = [[i, o.start_s, o.duration_s, o.flush]
                   for i, spec in enumerate(self.lab.specs) for o in spec.outages
                   if o.start_s < self.seconds + offset]
        return {
            "direction": self.direction or "up",
            "launch_offset_s": round(offset, 3),
            "flow_offset_s": round(offset, 3),  # until `align` knows better
            "ping": ping,
            "ping_sent": sent,
            "links": links,
            "outages": outages,
        }


def align(real: dict[str, Any], receiver: list[float], bin_s: float | None) -> None:
    """Set ``real["flow_offset_s"]`` from the receiver's bins (`flow_start_s`)."""
    links = real.get("links") or []
    length = max((len(link.get("carried_100ms_mbit", [])) for link in links), default=0)
    delivered = [sum(link["carried_100ms_mbit"][k] for link in links
                     if k < len(link.get("carried_100ms_mbit", []))) for k in range(length)]
    real["flow_offset_s"] = flow_start_s(receiver, bin_s, delivered,
                                         float(real.get("launch_offset_s", 0.0)))
