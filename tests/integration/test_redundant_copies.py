"""Redundancy between real processes: with `duplicate_below`, small packets
cross a link that drops 30 % of everything without a single loss."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from tests.integration.conftest import SERVER_TUN_ADDR
from tests.integration.test_status import status

from bench.lab import nft_loss_ruleset, run

pytestmark = pytest.mark.integration

PINGS = 300


def test_small_packets_survive_a_lossy_link(make_tunnel: Any) -> None:
    # Round robin puts every other packet on link 1, whatever its loss.
    tunnel = make_tunnel(scheduler="roundrobin", interface_extra=("duplicate_below = 200",))
    link = tunnel.lab.names.links[1]
    for ns, dev in ((tunnel.server_ns, link.server_if), (tunnel.client_ns, link.client_if)):
        run(["nft", nft_loss_ruleset("rloss", dev, 0.3)], ns=ns)
    out = run(["ping", "-q", "-c", str(PINGS), "-i", "0.01", "-s", "56", "-W", "2",
               SERVER_TUN_ADDR], ns=tunnel.client_ns, check=False, timeout_s=30).stdout
    received = int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
    assert received == PINGS, out + tunnel.logs()
    client = json.loads(status(tunnel, "client", "--json").stdout)
    server = json.loads(status(tunnel, "server", "--json").stdout)
    sent = client["peers"][0]["redundancy"]["copies_sent"]
    assert sent >= PINGS  # every echo request (84 bytes) went twice
    # Copies stood in for lost originals at both ends, and the second of each
    # pair was counted as a duplicate (not as a replay, not as an attack).
    assert server["peers"][0]["redundancy"]["copies_first"] > 0
    assert client["peers"][0]["redundancy"]["copies_first"] > 0
    assert server["drops"].get("duplicate", 0) > 0
    assert server["drops"].get("replay", 0) == 0
