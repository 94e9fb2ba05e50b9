"""A server's `workers`: the config key, each worker's share of the config,
the supervisor's summed status and the masquerade rule over every TUN.
The processes themselves run in tests/integration/test_workers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.shell.test_operations_unit import PRIV, load

from stripe import config, steering
from stripe.io.nat import ruleset
from stripe.noise import encode_key, generate_keypair
from stripe.spec import Role
from stripe.status import merge_workers, render

KEYS = [generate_keypair()[1] for _ in range(6)]


def server_text(interface: str = "workers = 2", peers: int = 6,
                allowed: str = '["10.2.0.{i}/32"]') -> str:
    text = f"""
[interface]
name = "wan0"
address = ["10.2.0.1/24"]
private_key = "{PRIV}"
listen_port = 5000
{interface}
"""
    for i in range(peers):
        text += (f'[[peer]]\npublic_key = "{encode_key(KEYS[i])}"\n'
                 f"allowed_ips = {allowed.format(i=10 + i)}\n")
    return text


def test_each_worker_runs_its_own_peers_and_knows_the_others(tmp_path: Path) -> None:
    cfg = load(tmp_path, server_text(), Role.SERVER)
    assert cfg.workers == 2 and cfg.worker is None
    assert cfg.endpoint_spec().workers == 1  # the supervisor's copy is not a worker
    shares = [cfg.worker_share(k) for k in range(2)]
    assert [s.tun_name for s in shares] == ["wan0", "wan0-1"]
    assert shares[1].control_socket.name == cfg.control_socket.stem + "-w1.sock"
    specs = [s.endpoint_spec() for s in shares]
    owned = [{p.public_key for p in spec.peers} for spec in specs]
    assert owned[0] | owned[1] == set(KEYS) and not owned[0] & owned[1]
    for k, spec in enumerate(specs):
        assert (spec.worker, spec.workers) == (k, 2)
        assert spec.foreign_peers == set(KEYS) - owned[k]
        assert all(steering.owner_of(key, 2) == k for key in owned[k])


@pytest.mark.parametrize(("text", "role", "message"), [
    (server_text("workers = 0"), Role.SERVER, "interface.workers: expected 1 .. 16"),
    (server_text("workers = 17"), Role.SERVER, "interface.workers: expected 1 .. 16"),
    (server_text('workers = 2\nname = "a-very-long-12"').replace('name = "wan0"\n', ""),
     Role.SERVER, "each worker gets a TUN named a-very-long-12-1"),
    (server_text(allowed='["0.0.0.0/0"]', peers=1), Role.SERVER,
     "peer[0]: allowed_ips: with workers > 1"),
    (server_text(allowed='["10.2.0.{i}/32", "::/0"]'), Role.SERVER,
     "allowed_ips: with workers > 1"),
])
def test_worker_key_errors(tmp_path: Path, text: str, role: Role, message: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, text, role)
    assert message in str(info.value), str(info.value)


def test_a_client_has_no_workers(tmp_path: Path) -> None:
    from tests.shell.test_operations_unit import client_text

    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, client_text("workers = 2"))
    assert "only a server has worker processes" in str(info.value)


def test_changing_workers_or_listening_sockets_needs_a_restart(tmp_path: Path) -> None:
    old = load(tmp_path, server_text(), Role.SERVER)
    assert config.restart_needed(old, load(tmp_path, server_text(peers=5), Role.SERVER)) is None
    reason = config.restart_needed(old, load(tmp_path, server_text("workers = 3"), Role.SERVER))
    assert reason is not None and "interface.workers changed (2 -> 3)" in reason
    linked = server_text() + '[[link]]\nname = "a"\nsource = "10.9.0.1"\n'
    reason = config.restart_needed(old, load(tmp_path, linked, Role.SERVER))
    assert reason is not None and "listening sockets" in reason


def test_the_supervisor_sums_its_workers_status() -> None:
    replies = [
        {"role": "server", "tun": "wan0", "worker": 0, "pid": 11, "mtu": {"tun": 1400},
         "drops": {"bad_mac1": 2, "unknown_session": 1}, "io_errors": {},
         "datapath": {"tun": "vnet_hdr csum", "udp_reads": 10, "handshakes_handed_off": 1},
         "source_guard": {"blocked": 1, "blocks": 3}, "peers": [{"public_key": "aa"}]},
        None,  # a worker that did not answer
        {"role": "server", "tun": "wan0-2", "worker": 2, "pid": 13, "mtu": {"tun": 1400},
         "drops": {"bad_mac1": 5}, "io_errors": {"handoff_malformed": 1},
         "datapath": {"tun": "vnet_hdr csum", "udp_reads": 7, "handshakes_taken_over": 1},
         "source_guard": {"blocked": 0, "blocks": 1},
         "peers": [{"public_key": "bb"}, {"public_key": "cc"}]},
    ]
    merged = merge_workers(replies)
    assert merged["drops"] == {"bad_mac1": 7, "unknown_session": 1}
    assert merged["io_errors"] == {"handoff_malformed": 1}
    assert merged["datapath"] == {"tun": "vnet_hdr csum", "udp_reads": 17,
                                  "handshakes_handed_off": 1, "handshakes_taken_over": 1}
    assert merged["source_guard"] == {"blocked": 1, "blocks": 4}
    assert [(p["public_key"], p["worker"]) for p in merged["peers"]] == [
        ("aa", 0), ("bb", 2), ("cc", 2)]
    assert merged["mtu"] == {"tun": 1400} and "worker" not in merged and "pid" not in merged
    merged["workers"] = [{"worker": 0, "tun": "wan0", "pid": 11, "peers": 1, "restarts": 0},
                         {"worker": 1, "tun": "wan0-1", "pid": None, "restarts": 2,
                          "error": "no answer: refused"}]
    text = render(merged)
    assert "worker 1  tun wan0-1  pid -  peers -  restarts 2  no answer: refused" in text
    assert "worker 2  session" in text
    assert merge_workers([None, None])["peers"] == []


def test_masquerade_covers_every_workers_tun() -> None:
    assert 'iifname "wan0" oifname { "eth0" }' in ruleset("wan0", ("eth0",))
    assert 'iifname { "wan0", "wan0-1" } oifname { "eth0" }' in ruleset(
        "wan0", ("eth0",), ("wan0", "wan0-1"))
