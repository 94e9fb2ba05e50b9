"""What a lab is made of, before anything is built: per-direction link
impairments (:class:`Direction`, :class:`LinkSpec`) and the names of its
namespaces, interfaces and addresses (:class:`LabNames`).

Link ``i`` joins 10.i.0.1/30 (client) and 10.i.0.2/30 (server); the
namespaces and interfaces are named after a per-run prefix, so labs of
concurrent runs never meet. The ECMP addresses sit on the endpoints' ``lo``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

MAX_LINKS = 8
ECMP_CLIENT_ADDR = "10.9.0.1"
ECMP_SERVER_ADDR = "10.9.0.2"


@dataclass(frozen=True, slots=True)
class Direction:
    """What one direction of one link does to packets (``None`` rate: unshaped)."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # fraction of packets dropped at random, 0..1

    @property
    def impaired(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0


@dataclass(frozen=True, slots=True)
class LinkSpec:
    up: Direction  # client -> server
    down: Direction  # server -> client

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
