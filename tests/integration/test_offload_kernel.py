"""stripe.offload against the real kernel: TUN TSO in, GSO writes out.

Three namespaces and a relay in the test process::

    nsA (sender) ── tunA ═ relay: split_tun_read -> coalesce ═ tunB ── nsB (router) ── veth ── nsC

Both TUNs are opened with IFF_VNET_HDR and TUNSETOFFLOAD (CSUM | TSO4 | TSO6),
so nsA's TCP hands the relay ~64 KB super-packets; the relay cuts them into
MSS-sized packets (each checked with a checksum computed here, independently
of the module), merges them again and writes GSO packets into tunB.  nsB
forwards them to nsC over a veth whose offloads are off on both ends: nsB's
kernel must then segment the GSO packets and compute every TCP checksum in
software from the partial sums `coalesce` wrote, and nsC's kernel verifies
each one.  A control run with a corrupted partial sum shows nsC does count
the errors.  The partial variant runs the relay as two offload ends of
stripe do (`split_tun_read(partial=True)`): no checksum is computed at all,
segments and NEEDS_CSUM reads keep their pseudo-header sums, and lone ones
go back to the kernel with NEEDS_CSUM; nsC must still see every checksum
right.  Namespaces are `sx<hex>*` and are deleted in finally blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.lab import run
from stripe.coalesce import coalesce
from stripe.offload import (
    VIRTIO_NET_HDR_GSO_NONE,
    OffloadError,
    parse_vnet_hdr,
    partial_csum_at,
    split_tun_read,
)

pytestmark = pytest.mark.integration

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04

A_V4, B_V4, ROUTER_V4, C_V4 = "10.201.1.1", "10.201.1.2", "10.201.2.1", "10.201.2.2"
A_V6, B_V6, ROUTER_V6, C_V6 = "fd00:201:1::1", "fd00:201:1::2", "fd00:201:2::1", "fd00:201:2::2"
PORT = 9000
TRANSFER_BYTES = 4_000_000


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN)"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return f"needs {tool} (run scripts/setup.sh)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def open_offload_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


def transport_checksum_ok(packet: bytes) -> bool:
    """TCP/UDP checksum check, independent of stripe.offload: a native-order
    16-bit array sum (the ones'-complement sum is byte-order independent, and
    a correct packet sums to 0xFFFF either way)."""
    version = packet[0] >> 4
    if version == 4:
        a = (packet[0] & 0x0F) * 4
        proto = packet[9]
        pseudo = packet[12:20] + bytes([0, proto]) + (len(packet) - a).to_bytes(2, "big")
    else:
        a, proto = 40, packet[6]
        pseudo = packet[8:40] + (len(packet) - a).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    if proto not in (6, 17):
        return True
    data = pseudo + packet[a:]
    if len(data) % 2:
        data += b"\0"
    total = sum(array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@dataclass
class Relay:
    """Moves packets between two vnet-header TUNs through the offload functions."""

    fds: tuple[int, int]
    corrupt_partial_sums: bool = False
    partial: bool = False  # leave checksums partial, as two offload ends of stripe do
    stats: Counter[str] = field(default_factory=Counter)
    largest_read: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self.fds), [], [], 0.05)
            for fd in ready:
                side = "a" if fd == self.fds[0] else "b"
                other = self.fds[1] if side == "a" else self.fds[0]
                try:
                    self._move(fd, other, side)
                except Exception as exc:  # the test reports it, the relay stops
                    self.errors.append(f"{side}: {exc!r}")
                    self._stop.set()

    def _move(self, fd: int, other: int, side: str) -> None:
        batch: list[bytes] = []
        for _ in range(64):
            try:
                buf = os.read(fd, 65535 + 10)
            except BlockingIOError:
                break
            if parse_vnet_hdr(buf).gso_type != VIRTIO_NET_HDR_GSO_NONE:
                self.stats[f"gso_reads_{side}"] += 1
                self.largest_read = max(self.largest_read, len(buf) - 10)
            try:
                packets = split_tun_read(buf, partial=self.partial)
            except OffloadError as exc:
                self.errors.append(f"{side}: split_tun_read refused a kernel packet: {exc}")
                continue
            for packet in packets:
                if self.partial and partial_csum_at(packet) is not None:
                    self.stats["partial_packets"] += 1
                elif not transport_checksum_ok(packet):
                    self.stats["bad_checksums"] += 1
            self.stats[f"segments_{side}"] += len(packets)
            batch.extend(packets)
        for out in coalesce(batch):
            if out[1] != VIRTIO_NET_HDR_GSO_NONE:
                self.stats[f"gso_writes_{side}"] += 1
                if self.corrupt_partial_sums:
                    hdr = parse_vnet_hdr(out)
                    at = 10 + hdr.csum_start + hdr.csum_offset
                    out = out[:at] + bytes([out[at] ^ 0x01]) + out[at + 1:]
            elif out[0]:  # NEEDS_CSUM on a lone packet: its checksum is partial
                self.stats[f"lone_partial_writes_{side}"] += 1
            os.write(other, out)


@dataclass
class Lab:
    prefix: str
    fds: list[int] = field(default_factory=list)

    @property
    def ns(self) -> tuple[str, str, str]:
        return self.prefix + "a", self.prefix + "b", self.prefix + "c"

    def up(self) -> tuple[int, int]:
        ns_a, ns_b, ns_c = self.ns
        for ns in self.ns:
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "set", "lo", "up"], ns=ns)
        tuns = []
        for ns, name, addrs in ((ns_a, self.prefix + "ta", (f"{A_V4}/24", f"{A_V6}/64")),
                                (ns_b, self.prefix + "tb", (f"{B_V4}/24", f"{B_V6}/64"))):
            # Created here, then moved: the fd stays ours, the device goes to `ns`.
            fd = open_offload_tun(name)
            self.fds.append(fd)
            tuns.append(fd)
            run(["ip", "link", "set", name, "netns", ns])
            for addr in addrs:
                run(["ip", "addr", "add", addr, "dev", name, "nodad"], ns=ns)
            run(["ip", "link", "set", name, "up"], ns=ns)
        vb, vc = self.prefix + "vb", self.prefix + "vc"
        run(["ip", "link", "add", vb, "netns", ns_b, "type", "veth", "peer", "name", vc,
             "netns", ns_c])
        for ns, dev, addrs in ((ns_b, vb, (f"{ROUTER_V4}/24", f"{ROUTER_V6}/64")),
                               (ns_c, vc, (f"{C_V4}/24", f"{C_V6}/64"))):
            for addr in addrs:
                run(["ip", "addr", "add", addr, "dev", dev, "nodad"], ns=ns)
            run(["ip", "link", "set", dev, "up"], ns=ns)
        # nsB segments and checksums in software, from coalesce's partial sums;
        # nsC verifies every checksum instead of trusting the veth.
        run(["ethtool", "-K", vb, "tx", "off", "tso", "off", "gso", "off", "sg", "off"], ns=ns_b)
        run(["ethtool", "-K", vc, "rx", "off", "gro", "off"], ns=ns_c)
        run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && "
             "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"], ns=ns_b)
        for dest in ("10.201.2.0/24", "fd00:201:2::/64"):
            run(["ip", "route", "add", dest, "dev", self.prefix + "ta"], ns=ns_a)
        run(["ip", "route", "add", "default", "via", ROUTER_V4], ns=ns_c)
        run(["ip", "-6", "route", "add", "default", "via", ROUTER_V6], ns=ns_c)
        return tuns[0], tuns[1]

    def down(self) -> None:
        for ns in self.ns:
            run(["ip", "netns", "del", ns], check=False)
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    made = Lab("sx" + secrets.token_hex(2))
    try:
        yield made
    finally:
        made.down()


SINK = """
import hashlib, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
srv.settimeout(20)
conn, _ = srv.accept()
conn.settimeout(20)
h = hashlib.sha256()
while chunk := conn.recv(1 << 16):
    h.update(chunk)
