"""The kernel filter for blocked sources (stripe/io/source_filter.py),
checked on real sockets inside a namespace of its own."""

from __future__ import annotations

import json
import os
import secrets
import sys

import pytest
from tests.integration.conftest import REPO_ROOT

from bench.lab import run

pytestmark = pytest.mark.integration

CHECK = """
import json, socket
from stripe.io import source_filter
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 45999))
receiver.settimeout(0.2)
dual = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # IPv4 and IPv6
dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
dual.bind(("::", 46000))
dual.settimeout(0.2)

def arrives(source, first_byte, to=receiver, n=8):
    # All of n: a blocked source's datagrams pass one in OTHERS_SAMPLE (64).
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((source, 0))
    port = to.getsockname()[1]
    for _ in range(n):
        s.sendto(bytes([first_byte]) + bytes(40), ("::1" if ":" in source else "127.0.0.1", port))
    s.close()
    got = 0
    try:
        while got < n:
            to.recv(100)
            got += 1
    except TimeoutError:
        pass
    return got == n

source_filter.apply(receiver, ["127.0.0.2", "127.0.0.3"])
out = {
    "blocked data": arrives("127.0.0.2", 4),
    "blocked control": arrives("127.0.0.3", 5),
    "blocked init": arrives("127.0.0.2", 1),
    "blocked cookie reply": arrives("127.0.0.3", 3),
    "blocked type 0": arrives("127.0.0.2", 0),
    "other data": arrives("127.0.0.4", 4),
}
source_filter.apply(receiver, [])
out["after unblock"] = arrives("127.0.0.2", 4)
# Thousands of blocked sources, newest last: the oldest, one in the middle
# and the newest are all dropped.
many = [f"127.1.{i >> 8}.{i & 255}" for i in range(3000)]
source_filter.apply(receiver, many)
out["many: oldest"] = arrives(many[0], 4)
out["many: middle"] = arrives(many[1500], 4)
out["many: newest"] = arrives(many[-1], 4)
out["many: other"] = arrives("127.2.0.1", 4)
# A dual-stack socket: IPv6 sources by /64, and IPv4 ones.
source_filter.apply(dual, ["fd00:1::/64", "127.0.0.2"])
out["v6 blocked /64"] = arrives("fd00:1::1", 4, dual)
out["v6 same /64"] = arrives("fd00:1::2", 4, dual)
out["v6 blocked init"] = arrives("fd00:1::2", 1, dual)
out["v6 other /64"] = arrives("fd00:2::1", 4, dual)
out["v4 on dual blocked"] = arrives("127.0.0.2", 4, dual)
out["v4 on dual other"] = arrives("127.0.0.4", 4, dual)

def burst(source, first_byte, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    for _ in range(n):
        s.sendto(bytes([first_byte]) + bytes(40), ("127.0.0.1", 45999))
    s.close()
    got = 0
    try:
        while True:
            receiver.recv(100)
            got += 1
    except TimeoutError:
        return got

# Handshakes from blocked sources sampled one in 4 by the kernel's prandom.
receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
source_filter.apply(receiver, ["127.0.0.2"], handshake_sample=4)
out["sampled init"] = burst("127.0.0.2", 1, 800)
out["sampled data"] = burst("127.0.0.2", 4, 6400)
out["unsampled other init"] = burst("127.0.0.4", 1, 100)
print(json.dumps(out))
"""


def test_blocked_sources_are_dropped_in_the_kernel_but_handshakes_pass() -> None:
    """IPv4 addresses, thousands of them (the newest too), and IPv6 /64s;
    a blocked source's handshakes sampled at one in 4, its other datagrams
    at one in 64."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    ns = "sf" + secrets.token_hex(3)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        for address in ("fd00:1::1", "fd00:1::2", "fd00:2::1"):
            run(["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"], ns=ns)
        out = json.loads(run([sys.executable, "-c", CHECK], ns=ns, cwd=REPO_ROOT).stdout)
    finally:
        run(["ip", "netns", "delete", ns], check=False)
    assert 120 <= out.pop("sampled init") <= 280  # ~200 of 800
    assert 50 <= out.pop("sampled data") <= 150  # ~100 of 6,400: one in OTHERS_SAMPLE
    assert out.pop("unsampled other init") == 100
    assert out == {
        "blocked data": False, "blocked control": False, "blocked init": True,
        "blocked cookie reply": True, "blocked type 0": False, "other data": True,
        "after unblock": True,
        "many: oldest": False, "many: middle": False, "many: newest": False,
        "many: other": True,
        "v6 blocked /64": False, "v6 same /64": False, "v6 blocked init": True,
        "v6 other /64": True, "v4 on dual blocked": False, "v4 on dual other": True,
    }
