"""``python -m bench workers``: what a server's worker processes buy.

Issue 19's figure: the server's processing rate (DATA datagrams
authenticated, put in order and written to its TUN, per second) from C
clients at once, with `workers = 1` and with `workers = 2`, side by side in
one run, alternating, each setting `--repeat` times.  The lab is `bench
clients`' (`run._lab_up`); the load is `blast`'s: real handshakes, then
every datagram sealed before the window and only sent during it, paced
above what the server can take, so the server is the bottleneck and the
generator costs one system call per GSO train.  The inner packets go to an
address the server's namespace routes to a blackhole: after the TUN write
the kernel drops them at once.

Measured over the middle of the blast, from the server's own counters
(`tun_packets_out` summed over its workers, read on its control socket by
this process, so no `stripe status` process starts inside the window) and
its CPU time (supervisor and workers).  Also one client alone through each
setting: a single flow must not be slower through two workers.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients.run import (
    SERVER_OUTER,
    SERVER_PORT,
    _lab_up,
    _sleep_until,
    lab_down,
    start_server,
)
from bench.clients.sim import INNER_NET, make_keys
from bench.lab import Proc, cleanup_prefix, run, udp_drops
from stripe.io.control_socket import request

# An inner address nobody has: the server's namespace routes it to a blackhole.
BLACKHOLE = INNER_NET.broadcast_address - 1
SEAL_US_PER_DATAGRAM = 5.0  # measured ~3 us: to schedule the blast after sealing
MARGIN_S = 0.5  # the window leaves out the blast's first and last half second


@dataclass
class RateOptions:
    workers: list[int] = field(default_factory=lambda: [1, 2])
    clients: int = 8
    repeat: int = 3
    seconds: float = 4.0
    rate_pps: float = 400_000.0
    inner_bytes: int = 100
    single: bool = True
    prefix: str = "cw"
    out: Path = Path("bench/results/workers")


def run_once(opts: RateOptions, workers: int, clients: int, work: Path) -> dict[str, Any]:
    prefix = opts.prefix
    work.mkdir(parents=True, exist_ok=True)
    cleanup_prefix(prefix)
    procs: list[Proc] = []
    try:
        server_ns, client_ns = _lab_up(prefix, clients)
        run(["ip", "-n", server_ns, "route", "add", "blackhole", f"{BLACKHOLE}/32"])
        keys = make_keys(clients)
        control = Path(f"/run/stripe/{prefix}-rate.sock")
        server, _config, public = start_server(
            work, prefix, server_ns, keys, procs,
            (f"workers = {workers}", f'control_socket = "{control}"'))
        datagrams = int(opts.rate_pps * opts.seconds / clients)
        connect_by = time.monotonic() + 3.0
        blast_at = connect_by + datagrams * clients * SEAL_US_PER_DATAGRAM / 1e6 + 1.0
        spec = {"server": [SERVER_OUTER, SERVER_PORT], "server_public": public.hex(),
                "clients": [{"index": i, "private": k.private.hex()} for i, k in enumerate(keys)],
                "connect_by": connect_by, "blast_at": blast_at, "rate_pps": opts.rate_pps,
                "datagrams": datagrams, "inner_bytes": opts.inner_bytes,
                "sink": str(BLACKHOLE)}
        spec_path = work / "blast.spec.json"
        spec_path.write_text(json.dumps(spec))
        blast_out = work / "blast.json"
        blaster = Proc("blast", [sys.executable, "-m", "bench.clients.blast", str(spec_path),
                                 str(blast_out)], client_ns, work / "blast.log")
        procs.append(blaster)
        _sleep_until(blast_at + MARGIN_S)
        before, cpu0, t0 = _tun_packets(control), server.cpu_seconds(), time.monotonic()
        drops0 = udp_drops.read(server_ns).rcvbuf_errors
        _sleep_until(blast_at + opts.seconds - MARGIN_S)
        after, cpu1, t1 = _tun_packets(control), server.cpu_seconds(), time.monotonic()
        drops1 = udp_drops.read(server_ns).rcvbuf_errors
        blaster.popen.wait(60)
        blast = json.loads(blast_out.read_text()) if blast_out.exists() else {}
        status = request(control, timeout_s=10.0)
        (work / "server-status.json").write_text(json.dumps(status, indent=1))
        seconds = t1 - t0
        figures = {
            "workers": workers, "clients": clients, "connected": blast.get("connected"),
            "offered_pps": blast.get("offered_pps"), "blast_late_start_s":
            blast.get("late_start_s"), "window_s": round(seconds, 2),
            "processed_pps": round((after - before) / seconds),
            "server_cpu_pct": round(100 * (cpu1 - cpu0) / seconds, 1),
            # Datagrams the server's sockets had no room for: the blast is
            # paced above what it takes (a GSO train counts once here).
            "kernel_rcvbuf_drops_per_s": round((drops1 - drops0) / seconds),
            "server_drops": status.get("drops"),
        }
        processed, cpu = (after - before) / seconds, 100 * (cpu1 - cpu0) / seconds
        figures["per_cpu_second"] = round(processed * 100 / cpu) if cpu else None
        (work / "figures.json").write_text(json.dumps(figures, indent=1))
        return figures
    finally:
        lab_down(procs, prefix)


def _tun_packets(control: Path) -> int:
    datapath = request(control, timeout_s=10.0).get("datapath") or {}
    return int(datapath.get("tun_packets_out", 0))


def run_rates(opts: RateOptions) -> list[dict[str, Any]]:
    """Every setting, alternating, `repeat` times; then one client alone."""
    rows = []
    plans = [(w, opts.clients) for w in opts.workers]
    if opts.single:
        plans += [(w, 1) for w in opts.workers]
    for r in range(opts.repeat):
        for workers, clients in plans:
            row = run_once(opts, workers, clients, opts.out / f"w{workers}-c{clients}-r{r}")
            row["repeat"] = r
            print(json.dumps(row), flush=True)
            rows.append(row)
            write_report(rows, opts)
    return rows


def write_report(rows: list[dict[str, Any]], opts: RateOptions) -> None:
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["# bench workers", "",
             f"{opts.clients} clients (and 1 alone), {opts.inner_bytes}-byte inner packets, "
             f"offered {opts.rate_pps:,.0f} datagrams/s for {opts.seconds:g} s, "
             "the middle of the blast measured.", "",
             "| workers | clients | processed datagrams/s (median) | runs | server CPU % "
             "| per CPU-second | x 1 worker (median of the per-repeat ratios) |",
             "|" + "---|" * 7]
    by: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((row["workers"], row["clients"]), []).append(row)
    for (workers, clients), runs in sorted(by.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        rates = [r["processed_pps"] for r in runs]
        base = {r["repeat"]: r["processed_pps"] for r in by.get((opts.workers[0], clients), [])}
        ratios = [r["processed_pps"] / base[r["repeat"]] for r in runs
                  if base.get(r["repeat"])]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        lines.append(
            f"| {workers} | {clients} | {statistics.median(rates):,.0f} | "
            f"{', '.join(f'{x:,}' for x in rates)} | "
            f"{statistics.median([r['server_cpu_pct'] for r in runs])} | "
            f"{statistics.median([r['per_cpu_second'] or 0 for r in runs]):,.0f} | {ratio} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
