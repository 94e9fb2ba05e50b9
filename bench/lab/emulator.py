"""Userspace link emulator: real-link behaviour between veth pairs.

The kernels here have no netem, so a middle namespace runs this process.
It bridges each link's two veths ``a`` (client side) and ``b`` (server side)
at layer 2 with AF_PACKET raw sockets.  Each direction (a lane) does, in
order: loss (random, or Gilbert-Elliott bursts), then optionally a
bottleneck (`linkmodel.Bottleneck`: a drop-tail queue emptied at the
delivery opportunities of a mahimahi trace or a constant rate, with
outages), then a propagation delay ``delay + U(-jitter, +jitter)``, then the
frame is written on the other side.  Without a bottleneck, rate limiting is
left to ``tbf`` on the middle's egress veths, and a frame that tbf's full
queue refuses (ENOBUFS) is a tail drop, counted.

Jitter keeps each direction FIFO (a frame is never released before the one
ahead of it), as on a real access link and as stripe's reordering assumes.
Timing granularity is epoll's 1 ms (mahimahi's traces are in ms too).

Non-IP frames (ARP) skip a lane's loss, bottleneck and outages and only
see its propagation delay when the lane has a bottleneck or burst loss: a
trace-driven or bursty link stands for a point-to-point access link, which
has no neighbour resolution that an outage, a full queue or a loss burst
could make fail (the kernel would then drop IP packets for seconds after
it, which no real cellular link does).

Usage (inside the middle namespace): ``python -m bench.lab.emulator
SPEC_JSON [SEED]`` where SPEC_JSON is a list of ``{"a": IF, "b": IF, "a_to_b": {...},
"b_to_a": {...}, "outages": [[start_s, duration_s, flush], ...]}`` with
direction fields ``delay_ms``, ``jitter_ms``, ``loss``, ``delay_steps``
(``[[start_s, delay_ms], ...]``: the delay from then on, on the trace
clock), and for a bottleneck ``trace`` (a mahimahi file) or
``constant_mbit``, with ``queue_bytes`` or ``queue_ms`` (at the trace's
mean rate), and ``ge`` (``{"p":, "r":, "loss_good":, "loss_bad":}``),
optionally only inside ``ge_windows`` (``[[start_s, duration_s], ...]``
since the last mark: loss bursts at chosen times).
Outages need a bottleneck in both directions.  Prints ``ready`` once bound.
SIGUSR1 marks a run: it prints one JSON line with each lane's per-second
counts since the last mark (``{"mark": n, "t0": monotonic, "seconds": ...,
"lanes": {lane: [{count: n}, ...]}, "delivered_100ms": {lane: [bytes per
100 ms]}}``) and restarts every trace and
outage schedule at that moment, so each run replays the traces from their
start.  SIGTERM/SIGINT stop it after one JSON line of totals.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from bench.lab.linkmodel import Bottleneck, GilbertElliott, Outage, Steps, Trace

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent itself
PACKET_IGNORE_OUTGOING = 23  # sockopt (Linux >= 4.20): skip those at the source
SOL_PACKET = 263
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# The emulator is the network: it should not queue behind the processes
# under test for the CPU (it uses a few % of one core at scenario rates).
EMULATOR_NICE = -10
MAX_FRAME_BYTES = 65535
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
IDLE_WAIT_S = 0.5


ETHERNET_HEADER_BYTES = 14
IP_ETHERTYPES = (b"\x08\x00", b"\x86\xdd")  # IPv4, IPv6
COUNTS = ("in", "out", "lost", "queue_drop", "outage_drop", "delivered_bytes")


@dataclass
class Lane:
    """One direction of one link: where frames go and what happens to them."""

    name: str
    out: socket.socket
    delay_s: float
    jitter_s: float
    loss: float
    ge: GilbertElliott | None = None
    bottleneck: Bottleneck | None = None
    delay_steps: Steps | None = None  # the delay (s) by trace time, if it steps
    # (start_s, end_s) since the last mark in which `ge` applies; () = always.
    ge_windows: tuple[tuple[float, float], ...] = ()
    last_release: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    # Per second since the last mark: the same counts.
    seconds: list[dict[str, int]] = field(default_factory=list)
    # Per 100 ms since the last mark: the bytes delivered.
    tenths: list[int] = field(default_factory=list)

    def bursting(self, t_s: float) -> bool:
        """Does the lane's burst loss apply at `t_s` since the last mark?"""
        return not self.ge_windows or any(a <= t_s < b for a, b in self.ge_windows)

    def count(self, what: str, now: float, t0: float, amount: int = 1) -> None:
        self.counts[what] += amount
        second = int(now - t0)
        while len(self.seconds) <= second:
            self.seconds.append(dict.fromkeys(COUNTS, 0))
        self.seconds[second][what] += amount
        if what == "delivered_bytes":
            tenth = int((now - t0) * 10)
            if len(self.tenths) <= tenth:
                self.tenths.extend([0] * (tenth + 1 - len(self.tenths)))
            self.tenths[tenth] += amount


