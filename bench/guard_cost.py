"""What the source guard's blocked set costs the server: ``python -m bench.guard_cost``.

With N sources blocked (IPv4 addresses), it times, best of several repeats:

- a change: one more source blocked, through what the driver does with it:
  the core's `block_changes`, `SourceFilter.update`, the rebuild of the
  kernel filter and its attachment to each socket, and the log summary;
- a flush without change: what every wake-up of the driver pays to learn
  that nothing changed (`block_changes`);
- churn: every blocked source's block ending and renewed within the second
  (an attacker that keeps sending junk from N addresses): N changes a
  second, which the driver batches into at most MAX_REBUILDS_PER_S rebuilds.

It attaches filters to unbound UDP sockets (no datagram is sent), logs to
/dev/null, and makes blocks last for the whole measurement.  It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Callable

from stripe import guard
from stripe.endpoint import Endpoint
from stripe.io import source_filter
from stripe.noise import generate_keypair
from stripe.spec import EndpointSpec, PeerSpec, Role

log = logging.getLogger("stripe.guard_cost")


def host(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def best(repeats: int, work: Callable[[int], None]) -> float:
    """The fastest of `repeats` runs of work(r), in seconds."""
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        work(r)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(blocked: int, sockets: int, repeats: int) -> dict[str, float]:
    private, _ = generate_keypair()
    core = Endpoint(EndpointSpec(Role.SERVER, private, (PeerSpec(generate_keypair()[1], None),)),
                    0.0)
    filters = source_filter.SourceFilter()
    # The blocks must outlast the measurement, whose clock jumps ahead so
    # that every change may rebuild at once.
    guard.BLOCK_S = 1e9
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    now = 10.0
    for i in range(blocked):
        core.guard.failed(host(i), now, int(guard.FAIL_LIMIT))

    def flush(at: float) -> None:
        """The driver's part: changes in, and (when due) the filter out."""
        changes = core.block_changes(at)
        if changes is not None:
            filters.update(*changes)
        rebuilt, code = filters.rebuild(at)
        if rebuilt:
            for sock in socks:
                source_filter.attach(sock, code)
        line = filters.summary(at)
        if line is not None:
            log.warning("%s", line)

    flush(now)
    clock = [now]

    def change(r: int) -> None:
        clock[0] += 1.0  # a rebuild is allowed again
        core.guard.failed(host(100_000 + r), clock[0], int(guard.FAIL_LIMIT))
        flush(clock[0])

    def no_change(_r: int) -> None:
        core.block_changes(clock[0])

    def update_only(r: int) -> None:
        # A renewed block: one change in, no rebuild (it waits for its turn).
        filters.update([host(r % blocked or 0)], [])

    def rebuild(_r: int) -> None:
        filters.update([], [host(0)])
        filters.update([host(0)], [])
        clock[0] += 1.0
        flush(clock[0])

    assert len(filters) >= blocked, len(filters)
    out = {
        "change_s": best(repeats, change),
        "no_change_s": best(repeats * 10, no_change),
        "update_s": best(repeats * 10, update_only),
        "rebuild_s": best(repeats, rebuild),
    }
    # N renewals a second, at most MAX_REBUILDS_PER_S rebuilds among them.
    out["churn_s_per_s"] = (blocked * (out["update_s"] + out["no_change_s"])
                            + source_filter.MAX_REBUILDS_PER_S * out["rebuild_s"])
    for sock in socks:
        sock.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blocked", type=int, nargs="+", default=[100, 4000])
    parser.add_argument("--sockets", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    stripe_log = logging.getLogger("stripe")
    stripe_log.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115
    stripe_log.propagate = False
    for n in args.blocked:
        r = measure(n, args.sockets, args.repeats)
        print(f"{n:5d} blocked, {args.sockets} sockets: one change {r['change_s'] * 1e3:7.3f} ms"
              f" (rebuild and attach {r['rebuild_s'] * 1e3:.3f} ms), flush without change "
              f"{r['no_change_s'] * 1e6:5.2f} us, churn of {n} changes/s "
              f"{r['churn_s_per_s'] * 1e3:6.1f} ms of CPU per s")


if __name__ == "__main__":
    main()
