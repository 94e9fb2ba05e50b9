"""One server, three clients and an attacker, each in its own namespace.

Topology (prefix `sm<hex>`): a server namespace joined by one veth per
client namespace (and one for the attacker); 10.(60+i).0.1 is client i's
side, 10.(60+i).0.2 the server's.  Tunnel: server 10.78.0.1, client i
10.78.0.1(i+1).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.integration.conftest import REPO_ROOT, SINK, _skip_reason

from bench.attack.runner import capture_datagrams
from bench.lab import Proc, run
from stripe.handshake import PendingInitiation
from stripe.noise import encode_key, generate_keypair

pytestmark = pytest.mark.integration

SERVER_TUN = "10.78.0.1"
PORT = 5000


def client_tun(i: int) -> str:
    return f"10.78.0.1{i + 1}"


SERVER_TUN6 = "fd00:78::1"


def client_tun6(i: int) -> str:
    return f"fd00:78::1{i + 1}"


@dataclass
class MultiLab:
    prefix: str
    workdir: Path
    n_clients: int = 3
    procs: list[Proc] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    server_public: bytes = b""
    keys: list[tuple[bytes, bytes]] = field(default_factory=list)
    ipv6: bool = False  # IPv6 inside the tunnel too (fd00:78::/64)

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}srv"

    def ns(self, i: int) -> str:
        return f"{self.prefix}c{i}"

    @property
    def attacker_ns(self) -> str:
        return self.ns(self.n_clients)

    def up(self) -> None:
        for ns in [self.server_ns] + [self.ns(i) for i in range(self.n_clients + 1)]:
            run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            run(["ip", "link", "set", "lo", "up"], ns=ns)
        run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], ns=self.server_ns)
        if self.ipv6:
            run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], ns=self.server_ns)
        for i in range(self.n_clients + 1):
            cif, sif = f"{self.prefix}v{i}", f"{self.prefix}w{i}"
            run(["ip", "link", "add", cif, "netns", self.ns(i), "type", "veth", "peer", "name",
                 sif, "netns", self.server_ns])
            run(["ip", "addr", "add", f"10.{60 + i}.0.1/30", "dev", cif], ns=self.ns(i))
            run(["ip", "addr", "add", f"10.{60 + i}.0.2/30", "dev", sif], ns=self.server_ns)
            run(["ip", "link", "set", cif, "up"], ns=self.ns(i))
            run(["ip", "link", "set", sif, "up"], ns=self.server_ns)
            # Like most real NICs: no UDP segmentation offload, so stripe's
            # GSO trains are cut into datagrams before the wire and a sniffer
            # (the attacker's capture) sees what a real one would.
            run(["ethtool", "-K", cif, "tx-udp-segmentation", "off"], ns=self.ns(i))

    def client_keys(self) -> list[tuple[bytes, bytes]]:
        return [generate_keypair() for _ in range(self.n_clients)]

    def start(self, server_extra: tuple[str, ...] = ()) -> None:
        spriv, self.server_public = generate_keypair()
        self.keys = keys = self.client_keys()
        tun = f"{self.prefix}t"
        v6 = f', "{SERVER_TUN6}/64"' if self.ipv6 else ""
        server = ["[interface]", f'name = "{tun}"', f'address = ["{SERVER_TUN}/24"{v6}]',
                  f'private_key = "{encode_key(spriv)}"', f"listen_port = {PORT}",
                  *server_extra]
        for i, (_, pub) in enumerate(keys):
            v6 = f', "{client_tun6(i)}/128"' if self.ipv6 else ""
            server += ["[[peer]]", f'public_key = "{encode_key(pub)}"',
                       f'allowed_ips = ["{client_tun(i)}/32"{v6}]']
        self._launch(self.server_ns, "server", server)
        for i, (priv, _) in enumerate(keys):
            v6 = f', "{client_tun6(i)}/64"' if self.ipv6 else ""
            self._launch(self.ns(i), f"client{i}", [
                "[interface]", f'name = "{tun}"', f'address = ["{client_tun(i)}/24"{v6}]',
                f'private_key = "{encode_key(priv)}"',
                "[peer]", f'public_key = "{encode_key(self.server_public)}"',
                "[[link]]", 'name = "uplink"', f'interface = "{self.prefix}v{i}"',
                f'remote = "10.{60 + i}.0.2:{PORT}"'])
        for i in range(self.n_clients):
            wait_ping(self.ns(i), SERVER_TUN, self, timeout_s=20)

    def _launch(self, ns: str, name: str, lines: list[str]) -> None:
        path = self.workdir / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        role = "server" if name == "server" else "client"
        self.procs.append(Proc(name, [sys.executable, "-m", "stripe", role, "-c", str(path)],
                               ns, self.workdir / f"{name}.log", cwd=REPO_ROOT))

    def status(self) -> dict[str, object]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.server_ns, sys.executable, "-m", "stripe", "status",
             "--json", "-i", f"{self.prefix}t"],
            capture_output=True, text=True, timeout=10, check=True, cwd=REPO_ROOT).stdout
        result: dict[str, object] = json.loads(out)
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in self.procs)

    def down(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for ns in reversed(self.namespaces):
            for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
                run(["kill", "-KILL", pid], check=False)
            run(["ip", "netns", "delete", ns], check=False)


def wait_ping(ns: str, address: str, lab: MultiLab, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run(["ping", "-c1", "-W1", address], ns=ns, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{ns}: no ping to {address}\n{lab.logs()}")


def running(made: MultiLab, server_extra: tuple[str, ...] = ()) -> Iterator[MultiLab]:
    """A fixture's body: the lab up and started, torn down whatever happens."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        made.up()
        made.start(server_extra)
        yield made
    finally:
        made.down()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[MultiLab]:
    yield from running(MultiLab("sm" + secrets.token_hex(2), tmp_path))


