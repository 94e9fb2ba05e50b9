"""stripe config files generated for a bench lab (fresh keys per run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.lab import LabNames, LinkSpec
from bench.systems.stripe import genkey, pubkey

TUNNEL_CLIENT_ADDR = "10.200.0.1"
TUNNEL_SERVER_ADDR = "10.200.0.2"
TUNNEL_PREFIX_LEN = 24
TUNNEL_MTU = 1400
BASE_PORT = 5000


@dataclass(frozen=True)
class Keys:
    client_private: str
    client_public: str
    server_private: str
    server_public: str

    @classmethod
    def generate(cls) -> Keys:
        cpriv, spriv = genkey(), genkey()
        return cls(cpriv, pubkey(cpriv), spriv, pubkey(spriv))


def link_weight(spec: LinkSpec) -> int:
    """Weight for the weighted scheduler: the link's rate in Mbit/s (1 if unshaped)."""
    rate = spec.up.rate_mbit
    return max(1, round(rate)) if rate else 1


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_variant(variant: str) -> tuple[str, list[str]]:
    """A bench "scheduler" is a stripe scheduler, optionally with [interface]
    settings after a colon, joined by "+": "adaptive:queue_target_ms=0"
    runs the adaptive scheduler with queue management off (an A/B of one
    setting in one run).  Returns the scheduler and the settings as TOML lines."""
    scheduler, _, rest = variant.partition(":")
    lines = []
    for item in (item for item in rest.split("+") if item):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"{variant!r}: expected SCHEDULER[:KEY=VALUE[+KEY=VALUE...]]")
        lines.append(f"{key} = {value}")
    return scheduler, lines


def server_config(
    names: LabNames, keys: Keys, scheduler: str, tun: str, one_port: bool = False
) -> str:
    """The server's config: one socket per link (port 5000+i, bound to the
    link's address), or with ``one_port`` a single wildcard socket on port
    5000 and no [[link]], so anything sent to that port from anywhere reaches
    it (the attack bench's server)."""
    scheduler, settings = split_variant(scheduler)
    lines = [
        "[interface]",
        f"name = {_q(tun)}",
        f'address = ["{TUNNEL_SERVER_ADDR}/{TUNNEL_PREFIX_LEN}"]',
        f"mtu = {TUNNEL_MTU}",
        f"private_key = {_q(keys.server_private)}",
        f"scheduler = {_q(scheduler)}",
        f"listen_port = {BASE_PORT}",
        *settings,
        "",
        "[peer]",
        f"public_key = {_q(keys.client_public)}",
    ]
    if one_port:
        return "\n".join(lines) + "\n"
    for i, n in enumerate(names.links):
        lines += _link_lines(i, n.server_if, n.server_addr, f"port = {BASE_PORT + i}")
    return "\n".join(lines) + "\n"


def client_config(
    names: LabNames,
    specs: tuple[LinkSpec, ...],
    keys: Keys,
    scheduler: str,
    tun: str,
    one_port: bool = False,
) -> str:
    """The client's config: link i sends to the server's link-i address, on
    port 5000+i, or 5000 for every link with ``one_port``."""
    scheduler, settings = split_variant(scheduler)
    lines = [
        "[interface]",
        f"name = {_q(tun)}",
        f'address = ["{TUNNEL_CLIENT_ADDR}/{TUNNEL_PREFIX_LEN}"]',
        f"mtu = {TUNNEL_MTU}",
        f"private_key = {_q(keys.client_private)}",
        f"scheduler = {_q(scheduler)}",
        *settings,
        "",
        "[peer]",
        f"public_key = {_q(keys.server_public)}",
    ]
    for i, (n, spec) in enumerate(zip(names.links, specs, strict=True)):
        lines += _link_lines(
            i, n.client_if, n.client_addr,
            f'remote = "{n.server_addr}:{BASE_PORT + (0 if one_port else i)}"',
            f"weight = {link_weight(spec)}", "backup = false")
    return "\n".join(lines) + "\n"


def _link_lines(index: int, interface: str, source: str, *rest: str) -> list[str]:
    """A `[[link]]` table bound to `interface` and `source`, then `rest`."""
    return ["", "[[link]]", f'name = "link{index}"', f"interface = {_q(interface)}",
            f"source = {_q(source)}", *rest]


def write_configs(
    directory: Path,
    names: LabNames,
    specs: tuple[LinkSpec, ...],
    keys: Keys,
    scheduler: str,
    tun: str,
    one_port: bool = False,
) -> tuple[Path, Path]:
    """Write server and client configs for ``scheduler`` (a variant, see
    `split_variant`); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    server = directory / f"server-{scheduler}.toml"
    client = directory / f"client-{scheduler}.toml"
    server.write_text(server_config(names, keys, scheduler, tun, one_port))
    client.write_text(client_config(names, specs, keys, scheduler, tun, one_port))
    # They hold private keys.
    server.chmod(0o600)
    client.chmod(0o600)
    return server, client
