"""The driver's boundary (stripe/io/driver.py): an exception out of the core
is a bug, but it must not stop the tunnel or lose the rest of a batch; it is
counted (`core_exceptions`) and logged once per kind, with its traceback.

The real Driver's input handlers run here on a real core whose methods fail
on demand, with a socket stand-in and an event loop that only holds timers:
no TUN, no network."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from stripe.endpoint import Endpoint
from stripe.io import source_filter
from stripe.io.driver import Driver
from stripe.noise import generate_keypair
from stripe.spec import EndpointSpec, PeerSpec, Role

BOOM = b"\x09boom"
JUNK = b"\x09junk"  # an unknown message type: dropped and counted by the core


class FailingCore(Endpoint):
    """A server core that raises on the datagram BOOM, and in handle_timer
    while `timer_fails`."""

    timer_fails = False

    def receive_datagrams(self, sock: int, datagrams: Sequence[bytes],
                          addr: tuple[str, int], now: float) -> None:
        if datagrams[0] == BOOM:
            raise RuntimeError("a bug in the core")
        super().receive_datagrams(sock, datagrams, addr, now)

    def handle_timer(self, now: float) -> None:
        if self.timer_fails:
            raise ZeroDivisionError("another bug")
        super().handle_timer(now)


class FakeSocket:
    """recvfrom() hands out queued datagrams, then would block."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.queue = list(datagrams)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.queue:
            raise BlockingIOError
        return self.queue.pop(0), ("192.0.2.7", 4000)


def make_driver(loop: asyncio.AbstractEventLoop) -> Any:
    """A Driver as __init__ leaves it, minus the TUN and the sockets."""
    private, _ = generate_keypair()
    driver: Any = Driver.__new__(Driver)
    driver.loop = loop
    driver.inherited = None
    driver.core = FailingCore(
        EndpointSpec(Role.SERVER, private, (PeerSpec(generate_keypair()[1], None),)),
        time.monotonic())
    driver.sockets, driver.gso, driver.gro = {}, {0: False}, {0: False}
    driver.io_errors, driver.io_counts = Counter(), Counter()
    driver._source_filter = source_filter.SourceFilter()
    driver._source_filter_code = driver._source_filter_timer = None
    driver._source_filter_due = float("inf")
    driver._filter_works = True
    driver._timer = driver._timer_at = None
    driver._core_errors_seen = set()
    return driver


@pytest.fixture
def driver(caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    caplog.set_level(logging.INFO, logger="stripe")
    try:
        yield make_driver(loop)
    finally:
        loop.close()


def test_a_core_exception_is_counted_logged_once_and_the_batch_goes_on(
        driver: Any, caplog: pytest.LogCaptureFixture) -> None:
    driver._on_socket(0, FakeSocket([BOOM, JUNK, BOOM, JUNK]))
    # Both failures counted; the datagrams after each were still handled.
    assert driver.io_errors["core_exceptions"] == 2
    assert driver.core.drops["unknown_type"] == 2
    assert driver.io_counts["udp_datagrams_in"] == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "internal error in receive_datagrams" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "a bug in the core" in caplog.text
    assert "Traceback" in caplog.text
    # The tunnel carries on: later input is handled.
    driver._on_socket(0, FakeSocket([JUNK]))
    assert driver.core.drops["unknown_type"] == 3
    # Another kind of failure (the timer) is logged once too.
    driver.core.timer_fails = True
    driver._on_timer()
    driver._on_timer()
    assert driver.io_errors["core_exceptions"] == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [e.getMessage().split(" (")[0] for e in errors] == [
        "internal error in receive_datagrams", "internal error in handle_timer"]
    driver.core.timer_fails = False
    driver._on_timer()
    assert driver.io_errors["core_exceptions"] == 4


def test_the_kernel_filter_follows_the_guard_batched_but_a_lifted_block_at_once(
        driver: Any, caplog: pytest.LogCaptureFixture) -> None:

    def settle() -> None:
        driver.loop.run_until_complete(asyncio.sleep(0.02))

    guard = driver.core.guard
    guard.failed("192.0.2.1", time.monotonic(), 64)
    driver._flush(time.monotonic())
    settle()  # the first change goes at once
    assert driver.io_counts["source_filter_updates"] == 1
    assert driver._source_filter_code is not None
    guard.failed("192.0.2.2", time.monotonic(), 64)
    driver._flush(time.monotonic())
    settle()  # the next waits for its turn (a quarter of a second)
    assert driver.io_counts["source_filter_updates"] == 1
    guard.succeeded("192.0.2.1", time.monotonic())  # a handshake from it
    driver._flush(time.monotonic())
    settle()  # ... which goes at once, with the change before it
    assert driver.io_counts["source_filter_updates"] == 2
    assert len(driver._source_filter) == 1
    lines = [r.getMessage() for r in caplog.records if "source guard" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("source guard: 1 source blocked")


def test_the_handoff_inbox_counts_what_is_not_a_handoff(driver: Any) -> None:
    """A worker's inbox (see stripe/io/workers.py): a message that is not
    [socket, host, port, bytes] is counted and dropped; a well-formed one
    goes to the core (which counts an initiation it cannot parse)."""
    import socket

    import msgpack

    from stripe.io.driver import Inherited

    inbox, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    inbox.setblocking(False)
    try:
        driver.inherited = Inherited(tun=None, sockets={}, inbox=inbox)  # type: ignore[arg-type]
        for message in (b"\xc1", msgpack.packb([0, "192.0.2.9"]),
                        msgpack.packb(["0", "192.0.2.9", 1, b"x"]),
                        msgpack.packb([0, "192.0.2.9", 4000, b"\x01short"])):
            writer.send(message)
        driver._on_handoff()
        assert driver.io_errors["handoff_malformed"] == 3
        assert driver.io_counts["handshakes_taken_over"] == 1
        assert driver.core.drops["bad_handshake_size"] == 1
        assert driver.io_errors["core_exceptions"] == 0
    finally:
        inbox.close()
        writer.close()
