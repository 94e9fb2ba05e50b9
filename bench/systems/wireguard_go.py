"""The wireguard-go baseline: userspace WireGuard, one path over link 0 (issue 7).

Debian's ``wireguard-go`` (0.0.20220316 on bookworm) runs in the foreground
in each endpoint namespace and is configured through its UAPI socket
(``/var/run/wireguard/<ifname>.sock``, the cross-platform protocol that
``wg`` itself speaks: ``set=1``, ``key=value`` lines, a blank line; the
reply is ``errno=N``). Keys are X25519 from ``cryptography`` (stripe's own
dependency), so wireguard-tools is not needed. Interface names carry the
lab's prefix: the sockets live in the host's /var/run, shared by every
namespace, so two labs must never pick the same name.

The kernel's WireGuard module would be a different, faster baseline; issue 7
asks for the userspace one, and the kernels here have no module anyway.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.lab import CommandError, Lab, LabNames, Proc, run
from bench.sockets import recv_until
from bench.systems.base import Target
from bench.systems.stripe_config import TUNNEL_MTU
from bench.systems.tunnel import TunnelPair, TunnelSystem

WIREGUARD_GO = "wireguard-go"
UAPI_DIR = Path("/var/run/wireguard")
LISTEN_PORT = 51820
# Its own /24, apart from stripe's 10.200.0.0/24.
TUNNEL_CLIENT_ADDR = "10.201.0.1"
TUNNEL_SERVER_ADDR = "10.201.0.2"
TUNNEL_PREFIX_LEN = 24
SOCKET_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KeyPair:
    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private(cls, raw: bytes) -> KeyPair:
        """Clamped as ``wg genkey`` does, with its X25519 public key."""
        if len(raw) != 32:
            raise ValueError("an X25519 private key is 32 bytes")
        key = bytearray(raw)
        key[0] &= 248
        key[31] = (key[31] & 127) | 64
        public = X25519PrivateKey.from_private_bytes(bytes(key)).public_key().public_bytes_raw()
        return cls(bytes(key), public)


def uapi_set(
    private: bytes,
    listen_port: int,
    peer_public: bytes,
    allowed_ip: str,
    endpoint: str | None = None,
) -> str:
    """A UAPI ``set`` request: our key and port, exactly one peer."""
    lines = [
        "set=1",
        f"private_key={private.hex()}",
        f"listen_port={listen_port}",
        "replace_peers=true",
        f"public_key={peer_public.hex()}",
        "replace_allowed_ips=true",
        f"allowed_ip={allowed_ip}",
    ]
    if endpoint:
        lines.append(f"endpoint={endpoint}")
    return "\n".join(lines) + "\n\n"


def uapi_errno(reply: str) -> int:
    """The ``errno=N`` of a UAPI reply; ValueError when the reply has none."""
    for line in reply.splitlines():
        key, _, value = line.partition("=")
        if key == "errno":
            if not value.isdigit():
                raise ValueError(f"malformed UAPI errno line {line!r}")
            return int(value)
    raise ValueError(f"UAPI reply without errno: {reply[:200]!r}")


def uapi_request(path: Path, request: str, timeout_s: float = SOCKET_TIMEOUT_S) -> str:
    """Send one request to a UAPI socket; the reply ends with a blank line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(request.encode())
        reply = recv_until(sock, b"\n\n")
    return reply.decode(errors="replace")


def interface_names(names: LabNames) -> tuple[str, str]:
    """(client, server) interface names: unique per lab, <= 15 characters."""
    prefix = names.client_ns.removesuffix("cli")
    return prefix + "wgc", prefix + "wgs"


def socket_path(ifname: str) -> Path:
    return UAPI_DIR / f"{ifname}.sock"


def remove_stale_sockets(prefix: str) -> list[str]:
    """UAPI sockets of interfaces named with ``prefix`` (left by a killed run)."""
    if len(prefix) < 2:
        raise ValueError("refusing a prefix shorter than 2 characters")
    gone = []
    for path in UAPI_DIR.glob(f"{prefix}*.sock"):
        path.unlink(missing_ok=True)
        gone.append(path.name)
    return gone


