"""The chaos run's verdict: from the record `bench.chaos.runner` writes
(``chaos.json``) to ``summary.json``, ``results.md`` and the goodput plot.

Definitions (pure functions, unit-tested):

* a *stall* is a pause longer than `bench.chaos.traffic.GAP_S` between two
  reads of the TCP receiver; a fault's stall is the longest one that
  starts in the fault's window, from its start to the next fault's start
  (or the end of the run): a stall is charged to the fault that caused it,
  not to the next one it lasts into;
* *beyond the fault*: the stall minus the part of the fault that stops
  every path by itself (a server restart's time from SIGTERM to the new
  process; 0 for a fault on one link, which the others can carry);
  targets: <= 1 s, and the restart's whole stall <= 3 s;
* RSS growth: end minus start of each process (a restarted server's
  baseline is taken at the next fault after its start);
* drops: every counter of ``stripe status``'s ``drops`` and ``io_errors``
  of both ends (a restarted server's counters added up over its lives),
  and the reasons must be names (`NAMED_REASON`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.chaos import schedule

STALL_TARGET_S = 1.0
RESTART_STALL_TARGET_S = 3.0
RSS_GROWTH_TARGET_MB = 5.0
STALL_START_SLACK_S = 0.25
NAMED_REASON = re.compile(r"[a-z][A-Za-z0-9_]*")
UNNAMED_REASONS = frozenset({"other", "unknown", "error"})


def relative_gaps(arrivals: dict[str, Any] | None, t0: float) -> list[tuple[float, float]]:
    """The receiver's stalls as (start, end) seconds since `t0`."""
    if not arrivals:
        return []
    return [(round(a - t0, 3), round(b - t0, 3)) for a, b in arrivals.get("gaps", [])]


def per_second_mbit(arrivals: dict[str, Any] | None, t0: float, seconds: int) -> list[float]:
    """Goodput in each second since `t0` (Mbit/s), from the receiver's bins."""
    out = [0.0] * seconds
    if not arrivals:
        return out
    offset = float(arrivals["t0"]) - t0
    bin_s = float(arrivals["bin_s"])
    for k, nbytes in enumerate(arrivals["bins"]):
        second = int(offset + k * bin_s + 1e-9)
        if 0 <= second < seconds:
            out[second] += nbytes * 8 / 1e6
    return [round(v, 3) for v in out]


def longest_stall(gaps: list[tuple[float, float]], start: float, end: float) -> float:
    """The longest stall that starts in [start, end) (0.0: none); one that
    starts up to `STALL_START_SLACK_S` before `start` counts too (the last
    arrival before a stall can precede the fault a little)."""
    return max((b - a for a, b in gaps if start - STALL_START_SLACK_S <= a < end), default=0.0)


