"""NAT on the server: the clients' traffic leaves with the server's address.

`[interface] masquerade = "eth0"` (or a list) adds an nftables table of
stripe's own, named after the TUN (`inet stripe_<tun>`), whose one rule
masquerades what came in through the TUN and goes out through those
interfaces; and turns on forwarding (IPv4, and IPv6 if the tunnel has an
IPv6 address) for as long as stripe runs, putting back the value it found.

The table is written with `nft` (root, at start-up) and deleted through
netlink (pyroute2) at exit, when stripe runs as an unprivileged user with
CAP_NET_ADMIN only and starts no programs.  A table of that name can only
be a leftover of an earlier run on the same TUN (the name is unique while
the TUN exists), so it is replaced, in the same nft transaction.
"""

from __future__ import annotations

import errno
import re
import subprocess
from functools import partial
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.nftables.main import NFTables

from ..config import Config
from .tun import SetupError
from .undo import Undo

NFPROTO_INET = 1
FORWARDING = {
    4: Path("/proc/sys/net/ipv4/ip_forward"),
    6: Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}
NFT_TIMEOUT_S = 10.0


def table_name(tun_name: str) -> str:
    """nft identifiers take letters, digits and underscores safely."""
    return "stripe_" + re.sub(r"[^A-Za-z0-9_]", "_", tun_name)


def ruleset(tun_name: str, interfaces: tuple[str, ...], tuns: tuple[str, ...] = ()) -> str:
    """`tuns`: every TUN whose packets are masqueraded (a server with
    workers has one per worker); default: `tun_name` alone."""
    table = table_name(tun_name)
    out = ", ".join(f'"{name}"' for name in interfaces)
    tuns = tuns or (tun_name,)
    inputs = f'"{tuns[0]}"' if len(tuns) == 1 else "{ " + ", ".join(f'"{t}"' for t in tuns) + " }"
    return (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    iifname {inputs} oifname {{ {out} }} masquerade\n'
        "  }\n"
        "}\n"
    )


def set_up(config: Config, tun_name: str, undo: Undo) -> None:
    table = table_name(tun_name)
    try:
        tuns = tuple(config.worker_tun(k) for k in range(config.workers))
        result = subprocess.run(["nft", "-f", "-"],
                                input=ruleset(tun_name, config.masquerade, tuns),
                                capture_output=True, text=True, timeout=NFT_TIMEOUT_S,
                                check=False)
    except FileNotFoundError:
        raise SetupError("masquerade needs the nft command (Debian: apt-get install "
                         "nftables)") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"nft did not answer within {NFT_TIMEOUT_S:g} s") from None
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise SetupError(f"nft: cannot add the masquerade table {table}: {first}")
    undo.record(f"nft add table inet {table} (masquerade {tun_name} -> "
                f"{', '.join(config.masquerade)})", partial(_delete_table, table))
    for version in sorted({address.version for address in config.addresses}):
        _enable_forwarding(FORWARDING[version], undo)


def _delete_table(table: str) -> None:
    nft = NFTables(nfgen_family=NFPROTO_INET)
    try:
        nft.table("del", name=table)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise OSError(exc.code, f"nft delete table inet {table}: {exc.args[-1]}") from None
    finally:
        nft.close()


def _enable_forwarding(path: Path, undo: Undo) -> None:
    try:
        previous = path.read_text().strip()
        if previous == "1":
            return
        path.write_text("1\n")
    except OSError as exc:
        raise SetupError(f"cannot enable forwarding in {path}: {exc.strerror}") from None
    key = ".".join(path.parts[3:])
    undo.record(f"sysctl -w {key}=1 (was {previous})", partial(_write, path, previous))


def _write(path: Path, value: str) -> None:
    path.write_text(value + "\n")
