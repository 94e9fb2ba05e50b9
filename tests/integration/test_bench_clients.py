"""``python -m bench clients`` end to end, small: 5 simulated clients (2 links
each, their own source addresses) against a real ``stripe server``."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from bench.clients.run import ClientsOptions, run_clients

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]  # CPU and fairness


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")
def test_five_clients_connect_idle_cheaply_and_share_fairly(tmp_path: Path) -> None:
    prefix = "cy" + secrets.token_hex(2)
    figures = run_clients(ClientsOptions(5, sending=5, workers=2, rate_bps=5e6, idle_s=3.0,
                                         send_s=3.0, prefix=prefix, out=tmp_path,
                                         connect_s=3.0))
    assert figures["connected"] == 5
    assert figures["server_links_up"] == 10, {
        k: figures[k] for k in ("server_link_states", "server_udp_rcvbuf_errors",
                                "worker_timer_late_ms", "worker_stalls", "server_drops",
                                "client_drops")}
    assert figures["goodput_total_mbit"] > 0.8 * 5 * 5
    assert figures["jain"] > 0.95
    assert figures["server_cpu_idle_pct"] < 5.0
