"""A local user against a running stripe: its link port cannot be shared to
read its datagrams."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from tests.integration.conftest import PORT, REPO_ROOT, SERVER_TUN_ADDR, Tunnel

from bench.lab import run

pytestmark = pytest.mark.integration

NOBODY = "65534"

# As an unprivileged user: bind the server's port on its link address (more
# specific than the server's wildcard socket), with SO_REUSEADDR, and count
# what arrives there for a while.
STEAL = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    print(json.dumps({"bound": False, "error": exc.strerror, "stolen": 0}))
    sys.exit()
s.settimeout(0.2)
stolen, end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        s.recv(65535)
        stolen += 1
    except TimeoutError:
        pass
print(json.dumps({"bound": True, "error": None, "stolen": stolen}))
"""


def test_a_local_user_cannot_take_over_the_link_port(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel()
    link_addr = tunnel.lab.names.links[0].server_addr
    result = run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                  sys.executable, "-c", STEAL, link_addr, str(PORT), "2"],
                 ns=tunnel.server_ns, cwd=REPO_ROOT)
    out = json.loads(result.stdout)
    assert out == {"bound": False, "error": "Address already in use", "stolen": 0}, out
    ping = run(["ping", "-c5", "-i0.2", "-W1", SERVER_TUN_ADDR], ns=tunnel.client_ns).stdout
    assert " 0% packet loss" in ping
