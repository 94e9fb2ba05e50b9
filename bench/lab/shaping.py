"""How links are shaped and impaired: the ``tbf``, ``netem`` and nftables
arguments the lab applies, and the offload settings they need."""

from __future__ import annotations

from bench.lab.sh import run
from bench.lab.spec import Direction

# tbf: bucket of 10 ms of traffic (at least two full frames) keeps short
# bursts at line rate without letting a flow overshoot the rate for long.
TBF_BURST_S = 0.010
TBF_MIN_BURST_BYTES = 2 * 1514
# tbf queue: how long a packet may wait; 50 ms is a modest modem buffer,
# larger than the BDP of the zero-delay scenarios so TCP can fill the link.
DEFAULT_QUEUE_MS = 50.0

OFFLOADS_OFF = ("tx", "off", "tso", "off", "gso", "off", "gro", "off")
# No segmentation offloads (every frame on the veth is one packet) but
# checksum offload kept, so the tunnels' UDP GSO sends still work: the
# kernel segments them in software before the veth, as a NIC without UDP
# segmentation offload would.
SEGMENTATION_OFF = ("tso", "off", "gso", "off", "gro", "off", "tx-udp-segmentation", "off")


def netem_args(d: Direction) -> list[str]:
    """netem for one direction. Its jitter may reorder (the userspace emulator's does not)."""
    args = ["netem", "delay", f"{d.delay_ms:g}ms"]
    if d.jitter_ms:
        args.append(f"{d.jitter_ms:g}ms")
    if d.loss:
        args += ["loss", "random", f"{100 * d.loss:g}%"]
    return args


def netem_works(ns: str) -> bool:
    """Can this kernel add a netem qdisc? Tried on ``lo`` of a namespace we own."""
    probe = run(
        ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], ns=ns, check=False
    )
    if probe.returncode != 0:
        return False
    run(["tc", "qdisc", "del", "dev", "lo", "root"], ns=ns, check=False)
    return True


def tbf_args(rate_mbit: float, queue_ms: float) -> list[str]:
    burst = max(TBF_MIN_BURST_BYTES, int(rate_mbit * 1e6 / 8 * TBF_BURST_S))
    return [
        "tbf",
        "rate",
        f"{int(rate_mbit * 1000)}kbit",
        "burst",
        str(burst),
        "latency",
        f"{int(queue_ms)}ms",
    ]


LOSS_RESOLUTION = 1_000_000  # loss is drawn in parts per million


def nft_loss_ruleset(table: str, dev: str, loss: float) -> str:
    """An nftables netdev table dropping a random ``loss`` fraction of the IPv4
    packets arriving on ``dev`` (ARP passes: a lost ARP reply would stall the
    link for a second, which random packet loss on a real link does not)."""
    if not 0 < loss < 1:
        raise ValueError(f"loss is a fraction in (0, 1), not {loss!r}")
    threshold = round(loss * LOSS_RESOLUTION)
    return (
        f"table netdev {table} {{ chain loss {{ type filter hook ingress "
        f'device "{dev}" priority -400; meta protocol ip '
        f"numgen random mod {LOSS_RESOLUTION} < {threshold} counter drop; }}; }}"
    )