print(h.hexdigest())
"""

SOURCE = """
import os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(open(sys.argv[3], "rb").read())
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


def transfer(src_ns: str, dst_ns: str, dst_addr: str, payload_path: str,
             timeout_s: float = 20.0) -> str:
    """One TCP connection src_ns -> dst_addr; returns the receiver's SHA-256."""
    sink = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", SINK,
                             dst_addr, str(PORT)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-c", SOURCE,
                        dst_addr, str(PORT), payload_path], check=True, timeout=timeout_s)
        return sink.communicate(timeout=timeout_s)[0].strip()
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def tcp_in_csum_errors(ns: str) -> int:
    lines = [line.split() for line in run(["cat", "/proc/net/snmp"], ns=ns).stdout.splitlines()
             if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("InCsumErrors")])


def with_relay(relay: Relay, body: Callable[[], None]) -> None:
    thread = relay.start()
    try:
        body()
    finally:
        relay.stop()
        thread.join(timeout=5)


@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
def test_kernel_segments_and_coalesces(lab: Lab, tmp_path: Path, partial: bool) -> None:
    ns_a, ns_b, ns_c = lab.ns
    relay = Relay(lab.up(), partial=partial)
    payload = os.urandom(TRANSFER_BYTES)
    path = str(tmp_path / "payload.bin")
    with open(path, "wb") as f:
        f.write(payload)
    expected = hashlib.sha256(payload).hexdigest()
    digests: dict[str, str] = {}

    def body() -> None:
        digests["v4 via router"] = transfer(ns_a, ns_c, C_V4, path)
        digests["v6 via router"] = transfer(ns_a, ns_c, C_V6, path)
        digests["v4 to the TUN's namespace"] = transfer(ns_a, ns_b, B_V4, path)
        digests["v4 back from nsC"] = transfer(ns_c, ns_a, A_V4, path)

    with_relay(relay, body)
    assert relay.errors == []
    assert digests == dict.fromkeys(digests, expected)
    stats = relay.stats
    # nsA's TCP really handed over super-packets, and coalesce really wrote
    # GSO packets the kernel took: both ways, IPv4 and IPv6 together.
    assert stats["gso_reads_a"] > 0 and relay.largest_read > 16_000, (stats, relay.largest_read)
    assert stats["gso_writes_a"] > 0, stats
    assert stats["segments_a"] > stats["gso_reads_a"] * 5, stats
    assert stats["bad_checksums"] == 0, stats
    assert tcp_in_csum_errors(ns_c) == 0
    if partial:
        # Segments and the kernel's own NEEDS_CSUM packets (ACKs) stayed
        # partial, and lone ones went back with NEEDS_CSUM, both ways.
        assert stats["partial_packets"] > stats["segments_a"] // 2, stats
        assert stats["lone_partial_writes_a"] > 0 and stats["lone_partial_writes_b"] > 0, stats
        assert tcp_in_csum_errors(ns_a) == tcp_in_csum_errors(ns_b) == 0


def test_control_corrupt_partial_sums_are_caught(lab: Lab, tmp_path: Path) -> None:
    """Without this, the test above could pass because nobody checks."""
    ns_a, _ns_b, ns_c = lab.ns
    relay = Relay(lab.up(), corrupt_partial_sums=True)
    path = str(tmp_path / "payload.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(400_000))

    def body() -> None:
        # Lone (plain) retransmissions may still get the data through: what
        # matters is that nsC saw and counted the bad checksums.
        with contextlib.suppress(subprocess.SubprocessError):
            transfer(ns_a, ns_c, C_V4, path, timeout_s=5)

    with_relay(relay, body)
    assert relay.stats["gso_writes_a"] > 0
    assert tcp_in_csum_errors(ns_c) > 0
