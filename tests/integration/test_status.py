"""`stripe status` against running processes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from tests.integration.conftest import REPO_ROOT, Tunnel, sha256_transfer

pytestmark = pytest.mark.integration


def status(tunnel: Tunnel, role: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`stripe status` run where the process runs: inside its namespace."""
    tun = tunnel.tun_name
    ns = tunnel.client_ns if role == "client" else tunnel.server_ns
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "stripe", "status", "-i", tun, *extra],
        capture_output=True, text=True, timeout=10, check=False, cwd=REPO_ROOT)


def test_status_json_agrees_with_interface_counters(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(20.0, 20.0))
    before_if = tunnel.lab.counters()
    before = json.loads(status(tunnel, "client", "--json").stdout)
    sent, received = sha256_transfer(tunnel, 4_000_000, timeout_s=60)
    assert sent == received
    after_if = tunnel.lab.counters()
    after = json.loads(status(tunnel, "client", "--json").stdout)
    links_before = {x["name"]: x for x in before["peers"][0]["links"]}
    for i, link in enumerate(after["peers"][0]["links"]):
        ours = link["tx_bytes"] - links_before[link["name"]]["tx_bytes"]
        # The interface also counts the UDP/IP headers (28 bytes a packet)
        # and ARP; stripe counts its datagrams.
        packets = link["tx_packets"] - links_before[link["name"]]["tx_packets"]
        theirs = after_if[i].tx_bytes - before_if[i].tx_bytes - 28 * packets
        assert ours == pytest.approx(theirs, rel=0.03), (link["name"], ours, theirs)
        assert link["state"] == "up"
    assert after["peers"][0]["reorder"]["late"] == 0


def test_status_table_and_errors(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel()
    table = status(tunnel, "server")
    assert table.returncode == 0, table.stderr
    assert "link0" in table.stdout and "link1" in table.stdout and "drops:" in table.stdout
    missing = subprocess.run([sys.executable, "-m", "stripe", "status", "--socket",
                              "/run/stripe/nonexistent.sock"], capture_output=True, text=True,
                             timeout=10, check=False, cwd=REPO_ROOT)
    assert missing.returncode == 1 and "no stripe answering" in missing.stderr
    assert "Traceback" not in missing.stderr
