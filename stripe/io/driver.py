"""The asyncio/uvloop shell: moves bytes between the OS and the core.

One choke point: after any input (TUN readable, socket readable, timer) the
driver drains every output of the core and re-arms exactly one timer, the
aioquic pattern.  Readers drain until EAGAIN (bounded per wake-up so one
busy fd cannot starve the others): one wake-up per packet costs ~1.3x.

Sockets are unconnected: with uvloop, `add_reader` on a connected UDP socket
stops firing after one ICMP port-unreachable.

The kernel crossings are batched where the kernel allows (`offload = true`,
the default): the TUN hands over TCP super-packets that `offload` cuts into
independent MSS-sized packets (one counter and one AEAD tag each), each
link's datagrams leave in UDP GSO trains, arrive in GRO trains, and
in-order TCP segments are glued back together for one TUN write.  Whatever
the kernel refuses falls back to one packet per syscall, and `status` says
which path is in use.

Sockets are kept by socket id (the index the core puts in its datagrams),
not in a list, so a reload can add and remove sockets without renumbering
the others (see `reload`).

Each wake-up reads the clock once and hands that `now` to every core call
it makes; the only other clock read is how far away the next timer is.
An exception out of the core is a bug, but not a reason to stop the
tunnel: the driver counts it (`core_exceptions` in the I/O errors), logs
the first of each kind with its traceback, and carries on with the next
input.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import msgpack

from ..coalesce import coalesce
from ..config import CONTROL_SOCKET_DIR, Config
from ..endpoint import Endpoint
from ..offload import VNET_HDR_LEN, OffloadError, complete_partial, split_tun_read
from ..outbox import Datagram
from ..spec import Address
from . import source_filter
from .control_socket import ControlServer
from .network import set_up_network, tear_down_network
from .path_mtu import resolve_tunnel_mtu
from .privileges import drop_privileges
from .reload import Reloader
from .sockets import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    enable_gro,
    gso_supported,
    open_sockets,
)
from .tun import SetupError, Tun
from .undo import Undo

if TYPE_CHECKING:
    from .metrics import MetricsServer

log = logging.getLogger("stripe")

# Per wake-up, stop reading after this many reads or inner packets (a TSO
# read holds up to ~45), then flush: bounded latency, and one busy fd cannot
# starve the others.
READ_BATCH = 64
PACKET_BATCH = 256
MAX_DATAGRAM = 65535
TUN_READ_SIZE = 65535 + VNET_HDR_LEN
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
# A GSO send refused with one of these: the path cannot segment (no
# checksum offload, xfrm, ...): this socket goes back to one datagram per send.
GSO_REFUSED_ERRNOS = {errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.EMSGSIZE}
# Errors that mean "this link cannot send right now" (interface down or gone,
# no route): reported to the core so the link leaves the schedule at once.
LINK_DOWN_ERRNOS = {
    errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENODEV, errno.ENXIO,
    errno.EADDRNOTAVAIL, errno.EPERM,
}


@dataclass
class Inherited:
    """What a server worker gets from its supervisor instead of opening it
    (see `workers`): its TUN, its socket of each listening link's group, and
    the handoff channel: its own inbox and the other workers' (by worker)."""

    tun: Tun
    sockets: dict[int, socket.socket]
    inbox: socket.socket
    inboxes: dict[int, socket.socket] = field(default_factory=dict)


