"""The asyncio/uvloop shell: moves bytes between the OS and the core.

One choke point: after any input (TUN readable, socket readable, timer) the
driver drains every output of the core and re-arms exactly one timer, the
aioquic pattern.  Readers drain until EAGAIN (bounded per wake-up so one
busy fd cannot starve the others): one wake-up per packet costs ~1.3x.

Sockets are unconnected: with uvloop, `add_reader` on a connected UDP socket
stops firing after one ICMP port-unreachable.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import pwd
import signal
import socket
import time
from collections import Counter
from typing import Any

from ..config import Config
from ..endpoint import Endpoint
from ..status import snapshot
from .control_socket import ControlServer
from .path_mtu import resolve_tunnel_mtu
from .sockets import open_sockets
from .tun import SetupError, Tun

log = logging.getLogger("stripe")

READ_BATCH = 64
MAX_DATAGRAM = 65535
# Errors that mean "this link cannot send right now" (interface down or gone,
# no route): reported to the core so the link leaves the schedule at once.
LINK_DOWN_ERRNOS = {
    errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENODEV, errno.ENXIO,
    errno.EADDRNOTAVAIL, errno.EPERM,
}


class Driver:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.mtu = resolve_tunnel_mtu(config)
        log.info("%s", self.mtu.explanation)
        for warning in self.mtu.warnings:
            log.warning("%s", warning)
        self.tun = Tun(config.tun_name, self.mtu.mtu, config.addresses)
        try:
            self.sockets = open_sockets(config)
        except Exception:
            self.tun.close()
            raise
        # time.monotonic(), not loop.time(): uvloop's clock ticks in whole
        # milliseconds, too coarse for RTTs and delay skew on a LAN.
        now = time.monotonic()
        self.core = Endpoint(config.endpoint_spec(self.mtu.mtu), now,
                             wall_offset=time.time() - now)
        self.io_errors: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.stopped = asyncio.Event()
        self.started = now

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self.loop.add_reader(self.tun.fd, self._on_tun)
        for index, sock in enumerate(self.sockets):
            self.loop.add_reader(sock.fileno(), self._on_socket, index, sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self._log_status)
        log.info("%s up: tun %s mtu %d, %d link socket(s), scheduler %s",
                 self.config.role.value, self.tun.name, self.mtu.mtu, len(self.sockets),
                 self.config.scheduler)
        self._flush()

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.loop.remove_reader(self.tun.fd)
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.tun.close()
        log.info("stopped; drops %s; io errors %s", dict(self.core.drops), dict(self.io_errors))

    def status(self) -> dict[str, Any]:
        status = snapshot(self.core, time.monotonic())
        status["io_errors"] = dict(self.io_errors)
        status["tun"] = self.tun.name
        status["scheduler"] = self.config.scheduler
        status["uptime_s"] = round(time.monotonic() - self.started, 1)
        status["mtu"]["derivation"] = self.mtu.explanation
        return status

    def _log_status(self) -> None:
        log.info("status %s", json.dumps(self.status(), sort_keys=True))

    # -- inputs ----------------------------------------------------------

    def _on_tun(self) -> None:
        now = time.monotonic()
        fd, core = self.tun.fd, self.core
        for _ in range(READ_BATCH):
            try:
                packet = os.read(fd, MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                self.io_errors[f"tun_read_{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                break
            core.send_packet(packet, now)
        self._flush()

    def _on_socket(self, index: int, sock: socket.socket) -> None:
        now = time.monotonic()
        core = self.core
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                # ICMP errors surface here on some kernels; they are not data.
                self.io_errors[f"recv_{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                break
            core.receive_datagram(index, data, (addr[0], addr[1]), now)
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(time.monotonic())
        self._flush()

    # -- the choke point -------------------------------------------------

    def _flush(self) -> None:
        core = self.core
        sockets = self.sockets
        for _ in range(4):  # a send error can change link state: drain again
            datagrams = core.datagrams_to_send()
            if not datagrams:
                break
            for index, data, addr in datagrams:
                try:
                    sockets[index].sendto(data, addr)
                except BlockingIOError:
                    self.io_errors["send_would_block"] += 1
                except OSError as exc:
                    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                    self.io_errors[f"send_{name}"] += 1
                    if exc.errno in LINK_DOWN_ERRNOS:
                        core.send_failed(index, addr, time.monotonic())
                    elif exc.errno == errno.EMSGSIZE:
                        core.datagram_too_big(index, addr, len(data), time.monotonic())
        fd = self.tun.fd
        for packet in core.packets_to_deliver():
            try:
                os.write(fd, packet)
            except OSError as exc:
                self.io_errors[f"tun_write_{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
        for level, message in core.take_events():
            log.log(level, "%s", message)
        self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.core.get_timer()
        if at is None:
            return
        if self._timer_at is not None and self._timer_at <= at + 1e-4:
            return  # the armed timer fires first; handle_timer re-arms after
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_later(max(at - time.monotonic(), 0.0), self._on_timer)


def drop_privileges(user: str) -> None:
    """Become `user` for good: the TUN fd, the sockets and the control socket
    are open, and closing them (which removes the TUN) needs no privilege."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)  # real, effective and saved: no way back
    log.info("running as %s (uid %d) from here on", user, entry.pw_uid)


async def serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    driver = Driver(config, loop)
    control = ControlServer(config.control_socket, {"status": driver.status})
    try:
        try:
            await control.start()
        except OSError as exc:
            raise SetupError(f"cannot open control socket {config.control_socket}: {exc}") from None
        driver.start()
        if config.user:
            drop_privileges(config.user)
        await driver.stopped.wait()
    finally:
        control.close()
        driver.close()
