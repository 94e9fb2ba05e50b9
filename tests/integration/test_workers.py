"""A server of two worker processes (`workers = 2`) and three real clients,
each in its own namespace: files cross intact, each client's traffic is
handled by the worker that owns its key (and by its TUN, with the kernel
steering the datagrams), and a worker killed outright is started again
without the other worker's clients noticing."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_multiclient_attacks import (
    SERVER_TUN,
    SERVER_TUN6,
    MultiLab,
    client_tun,
    client_tun6,
    running,
    transfer,
    wait_ping,
)

from bench.lab import run
from stripe import steering
from stripe.noise import encode_key, generate_keypair

pytestmark = pytest.mark.integration

WORKERS = 2
OWNERS = (0, 1, 0)  # which worker serves client i (keys drawn to match)


class WorkersLab(MultiLab):
    def client_keys(self) -> list[tuple[bytes, bytes]]:
        """Keys drawn until client i's is owned by worker OWNERS[i]."""
        keys = []
        for owner in OWNERS:
            while True:
                pair = generate_keypair()
                if steering.owner_of(pair[1], WORKERS) == owner:
                    keys.append(pair)
                    break
        return keys

    def peer_rows(self) -> dict[int, dict[str, Any]]:
        """The server's status row of each client, by client number."""
        peers: list[dict[str, Any]] = self.status()["peers"]  # type: ignore[assignment]
        by_key = {peer["public_key"]: peer for peer in peers}
        return {i: by_key[pub.hex()] for i, (_, pub) in enumerate(self.keys)}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[WorkersLab]:
    yield from running(WorkersLab("sw" + secrets.token_hex(2), tmp_path),
                       (f"workers = {WORKERS}",))


def test_three_clients_each_served_by_its_worker(lab: WorkersLab) -> None:
    status = lab.status()
    rows = status["workers"]
    assert isinstance(rows, list) and [row["worker"] for row in rows] == [0, 1], status
    assert all(row["pid"] and not row.get("error") for row in rows), rows
    assert [row["peers"] for row in rows] == [OWNERS.count(0), OWNERS.count(1)], rows
    size = 3_000_000
    for i in range(lab.n_clients):
        assert transfer(lab.ns(i), lab.server_ns, SERVER_TUN, size, 9100 + i), lab.logs()
    # Client to client across the workers: in at worker 0's TUN, out at worker 1's.
    assert transfer(lab.ns(0), lab.ns(1), client_tun(1), 1_000_000, 9200), lab.logs()
    peers = lab.peer_rows()
    for i, owner in enumerate(OWNERS):
        peer = peers[i]
        assert peer["worker"] == owner, peer
        # The session index names the worker: the kernel steered by it.
        assert steering.worker_of(int(peer["session"], 16)) == owner, peer
        received = sum(link["rx_bytes"] for link in peer["links"])
        assert received > size, (i, received)
    # Worker 1's TUN carries routes to its peers' addresses only.
    routes = run(["ip", "route", "show", "dev", f"{lab.prefix}t-1"], ns=lab.server_ns).stdout
    assert client_tun(1) in routes and client_tun(0) not in routes, routes
    drops = status["drops"]
    assert isinstance(drops, dict) and drops.get("unknown_peer", 0) == 0, drops


def test_a_killed_worker_comes_back_and_the_other_workers_clients_do_not_notice(
        lab: WorkersLab) -> None:
    victim = next(row for row in lab.status()["workers"] if row["worker"] == 1)
    # Client 0 (worker 0) pings all along, 5 a second.
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.ns(0), "ping", "-i", "0.2", "-c",
                               "75", "-W", "1", SERVER_TUN], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        os.kill(victim["pid"], signal.SIGKILL)
        # Client 1's worker is gone; it is started again and the client
        # handshakes with the new one (after its silence deadline).
        wait_ping(lab.ns(1), SERVER_TUN, lab, timeout_s=30)
        assert transfer(lab.ns(1), lab.server_ns, SERVER_TUN, 1_000_000, 9300), lab.logs()
    finally:
        output = pinger.communicate(timeout=30)[0]
    lost = _lost(output)
    assert lost <= 1, output  # worker 0's client: nothing happened
    row = next(r for r in lab.status()["workers"] if r["worker"] == 1)
    assert row["restarts"] == 1 and row["pid"] not in (None, victim["pid"]), row
    assert steering.worker_of(int(lab.peer_rows()[1]["session"], 16)) == 1


