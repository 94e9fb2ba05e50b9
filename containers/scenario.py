#!/usr/bin/env python3
"""stripe-scenario: the `equal` scenario as seen from the client container.

Runs inside the client's network namespace (the client container itself, or
a container sharing its network), with `iperf3 -s` running in the server's:

1. waits until the server's tunnel address answers ping (the handshake is
   done and both ends have their TUN up);
2. one TCP flow over each plain link alone, then one through the tunnel,
   each for --time seconds;
3. prints a table: goodput, share of the sum of the plain links (the
   reference), retransmits.

Exit status: 0 if every run carried traffic, 1 otherwise (or if the tunnel's
share is below --min-share), 2 if the tunnel never came up.
Only the standard library: it runs with the image's own python.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def ping_ok(address: str) -> bool:
    result = subprocess.run(["ping", "-c", "1", "-W", "1", "-n", "-q", address],
                            capture_output=True, text=True, check=False)
    return result.returncode == 0


def wait_for(address: str, timeout_s: float) -> float | None:
    """Seconds until `address` answered a ping, or None after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if ping_ok(address):
            return time.monotonic() - start
        time.sleep(0.5)
    return None


def iperf(address: str, seconds: int, extra: list[str]) -> tuple[float, int | None, str]:
    """One TCP flow to `address`: (received Mbit/s, retransmits, error).

    iperf3 -s serves one test at a time and needs a moment after a test whose
    last data still sat in a shaped queue: retry while it says it is busy."""
    for _attempt in range(10):
        mbit, retrans, error = _iperf_once(address, seconds, extra)
        if "busy" not in error and "reset by peer" not in error:
            break
        time.sleep(1.0)
    return mbit, retrans, error


def _iperf_once(address: str, seconds: int, extra: list[str]) -> tuple[float, int | None, str]:
    cmd = ["iperf3", "-c", address, "-t", str(seconds), "-J", "--connect-timeout", "5000",
           *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False,
                            timeout=seconds + 30)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        return 0.0, None, (result.stderr or result.stdout).strip()[:200]
    if "error" in data:
        return 0.0, None, str(data["error"])
    end = data.get("end", {})
    mbit = end.get("sum_received", {}).get("bits_per_second", 0.0) / 1e6
    retrans = end.get("sum_sent", {}).get("retransmits")
    return mbit, retrans, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tunnel", default="10.2.0.2", help="server's tunnel address")
    ap.add_argument("--links", default="172.29.0.2,172.29.1.2",
                    help="server's address on each link, comma-separated")
    ap.add_argument("-t", "--time", type=int, default=10, help="seconds per iperf3 run")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the tunnel")
    ap.add_argument("--min-share", type=float, default=0.0,
                    help="fail if the tunnel gets less than this share of the links' sum")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-link runs")
    ap.add_argument("iperf_args", nargs="*", help="extra iperf3 arguments, after --")
    args = ap.parse_args()

    waited = wait_for(args.tunnel, args.wait)
    if waited is None:
        print(f"FAIL: tunnel address {args.tunnel} did not answer ping in {args.wait:.0f} s")
        return 2
    print(f"tunnel up: {args.tunnel} answers ping (after {waited:.1f} s)", flush=True)

    runs: list[tuple[str, float, int | None, str]] = []
    links = [] if args.no_baseline else [a for a in args.links.split(",") if a]
    for i, address in enumerate(links):
        print(f"iperf3 {args.time} s over link{i} alone ({address}) ...", flush=True)
        runs.append((f"link{i} alone", *iperf(address, args.time, args.iperf_args)))
        time.sleep(1.0)  # let the shaped queues drain before the next run
    print(f"iperf3 {args.time} s through stripe ({args.tunnel}) ...", flush=True)
    runs.append(("stripe", *iperf(args.tunnel, args.time, args.iperf_args)))

    reference = sum(mbit for _name, mbit, _r, _e in runs[:-1])
    print()
    print("| system | goodput Mbit/s | share of links' sum | retransmits |")
    print("|---|---:|---:|---:|")
    for name, mbit, retrans, error in runs:
        share = f"{mbit / reference:.0%}" if reference else "-"
        note = f" ({error})" if error else ""
        print(f"| {name} | {mbit:.2f} | {share} | {'-' if retrans is None else retrans} |{note}")
    print(flush=True)

    failed = [name for name, mbit, _r, _e in runs if mbit <= 0]
    if failed:
        print(f"FAIL: no traffic for {', '.join(failed)}")
        return 1
    if reference and runs[-1][1] / reference < args.min_share:
        print(f"FAIL: stripe got {runs[-1][1] / reference:.0%} of the links' sum, "
              f"below --min-share {args.min_share:.0%}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
