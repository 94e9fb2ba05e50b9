"""Userspace link emulator: delay, jitter and random loss between veth pairs.

The kernels here have no netem, so a middle namespace runs this process.
It bridges each link's two veths ``a`` (client side) and ``b`` (server side)
at layer 2 with AF_PACKET raw sockets: every frame read on one side waits in
a release heap for ``delay + U(-jitter, +jitter)`` and is then written on the
other side, unless the seeded RNG drops it (``loss``). Rate limiting is not
done here: ``tbf`` on the middle's egress veths does it after the delay, and
a frame that tbf's full queue refuses (ENOBUFS) is a tail drop, counted.

Jitter keeps each direction FIFO (a frame is never released before the one
ahead of it), as on a real access link and as stripe's reordering assumes.
Timing granularity is epoll's 1 ms.

Usage (inside the middle namespace): ``python -m bench.lab.emulator SPEC_JSON``
where SPEC_JSON is a list of ``{"a": IF, "b": IF, "a_to_b": {...},
"b_to_a": {...}}`` with Direction fields ``delay_ms``, ``jitter_ms``,
``loss``. Prints ``ready`` once bound, and one JSON line of counters when
stopped with SIGTERM/SIGINT.
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


@dataclass
class Lane:
    """One direction of one link: where frames go and what happens to them."""

    name: str
    out: socket.socket
    delay_s: float
    jitter_s: float
    loss: float
    last_release: float = 0.0
    counts: dict[str, int] = field(
        default_factory=lambda: {"in": 0, "out": 0, "lost": 0, "queue_drop": 0}
    )


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
        for link in spec:
            a = open_socket(str(link["a"]))
            b = open_socket(str(link["b"]))
            self.sockets += [a, b]
            for src, dst, key, label in (
                (a, b, "a_to_b", f"{link['a']}>"),
                (b, a, "b_to_a", f"{link['b']}>"),
            ):
                delay_s, jitter_s, loss = _impairment(link[key])
                self.lanes[src.fileno()] = Lane(label, dst, delay_s, jitter_s, loss)

    def _send(self, lane: Lane, frame: bytes) -> None:
        try:
            lane.out.send(frame)
            lane.counts["out"] += 1
        except OSError as exc:
            # ENOBUFS: tbf's queue is full, the frame is tail-dropped like
            # on a real bottleneck. ENETDOWN: link cut on the far side.
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN, errno.ENXIO):
                raise
            lane.counts["queue_drop"] += 1

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
            lane.counts["in"] += 1
            if lane.loss and self.rng.random() < lane.loss:
                lane.counts["lost"] += 1
                continue
            jitter = self.rng.uniform(-lane.jitter_s, lane.jitter_s) if lane.jitter_s else 0.0
            release = max(now + max(0.0, lane.delay_s + jitter), lane.last_release)
            lane.last_release = release
            if release <= now:
                self._send(lane, frame)
            else:
                self.seq += 1
                heapq.heappush(self.heap, (release, self.seq, lane, frame))

    def run(self, stop: list[bool]) -> None:
        poller = select.epoll()
        by_fd = {s.fileno(): s for s in self.sockets}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        print("ready", flush=True)
        while not stop[0]:
            now = time.monotonic()
            while self.heap and self.heap[0][0] <= now:
                _, _, lane, frame = heapq.heappop(self.heap)
                self._send(lane, frame)
            timeout = self.heap[0][0] - now if self.heap else IDLE_WAIT_S
            try:
                events = poller.poll(max(0.0, timeout))
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd, _ in events:
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

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        emulator.run(stop)
    finally:
        print(json.dumps(emulator.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
