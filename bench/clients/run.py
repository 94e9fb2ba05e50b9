"""``python -m bench clients``: N simulated clients against one real server.

The lab: namespace ``<prefix>s`` runs ``stripe server`` (a config with N
``[[peer]]`` tables, generated) and the sink on its inner address;
namespace ``<prefix>c`` holds 2N addresses on one veth and the worker
processes (`worker`), each driving a share of the clients.  One timeline,
fixed in advance on the monotonic clock (shared by every namespace):

1. connect: every client initiates at ``start_at``; time to connect all N
   and handshakes per second (completions between the 10th and 90th
   percentile over their span);
2. idle window: server CPU (from /proc/PID/stat) and RSS;
3. send window: M clients send at ``rate`` each; server CPU, goodput per
   client at the sink, Jain's index;
4. ``stripe status``: the server's drops by reason.

Everything started is stopped by PID, the namespaces deleted, also on
failure.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients.sim import (
    INNER_NET,
    LINKS_PER_CLIENT,
    SERVER_INNER,
    SINK_PORT,
    ClientKeys,
    client_inner,
    client_source,
    jain,
    make_keys,
)
from bench.lab import Proc, cleanup_prefix, run, udp_drops
from bench.lab.procs import process_tree
from bench.systems.stripe import stripe_cmd
from stripe.noise import encode_key, generate_keypair

SERVER_OUTER = "172.16.0.1"
CLIENT_HOP = "172.16.0.2"  # the client namespace's end of the veth
CLIENTS_OUTER = "172.16.0.0/12"  # the clients' link addresses (see sim.client_source)
SERVER_PORT = 5000
REKEY_WINDOW_S = 3.0  # the rekey burst's window, plus N / 250 s


@dataclass
class ClientsOptions:
    clients: int
    sending: int = 8
    workers: int = 2
    rate_bps: float = 20e6
    idle_s: float = 20.0
    send_s: float = 10.0
    prefix: str = "cy"
    out: Path = Path("bench/results/clients")
    connect_s: float | None = None  # None: 10 s + N / 100 s
    worker_nice: int = 0  # the load generators' niceness (the server's stays 0)
    server_workers: int = 1  # the server's `workers` (its CPU and RSS: all its processes)


def _drop_count(status: dict[str, Any], reason: str) -> int:
    drops = status.get("drops")
    return int(drops.get(reason, 0)) if isinstance(drops, dict) else 0


def _rss_mb(*pids: int) -> float:
    """VmRSS of these processes, summed (a server with workers: see `process_tree`)."""
    total = 0.0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024 / 1e6
    return total


def _sleep_until(at: float) -> None:
    while (left := at - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _server_config(path: Path, private: bytes, publics: list[bytes],
                   extra: tuple[str, ...] = ()) -> None:
    """`extra`: more lines for [interface]."""
    lines = ["[interface]", f'name = "{path.stem[:12]}"',
             f'address = ["{SERVER_INNER}/{INNER_NET.prefixlen}"]', "mtu = 1400",
             f'private_key = "{encode_key(private)}"', f"listen_port = {SERVER_PORT}",
             *extra, ""]
    for i, public in enumerate(publics):
        lines += ["[[peer]]", f'public_key = "{encode_key(public)}"',
                  f'allowed_ips = ["{client_inner(i)}/32"]', ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)


def _lab_up(prefix: str, count: int) -> tuple[str, str]:
    server_ns, client_ns = f"{prefix}s", f"{prefix}c"
    run(["ip", "netns", "add", server_ns])
    run(["ip", "netns", "add", client_ns])
    run(["ip", "link", "add", f"{prefix}v0", "netns", server_ns, "type", "veth", "peer",
         "name", f"{prefix}v1", "netns", client_ns])
    # The clients' 2N addresses are routed through one next hop: on one
    # segment the server would need 2N neighbour entries, and the kernel's
    # ARP table (one for all namespaces, gc_thresh3 = 1,024 by default)
    # overflowed at 1,000 clients, silently dropping the server's answers
    # to half their links.
    run(["ip", "-n", server_ns, "addr", "add", f"{SERVER_OUTER}/30", "dev", f"{prefix}v0"])
    run(["ip", "-n", client_ns, "addr", "add", f"{CLIENT_HOP}/30", "dev", f"{prefix}v1"])
    for ns, dev in ((server_ns, f"{prefix}v0"), (client_ns, f"{prefix}v1")):
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", server_ns, "route", "add", CLIENTS_OUTER, "via", CLIENT_HOP])
    batch = "".join(f"addr add {client_source(i, j)}/32 dev {prefix}v1\n"
                    for i in range(count) for j in range(LINKS_PER_CLIENT))
    batch_file = Path(f"/tmp/{prefix}-addrs.batch")
    batch_file.write_text(batch)
    run(["ip", "-n", client_ns, "-batch", str(batch_file)], timeout_s=120)
    return server_ns, client_ns


def start_server(work: Path, prefix: str, ns: str, keys: list[ClientKeys], procs: list[Proc],
                 extra: tuple[str, ...] = ()) -> tuple[Proc, Path, bytes]:
    """`stripe server` in `ns` with a peer per key (`extra`: more [interface]
    lines), added to `procs`, given 3 s to start; with its config and public key."""
    private, public = generate_keypair()
    config = work / f"{prefix}srv.toml"
    _server_config(config, private, [k.public for k in keys], extra)
    server = Proc("stripe-server", stripe_cmd("--log-level", "warning", "server", "-c",
                                               str(config)), ns, work / "server.log")
    procs.append(server)
    time.sleep(3.0)
    if not server.alive():
        raise RuntimeError("stripe server died:\n" + server.tail())
    return server, config, public


def _status(ns: str, config: Path) -> dict[str, Any]:
    proc = run(["ip", "netns", "exec", ns, *stripe_cmd("status", "-c", str(config), "--json")],
               check=False, timeout_s=60)
    try:
        value = json.loads(proc.stdout)
        return value if isinstance(value, dict) else {}
    except json.JSONDecodeError:
        return {"error": (proc.stderr or proc.stdout)[:300]}


def run_clients(opts: ClientsOptions) -> dict[str, Any]:
    """One run with opts.clients clients; returns the figures."""
    n, prefix = opts.clients, opts.prefix
    work = opts.out / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    cleanup_prefix(prefix)
    procs: list[Proc] = []
    try:
        server_ns, client_ns = _lab_up(prefix, n)
        keys = make_keys(n)
        server, config, server_public = start_server(
            work, prefix, server_ns, keys, procs,
            (f"workers = {opts.server_workers}",) if opts.server_workers > 1 else ())
        sink_out = work / "sink.json"
        sink = Proc("sink", [sys.executable, "-m", "bench.clients.sink", str(SERVER_INNER),
                             str(SINK_PORT), str(sink_out)], server_ns, work / "sink.log")
        procs.append(sink)
        rss_start = _rss_mb(*process_tree(server.pid))
        start_at = time.monotonic() + 4.0 + n / 500
        connect_s = opts.connect_s if opts.connect_s is not None else 10.0 + n / 100
        idle_from = start_at + connect_s + 3.0
        idle_until = idle_from + opts.idle_s
        send_from = idle_until + 1.0
        send_until = send_from + opts.send_s
        # The rekey burst: every client handshakes again at once, with the
        # cookie it holds from connecting (so the server, under load, checks
        # mac2 and answers in full, or sends a fresh cookie first).
        rekey_at = send_until + 2.0
        end_at = rekey_at + REKEY_WINDOW_S + n / 250
        senders = list(range(min(opts.sending, n)))
        shares = [list(range(w, n, opts.workers)) for w in range(opts.workers)]
        workers = []
        for w, share in enumerate(shares):
            spec = {"server": [SERVER_OUTER, SERVER_PORT], "server_public": server_public.hex(),
                    "clients": [{"index": i, "private": keys[i].private.hex()} for i in share],
                    "start_at": start_at, "send_from": send_from, "send_until": send_until,
                    "end_at": end_at, "senders": senders, "rate_bps": opts.rate_bps,
                    "rekey_at": rekey_at}
            spec_path = work / f"worker{w}.spec.json"
            spec_path.write_text(json.dumps(spec))
            spec_path.chmod(0o600)
            nice = ["nice", "-n", str(opts.worker_nice)] if opts.worker_nice else []
            workers.append((Proc(f"worker{w}", [*nice, sys.executable, "-m",
                                                "bench.clients.worker",
                                                str(spec_path), str(work / f"worker{w}.json")],
                                 client_ns, work / f"worker{w}.log"), work / f"worker{w}.json"))
            procs.append(workers[-1][0])
        _sleep_until(start_at)
        cpu0 = server.cpu_seconds()
        _sleep_until(idle_from)
        cpu_connect = server.cpu_seconds() - cpu0
        udp_by_phase = {"connect": udp_drops.read(server_ns).rcvbuf_errors}
        cpu_a = server.cpu_seconds()
        _sleep_until(idle_until)
        cpu_idle = (server.cpu_seconds() - cpu_a) / opts.idle_s
        rss_idle = _rss_mb(*process_tree(server.pid))
        udp_by_phase["idle"] = udp_drops.read(server_ns).rcvbuf_errors
        _sleep_until(send_from + 1.0)  # the first second: wake-up and windows opening
        cpu_b = server.cpu_seconds()
        t_b = time.monotonic()
        _sleep_until(send_until)
        cpu_send = (server.cpu_seconds() - cpu_b) / (time.monotonic() - t_b)
        rss_send = _rss_mb(*process_tree(server.pid))
        status = _status(server_ns, config)
        (work / "server-status.json").write_text(json.dumps(status, indent=1))
        udp_by_phase["send"] = udp_drops.read(server_ns).rcvbuf_errors
        _sleep_until(rekey_at)
        cpu_r = server.cpu_seconds()
        _sleep_until(end_at)
        cpu_rekey = server.cpu_seconds() - cpu_r
        udp_by_phase["rekey"] = udp_drops.read(server_ns).rcvbuf_errors
        after = _status(server_ns, config)
        _sleep_until(end_at + 2.0)
        for proc, _out in workers:
            proc.popen.wait(30)
        sink.stop()
        results = [json.loads(out.read_text()) for _p, out in workers]
        clients = sorted((c for r in results for c in r["clients"]), key=lambda c: c["index"])
        delivered = json.loads(sink_out.read_text()) if sink_out.exists() else {}
        times = sorted(c["connected_at"] - start_at for c in clients
                       if c["connected_at"] is not None)
        lo, hi = int(len(times) * 0.1), max(int(len(times) * 0.9) - 1, 0)
        rate = (hi - lo) / (times[hi] - times[lo]) if hi > lo and times[hi] > times[lo] else None
        goodputs = [delivered.get(str(client_inner(i)), 0) * 8 / opts.send_s / 1e6
                    for i in senders]
        rekeys = sorted(c["rekeyed_at"] - rekey_at for c in clients
                        if c.get("rekeyed_at") is not None)
        cookies = _drop_count(after, "handshake_cookie_sent") - _drop_count(
            status, "handshake_cookie_sent")
        cpu_handshakes = cpu_rekey - cpu_idle * (end_at - rekey_at)
        peers = status.get("peers", [])
        links_up = sum(1 for p in peers for x in p.get("links", []) if x.get("state") == "up")
        figures = {
            "clients": n, "links": n * LINKS_PER_CLIENT, "workers": opts.workers,
            "server_workers": opts.server_workers,
            "connected": len(times),
            "time_to_connect_all_s": round(times[-1], 3) if len(times) == n else None,
            "handshakes_per_s": None if rate is None else round(rate, 1),
            "server_cpu_connect_pct": round(100 * cpu_connect / (idle_from - start_at), 1),
            "server_cpu_idle_pct": round(100 * cpu_idle, 2),
            "server_rss_start_mb": round(rss_start, 1),
            "server_rss_idle_mb": round(rss_idle, 1),
            "rss_per_peer_kb": round((rss_idle - rss_start) * 1000 / n, 1),
            "sending": len(senders), "offered_mbit_per_client": opts.rate_bps / 1e6,
            "server_cpu_send_pct": round(100 * cpu_send, 1),
            "server_rss_send_mb": round(rss_send, 1),
            "goodput_total_mbit": round(sum(goodputs), 2),
            "goodput_per_client_mbit": [round(g, 2) for g in goodputs],
            "jain": None if not goodputs else round(jain(goodputs) or 0.0, 4),
            "server_links_up": links_up,
            "server_link_states": dict(Counter(x.get("state") for p in peers
                                               for x in p.get("links", []))),
            "server_drops": status.get("drops", status.get("error")),
            "server_io_errors": status.get("io_errors"),
            "server_datapath": status.get("datapath"),
            "server_udp_rcvbuf_errors": udp_by_phase,  # cumulative, at each phase's end
            "worker_cpu_s": [round(r["cpu_s"], 1) for r in results],
            "worker_nice": opts.worker_nice,
            "worker_timer_late_ms": [r.get("timer_late_ms") for r in results],
            "worker_stalls": [r.get("stalls") for r in results],
            "clients_sent_per_s": [sum(x) for x in zip(*(r.get("sent_per_s", []) for r in results),
                                                       strict=False)],
            "clients_sent_by_type": _sum_counts(r.get("sent_by_type", {}) for r in results),
            "client_drops": _sum_counts(c.get("drops", {}) for c in clients),
            "rekey": {
                "clients": sum(c["connected_at"] is not None for c in clients),
                "completed": len(rekeys),
                "all_s": round(rekeys[-1], 3) if rekeys else None,
                "p50_s": round(rekeys[len(rekeys) // 2], 3) if rekeys else None,
                "server_cpu_s": round(cpu_rekey, 2),
                # Less what the idle clients cost over the same window.
                "server_cpu_handshakes_s": round(cpu_handshakes, 2),
                "cookie_replies": cookies,
                # What one core of this server completes, from its CPU time:
                # the burst's wall-clock rate is the load generator's too.
                "handshakes_per_cpu_s": (round(len(rekeys) / cpu_handshakes)
                                         if cpu_handshakes > 0 else None),
            },
        }
        (work / "figures.json").write_text(json.dumps(figures, indent=1))
        return figures
    finally:
        lab_down(procs, prefix)


def lab_down(procs: list[Proc], prefix: str) -> None:
    """Stop what was started (newest first) and delete the lab (`_lab_up`)."""
    for proc in reversed(procs):
        proc.stop()
    cleanup_prefix(prefix)
    Path(f"/tmp/{prefix}-addrs.batch").unlink(missing_ok=True)


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def write_report(rows: list[dict[str, Any]], out: Path) -> None:
    """results.json, results.md and plot.png (server CPU and RSS against N)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    head = ("| N | connect all (s) | handshakes/s | CPU connect % | CPU idle % | RSS idle MB "
            "| RSS/peer KB | M | CPU send % | goodput Mbit/s | Jain | server drops |")
    lines = ["# bench clients", "", head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['time_to_connect_all_s']} | {r['handshakes_per_s']} "
            f"| {r['server_cpu_connect_pct']} | {r['server_cpu_idle_pct']} "
            f"| {r['server_rss_idle_mb']} | {r['rss_per_peer_kb']} | {r['sending']} "
            f"| {r['server_cpu_send_pct']} | {r['goodput_total_mbit']} | {r['jain']} "
            f"| {r['server_drops']} |")
    lines += ["", "Per-client goodput (Mbit/s) of the M senders:", ""]
    lines += [f"- N={r['clients']}: {r['goodput_per_client_mbit']}" for r in rows]
    lines += ["", "The rekey burst: every connected client handshakes again at once "
              "(handshakes per CPU-second: what one core of the server completes).", "",
              "| N | completed | all done (s) | median (s) | server CPU (s) "
              "| of it above idle (s) | cookie replies | handshakes per CPU-second |",
              "|" + "---|" * 8]
    for r in rows:
        k = r.get("rekey") or {}
        lines.append(f"| {r['clients']} | {k.get('completed')} / {k.get('clients')} "
                     f"| {k.get('all_s')} | {k.get('p50_s')} | {k.get('server_cpu_s')} "
                     f"| {k.get('server_cpu_handshakes_s')} | {k.get('cookie_replies')} "
                     f"| {k.get('handshakes_per_cpu_s')} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ns = [r["clients"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, [r["server_cpu_idle_pct"] for r in rows], "o-", label="CPU idle (% of a core)")
    ax.set_xlabel("clients (2 links each)")
    ax.set_ylabel("% of one core")
    ax2 = ax.twinx()
    ax2.plot(ns, [r["server_rss_idle_mb"] for r in rows], "s--", color="tab:red",
             label="RSS idle (MB)")
    ax2.set_ylabel("MB")
    fig.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=100)
