"""A stripe run traced from the inside: each end's links every 100 ms.

``python -m bench run ... --trace-status`` asks both stripe processes for
their status (the control socket, the figures `stripe status` shows) ten
times a second during every stripe run, and keeps each answer, trimmed to
what explains a flow's goodput, as one JSON line in the run's directory
(``status-trace.jsonl``): per link its state, window and what is in
flight, delivery rate, standing queue and bytes sent; per peer the inner
packets waiting at the sending edge, queue management's drops and the
reorder buffer (with its running totals of gaps given up and repaired);
the endpoint's drops by reason.  ``python -m bench.status_trace FILE...``
sums a trace up per end and link: how often a link's window was full
while packets waited at the edge, how often its window was cut, its
queue, its share;
``--timeline client|server`` prints one end second by second instead.

It answers questions a run's totals cannot ("did the fast link's window
bind while the slow link took the overflow?") at a small cost: each
answer is a few kB of JSON built by the process under test, 20 a second.
It is off by default so that the figures of untraced runs are unaffected.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import threading
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lab import Lab
from bench.systems.base import Target
from bench.systems.stripe import Stripe
from bench.systems.tunnel import TunnelSystem

TRACE_FILE = "status-trace.jsonl"
INTERVAL_S = 0.1
LINK_FIELDS = ("id", "state", "inflight_bytes", "cwnd_bytes", "delivery_mbps", "rate_mbps",
               "qdelay_ms", "rtt_ms", "tx_bytes", "capacity_spread", "downs")


def control_socket(config: Path, role: str, ns: str) -> Path:
    """Where the stripe running ``config`` as ``role`` in ``ns`` listens: the
    config's own control_socket, else stripe's default name for that TUN,
    role and `ip netns` namespace (`default_control_socket`, which can only
    name its own namespace)."""
    # Imported here: bench runs without stripe installed for its baselines.
    from stripe.config.model import CONTROL_SOCKET_DIR

    with config.open("rb") as f:
        iface = tomllib.load(f).get("interface", {})
    if iface.get("control_socket"):
        return Path(iface["control_socket"])
    return CONTROL_SOCKET_DIR / f"{iface.get('name', 'stripe0')}-{role}-{ns}.sock"


# The reorder buffer's counters a trace keeps (running totals): counters
# given up and how, and the repairs asked and received.
REORDER_TOTALS = ("lost", "inferred_releases", "deadline_releases", "repair_requests",
                  "overdue_requests", "repaired", "repair_timeouts", "late")


def trim(status: dict[str, Any]) -> dict[str, Any]:
    """The part of a status answer a trace keeps."""
    peers = []
    for peer in status.get("peers", []):
        queue = peer.get("queue") or {}
        reorder = peer.get("reorder") or {}
        peers.append({
            "queued": peer.get("queued", 0),
            "bond_queue_ms": queue.get("bond_queue_ms"),
            "aqm_dropped": queue.get("dropped"),
            "held": reorder.get("held"), "hold_ms": reorder.get("hold_ms"),
            # Running totals: where the gaps the inner flow saw went.
            **{key: reorder.get(key) for key in REORDER_TOTALS},
            "resent": peer.get("resent_packets"),
            "links": [{k: link.get(k) for k in LINK_FIELDS} for link in peer.get("links", [])],
        })
    return {"peers": peers, "drops": status.get("drops") or {}}


@dataclass(eq=False)  # a thread: hashed by identity
class StatusTracer(threading.Thread):
    """Polls each (role, socket) every INTERVAL_S into ``out`` until stopped."""

    sockets: list[tuple[str, Path]]
    out: Path
    halt: threading.Event = field(default_factory=threading.Event)
    errors: int = 0

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="status-trace", daemon=True)

    def run(self) -> None:
        # Imported here: bench runs without stripe installed for its baselines.
        from stripe.io.control_socket import request

        started = time.monotonic()
        with self.out.open("w") as f:
            while not self.halt.is_set():
                tick = time.monotonic()
                for role, sock in self.sockets:
                    try:
                        reply = request(sock, timeout_s=1.0)
                    except (OSError, ValueError):
                        self.errors += 1
                        continue
                    row = {"t": round(tick - started, 3), "role": role} | trim(reply)
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
                self.halt.wait(max(INTERVAL_S - (time.monotonic() - tick), 0.0))

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


@dataclass
class Traced(TunnelSystem):
    """A stripe system whose two ends are traced while it runs."""

    inner: Stripe
    tracer: StatusTracer | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return str(self.inner.name)

    def start(self, lab: Lab, workdir: Path) -> Target:
        target = self.inner.start(lab, workdir)
        self.pair = self.inner.pair
        sockets = [
            ("client", control_socket(self.inner.client_config, "client", lab.names.client_ns)),
            ("server", control_socket(self.inner.server_config, "server", lab.names.server_ns)),
        ]
        self.tracer = StatusTracer(sockets, workdir / TRACE_FILE)
        self.tracer.start()
        return target

    def stop(self) -> None:
        try:
            if self.tracer is not None:
                self.tracer.stop()
                self.tracer = None
        finally:
            self.inner.stop()
            self.pair = None

    def status(self) -> dict[str, Any]:
        return self.inner.status()


def summarize(rows: list[dict[str, Any]]) -> str:
    """Per end and link: window, in flight, how often full while packets
    waited at the edge, window cuts, standing queue, share of bytes sent."""
    by_role: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("peers"):
            by_role[row["role"]].append(row)
    lines = []
    for role, samples in sorted(by_role.items()):
        waiting = [s["peers"][0]["queued"] > 0 for s in samples]
        lines.append(f"{role}: {len(samples)} samples over {samples[-1]['t']:.1f} s; packets "
                     f"waiting at the edge in {100 * sum(waiting) / len(samples):.0f} % of them")
        links: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for s in samples:
            for link in s["peers"][0]["links"]:
                links[link["id"]].append(link)
        sent = {i: ls[-1]["tx_bytes"] - ls[0]["tx_bytes"] for i, ls in links.items()}
        total = sum(sent.values()) or 1
        lines.append("  link  share  cwnd kB  inflight kB  full  full+waiting  cuts/s  "
                     "queue ms (mean, p95)  deliv Mb/s")
        for i, ls in sorted(links.items()):
            full = [x["inflight_bytes"] >= x["cwnd_bytes"] for x in ls]
            full_waiting = sum(f and w for f, w in zip(full, waiting, strict=False))
            cuts = sum(1 for a, b in itertools.pairwise(ls)
                       if b["cwnd_bytes"] < 0.95 * a["cwnd_bytes"])
            queues = sorted(x["qdelay_ms"] or 0.0 for x in ls)
            span = len(ls) * INTERVAL_S
            lines.append(
                f"  {i:>4}  {100 * sent[i] / total:4.1f}%  "
                f"{statistics.mean(x['cwnd_bytes'] for x in ls) / 1e3:7.1f}  "
                f"{statistics.mean(x['inflight_bytes'] for x in ls) / 1e3:11.1f}  "
                f"{100 * sum(full) / len(ls):3.0f}%  "
                f"{100 * full_waiting / len(ls):11.0f}%  "
                f"{cuts / span:6.2f}  "
                f"{statistics.mean(queues):8.1f} {queues[int(0.95 * (len(queues) - 1))]:6.1f}"
                f"        {statistics.mean(x['delivery_mbps'] or 0.0 for x in ls):6.2f}")
    return "\n".join(lines)


def timeline(rows: list[dict[str, Any]], role: str, step_s: float = 1.0) -> str:
    """One line per `step_s` of one end: packets waiting at the edge and held
    for reordering, then per link its window and in flight (kB), delivery
    and estimated rate (Mbit/s), standing queue and RTT (ms), means over
    the step's samples."""
    samples = [r for r in rows if r.get("role") == role and r.get("peers")]
    steps: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        steps[int(s["t"] // step_s)].append(s["peers"][0])
    lines = [f"{role}: t  edge  held | per link: cwnd/inflight kB  deliv/rate Mb/s  queue/rtt ms"]
    for step, peers in sorted(steps.items()):
        line = (f"{step * step_s:6.1f} {statistics.mean(p['queued'] for p in peers):5.0f} "
                f"{statistics.mean(p.get('held') or 0 for p in peers):5.0f} |")
        for i in range(len(peers[0]["links"])):
            ls = [p["links"][i] for p in peers if len(p["links"]) > i]
            line += (f" {statistics.mean(x['cwnd_bytes'] for x in ls) / 1e3:4.0f}/"
                     f"{statistics.mean(x['inflight_bytes'] for x in ls) / 1e3:<4.0f}"
                     f" {statistics.mean(x['delivery_mbps'] or 0.0 for x in ls):5.1f}/"
                     f"{statistics.mean(x['rate_mbps'] or 0.0 for x in ls):<5.1f}"
                     f" {statistics.mean(x['qdelay_ms'] or 0.0 for x in ls):4.0f}/"
                     f"{statistics.mean(x['rtt_ms'] or 0.0 for x in ls):<4.0f} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    role = None
    if argv[:1] == ["--timeline"] and len(argv) >= 2:
        role, argv = argv[1], argv[2:]
    if not argv or (role is not None and role not in ("client", "server")):
        print(f"usage: python -m bench.status_trace [--timeline client|server] {TRACE_FILE}...",
              file=sys.stderr)
        return 2
    for name in argv:
        path = Path(name)
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        except (OSError, ValueError) as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            return 1
        print(f"== {path}\n{summarize(rows) if role is None else timeline(rows, role)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # piped into head: it has read enough
        sys.stderr.close()
        sys.exit(0)
