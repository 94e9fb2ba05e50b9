"""Real stripe processes in network namespaces, with real TUN devices.

Every lab gets a unique `si<hex>` prefix and is deleted in a finally block,
also when the test fails or is interrupted.  These tests need root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.lab import Lab, LabNames, LinkSpec, Proc, run
from stripe.noise import encode_key, generate_keypair

REPO_ROOT = Path(__file__).resolve().parents[2]

CLIENT_TUN_ADDR = "10.77.0.1"
SERVER_TUN_ADDR = "10.77.0.2"
PORT = 5000

pytestmark = pytest.mark.integration


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN)"
    for tool in ("ip", "tc", "ping", "iperf3"):
        if shutil.which(tool) is None:
            return f"needs {tool} (run scripts/setup.sh)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@dataclass
class Tunnel:
    lab: Lab
    workdir: Path
    weights: tuple[int, ...]
    scheduler: str = "weighted"
    # Extra `key = value` lines for both ends' [interface] table.
    interface_extra: tuple[str, ...] = ()
    # False: client links name only their interface, so the kernel picks
    # the source address (what a link whose address changes needs).
    bind_source: bool = True
    # Extra lines for the server's [interface] only (ends that differ).
    server_extra: tuple[str, ...] = ()
    procs: list[Proc] = field(default_factory=list)

    @property
    def client_ns(self) -> str:
        return self.lab.names.client_ns

    @property
    def server_ns(self) -> str:
        return self.lab.names.server_ns

    @property
    def tun_name(self) -> str:
        """Both ends' TUN device (named after the lab, so unique per test)."""
        return self.lab.names.client_ns[:-3] + "t"

    def status(self, role: str) -> dict[str, Any]:
        """`stripe status --json` of one end ("client" or "server"), run
        where that process runs: inside its namespace."""
        ns = self.client_ns if role == "client" else self.server_ns
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "stripe", "status", "-i",
             self.tun_name, "--json"],
            capture_output=True, text=True, timeout=10, check=True, cwd=REPO_ROOT).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def write_configs(self) -> tuple[Path, Path]:
        cpriv, cpub = generate_keypair()
        spriv, spub = generate_keypair()
        psk = generate_keypair()[0]
        tun = self.tun_name
        server = [
            "[interface]", f'name = "{tun}"', f'address = ["{SERVER_TUN_ADDR}/24"]',
            f'private_key = "{encode_key(spriv)}"', f"listen_port = {PORT}",
            f'scheduler = "{self.scheduler}"', *self.interface_extra, *self.server_extra,
            "[peer]", f'public_key = "{encode_key(cpub)}"', f'preshared_key = "{encode_key(psk)}"',
        ]
        client = [
            "[interface]", f'name = "{tun}"', f'address = ["{CLIENT_TUN_ADDR}/24"]',
            f'private_key = "{encode_key(cpriv)}"', f'scheduler = "{self.scheduler}"',
            *self.interface_extra,
            "[peer]", f'public_key = "{encode_key(spub)}"', f'preshared_key = "{encode_key(psk)}"',
        ]
        for i, link in enumerate(self.lab.names.links):
            client += [
                "[[link]]", f'name = "link{i}"', f'interface = "{link.client_if}"',
                *([f'source = "{link.client_addr}"'] if self.bind_source else []),
                f'remote = "{link.server_addr}:{PORT}"', f"weight = {self.weights[i]}",
            ]
        spath, cpath = self.workdir / "server.toml", self.workdir / "client.toml"
        spath.write_text("\n".join(server) + "\n")
        cpath.write_text("\n".join(client) + "\n")
        for path in (spath, cpath):  # they hold private keys
            path.chmod(0o600)
        return spath, cpath

    def stripe(self, ns: str, *args: str, log: str) -> Proc:
        proc = Proc(log, [sys.executable, "-m", "stripe", "--log-level", "debug", *args], ns,
                    self.workdir / f"{log}.log", cwd=REPO_ROOT)
        self.procs.append(proc)
        return proc

    def start(self) -> tuple[Proc, Proc]:
        spath, cpath = self.write_configs()
        server = self.stripe(self.server_ns, "server", "-c", str(spath), log="server")
        client = self.stripe(self.client_ns, "client", "-c", str(cpath), log="client")
        self.wait_ping()
        return server, client

    def wait_ping(self, timeout_s: float = 15.0) -> None:
        """A ping answered through the tunnel.  Only once the client's route
        to the server's tunnel address is its TUN: with a default route over
        a link (route_all tests), the server answers for that address over
        the link itself before the client has even set its TUN up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            route = run(["ip", "route", "get", SERVER_TUN_ADDR], ns=self.client_ns,
                        check=False).stdout
            if f" dev {self.tun_name} " in route and run(
                    ["ping", "-c1", "-W1", SERVER_TUN_ADDR], ns=self.client_ns,
                    check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("no ping through the tunnel\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail(60)}" for p in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def make_tunnel(tmp_path: Path) -> Iterator[object]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    made: list[Tunnel] = []

    def factory(rates_mbit: tuple[float | None, ...] = (None, None),
                weights: tuple[int, ...] | None = None, scheduler: str = "weighted",
                start: bool = True, interface_extra: tuple[str, ...] = (),
                bind_source: bool = True, server_extra: tuple[str, ...] = ()) -> Tunnel:
        prefix = "si" + secrets.token_hex(2)
        names = LabNames.for_prefix(prefix, len(rates_mbit))
        specs = tuple(LinkSpec.symmetric(rate) for rate in rates_mbit)
        lab = Lab(names, specs, tmp_path)
        tunnel = Tunnel(lab, tmp_path, weights or (1,) * len(rates_mbit), scheduler,
                        interface_extra, bind_source, server_extra)
        made.append(tunnel)
        lab.up()
        if start:
            tunnel.start()
        return tunnel

    try:
        yield factory
    finally:
        for tunnel in made:
            try:
                tunnel.stop()
            finally:
                tunnel.lab.down()


def later(delay_s: float, action: Callable[[], object]) -> Callable[[], None]:
    """A `during` hook for `sha256_transfer`: run `action` after `delay_s`."""

    def start() -> None:
        def run_it() -> None:
            time.sleep(delay_s)
            action()

        threading.Thread(target=run_it, daemon=True).start()

    return start


def sha256_transfer(tunnel: Tunnel, size_bytes: int, timeout_s: float,
                    during: object = None) -> tuple[str, str]:
    """Send `size_bytes` of random data client -> server over TCP through the
    tunnel; returns (sent digest, received digest)."""
    src = tunnel.workdir / "payload.bin"
    with open(src, "wb") as f:
        f.write(os.urandom(size_bytes))
    sink = subprocess.Popen(
        ["ip", "netns", "exec", tunnel.server_ns, sys.executable, "-c", SINK, SERVER_TUN_ADDR],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", tunnel.client_ns, sys.executable, "-c", SOURCE,
             SERVER_TUN_ADDR, str(src)],
            stdout=subprocess.PIPE, text=True,
        )
        if callable(during):
            during()
        sent = sender.communicate(timeout=timeout_s)[0].strip()
        received = sink.communicate(timeout=10)[0].strip()
        return sent, received
    finally:
        for proc in (sink,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# Receives one TCP connection on (argv[1], argv[2] or 9000), prints its SHA-256.
SINK = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 9000))
srv.settimeout(60)
conn, _ = srv.accept()
h = hashlib.sha256()
while chunk := conn.recv(1 << 16):
    h.update(chunk)
print(h.hexdigest())
"""

SOURCE = """
import hashlib, socket, sys
data = open(sys.argv[2], "rb").read()
s = socket.create_connection((sys.argv[1], 9000), timeout=60)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(hashlib.sha256(data).hexdigest())
"""