class Driver:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 inherited: Inherited | None = None) -> None:
        self.config = config
        self.loop = loop
        self.mtu = resolve_tunnel_mtu(config)
        log.info("%s", self.mtu.explanation)
        for warning in self.mtu.warnings:
            log.warning("%s", warning)
        self.inherited = inherited
        if inherited is not None:
            self.tun, self.sockets = inherited.tun, dict(inherited.sockets)
        else:
            self.tun = Tun(config.tun_name, self.mtu.mtu, config.addresses,
                           offload=config.offload)
            try:
                self.sockets = open_sockets(config)
            except Exception:
                self.tun.close()
                raise
        self.gso = {i: config.offload and gso_supported(s) for i, s in self.sockets.items()}
        self.gro = {i: config.offload and enable_gro(s) for i, s in self.sockets.items()}
        # time.monotonic(), not loop.time(): uvloop's clock ticks in whole
        # milliseconds, too coarse for RTTs and delay skew on a LAN.
        now = time.monotonic()
        # A TUN with a virtio-net header takes packets whose TCP/UDP checksum
        # is partial (NEEDS_CSUM) and hands them over so: no checksum is
        # summed in Python between two such ends (see `offload`).
        spec = replace(config.endpoint_spec(self.mtu.mtu), partial_csum=self.tun.vnet_hdr)
        self.core = Endpoint(spec, now, wall_offset=time.time() - now)
        self.io_errors: Counter[str] = Counter()
        # Syscalls vs packets each way: shows the batching at work in `status`.
        self.io_counts: Counter[str] = Counter()
        # Sources whose datagrams the kernel drops for us (see guard), and
        # the timer that rebuilds the filter and logs the blocks, batched.
        self._source_filter = source_filter.SourceFilter()
        self._source_filter_code: bytes | None = None
        self._source_filter_timer: asyncio.TimerHandle | None = None
        self._source_filter_due = float("inf")
        self._filter_works = True
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._core_errors_seen: set[str] = set()
        self.stopped = asyncio.Event()
        self.started = now
        self.reloader = Reloader(self)
        self._reloads: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self.loop.add_reader(self.tun.fd, self._on_tun)
        for index, sock in self.sockets.items():
            self.loop.add_reader(sock.fileno(), self._on_socket, index, sock)
        if self.inherited is not None:
            self.loop.add_reader(self.inherited.inbox.fileno(), self._on_handoff)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self._log_status)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_from_signal)
        log.info("%s up: tun %s mtu %d, %d link socket(s), scheduler %s",
                 self.config.role.value, self.tun.name, self.mtu.mtu, len(self.sockets),
                 self.config.scheduler)
        log.info("data path: tun %s; udp gso %s, gro %s", self.tun.offload,
                 _on_off(self.gso.values()), _on_off(self.gro.values()))
        self._flush(time.monotonic())

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._source_filter_timer is not None:
            self._source_filter_timer.cancel()
        self.loop.remove_reader(self.tun.fd)
        for index in list(self.sockets):
            self.close_socket(index)
        self.tun.close()
        if self.inherited is not None:
            self.loop.remove_reader(self.inherited.inbox.fileno())
        log.info("stopped; drops %s; io errors %s", dict(self.core.drops), dict(self.io_errors))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        status = self.core.status(now)
        status["io_errors"] = dict(self.io_errors)
        status["tun"] = self.tun.name
        status["scheduler"] = self.config.scheduler
        status["uptime_s"] = round(now - self.started, 1)
        if self.config.worker is not None:
            status["worker"] = self.config.worker
            status["pid"] = os.getpid()
        status["datapath"] = {"tun": self.tun.offload, "udp_gso": _on_off(self.gso.values()),
                              "udp_gro": _on_off(self.gro.values()), **self.io_counts}
        status["mtu"]["derivation"] = self.mtu.explanation
        filters = self._source_filter
        guard = self.core.guard
        status["source_guard"] = {"blocked": len(filters), "in_kernel_filter": filters.filtered,
                                  "handshake_sample": filters.handshake_sample,
                                  "blocks": guard.blocks, "renewals": guard.renewals}
        return status

    def add_socket(self, index: int, sock: socket.socket) -> None:
        if index in self.sockets:
            self.close_socket(index)
        self.sockets[index] = sock
        self.gso[index] = self.config.offload and gso_supported(sock)
        self.gro[index] = self.config.offload and enable_gro(sock)
        if self._source_filter_code is not None and self._filter_works:
            self._attach_source_filter({index: sock}, self._source_filter_code)
        self.loop.add_reader(sock.fileno(), self._on_socket, index, sock)

    def close_socket(self, index: int) -> None:
        sock = self.sockets.pop(index, None)
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()
            del self.gso[index], self.gro[index]

    def _log_status(self) -> None:
        log.info("status %s", json.dumps(self.status(), sort_keys=True))

    def _reload_from_signal(self) -> None:
        """SIGHUP: reload from the file, as a task (loading waits off the loop)."""
        task = self.loop.create_task(self.reloader.reload())
        self._reloads.add(task)  # a reference, until it is done
        task.add_done_callback(self._reloads.discard)

    def _core_failed(self, where: str, exc: Exception) -> None:
        """The core raised (a bug): count it, log each kind once with its
        traceback, keep running."""
        self.io_errors["core_exceptions"] += 1
        kind = f"{where}: {type(exc).__name__}"
        if kind not in self._core_errors_seen:
            self._core_errors_seen.add(kind)
            log.error("internal error in %s (counted as core_exceptions; the tunnel carries "
                      "on, later ones of this kind are only counted)", where, exc_info=exc)

    # -- inputs ----------------------------------------------------------

    def _on_tun(self) -> None:
        now = time.monotonic()
        fd, vnet = self.tun.fd, self.tun.vnet_hdr
        packets: list[bytes] = []
        reads = 0
        for _ in range(READ_BATCH):
            try:
                buf = os.read(fd, TUN_READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                self.io_errors[f"tun_read_{_errno_name(exc)}"] += 1
                break
            reads += 1
            if not vnet:
                packets.append(buf)
            else:
                try:
                    packets += split_tun_read(buf, partial=True)
                except OffloadError:
                    self.io_errors["tun_read_malformed_offload"] += 1
                    continue
            if len(packets) >= PACKET_BATCH:
                break
        counts = self.io_counts
        counts["tun_reads"] += reads
        counts["tun_packets_in"] += len(packets)
        try:
            self.core.send_packets(packets, now)
        except Exception as exc:
            self._core_failed("send_packets", exc)
        self._flush(now)

    def _on_socket(self, index: int, sock: socket.socket) -> None:
        now = time.monotonic()
        core = self.core
        gro = self.gro[index]
        datagrams = reads = 0
        for _ in range(READ_BATCH):
            try:
                if gro:
                    data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, GRO_CMSG_SPACE)
                else:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                    ancillary = None
            except BlockingIOError:
                break
            except OSError as exc:
                # ICMP errors surface here on some kernels; they are not data.
                self.io_errors[f"recv_{_errno_name(exc)}"] += 1
                break
            reads += 1
            source = (addr[0], addr[1])
            segment = _gro_segment_size(ancillary) if ancillary else 0
            if 0 < segment < len(data):
                train = [data[offset:offset + segment] for offset in range(0, len(data), segment)]
            else:
                train = [data]
            try:
                core.receive_datagrams(index, train, source, now)
            except Exception as exc:
                self._core_failed("receive_datagrams", exc)
            datagrams += len(train)
            if datagrams >= PACKET_BATCH:
                break
        counts = self.io_counts
        counts["udp_reads"] += reads
        counts["udp_datagrams_in"] += datagrams
        self._flush(now)

    def _on_handoff(self) -> None:
        """Initiations other workers read for our peers (see `steering`):
        [socket id, host, port, datagram], msgpack.  Our own processes
        wrote them, but a message that does not have that shape is
        counted and dropped like any input."""
        assert self.inherited is not None
        now = time.monotonic()
        inbox = self.inherited.inbox
        for _ in range(READ_BATCH):
            try:
                message = inbox.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                self.io_errors[f"handoff_recv_{_errno_name(exc)}"] += 1
                break
            try:
                sock, host, port, data = msgpack.unpackb(message)
                if not (isinstance(sock, int) and isinstance(host, str)
                        and isinstance(port, int) and isinstance(data, bytes)):
                    raise ValueError("bad field types")
            except (ValueError, TypeError, msgpack.UnpackException):
                self.io_errors["handoff_malformed"] += 1
                continue
            self.io_counts["handshakes_taken_over"] += 1
            try:
                self.core.receive_handoff(sock, data, (host, port), now)
            except Exception as exc:
                self._core_failed("receive_handoff", exc)
        self._flush(now)

    def _send_handoffs(self) -> None:
        assert self.inherited is not None
        for worker, sock, data, addr in self.core.handoffs_to_send():
            inbox = self.inherited.inboxes.get(worker)
            if inbox is None:
                self.io_errors["handoff_no_worker"] += 1
                continue
            try:
                inbox.send(msgpack.packb([sock, addr[0], addr[1], data]))
            except OSError as exc:  # the owner is not reading (restarting, overloaded)
                self.io_errors[f"handoff_send_{_errno_name(exc)}"] += 1
                continue
            self.io_counts["handshakes_handed_off"] += 1

    def flush(self, now: float) -> None:
        """Drain the core's outputs after an input from outside (a reload)."""
        self._flush(now)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.monotonic()
        try:
            self.core.handle_timer(now)
        except Exception as exc:
            self._core_failed("handle_timer", exc)
        self._flush(now)

    # -- the choke point -------------------------------------------------

    def _flush(self, now: float) -> None:
        core = self.core
        for _ in range(4):  # a send error can change link state: drain again
            datagrams = core.datagrams_to_send()
            if not datagrams:
                break
            self._send(datagrams, now)
        packets = core.packets_to_deliver()
        if packets:
            self._write_tun(packets)
        if self.inherited is not None:
            self._send_handoffs()
        for index in core.sockets_to_close():
            self.close_socket(index)
        for level, message in core.take_events():
            log.log(level, "%s", message)
        changes = core.block_changes(now)
        if changes is not None:
            self._source_filter.update(*changes)
            self._arm_source_filter_timer(now)
        self._arm_timer()

    def _arm_source_filter_timer(self, now: float) -> None:
        """Rebuild the kernel filter and log the blocks when they are due
        (see source_filter: batched, at most so many times a second)."""
        due = self._source_filter.next_due()
        if due is None:
            return
        if self._source_filter_timer is not None:
            if self._source_filter_due <= due:
                return  # the armed one comes first
            self._source_filter_timer.cancel()  # a lifted block goes at once
        self._source_filter_due = due
        self._source_filter_timer = self.loop.call_later(max(due - now, 0.0),
                                                         self._on_source_filter_timer)

    def _on_source_filter_timer(self) -> None:
        """Mirror the guard's blocked sources into every socket's kernel
        filter: their junk then costs us nothing."""
        self._source_filter_timer = None
        now = time.monotonic()
        filters = self._source_filter
        filters.note_handshakes(self.core.handshakes_from_blocked_sources(), now)
        rebuilt, code = filters.rebuild(now)
        if rebuilt and self._filter_works:
            self._source_filter_code = code
            self._attach_source_filter(self.sockets, code)
        line = filters.summary(now)
        if line is not None:
            log.warning("%s", line)
        self._arm_source_filter_timer(now)

    def _attach_source_filter(self, sockets: dict[int, socket.socket],
                              code: bytes | None) -> None:
        try:
            for sock in sockets.values():
                source_filter.attach(sock, code)
        except OSError as exc:
            self._filter_works = False
            log.warning("cannot attach socket filters (%s): blocked sources are dropped "
                        "after reading instead", exc.strerror or exc)
            return
        self.io_counts["source_filter_updates"] += 1

    def _send(self, datagrams: list[Datagram], now: float) -> None:
        """Each (socket, address)'s datagrams in order; trains of equal-sized
        ones in one GSO send where the socket has it."""
        by_path: dict[tuple[int, Address], list[bytes]] = {}
        for index, data, addr in datagrams:
            path = (index, addr)
            train = by_path.get(path)
            if train is None:
                by_path[path] = [data]
            else:
                train.append(data)
        for (index, addr), queue in by_path.items():
            gso = self.gso.get(index)
            if gso is None:
                self._no_socket(index, addr, len(queue), now)
                continue
            trains = _gso_trains(queue) if gso and len(queue) > 1 else [[data] for data in queue]
            for train in trains:
                error = (self._send_one(index, train[0], addr, now) if len(train) == 1
                         else self._send_train(index, train, addr, now))
                if error in LINK_DOWN_ERRNOS:
                    break  # the rest of this path's datagrams would fail alike

    def _send_one(self, index: int, data: bytes, addr: Address, now: float) -> int:
        """0 when sent, else the errno (counted and reported)."""
        try:
            self.sockets[index].sendto(data, addr)
        except OSError as exc:
            self._send_error(index, addr, exc, 1, len(data), now)
            return exc.errno or -1
        self.io_counts["udp_sends"] += 1
        self.io_counts["udp_datagrams_out"] += 1
        return 0

    def _send_train(self, index: int, train: list[bytes], addr: Address, now: float) -> int:
        """One GSO send; 0 when sent, else the errno."""
        segment = struct.pack("=H", len(train[0]))
        try:
            self.sockets[index].sendmsg(
                [b"".join(train)], [(SOL_UDP, UDP_SEGMENT, segment)], 0, addr)
        except OSError as exc:
            if exc.errno not in GSO_REFUSED_ERRNOS:
                self._send_error(index, addr, exc, len(train), len(train[0]), now)
                return exc.errno or -1
            # Either GSO itself is refused, or a datagram is (too big for the
            # path): one at a time tells which.
            errors = []
            for data in train:
                error = self._send_one(index, data, addr, now)
                if error in LINK_DOWN_ERRNOS:
                    return error
                errors.append(error)
            if not any(errors):
                self.gso[index] = False
                log.warning("link socket %d: UDP GSO refused (%s); one datagram per send "
                            "from now on", index, exc.strerror or exc)
            return 0
        self.io_counts["udp_sends"] += 1
        self.io_counts["udp_datagrams_out"] += len(train)
        return 0

    def _no_socket(self, index: int, addr: Address, count: int, now: float) -> None:
        """A server socket a reload closed: the link whose return path used
        it fails now, until the client's packets arrive on another one."""
        self.io_errors["send_no_socket"] += count
        self._tell_core(self.core.send_failed, index, addr, now)

    def _tell_core(self, call: Any, *args: Any) -> None:
        """A send error, reported to the core (which may queue more)."""
        try:
            call(*args)
        except Exception as exc:
            self._core_failed(call.__name__, exc)

    def _send_error(self, index: int, addr: Address, exc: OSError, count: int,
                    size: int, now: float) -> None:
        if isinstance(exc, BlockingIOError):
            self.io_errors["send_would_block"] += count
            return
        self.io_errors[f"send_{_errno_name(exc)}"] += count
        if exc.errno in LINK_DOWN_ERRNOS:
            self._tell_core(self.core.send_failed, index, addr, now)
        elif exc.errno == errno.EMSGSIZE:
            # Bigger than the path (probing sockets never fragment): the
            # link's PMTU search learns of it (see `pmtu`).
            self._tell_core(self.core.datagram_too_big, index, addr, size, now)

    def _write_tun(self, packets: list[bytes]) -> None:
        fd = self.tun.fd
        # No checksum check before merging: each packet's AEAD tag already
        # proved it is exactly what the peer sent (see `coalesce`).  Packets
        # whose checksum the peer left partial go with NEEDS_CSUM, merged or not.
        if self.tun.vnet_hdr:
            buffers = coalesce(packets, verify=False)
        else:
            # A plain TUN cannot be told to complete a checksum, and we told no
            # peer it may leave one partial: if one did anyway, complete it
            # rather than hand the kernel a field that is not a checksum.
            buffers = [complete_partial(packet) for packet in packets]
        self.io_counts["tun_writes"] += len(buffers)
        self.io_counts["tun_packets_out"] += len(packets)
        for buf in buffers:
            try:
                os.write(fd, buf)
            except OSError as exc:
                self.io_errors[f"tun_write_{_errno_name(exc)}"] += 1

    def _arm_timer(self) -> None:
        at = self.core.get_timer()
        if at is None:
            return
        if self._timer_at is not None and self._timer_at <= at + 1e-4:
            return  # the armed timer fires first; handle_timer re-arms after
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        # The clock again, not the wake-up's `now`: the delay counts from the
        # moment the timer is armed, after this wake-up's work.
        self._timer = self.loop.call_later(max(at - time.monotonic(), 0.0), self._on_timer)


