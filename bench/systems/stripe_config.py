"""stripe config files generated for a bench lab (fresh keys per run).

What a stripe system runs with is its *variant*: a scheduler name, with
``[interface]`` settings after a colon (`split_variant`); ``default``, no
scheduler key at all (whatever the stripe that runs it defaults to); or
``example``, every setting the shipped example configs make
(``configs/a.toml`` for the server, ``configs/b.toml`` for the client, their
``[[link]]`` settings by position) apart from the names, keys and addresses
the lab sets itself (`StripeSettings.from_examples`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.lab import LabNames, LinkSpec
from bench.systems.stripe import genkey, pubkey

TUNNEL_CLIENT_ADDR = "10.200.0.1"
TUNNEL_SERVER_ADDR = "10.200.0.2"
TUNNEL_PREFIX_LEN = 24
TUNNEL_MTU = 1400
BASE_PORT = 5000
DEFAULT_VARIANT = "default"  # no scheduler key: the stripe's own default
# Variant settings only a server takes ("default:workers=2").
SERVER_ONLY_KEYS = frozenset({"workers"})
EXAMPLE_VARIANT = "example"  # the example configs' settings
EXAMPLE_DIR = REPO_ROOT / "configs"
# What the lab sets itself (names, keys, addresses, ports) or what has no
# say in how packets are carried: not taken from the example configs.
IDENTITY_KEYS = frozenset({
    "name", "address", "mtu", "private_key", "private_key_file", "listen_port",
    "control_socket", "user", "metrics", "masquerade", "route_all", "link_routes",
})
LINK_IDENTITY_KEYS = frozenset({
    "name", "interface", "source", "remote", "port", "gateway", "table",
})


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


def toml_value(value: Any) -> str:
    """A TOML literal for a config value (string, bool, number, list)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _q(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"no TOML literal for {value!r}")


@dataclass(frozen=True)
class StripeSettings:
    """What a variant writes beyond the lab's own lines: ``[interface]``
    lines of the server and of the client, and per client link its lines
    (``None``: ``weight`` = the link's rate, `link_weight`, and ``backup =
    false``)."""

    server: tuple[str, ...] = ()
    client: tuple[str, ...] = ()
    links: tuple[tuple[str, ...], ...] | None = None
    # The example configs' own values, for the report and `same_as_default`.
    values: dict[str, Any] = field(default_factory=dict, compare=False)
    # A variant's ``linkN.KEY=VALUE`` settings: (N, TOML line), over the rest.
    link_overrides: tuple[tuple[int, str], ...] = ()

    @classmethod
    def from_variant(cls, variant: str) -> StripeSettings:
        if variant == EXAMPLE_VARIANT:
            return cls.from_examples()
        scheduler, lines = split_variant(variant)
        if scheduler != DEFAULT_VARIANT:
            lines = [f"scheduler = {_q(scheduler)}", *lines]
        interface: list[str] = []
        overrides: list[tuple[int, str]] = []
        for line in lines:
            if m := _LINK_KEY.match(line):
                overrides.append((int(m[1]), line[m.end():]))
            else:
                interface.append(line)
        client = [line for line in interface if _key(line) not in SERVER_ONLY_KEYS]
        return cls(tuple(interface), tuple(client), link_overrides=tuple(overrides))

    @classmethod
    def from_examples(cls, directory: Path | None = None) -> StripeSettings:
        """The settings of ``a.toml`` (server) and ``b.toml`` (client) in
        ``directory`` (default `EXAMPLE_DIR`, the shipped ones)."""
        directory = directory or EXAMPLE_DIR
        server = tomllib.loads((directory / "a.toml").read_text())
        client = tomllib.loads((directory / "b.toml").read_text())

        def own(table: dict[str, Any], identity: frozenset[str]) -> dict[str, Any]:
            return {k: v for k, v in table.items() if k not in identity}

        server_iface = own(server.get("interface", {}), IDENTITY_KEYS)
        client_iface = own(client.get("interface", {}), IDENTITY_KEYS)
        links = [own(link, LINK_IDENTITY_KEYS) for link in client.get("link", [])]

        def lines(values: dict[str, Any]) -> tuple[str, ...]:
            return tuple(f"{k} = {toml_value(v)}" for k, v in values.items())

        return cls(lines(server_iface), lines(client_iface), tuple(lines(v) for v in links),
                   {"server": server_iface, "client": client_iface, "links": links})

    def link_lines(self, index: int, spec: LinkSpec) -> list[str]:
        if self.links is None:
            lines = [f"weight = {link_weight(spec)}", "backup = false"]
        else:  # links beyond the examples' take the last example link's settings
            lines = list(self.links[min(index, len(self.links) - 1)]) if self.links else []
        for at, line in self.link_overrides:
            if at == index:
                lines = [ln for ln in lines if _key(ln) != _key(line)] + [line]
        return lines

    def same_as_default(self, default_scheduler: str) -> bool:
        """Do these example settings ask for nothing but stripe's defaults
        (``default_scheduler``, weight 1, not a backup)?  Then the example
        variant runs as the default one does."""
        if not self.values:
            return False
        plain = {"scheduler": default_scheduler}
        ifaces = (self.values["server"], self.values["client"])
        if any(not set(v.items()) <= set(plain.items()) for v in ifaces):
            return False
        return all(link.get("weight", 1) == 1 and link.get("backup", False) is False
                   and set(link) <= {"weight", "backup"} for link in self.values["links"])

    def describe(self) -> str:
        """The example settings as one line, for the report."""
        parts = [f"server: {'; '.join(self.server) or 'defaults'}",
                 f"client: {'; '.join(self.client) or 'defaults'}"]
        if self.links:
            parts.append("links: " + " / ".join("; ".join(ls) or "defaults" for ls in self.links))
        return ", ".join(parts)