def fault_rows(record: dict[str, Any], gaps: list[tuple[float, float]],
               udp_gaps: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """One row per fault: its stall, what lies beyond it, and the verdict."""
    faults = record.get("faults", [])
    seconds = float(record["plan"]["seconds"])
    rows = []
    for k, f in enumerate(faults):
        start = float(f["t_on"])
        # Up to the next fault's start, less the slack that fault's own
        # window reaches back with: a stall belongs to one fault only.
        window_end = (float(faults[k + 1]["t_on"]) - STALL_START_SLACK_S
                      if k + 1 < len(faults) else seconds)
        stall = longest_stall(gaps, start, window_end)
        blocking = 0.0
        if f["kind"] in schedule.BLOCKING_KINDS:
            blocking = float(f.get("on", {}).get("restarted_after_s", 0.0))
        beyond = max(0.0, stall - blocking)
        if f["kind"] == schedule.RESTART:
            ok = stall <= RESTART_STALL_TARGET_S
            target = f"stall <= {RESTART_STALL_TARGET_S:g} s"
        else:
            ok = beyond <= STALL_TARGET_S
            target = f"<= {STALL_TARGET_S:g} s"
        rows.append({
            "fault": f["label"], "kind": f["kind"], "start_s": round(start, 1),
            "duration_s": round(float(f["t_off"]) - start, 2), "stall_s": round(stall, 3),
            "beyond_s": round(beyond, 3), "udp_stall_s": round(
                longest_stall(udp_gaps, start, window_end), 3),
            "target": target, "ok": ok and "error" not in f, "error": f.get("error"),
        })  # fmt: skip
    return rows


def outside_faults_stall(record: dict[str, Any], gaps: list[tuple[float, float]]) -> float:
    """The longest stall before the first fault (the warm-up)."""
    faults = record.get("faults", [])
    first = float(faults[0]["t_on"]) if faults else float(record["plan"]["seconds"])
    return round(longest_stall(gaps, 0.0, first), 3)


def add_counts(*dicts: dict[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))


def _peer_counts(status: dict[str, Any] | None) -> dict[str, int]:
    """Per-peer losses outside ``drops``: queue management, reorder, resend."""
    out: dict[str, int] = {}
    for peer in (status or {}).get("peers", []):
        queue = peer.get("queue") or {}
        reorder = peer.get("reorder") or {}
        for name, value in (("queue_management_dropped", queue.get("dropped")),
                            ("reorder_lost", reorder.get("lost")),
                            ("reorder_late", reorder.get("late")),
                            ("resent_packets", peer.get("resent_packets")),
                            ("resend_failed", peer.get("resend_failed"))):
            if isinstance(value, int):
                out[name] = out.get(name, 0) + value
    return out


def drop_table(record: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """``{"client"|"server": {"drops"|"io_errors"|"peer": {reason: count}}}``."""
    end = record.get("status_end") or {}
    earlier = [s for s in (record.get("status_before_restarts") or {}).values() if s]
    table = {}
    for role, lives in (("client", [end.get("client")]), ("server", [*earlier, end.get("server")])):
        ok: list[dict[str, Any]] = [s for s in lives if isinstance(s, dict) and "error" not in s]
        table[role] = {
            "drops": add_counts(*(s.get("drops") for s in ok)),
            "io_errors": add_counts(*(s.get("io_errors") for s in ok)),
            "peer": add_counts(*(_peer_counts(s) for s in ok)),
        }
    return table


def unnamed_reasons(table: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    return sorted({reason for role in table.values() for kind in ("drops", "io_errors")
                   for reason in role[kind]
                   if not NAMED_REASON.fullmatch(reason) or reason in UNNAMED_REASONS})


def links_at_end(record: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each end's links at the end of the run: ``{role: {name: {state, address}}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for role, status in (record.get("status_end") or {}).items():
        for peer in (status or {}).get("peers", []) if isinstance(status, dict) else []:
            for link in peer.get("links", []):
                out.setdefault(role, {})[str(link.get("name"))] = {
                    "state": link.get("state"), "address": link.get("address")}
    return out


def roams_followed(record: dict[str, Any], links: dict[str, dict[str, dict[str, Any]]]
                   ) -> list[dict[str, Any]]:
    """For each roam of a link the client still has at the end: does the
    server send to the link's new address?"""
    out = []
    client = links.get("client", {})
    for f in record.get("faults", []):
        if f["kind"] != schedule.ROAM or "on" not in f:
            continue
        name = f"link{f['link']}"
        if name not in client:
            continue
        new = str(f["on"]["to"]).split("/")[0]
        address = links.get("server", {}).get(name, {}).get("address")
        out.append({"link": name, "to": new, "server_sends_to": address,
                    "followed": isinstance(address, str) and address.startswith(new + ":")})
    return out


def parse_ping(text: str) -> dict[str, Any]:
    sent = received = 0
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if m:
        sent, received = int(m.group(1)), int(m.group(2))
    rtt = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", text)
    return {"sent": sent, "received": received,
            "loss_percent": round(100 * (sent - received) / sent, 2) if sent else None,
            "rtt_avg_ms": float(rtt.group(1)) if rtt else None,
            "rtt_max_ms": float(rtt.group(2)) if rtt else None}


def rss_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each process's RSS at its start and end (MB) and the growth."""
    start, end = record.get("rss_start") or {}, record.get("rss_end") or {}
    restarts = record.get("rss_restarts") or {}
    rows = [{"process": "client", "start": start.get("client"), "end": end.get("client")}]
    generation = 1
    server_start = start.get("server")
    while f"server-{generation}-end" in restarts:
        rows.append({"process": f"server (life {generation})", "start": server_start,
                     "end": restarts[f"server-{generation}-end"]})
        generation += 1
        server_start = restarts.get(f"server-{generation}-start")
    rows.append({"process": f"server (life {generation})" if generation > 1 else "server",
                 "start": server_start, "end": end.get("server")})
    for row in rows:
        a, b = row["start"], row["end"]
        growth = round(float(b) - float(a), 2) if a is not None and b is not None else None
        row["growth"] = growth
        row["ok"] = growth is not None and growth <= RSS_GROWTH_TARGET_MB
    return rows


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    traffic = record.get("traffic", {})
    t0 = float(record.get("t0", 0.0))
    seconds = int(float(record["plan"]["seconds"]))
    send, recv = traffic.get("tcp-send") or {}, traffic.get("tcp-recv") or {}
    planned = int(float(record["options"]["tcp_rate_mbit"]) * 1e6 / 8
                  * float(record["options"]["seconds"]))
    peer = send.get("peer") or {}
    intact = (bool(send.get("sha256")) and send.get("bytes") == planned
              and recv.get("bytes") == planned and recv.get("sha256") == send.get("sha256")
              and peer.get("sha256") == send.get("sha256"))
    mib0, mib1 = record.get("tcp_mib_start") or {}, record.get("tcp_mib_end") or {}
    resets = {role: {k: mib1.get(role, {}).get(k, 0) - mib0.get(role, {}).get(k, 0)
                     for k in ("EstabResets", "AttemptFails", "OutRsts")}
              for role in ("client", "server")}
    reset_errors = [e for e in (send.get("error"), recv.get("error")) if e and "reset" in e]
    connections_reset = sum(r["EstabResets"] for r in resets.values()) + len(reset_errors)
    gaps = relative_gaps(recv.get("arrivals"), t0)
    udp_recv, udp_send = traffic.get("udp-recv") or {}, traffic.get("udp-send") or {}
    udp_gaps = relative_gaps(udp_recv.get("arrivals"), t0)
    rows = fault_rows(record, gaps, udp_gaps)
    drops = drop_table(record)
    logs = record.get("logs") or {}
    rss = rss_rows(record)
    udp_sent = int(udp_send.get("sent", 0))
    links = links_at_end(record)
    summary = {
        "transfer": {"planned_bytes": planned, "sent_bytes": send.get("bytes"),
                     "received_bytes": recv.get("bytes"), "intact": intact,
                     "sent_in_s": send.get("sent_by"), "sender_error": send.get("error"),
                     "receiver_error": recv.get("error")},
        "connections_reset": connections_reset, "tcp_counters": resets,
        "faults": rows, "warmup_stall_s": outside_faults_stall(record, gaps),
        "rss": rss, "logs": logs, "drops": drops, "unnamed_drop_reasons": unnamed_reasons(drops),
        "udp": {"sent": udp_sent, "received": udp_recv.get("received"),
                "lost": udp_sent - int(udp_recv.get("received", 0)) if udp_send else None,
                "duplicates": udp_recv.get("duplicates"), "reordered": udp_recv.get("reordered")},
        "ping": parse_ping(str(traffic.get("ping") or "")),
        "per_second_mbit": per_second_mbit(recv.get("arrivals"), t0, seconds + 1),
        "error": record.get("error"), "left_namespaces": record.get("left_namespaces", []),
        "links_end": links, "roams": roams_followed(record, links),
    }  # fmt: skip
    summary["checks"] = {
        "transfer intact (SHA-256)": intact,
        "TCP connections reset: 0": connections_reset == 0,
        "every fault's stall within its target": all(r["ok"] for r in rows) and bool(rows),
        f"RSS growth <= {RSS_GROWTH_TARGET_MB:g} MB": all(r["ok"] for r in rss),
        "no tracebacks or errors in stripe's logs": not logs.get("tracebacks")
        and not logs.get("error_lines"),
        "every drop under a named reason": not summary["unnamed_drop_reasons"],
        "every link up at the end, roamed ones followed": bool(links.get("client"))
        and all(v["state"] == "up" for role in links.values() for v in role.values())
        and all(r["followed"] for r in summary["roams"]),
        "run completed, stripe alive, nothing left behind": not record.get("error")
        and not record.get("stripe_problem") and not record.get("left_namespaces"),
    }
    summary["passed"] = all(summary["checks"].values())
    return summary


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def results_md(record: dict[str, Any], s: dict[str, Any], plot: str | None) -> str:
    o = record["options"]
    t = s["transfer"]
    lines = [
        "# chaos: faults under live traffic",
        "",
        f"Command: `{record.get('command', '')}`; started {record.get('started')}; "
        f"seed {o['seed']}; {o['seconds']:g} s; lab prefix {record.get('prefix')}; "
        f"load average before {record.get('load_average_before')}, after "
        f"{record.get('load_average_after')}.",
        "",
        f"Links: {record['plan']['n_links']} x {schedule.BASE_RATE_MBIT:g} Mbit/s each way "
        "(tbf in the middle namespace), 10 / 20 / 15 ms one way (userspace emulator); the "
        "client starts without the last link. Traffic through the tunnel: one TCP transfer "
        f"paced at {o['tcp_rate_mbit']:g} Mbit/s, UDP {o['udp_pps']:g} datagrams/s of "
        f"{o['udp_len']} bytes, ping every 0.2 s.",
        "",
        "## Verdict",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'yes' if ok else '**NO**'} |" for name, ok in s["checks"].items()],
        "",
        f"Transfer: {_fmt(t['received_bytes'])} of {t['planned_bytes']} bytes received, "
        f"SHA-256 {'matches' if t['intact'] else 'DOES NOT match'}; all sent after "
        f"{_fmt(t['sent_in_s'])} s; sender error {_fmt(t['sender_error'])}, receiver error "
        f"{_fmt(t['receiver_error'])}. TCP connections reset: {s['connections_reset']} "
        f"(kernel counters: {s['tcp_counters']}).",
        "",
        f"UDP: {s['udp']['sent']} sent, {_fmt(s['udp']['received'])} received, "
        f"{_fmt(s['udp']['lost'])} lost, {_fmt(s['udp']['duplicates'])} duplicated, "
        f"{_fmt(s['udp']['reordered'])} out of order. Ping: {s['ping']['sent']} sent, "
        f"{s['ping']['received']} answered ({_fmt(s['ping']['loss_percent'])} % lost), RTT "
        f"avg {_fmt(s['ping']['rtt_avg_ms'])} ms, max {_fmt(s['ping']['rtt_max_ms'])} ms.",
        "",
        "## Faults",
        "",
        f"Stall: the longest pause of the TCP receiver (> 0.2 s) that began between the "
        f"fault's start and the next fault's; beyond: minus what the fault blocks by itself "
        f"(the restart's downtime). Longest stall in the warm-up: {s['warmup_stall_s']:g} s.",
        "",
        "| start s | fault | lasted s | TCP stall s | beyond s | target | UDP stall s | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["faults"]:
        ok = "yes" if r["ok"] else "**NO**" + (f" ({r['error'][:120]})" if r["error"] else "")
        lines.append(f"| {r['start_s']:g} | {r['fault']} | {r['duration_s']:g} | "
                     f"{r['stall_s']:g} | {r['beyond_s']:g} | {r['target']} | "
                     f"{r['udp_stall_s']:g} | {ok} |")
    lines += ["", "Links at the end: " + "; ".join(
        f"{role} " + ", ".join(f"{name} {v['state']} ({v['address']})" for name, v in ls.items())
        for role, ls in s["links_end"].items()) + ". Roams: " + (", ".join(
            f"{r['link']} to {r['to']}: the server sends to {r['server_sends_to']}"
            for r in s["roams"]) or "none of a link still configured") + "."]
    lines += ["", "## Memory (RSS, MB)", "", "| process | start | end | growth |",
              "|---|---|---|---|"]
    lines += [f"| {r['process']} | {_fmt(r['start'])} | {_fmt(r['end'])} | {_fmt(r['growth'])} |"
              for r in s["rss"]]
    logs = s["logs"]
    lines += ["", f"## Logs: {logs.get('tracebacks', 0)} tracebacks, "
              f"{logs.get('error_lines', 0)} ERROR lines", ""]
    lines += [f"    {ln}" for ln in logs.get("first", [])]
    lines += ["", "## Drops by reason (`stripe status`)", "",
              "| counter | client | server |", "|---|---|---|"]
    for kind in ("drops", "io_errors", "peer"):
        reasons = sorted(set(s["drops"]["client"][kind]) | set(s["drops"]["server"][kind]))
        for reason in reasons:
            lines.append(f"| {kind}: {reason} | {s['drops']['client'][kind].get(reason, 0)} | "
                         f"{s['drops']['server'][kind].get(reason, 0)} |")
    if s["error"]:
        lines += ["", f"Run error: `{s['error'][:1000]}`"]
    if record.get("stripe_problem"):
        lines += ["", f"stripe: {record['stripe_problem']}"]
    if plot:
        lines += ["", f"![goodput per second with the faults]({plot})"]
    return "\n".join(lines) + "\n"


KIND_COLOURS = {
    schedule.DOWN: "tab:red", schedule.BLACKHOLE: "black", schedule.LOSS: "tab:orange",
    schedule.RATE: "tab:blue", schedule.ROAM: "tab:green", schedule.ADD: "tab:cyan",
    schedule.REMOVE: "tab:brown", schedule.RESTART: "tab:purple", schedule.FLOOD: "tab:olive",
}


def plot_goodput(path: Path, record: dict[str, Any], s: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = s["per_second_mbit"]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.plot(range(len(series)), series, color="tab:gray", lw=0.9, label="TCP goodput")
    seen: set[str] = set()
    top = max([*series, 1.0]) * 1.25
    for f in record.get("faults", []):
        kind, a, b = f["kind"], float(f["t_on"]), float(f["t_off"])
        label = kind if kind not in seen else None
        seen.add(kind)
        colour = KIND_COLOURS.get(kind, "gray")
        if b - a >= 0.5:
            ax.axvspan(a, b, color=colour, alpha=0.18, label=label)
        else:
            ax.axvline(a, color=colour, lw=1.5, ls="--", label=label)
    ax.set(xlabel="second", ylabel="Mbit/s (TCP receiver)", ylim=(0, top),
           xlim=(0, len(series)),
           title=f"chaos, seed {record['options']['seed']}: goodput per second, faults marked")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=5, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(record)
    plot: str | None = "plots/chaos-goodput.png"
    try:
        plot_goodput(out / "plots" / "chaos-goodput.png", record, summary)
    except ImportError:
        plot = None
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(results_md(record, summary, plot))
    return summary


def main(argv: list[str]) -> int:
    """``python -m bench.chaos.report DIR``: the report again from DIR/chaos.json."""
    out = Path(argv[0])
    summary = write_report(out, json.loads((out / "chaos.json").read_text()))
    print(f"{out / 'results.md'}: {'passed' if summary['passed'] else 'FAILED'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
