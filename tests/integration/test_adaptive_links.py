"""The adaptive scheduler end to end, short forms of the benchmark's
unequal-rate and failover scenarios (loose bounds; the figures live in the
benchmark)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import pytest
from tests.integration.conftest import SERVER_TUN_ADDR, Tunnel

from bench.lab import run

pytestmark = pytest.mark.integration


def iperf3(tunnel: Tunnel, seconds: int) -> dict[str, Any]:
    server = subprocess.Popen(["ip", "netns", "exec", tunnel.server_ns, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = run(["iperf3", "-c", SERVER_TUN_ADDR, "-t", str(seconds), "-J"],
                  ns=tunnel.client_ns, check=False).stdout
    finally:
        server.wait(timeout=15)
    result: dict[str, Any] = json.loads(out)
    return result


def test_unequal_links_share_in_proportion_without_configured_rates(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(8.0, 2.0), scheduler="adaptive")
    before = tunnel.lab.counters()
    result = iperf3(tunnel, 6)
    after = tunnel.lab.counters()
    assert "error" not in result, result.get("error")
    sent = [a.tx_bytes - b.tx_bytes for a, b in zip(after, before, strict=True)]
    share = sent[0] / sum(sent)
    # Capacity ratio is 0.8; equal split would be 0.5.
    assert 0.65 < share < 0.93, f"link byte counts {sent}"


def test_blackholed_link_flow_survives_and_link_returns(make_tunnel: Any) -> None:
    tunnel: Tunnel = make_tunnel(rates_mbit=(5.0, 5.0), scheduler="adaptive")
    samples: list[int] = []

    def cut_and_restore() -> None:
        time.sleep(3)
        tunnel.lab.set_blackhole(1, True)
        time.sleep(4)
        tunnel.lab.set_blackhole(1, False)
        time.sleep(2)  # back after 3 good probes (~0.6 s), then in use again
        samples.append(tunnel.lab.counters()[1].tx_bytes)
        time.sleep(4)
        samples.append(tunnel.lab.counters()[1].tx_bytes)

    thread = threading.Thread(target=cut_and_restore, daemon=True)
    thread.start()
    result = iperf3(tunnel, 15)
    thread.join(timeout=5)
    assert "error" not in result, result.get("error")  # no reset: the flow survived
    logs = tunnel.logs()
    assert "link link1 is down" in logs
    assert "link link1 is up" in logs.split("link link1 is down", 1)[1]
    # 4 s on a 5 Mbit/s link is 2.5 MB; a link back in use carries a fair part.
    assert len(samples) == 2 and samples[1] - samples[0] > 300_000, (samples, logs)