def _lost(ping_output: str) -> int:
    for line in ping_output.splitlines():
        if "packets transmitted" in line:
            sent, received = (int(part.split()[0]) for part in line.split(",")[:2])
            return sent - received
    raise AssertionError(f"no ping summary in {ping_output!r}")


def test_the_server_refuses_workers_with_a_default_route_peer(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("\n".join([
        "[interface]", 'address = ["10.9.0.1/24"]',
        f'private_key = "{encode_key(generate_keypair()[0])}"', "listen_port = 5000",
        "workers = 2", 'user = ""',
        "[peer]", f'public_key = "{encode_key(generate_keypair()[1])}"']) + "\n")
    path.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "stripe", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "allowed_ips" in out.stderr and "workers > 1" in out.stderr, out.stderr


def test_ipv6_inside_the_tunnel_reaches_every_worker(tmp_path: Path) -> None:
    """Worker k's TUN (no address of its own) carries its peers' IPv6 too,
    and packets between clients of two workers cross both TUNs."""
    lab_up = running(WorkersLab("s6" + secrets.token_hex(2), tmp_path, ipv6=True),
                     (f"workers = {WORKERS}",))
    lab = next(lab_up)
    try:
        for i in range(lab.n_clients):
            out = run(["ping", "-6", "-c2", "-W2", SERVER_TUN6], ns=lab.ns(i), check=False)
            assert out.returncode == 0, f"client {i}: {out.stdout}{lab.logs()}"
        routes = run(["ip", "-6", "route", "show", "dev", f"{lab.prefix}t-1"],
                     ns=lab.server_ns).stdout
        assert client_tun6(1) in routes and client_tun6(0) not in routes, routes
        out = run(["ping", "-6", "-c2", "-W2", client_tun6(1)], ns=lab.ns(0), check=False)
        assert out.returncode == 0, out.stdout + lab.logs()
    finally:
        lab_up.close()  # the lab goes down, also when an assertion failed


def test_a_reload_reaches_every_worker_and_the_routes_follow(lab: WorkersLab) -> None:
    config = lab.workdir / "server.toml"
    text = config.read_text()
    # Client 2 (worker 0's) leaves: the last [[peer]] table.
    config.write_text(text[:text.rindex("[[peer]]")])
    out = run([sys.executable, "-m", "stripe", "reload", "-c", str(config)], ns=lab.server_ns,
              check=False)
    assert out.returncode == 0, out.stderr + lab.logs()
    assert "removed" in out.stdout and f"route {client_tun(2)}/32 removed" in out.stdout, out.stdout
    rows = lab.status()["workers"]
    assert [row["peers"] for row in rows] == [1, 1], rows
    routes = run(["ip", "route", "show"], ns=lab.server_ns).stdout
    assert client_tun(2) not in routes and client_tun(0) in routes, routes
    # The others carry on; a worker that changes nothing says so too.
    assert transfer(lab.ns(1), lab.server_ns, SERVER_TUN, 500_000, 9400), lab.logs()
    # A change of workers needs a restart: refused, the old config runs on.
    config.write_text(text.replace("workers = 2", "workers = 3"))
    out = run([sys.executable, "-m", "stripe", "reload", "-c", str(config)], ns=lab.server_ns,
              check=False)
    assert out.returncode != 0 and "workers" in out.stderr, out.stderr
