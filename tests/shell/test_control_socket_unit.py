"""Control socket files left behind: stripe drops its privileges after
set-up and can then no longer remove its socket from the root-only
directory, so the next stripe to start removes the dead ones, and `stripe
status` looks past them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stripe.cli import main
from stripe.config import model
from stripe.io.control_socket import STALE_AFTER_S, ControlServer, remove_stale_sockets
from stripe.spec import Role

OLD = time.time() - 2 * STALE_AFTER_S


def dead_socket(path: Path, mtime: float | None = OLD) -> Path:
    """A socket file nothing listens on (its process ended)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@contextlib.contextmanager
def answering(path: Path) -> Iterator[Path]:
    """An old socket file at `path` a live process listens on; it answers one
    status request (connections that ask nothing, probes, get nothing)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    os.utime(path, (OLD, OLD))

    def answer() -> None:
        with server:
            while True:
                conn, _ = server.accept()
                with conn:
                    if not conn.recv(65536):
                        continue
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"role": "server"}).encode() + b"\n")
                    return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        thread.join(timeout=1)
        if thread.is_alive():  # nobody asked: ask, so that it ends
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
                wake.connect(str(path))
                wake.sendall(b"{}\n")
                wake.recv(65536)
            thread.join(timeout=5)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    with answering(tmp_path / "live.sock") as path:
        yield path


def test_only_old_dead_sockets_are_removed(tmp_path: Path, listening: Path) -> None:
    stale = dead_socket(tmp_path / "stale.sock")
    young = dead_socket(tmp_path / "young.sock", mtime=None)  # may be between bind and listen
    plain = tmp_path / "plain.sock"
    plain.write_text("not a socket")
    os.utime(plain, (OLD, OLD))
    other = dead_socket(tmp_path / "other.socket")  # not a name stripe gives its sockets
    assert remove_stale_sockets(tmp_path) == 1
    assert not stale.exists()
    assert young.exists() and plain.exists() and other.exists() and listening.exists()


def test_a_stripe_starting_in_the_shared_directory_clears_the_dead(tmp_path: Path) -> None:
    stale = dead_socket(tmp_path / "stripe9-client.sock")

    async def start_and_close(shared: Path | None) -> None:
        server = ControlServer(tmp_path / "stripe0-server.sock", {})
        await server.start(shared_dir=shared)
        server.close()

    asyncio.run(start_and_close(None))  # a socket configured elsewhere: none of its business
    assert stale.exists()
    asyncio.run(start_and_close(tmp_path))
    assert not stale.exists()


def test_status_looks_past_a_dead_socket_of_the_other_role(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stripe0 ran as a client once and now runs as the server: the client's
    socket file is still there and must not hide the server's."""
    monkeypatch.setattr(model, "CONTROL_SOCKET_DIR", tmp_path)
    monkeypatch.setattr(model, "_netns_suffix", lambda: "")
    dead_socket(model.default_control_socket("stripe0", Role.CLIENT))
    with answering(model.default_control_socket("stripe0", Role.SERVER)):
        result = CliRunner().invoke(main, ["status", "-i", "stripe0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"role": "server"}
