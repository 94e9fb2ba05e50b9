"""The shell's part of a reload (stripe/io/reload.py): which sockets open and
close, all or nothing, with real UDP sockets on loopback and the real core;
the driver's event loop is left out."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stripe import config
from stripe.endpoint import Endpoint
from stripe.io.reload import Reloader
from stripe.io.sockets import open_sockets
from stripe.noise import encode_key, generate_keypair
from stripe.spec import Role

KEYS = [encode_key(k) for k in (*generate_keypair(), *generate_keypair())]


class FakeDriver:
    """What Reloader uses of a Driver."""

    def __init__(self, cfg: config.Config) -> None:
        self.config = cfg
        self.core = Endpoint(cfg.endpoint_spec(), time.monotonic())
        self.sockets: dict[int, socket.socket] = open_sockets(cfg)
        self.flushes = 0

    def add_socket(self, index: int, sock: socket.socket) -> None:
        assert index not in self.sockets
        self.sockets[index] = sock

    def close_socket(self, index: int) -> None:
        self.sockets.pop(index).close()

    def flush(self, now: float) -> None:
        self.flushes += 1

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def server_config(listen_port: int, links: list[tuple[str, str, int]],
                  peers: int = 1) -> str:
    text = f"""
[interface]
address = ["10.2.0.1/24"]
private_key = "{KEYS[0]}"
listen_port = {listen_port}
user = ""
control_socket = "/tmp/unused.sock"
"""
    for i in range(peers):
        text += f'[[peer]]\npublic_key = "{KEYS[1 + 2 * i]}"\nallowed_ips = ["10.2.0.{2 + i}/32"]\n'
    for name, source, port in links:
        text += f'[[link]]\nname = "{name}"\nsource = "{source}"\nport = {port}\n'
    return text


@pytest.fixture
def server(tmp_path: Path) -> Any:
    ports = free_ports(3)
    path = tmp_path / "s.toml"

    def write(links: list[tuple[str, str, int]], peers: int = 1) -> None:
        path.write_text(server_config(ports[0], links, peers))
        path.chmod(0o600)  # it holds a private key

    write([("a", "127.0.0.1", ports[1])])
    driver = FakeDriver(config.load(path, Role.SERVER))
    try:
        yield driver, Reloader(driver), write, ports  # type: ignore[arg-type]
    finally:
        driver.close()


def test_server_sockets_open_and_close_by_binding(server: Any) -> None:
    driver, reloader, write, ports = server
    first = driver.sockets[0]
    write([("a", "127.0.0.1", ports[1]), ("b", "127.0.0.1", ports[2])])
    reply = asyncio.run(reloader.reload())
    assert reply == {"ok": True,
                     "changes": [f"socket b (from 127.0.0.1:{ports[2]}) added"]}
    assert driver.sockets[0] is first and driver.sockets[1].getsockname()[1] == ports[2]
    write([("b-renamed", "127.0.0.1", ports[2])])
    reply = asyncio.run(reloader.reload())
    assert reply["changes"] == [f"socket a (from 127.0.0.1:{ports[1]}) removed"]
    assert list(driver.sockets) == [1] and first.fileno() == -1
    write([])  # no [[link]]: the wildcard socket on listen_port
    reply = asyncio.run(reloader.reload())
    assert reply["changes"] == [f"socket any (from *:{ports[0]}) added",
                                f"socket b-renamed (from 127.0.0.1:{ports[2]}) removed"]
    assert list(driver.sockets) == [2] and driver.sockets[2].getsockname() == (
        "0.0.0.0", ports[0])
    assert driver.flushes == 3


def test_a_socket_that_cannot_be_bound_changes_nothing(server: Any) -> None:
    driver, reloader, write, ports = server
    old_config, old_sockets = driver.config, dict(driver.sockets)
    write([("a", "127.0.0.1", ports[1]), ("b", "127.0.0.1", ports[2]),
           ("c", "192.0.2.1", ports[2])], peers=2)
    reply = asyncio.run(reloader.reload())
    assert not reply["ok"]
    assert reply["error"].startswith(f"link c: cannot bind UDP socket to 192.0.2.1:{ports[2]}")
    assert driver.config is old_config and driver.sockets == old_sockets
    assert len(driver.core.peers) == 1 and driver.flushes == 0
    # Fixed: the same reload goes through (the socket for b was not leaked).
    write([("a", "127.0.0.1", ports[1]), ("b", "127.0.0.1", ports[2])], peers=2)
    reply = asyncio.run(reloader.reload())
    assert reply["ok"] and len(reply["changes"]) == 2 and len(driver.core.peers) == 2


def test_restart_keys_and_bad_requests_are_refused(server: Any, tmp_path: Path) -> None:
    driver, reloader, write, ports = server
    path = Path(driver.config.path)
    path.write_text(path.read_text().replace(f"listen_port = {ports[0]}", "listen_port = 1"))
    reply = asyncio.run(reloader.reload())
    assert reply == {"ok": False, "error": f"{path}: interface.listen_port changed "
                                           f"({ports[0]} -> 1): needs a restart"}
    assert asyncio.run(reloader.handle_request({"cmd": "reload", "config": 5})) == {
        "ok": False, "error": "reload: config must be a path"}
    reply = asyncio.run(reloader.handle_request(
        {"cmd": "reload", "config": str(tmp_path / "x.toml"), "files": {"nope": 1}}))
    assert not reply["ok"] and "x.toml: cannot read" in reply["error"]
    # Files shipped by `stripe reload` are used instead of the disk.
    write([("a", "127.0.0.1", ports[1])], peers=2)
    files: dict[str, Any] = {}
    config.load(path, Role.SERVER, read_file=config.recording_reader(files))
    path.write_text("not toml [")
    reply = asyncio.run(reloader.handle_request(
        {"cmd": "reload", "config": str(path), "files": files}))
    assert reply["ok"] and reply["changes"] == [f"peer {KEYS[3][:8]} added"]


def test_cli_reload_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(server_config(free_ports(1)[0], []))
    path.chmod(0o600)
    nobody_there = tmp_path / "none.sock"

    def cli() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stripe", "reload", "-c", str(path),
                               "--socket", str(nobody_there)], capture_output=True, text=True,
                              timeout=30, check=False, cwd=Path(__file__).parents[2])

    result = cli()
    assert result.returncode == 1
    assert result.stderr.startswith(f"stripe: reload: no stripe answering on {nobody_there}")
    path.write_text(path.read_text().replace("[interface]", "[interface]\nmtu = 1"))
    result = cli()
    assert result.returncode == 2
    assert 'interface.mtu: expected "auto" or an MTU 576..9000, got 1' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_socket_replaced_on_the_same_port_and_nobody_can_share_it(server: Any) -> None:
    """A server going from its wildcard socket to one on a link address with
    the same port, and back: the new socket binds while the old one is open
    (link sockets have no SO_REUSEADDR, so a reload lends it to both for the
    moment of the bind); afterwards the port cannot be shared."""
    driver, reloader, write, ports = server
    write([])  # the wildcard socket on listen_port
    assert asyncio.run(reloader.reload())["ok"]
    write([("x", "127.0.0.1", ports[0])])
    reply = asyncio.run(reloader.reload())
    assert reply["ok"], reply
    assert [s.getsockname() for s in driver.sockets.values()] == [("127.0.0.1", ports[0])]
    write([])
    reply = asyncio.run(reloader.reload())
    assert reply["ok"], reply
    assert [s.getsockname() for s in driver.sockets.values()] == [("0.0.0.0", ports[0])]
    for sock in driver.sockets.values():
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with pytest.raises(OSError, match="Address already in use"):
        thief.bind(("127.0.0.1", ports[0]))
    thief.close()