# A setting of the client's link N: "link1.backup = true".
_LINK_KEY = re.compile(r"link(\d+)\.(?=\w)")


def _key(line: str) -> str:
    """The key of a ``KEY = VALUE`` TOML line."""
    return line.split(" = ")[0]


def split_variant(variant: str) -> tuple[str, list[str]]:
    """A bench "scheduler" is a stripe scheduler, optionally with [interface]
    settings after a colon, joined by "+": "adaptive:queue_target_ms=0"
    runs the adaptive scheduler with queue management off (an A/B of one
    setting in one run).  A key ``linkN.KEY`` sets KEY in the client's link
    N instead ("default:link1.backup=true": the second link a backup).
    Returns the scheduler and the settings as TOML lines."""
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
    it (the attack bench's server).  ``scheduler``: a variant (see the module's doc)."""
    settings = StripeSettings.from_variant(scheduler).server
    lines = [
        "[interface]",
        f"name = {_q(tun)}",
        f'address = ["{TUNNEL_SERVER_ADDR}/{TUNNEL_PREFIX_LEN}"]',
        f"mtu = {TUNNEL_MTU}",
        f"private_key = {_q(keys.server_private)}",
        f"listen_port = {BASE_PORT}",
        *settings,
        "",
        "[peer]",
        f"public_key = {_q(keys.client_public)}",
    ]
    if any(line.startswith("workers = ") for line in settings):
        # Each worker's TUN routes its peers' allowed_ips: they must be narrow.
        lines.append(f'allowed_ips = ["{TUNNEL_CLIENT_ADDR}/32"]')
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
    port 5000+i, or 5000 for every link with ``one_port``.  ``scheduler``: a
    variant (see the module's doc)."""
    variant = StripeSettings.from_variant(scheduler)
    beyond = sorted({at for at, _ in variant.link_overrides if at >= len(specs)})
    if beyond:
        raise ValueError(f"{scheduler!r} sets link{beyond[0]}, but the lab has links "
                         f"0-{len(specs) - 1}")
    lines = [
        "[interface]",
        f"name = {_q(tun)}",
        f'address = ["{TUNNEL_CLIENT_ADDR}/{TUNNEL_PREFIX_LEN}"]',
        f"mtu = {TUNNEL_MTU}",
        f"private_key = {_q(keys.client_private)}",
        *variant.client,
        "",
        "[peer]",
        f"public_key = {_q(keys.server_public)}",
    ]
    for i, (n, spec) in enumerate(zip(names.links, specs, strict=True)):
        lines += _link_lines(
            i, n.client_if, n.client_addr,
            f'remote = "{n.server_addr}:{BASE_PORT + (0 if one_port else i)}"',
            *variant.link_lines(i, spec))
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
