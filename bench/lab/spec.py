"""What a lab is made of, before anything is built: per-direction link
impairments and bottlenecks (:class:`Direction`, :class:`LinkSpec`) and the names of its
namespaces, interfaces and addresses (:class:`LabNames`).

Link ``i`` joins 10.i.0.1/30 (client) and 10.i.0.2/30 (server); the
namespaces and interfaces are named after a per-run prefix, so labs of
concurrent runs never meet. The ECMP addresses sit on the endpoints' ``lo``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from bench.lab.linkmodel import Outage

MAX_LINKS = 8
ECMP_CLIENT_ADDR = "10.9.0.1"
ECMP_SERVER_ADDR = "10.9.0.2"


@dataclass(frozen=True, slots=True)
class BurstLoss:
    """Gilbert-Elliott loss (`bench.lab.linkmodel.GilbertElliott`): per
    packet GOOD turns BAD with probability `p`, BAD turns GOOD with `r`; each
    state loses its own fraction."""

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        if not all(0.0 <= x <= 1.0 for x in (self.p, self.r, self.loss_good, self.loss_bad)):
            raise ValueError(f"burst loss probabilities are 0..1: {self}")


@dataclass(frozen=True, slots=True)
class Direction:
    """What one direction of one link does to packets.

    The rate comes from one of: ``rate_mbit`` (tbf in the kernel, ``None``:
    unshaped), or a *bottleneck* in the userspace emulator (mahimahi
    semantics, `bench.lab.linkmodel`): a mahimahi ``trace`` file or a
    constant ``emulated_mbit``, with a drop-tail queue of ``queue_ms`` (at the
    trace's mean rate) or ``queue_bytes``.  A direction with a bottleneck
    has no tbf.  ``burst_loss`` (Gilbert-Elliott) replaces ``loss``;
    ``delay_steps`` ((start_s, delay_ms), ...) change the delay at those
    times of the trace clock; ``source`` says where the trace came from.
    """

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # fraction of packets dropped at random, 0..1
    trace: str | None = None
    emulated_mbit: float | None = None
    queue_ms: float | None = None
    queue_bytes: int | None = None
    burst_loss: BurstLoss | None = None
    delay_steps: tuple[tuple[float, float], ...] = ()
    source: str = ""
    # ``burst_loss`` only inside these (start_s, duration_s) windows of the
    # emulator's clock (since its last mark); empty: all the time.
    burst_windows: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.trace is not None and self.emulated_mbit is not None:
            raise ValueError("a bottleneck follows a trace or a constant rate, not both")
        if self.bottleneck and self.rate_mbit is not None:
            raise ValueError("a direction with an emulated bottleneck has no tbf rate_mbit")
        if (self.queue_ms is not None or self.queue_bytes is not None) and not self.bottleneck:
            raise ValueError("queue_ms/queue_bytes size an emulated bottleneck's queue")
        if self.queue_ms is not None and self.queue_bytes is not None:
            raise ValueError("a queue in ms or in bytes, not both")
        if self.burst_windows and self.burst_loss is None:
            raise ValueError("burst_windows say when burst_loss applies: set burst_loss")

    @property
    def bottleneck(self) -> bool:
        """Is the rate made by the emulator (trace or constant), not by tbf?"""
        return self.trace is not None or self.emulated_mbit is not None

    @property
    def needs_emulator(self) -> bool:
        """Only the userspace emulator can do this (netem cannot)."""
        return self.bottleneck or self.burst_loss is not None or bool(self.delay_steps)

    @property
    def impaired(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0 or self.needs_emulator

    def emulator_spec(self) -> dict[str, object]:
        """This direction as the emulator's JSON takes it (`bench.lab.emulator`)."""
        out: dict[str, object] = {
            "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms, "loss": self.loss,
        }
        if self.trace is not None:
            out["trace"] = self.trace
        if self.emulated_mbit is not None:
            out["constant_mbit"] = self.emulated_mbit
        if self.queue_ms is not None:
            out["queue_ms"] = self.queue_ms
        if self.queue_bytes is not None:
            out["queue_bytes"] = self.queue_bytes
        if self.burst_loss is not None:
            ge = self.burst_loss
            out["ge"] = {"p": ge.p, "r": ge.r, "loss_good": ge.loss_good, "loss_bad": ge.loss_bad}
            if self.burst_windows:
                out["ge_windows"] = [list(w) for w in self.burst_windows]
        if self.delay_steps:
            out["delay_steps"] = [list(step) for step in self.delay_steps]
        return out


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Both directions of a link, and its outages (silent both ways from
    ``start_s`` of the trace clock for ``duration_s``; the queue kept or
    flushed); outages need a bottleneck in both directions."""

    up: Direction  # client -> server
    down: Direction  # server -> client
    outages: tuple[Outage, ...] = ()

    def __post_init__(self) -> None:
        if self.outages and not (self.up.bottleneck and self.down.bottleneck):
            raise ValueError("outages need an emulated bottleneck in both directions")

    @classmethod
    def symmetric(
        cls,
        rate_mbit: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
    ) -> LinkSpec:
        d = Direction(rate_mbit, delay_ms, jitter_ms, loss)
        return cls(d, d)

    def emulator_spec(self, a: str, b: str) -> dict[str, object]:
        """The link between interfaces ``a`` (client side) and ``b`` as the emulator takes it."""
        spec: dict[str, object] = {
            "a": a, "b": b, "a_to_b": self.up.emulator_spec(), "b_to_a": self.down.emulator_spec(),
        }
        if self.outages:
            spec["outages"] = [[o.start_s, o.duration_s, o.flush] for o in self.outages]
        return spec


@dataclass(frozen=True, slots=True)
class LinkNames:
    client_if: str
    server_if: str
    mid_client_if: str  # middle's end of the client-side pair (network topology)
    mid_server_if: str
    client_addr: str
    server_addr: str


@dataclass(frozen=True, slots=True)
class LabNames:
    client_ns: str
    server_ns: str
    mid_ns: str
    links: tuple[LinkNames, ...]

    @classmethod
    def for_prefix(cls, prefix: str, n_links: int) -> LabNames:
        if not 1 <= n_links <= MAX_LINKS:
            raise ValueError(f"a lab has 1..{MAX_LINKS} links, not {n_links}")
        links = tuple(
            LinkNames(
                client_if=f"{prefix}c{i}",
                server_if=f"{prefix}s{i}",
                mid_client_if=f"{prefix}mc{i}",
                mid_server_if=f"{prefix}ms{i}",
                client_addr=f"10.{i}.0.1",
                server_addr=f"10.{i}.0.2",
            )
            for i in range(n_links)
        )
        return cls(f"{prefix}cli", f"{prefix}srv", f"{prefix}mid", links)

    @classmethod
    def classic(cls) -> LabNames:
        """The two-device lab of issue 2, whose names configs/*.toml rely on."""
        links = tuple(
            LinkNames(
                client_if=f"veth{2 * i}",
                server_if=f"veth{2 * i + 1}",
                mid_client_if="",
                mid_server_if="",
                client_addr=f"10.{i}.0.1",
                server_addr=f"10.{i}.0.2",
            )
            for i in range(2)
        )
        return cls("devicea", "deviceb", "", links)


def new_prefix() -> str:
    """A fresh per-run prefix, ``sb`` + 4 hex digits (names stay <= 15 chars)."""
    return "sb" + secrets.token_hex(2)