def _gso_trains(queue: list[bytes]) -> list[list[bytes]]:
    """Cut one path's datagrams into GSO trains: all of one size, except a
    shorter last one, within the kernel's segment and byte limits."""
    trains: list[list[bytes]] = []
    train: list[bytes] = []
    size = total = 0
    for data in queue:
        n = len(data)
        if train and (n > size or len(train) >= GSO_MAX_SEGMENTS or total + n > GSO_MAX_BYTES):
            trains.append(train)
            train = []
        if not train:
            size, total = n, 0
        train.append(data)
        total += n
        if n < size:  # a short one ends its train
            trains.append(train)
            train = []
    if train:
        trains.append(train)
    return trains


def _gro_segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int(struct.unpack_from("=i", data)[0])
    return 0


def _errno_name(exc: OSError) -> str:
    """ENETDOWN, ... (the number if the name is unknown): an I/O error counter's suffix."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _on_off(flags: Collection[bool]) -> str:
    if all(flags):
        return "on"
    return "off" if not any(flags) else f"on for {sum(flags)} of {len(flags)} sockets"


async def serve(config: Config, inherited: Inherited | None = None) -> None:
    """Run one stripe process: a client, a server, or one worker of a
    server (`inherited`: what its supervisor opened for it)."""
    loop = asyncio.get_running_loop()
    driver = Driver(config, loop, inherited)
    control = ControlServer(config.control_socket, {
        "status": lambda _request: driver.status(),
        "reload": driver.reloader.handle_request,
    })
    network = Undo()  # routes, rules, NAT: put back on the way out
    metrics: MetricsServer | None = None
    try:
        try:
            await control.start(shared_dir=CONTROL_SOCKET_DIR)
        except OSError as exc:
            raise SetupError(f"cannot open control socket {config.control_socket}: {exc}") from None
        set_up_network(config, driver.tun.name, network)
        if config.metrics:
            try:
                from .metrics import MetricsServer
            except ImportError:
                raise SetupError("metrics needs prometheus-client: "
                                 "pip install 'stripe-vpn[metrics]'") from None
        driver.start()
        if config.user:
            drop_privileges(config.user)
        # Capabilities, the bounding set and no_new_privs belong to each
        # thread: the metrics server's threads start after the drop, so they
        # inherit the dropped set (a metrics port below 1024 still binds:
        # CAP_NET_BIND_SERVICE is kept).
        if config.metrics:
            metrics = MetricsServer(config.metrics, loop, driver.status)
        await driver.stopped.wait()
    finally:
        if metrics is not None:
            metrics.close()
        control.close()
        tear_down_network(network)
        driver.close()