def open_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # Older kernels lack the option: outgoing frames are then filtered by pkttype.
    with contextlib.suppress(OSError):
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    # Frames waiting in tbf stay charged to this socket's send buffer, so the
    # default (net.core.wmem_max) could refuse frames tbf would take; as root
    # the FORCE variants lift the cap.
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def _impairment(spec: object) -> tuple[float, float, float]:
    """(delay_s, jitter_s, loss) from one direction's spec; bad specs fail loudly."""
    if not isinstance(spec, dict):
        raise ValueError(f"a direction must be an object, not {spec!r}")
    delay_s = float(spec.get("delay_ms", 0.0)) / 1000
    jitter_s = float(spec.get("jitter_ms", 0.0)) / 1000
    loss = float(spec.get("loss", 0.0))
    if delay_s < 0 or jitter_s < 0 or not 0.0 <= loss <= 1.0:
        raise ValueError(f"bad impairment {spec!r}")
    return delay_s, jitter_s, loss


def _burst_loss(spec: dict[str, object]) -> GilbertElliott | None:
    ge = spec.get("ge")
    if ge is None:
        return None
    if not isinstance(ge, dict):
        raise ValueError(f"ge must be an object, not {ge!r}")
    model = GilbertElliott(float(ge["p"]), float(ge["r"]),  # type: ignore[arg-type]
                           float(ge.get("loss_good", 0.0)),  # type: ignore[arg-type]
                           float(ge.get("loss_bad", 1.0)))  # type: ignore[arg-type]
    if not all(0.0 <= x <= 1.0 for x in (model.p, model.r, model.loss_good, model.loss_bad)):
        raise ValueError(f"bad ge {ge!r}")
    return model


def bottleneck_from_spec(spec: dict[str, object], outages: tuple[Outage, ...]) -> Bottleneck | None:
    """The lane's trace or constant-rate queue, if it has one."""
    if "trace" in spec:
        trace = Trace.load(str(spec["trace"]))
    elif "constant_mbit" in spec:
        trace = Trace.constant(float(spec["constant_mbit"]))  # type: ignore[arg-type]
    else:
        return None
    if "queue_bytes" in spec:
        queue = int(spec["queue_bytes"])  # type: ignore[call-overload]
    else:
        queue_ms = float(spec.get("queue_ms", 250.0))  # type: ignore[arg-type]
        queue = int(trace.mean_rate_bps / 8 * queue_ms / 1000)
    if queue < 1500:
        raise ValueError(f"a bottleneck queue below one packet: {queue} bytes")
    return Bottleneck(trace, queue, outages)


def _ge_windows(spec: dict[str, object]) -> tuple[tuple[float, float], ...]:
    raw = spec.get("ge_windows")
    if not raw:
        return ()
    if not isinstance(raw, list) or "ge" not in spec:
        raise ValueError(f"ge_windows must be a list and go with ge, not {raw!r}")
    windows = tuple((float(start), float(start) + float(length)) for start, length in raw)
    if any(b <= a for a, b in windows):
        raise ValueError(f"bad ge_windows {raw!r}")
    return windows


