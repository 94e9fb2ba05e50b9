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

def arrives(source, first_byte):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.sendto(bytes([first_byte]) + bytes(40), ("127.0.0.1", 45999))
    s.close()
    try:
        receiver.recv(100)
        return True
    except TimeoutError:
        return False

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
print(json.dumps(out))
"""


def test_blocked_sources_are_dropped_in_the_kernel_but_handshakes_pass() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    ns = "sf" + secrets.token_hex(3)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        out = json.loads(run([sys.executable, "-c", CHECK], ns=ns, cwd=REPO_ROOT).stdout)
    finally:
        run(["ip", "netns", "delete", ns], check=False)
    assert out == {
        "blocked data": False, "blocked control": False, "blocked init": True,
        "blocked cookie reply": True, "blocked type 0": False, "other data": True,
        "after unblock": True,
    }