@dataclass
class WireguardGoPair(TunnelPair):
    """wireguard-go in both namespaces, peered over link 0 only."""

    names: LabNames | None = None
    keys: tuple[KeyPair, KeyPair] = field(
        default_factory=lambda: (KeyPair.generate(), KeyPair.generate())
    )

    def start(self) -> None:
        if self.names is None:
            raise ValueError("WireguardGoPair needs the lab's names")
        client_if, server_if = interface_names(self.names)
        client_keys, server_keys = self.keys
        link0 = self.names.links[0]
        # Each Proc is kept as soon as it runs, so stop() cleans up after a failure.
        self.server = self._spawn("wireguard-go-server", self.server_ns, server_if)
        self._configure(
            self.server,
            server_if,
            uapi_set(
                server_keys.private, LISTEN_PORT, client_keys.public, f"{TUNNEL_CLIENT_ADDR}/32"
            ),
            TUNNEL_SERVER_ADDR,
        )
        self.client = self._spawn("wireguard-go-client", self.client_ns, client_if)
        self._configure(
            self.client,
            client_if,
            uapi_set(
                client_keys.private,
                LISTEN_PORT,
                server_keys.public,
                f"{TUNNEL_SERVER_ADDR}/32",
                endpoint=f"{link0.server_addr}:{LISTEN_PORT}",
            ),
            TUNNEL_CLIENT_ADDR,
        )

    def _spawn(self, name: str, ns: str, ifname: str) -> Proc:
        path = socket_path(ifname)
        if path.exists():
            raise CommandError(
                f"{path} exists: another wireguard-go uses {ifname}; if it is a leftover: "
                f"python -m bench cleanup {ifname[:-3]}"
            )
        # env execs wireguard-go, so the PID we keep is wireguard-go's.
        cmd = ["env", "WG_PROCESS_FOREGROUND=1", WIREGUARD_GO, "-f", ifname]
        return Proc(name, cmd, ns, self.workdir / f"{name}.log")

    def _configure(self, proc: Proc, ifname: str, request: str, address: str) -> None:
        """Wait for its UAPI socket, set keys and peer, address the interface."""
        path = socket_path(ifname)
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while not path.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise CommandError(f"{proc.name}: no UAPI socket {path}:\n{proc.tail()}")
            time.sleep(0.05)
        errno = uapi_errno(uapi_request(path, request))
        if errno:
            raise CommandError(f"{proc.name}: UAPI set failed with errno {errno}")
        ns = self.server_ns if proc is self.server else self.client_ns
        run(["ip", "addr", "add", f"{address}/{TUNNEL_PREFIX_LEN}", "dev", ifname], ns=ns)
        run(["ip", "link", "set", ifname, "mtu", str(TUNNEL_MTU), "up"], ns=ns)

    def stop(self) -> None:
        super().stop()
        if self.names is None:
            return
        # wireguard-go removes both on SIGTERM; not when it was killed.
        ends = zip(interface_names(self.names), (self.client_ns, self.server_ns), strict=True)
        for ifname, ns in ends:
            socket_path(ifname).unlink(missing_ok=True)
            run(["ip", "link", "del", ifname], ns=ns, check=False)


class WireguardGo(TunnelSystem):
    """Userspace WireGuard (Debian's wireguard-go), single path over link 0."""

    name = "wireguard-go"
    pair: WireguardGoPair | None = None

    @staticmethod
    def unavailable_reason() -> str | None:
        if shutil.which(WIREGUARD_GO) is None:
            return "wireguard-go not installed (Debian package wireguard-go)"
        return None

    def start(self, lab: Lab, workdir: Path) -> Target:
        self.pair = WireguardGoPair(
            lab.names.client_ns, lab.names.server_ns, workdir, names=lab.names
        )
        self.pair.start()
        self.pair.wait_ready(TUNNEL_SERVER_ADDR)
        return Target(TUNNEL_SERVER_ADDR)