SOURCE = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(hashlib.sha256(data).hexdigest())
"""


def transfer(src_ns: str, dst_ns: str, dst_addr: str, size: int, port: int = 9100) -> bool:
    sink = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", SINK,
                             dst_addr, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.4)
        sent = run([sys.executable, "-c", SOURCE, dst_addr, str(port), str(size)],
                   ns=src_ns).stdout.strip()
        received = sink.communicate(timeout=30)[0].strip()
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return bool(sent) and sent == received


SPOOF = """
import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
payload = b"spoofed!" * 4
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
udp = struct.pack("!HHHH", 4444, 4444, 8 + len(payload), 0)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    s.sendto(header + udp + payload, (dst, 0))
"""


def test_three_clients_transfer_and_cannot_spoof(lab: MultiLab) -> None:
    for i in range(lab.n_clients):
        assert transfer(lab.ns(i), lab.server_ns, SERVER_TUN, 2_000_000, 9100 + i), lab.logs()
    # Client to client, through the server's TUN and back out to the owner.
    assert transfer(lab.ns(0), lab.ns(1), client_tun(1), 1_000_000, 9200), lab.logs()
    out = run(["ping", "-c2", "-W1", client_tun(2)], ns=lab.ns(1)).stdout
    assert " 0% packet loss" in out
    # Client 0 claims client 1's tunnel address: the server drops it.
    run([sys.executable, "-c", SPOOF, client_tun(1), SERVER_TUN], ns=lab.ns(0))
    time.sleep(0.5)
    drops = lab.status()["drops"]
    assert isinstance(drops, dict) and drops.get("spoofed_source", 0) >= 5, drops


ATTACK = """
import json, os, socket, struct, sys, time
target = (sys.argv[1], int(sys.argv[2]))
replays = [bytes.fromhex(h) for h in sys.argv[3].split(",") if h]
inits = [bytes.fromhex(h) for h in sys.argv[4].split(",") if h]
budget_s = float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = {"replay": 0, "forged": 0, "init": 0}
end = time.monotonic() + budget_s
while time.monotonic() < end:
    for data in replays:
        s.sendto(data, target); sent["replay"] += 1
    for kind in (1, 2, 3, 4, 5, 9):
        s.sendto(bytes([kind]) + os.urandom(120), target); sent["forged"] += 1
    for _ in range(20):
        for data in inits:
            s.sendto(data, target); sent["init"] += 1
    time.sleep(0.002)
print(json.dumps(sent))
"""


def socket_drops(ns: str, port: int) -> int:
    """The kernel's drop count of the UDP sockets on `port` in `ns` (buffer
    overflows and socket-filter drops: the last column of /proc/net/udp)."""
    total = 0
    for line in run(["cat", "/proc/net/udp"], ns=ns).stdout.splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            total += int(fields[-1])
    return total


def test_attacker_replays_forges_and_floods_while_client_transfers(lab: MultiLab) -> None:
    # Record some of client 0's real datagrams as the attacker would see them.
    sink = subprocess.Popen(["ip", "netns", "exec", lab.server_ns, sys.executable, "-c", SINK,
                             SERVER_TUN, "9300"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.4)
    source = subprocess.Popen(["ip", "netns", "exec", lab.ns(0), sys.executable, "-c", SOURCE,
                               SERVER_TUN, "9300", "30000000"], stdout=subprocess.PIPE, text=True)
    try:
        # What arrives on the server's side of client 0's link (AF_PACKET).
        captured = capture_datagrams(lab.server_ns, PORT, 40, 5.0, f"{lab.prefix}w0")
        assert len(captured) >= 10
        attacker_key, _ = generate_keypair()
        inits = [PendingInitiation(attacker_key, lab.server_public, None, i, 0,
                                   time.time()).datagram for i in range(5)]
        before = lab.status()["drops"]
        assert isinstance(before, dict)
        drops_before = socket_drops(lab.server_ns, PORT)
        attack = run([sys.executable, "-c", ATTACK, f"10.{60 + lab.n_clients}.0.2", str(PORT),
                      ",".join(d.hex() for d in captured), ",".join(d.hex() for d in inits),
                      "4"], ns=lab.attacker_ns).stdout
        sent = source.communicate(timeout=90)[0].strip()
        received = sink.communicate(timeout=30)[0].strip()
    finally:
        for proc in (source, sink):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sent and sent == received, lab.logs()
    drops = lab.status()["drops"]
    assert isinstance(drops, dict)
    counts = {k: drops.get(k, 0) - before.get(k, 0) for k in drops}
    attack_sent = json.loads(attack)
    # Replays are examined until the attacker's address is blocked (see
    # stripe.guard); after that its transport datagrams are dropped unread,
    # by the server's socket filter in the kernel (the socket's drops).
    kernel_drops = socket_drops(lab.server_ns, PORT) - drops_before
    assert counts.get("blocked_source", 0) + kernel_drops > 0, counts
    assert (counts.get("replay", 0) + counts.get("blocked_source", 0) + kernel_drops
            >= attack_sent["replay"] * 0.95), (counts, kernel_drops, attack_sent)
    assert counts.get("handshake_cookie_sent", 0) > 0, counts
    assert all(proc.alive() for proc in lab.procs), lab.logs()
    print("attack sent", attack_sent, "server drops", counts)