def _delay_steps(spec: dict[str, object], delay_s: float) -> Steps | None:
    raw = spec.get("delay_steps")
    if not raw:
        return None
    if not isinstance(raw, list):
        raise ValueError(f"delay_steps must be a list, not {raw!r}")
    steps = tuple((float(start), float(ms) / 1000) for start, ms in raw)
    if any(delay < 0 for _, delay in steps):
        raise ValueError(f"bad delay_steps {raw!r}")
    return Steps(delay_s, steps)


def outages_from_spec(raw: object) -> tuple[Outage, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"outages must be a list, not {raw!r}")
    return tuple(Outage(float(start), float(length), bool(flush))
                 for start, length, flush in raw)


class Emulator:
    """All links' lanes in one epoll loop; frames wait in one release heap.

    Empty state: no frame held, every lane's ``last_release`` 0. Invariant:
    within a lane, frames leave in the order they arrived.
    """

    def __init__(self, spec: list[dict[str, object]], seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.lanes: dict[int, Lane] = {}  # input fd -> lane
        self.sockets: list[socket.socket] = []
        self.heap: list[tuple[float, int, Lane, bytes]] = []
        self.seq = 0
        self.t0 = time.monotonic()  # the last mark (or the start)
        self.marks = 0
        for link in spec:
            a = open_socket(str(link["a"]))
            b = open_socket(str(link["b"]))
            self.sockets += [a, b]
            outages = outages_from_spec(link.get("outages", []))
            for src, dst, key, label in (
                (a, b, "a_to_b", f"{link['a']}>"),
                (b, a, "b_to_a", f"{link['b']}>"),
            ):
                direction = link[key]
                delay_s, jitter_s, loss = _impairment(direction)
                assert isinstance(direction, dict)
                bottleneck = bottleneck_from_spec(direction, outages)
                if bottleneck is not None:
                    bottleneck.restart(self.t0)
                elif outages:
                    raise ValueError(f"link {link['a']}: outages need a bottleneck "
                                     "(trace or constant_mbit) in both directions")
                self.lanes[src.fileno()] = Lane(label, dst, delay_s, jitter_s, loss,
                                                _burst_loss(direction), bottleneck,
                                                _delay_steps(direction, delay_s),
                                                _ge_windows(direction))

    def mark(self) -> dict[str, object]:
        """The per-second counts since the last mark; traces restart now."""
        now = time.monotonic()
        record: dict[str, object] = {
            "mark": self.marks, "t0": self.t0, "seconds": now - self.t0,
            "lanes": {lane.name: lane.seconds for lane in self.lanes.values()},
            "delivered_100ms": {lane.name: lane.tenths for lane in self.lanes.values()},
        }
        self.marks += 1
        self.t0 = now
        for lane in self.lanes.values():
            lane.seconds = []
            lane.tenths = []
            if lane.bottleneck is not None:
                lane.bottleneck.restart(now)
        return record

    def _send(self, lane: Lane, frame: bytes, now: float, due: float) -> None:
        """Write a frame that was due out at ``due``; it counts then (the
        link's own time), not when this loop got to it a little later."""
        at = max(due, self.t0)  # due before the last mark: the mark's first moment
        try:
            lane.out.send(frame)
            lane.count("out", at, self.t0)
            lane.count("delivered_bytes", at, self.t0, len(frame) - ETHERNET_HEADER_BYTES)
        except OSError as exc:
            # ENOBUFS: tbf's queue is full, the frame is tail-dropped like
            # on a real bottleneck. ENETDOWN: link cut on the far side.
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN, errno.ENXIO):
                raise
            lane.count("queue_drop", now, self.t0)

    def _propagate(self, lane: Lane, frame: bytes, left: float, now: float) -> None:
        """A frame left the lane's bottleneck (or arrived, without one) at
        `left`: after the propagation delay it goes out."""
        jitter = self.rng.uniform(-lane.jitter_s, lane.jitter_s) if lane.jitter_s else 0.0
        delay = lane.delay_s if lane.delay_steps is None else lane.delay_steps.at(left - self.t0)
        release = max(left + max(0.0, delay + jitter), lane.last_release)
        lane.last_release = release
        if release <= now:
            self._send(lane, frame, now, release)
        else:
            self.seq += 1
            heapq.heappush(self.heap, (release, self.seq, lane, frame))

    def _serve(self, now: float) -> float | None:
        """Every bottleneck's opportunities up to `now`; the next one due."""
        due: float | None = None
        for lane in self.lanes.values():
            bottleneck = lane.bottleneck
            if bottleneck is None:
                continue
            flushed = bottleneck.flushed
            for left, frame in bottleneck.serve(now):
                self._propagate(lane, frame, left, now)  # type: ignore[arg-type]
            if bottleneck.flushed > flushed:
                lane.count("outage_drop", now, self.t0, bottleneck.flushed - flushed)
            at = bottleneck.next_time()
            if at is not None and (due is None or at < due):
                due = at
        return due

    def _receive(self, fd: int, sock: socket.socket, now: float) -> None:
        lane = self.lanes[fd]
        while True:
            try:
                frame, addr = sock.recvfrom(MAX_FRAME_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:
                    return
                raise
            if addr[2] == PACKET_OUTGOING:
                continue
            lane.count("in", now, self.t0)
            if (lane.bottleneck is not None or lane.ge is not None) and \
                    frame[12:14] not in IP_ETHERTYPES:
                self._propagate(lane, frame, now, now)  # ARP: see the module's doc
                continue
            if lane.ge is not None:
                lost = lane.bursting(now - self.t0) and lane.ge.lose(self.rng)
            else:
                lost = bool(lane.loss) and self.rng.random() < lane.loss
            if lost:
                lane.count("lost", now, self.t0)
                continue
            if lane.bottleneck is None:
                self._propagate(lane, frame, now, now)
                continue
            dropped = lane.bottleneck.offer(now, len(frame) - ETHERNET_HEADER_BYTES, frame)
            if dropped is not None:
                lane.count(dropped, now, self.t0)

    def run(self, stop: list[bool], marks: list[int]) -> None:
        """Until `stop[0]`; each time `marks[0]` grows, print a mark record."""
        poller = select.epoll()
        by_fd = {s.fileno(): s for s in self.sockets}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        # A signal (a mark) wakes the poll at once through this pipe.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        poller.register(wake_r, select.EPOLLIN)
        print("ready", flush=True)
        while not stop[0]:
            if marks[0] > self.marks:
                print(json.dumps(self.mark()), flush=True)
            now = time.monotonic()
            due = self._serve(now)
            while self.heap and self.heap[0][0] <= now:
                release, _, lane, frame = heapq.heappop(self.heap)
                self._send(lane, frame, now, release)
            if self.heap and (due is None or self.heap[0][0] < due):
                due = self.heap[0][0]
            timeout = due - now if due is not None else IDLE_WAIT_S
            try:
                events = poller.poll(max(0.0, timeout))
            except InterruptedError:
                continue
            now = time.monotonic()
            if events:
                # Opportunities that came while the poll slept belong to the
                # packets queued before it, not to those arriving now.
                self._serve(now)
            for fd, _ in events:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    continue
                self._receive(fd, by_fd[fd], now)

    def stats(self) -> dict[str, object]:
        return {p.name: p.counts for p in self.lanes.values()}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    seed = int(argv[1]) if len(argv) > 1 else 1
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, EMULATOR_NICE)
    emulator = Emulator(spec, seed)
    stop = [False]
    marks = [0]

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop[0] = True

    def on_mark(_signum: int, _frame: FrameType | None) -> None:
        marks[0] += 1

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_mark)
    try:
        emulator.run(stop, marks)
    finally:
        print(json.dumps(emulator.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
