"""A server of several worker processes (`workers = N` in `[interface]`):
every core of the machine, one Python process each (see docs/scaling.md).

The `stripe server` process becomes the supervisor.  It carries no traffic;
it opens what must outlive a worker, starts the workers, and restarts one
that exits:

- **one TUN per worker**: worker 0's has the configured name and addresses,
  worker k's is NAME-k with routes to the `allowed_ips` of the peers k owns
  (`steering.owner_of`), so the kernel hands each worker the packets of its
  own peers only;
- **N sockets per listening link**, bound alike with SO_REUSEPORT, the
  steering program on their group (`reuseport`): a session's datagrams
  reach the worker its index names, anything else one the kernel picks;
- **a handoff inbox per worker** (a UNIX datagram socket pair): a worker
  that reads an initiation from another worker's peer passes it on there
  (`Driver._send_handoffs`).

Each worker is `stripe worker` (hidden), started with those file
descriptors; it runs the usual driver on its share of the config
(`Config.worker_share`), drops to `user`, and dies with the supervisor
(PR_SET_PDEATHSIG).  A worker that exits is started again with the same
descriptors after a back-off: its clients' sessions are gone, so they
handshake again (their silence deadline); the other workers' clients do
not notice, and the kernel keeps the dead worker's queued datagrams for
the new one.

The supervisor keeps root: a restarted worker creates its status socket in
the root-only /run/stripe before it drops privileges.  It answers `stripe
status` with the workers' figures summed (`status.merge_workers`), a
reload by validating the file, forwarding it to every worker and then
adjusting the routes, and serves the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from typing import Any

from .. import config as config_mod
from ..config import CONTROL_SOCKET_DIR, Config, ConfigError
from ..status import merge_workers
from .control_socket import ControlServer, request
from .driver import Inherited, serve
from .network import set_up_network, tear_down_network
from .path_mtu import resolve_tunnel_mtu
from .reuseport import open_group
from .sockets import listen_links
from .tun import SetupError, Tun, ip
from .undo import Undo

log = logging.getLogger("stripe")

# A worker that exits is started again after this, doubled while it keeps
# dying young (so a worker that cannot start does not spin a core).
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that lived this long starts over at RESTART_FIRST_S
STOP_GRACE_S = 5.0
WORKER_STATUS_TIMEOUT_S = 2.0
HANDOFF_BUFFER_BYTES = 1 << 20  # ~6,000 initiations queued per worker inbox
PR_SET_PDEATHSIG = 1


class Supervisor:
    def __init__(self, config: Config, log_args: tuple[str, ...] = ()) -> None:
        """`log_args`: the `stripe` options each worker's command line
        repeats (--log-level, --log-format)."""
        self.config = config
        self.log_args = log_args
        self.workers = config.workers
        mtu = resolve_tunnel_mtu(config)
        log.info("%s", mtu.explanation)
        for warning in mtu.warnings:
            log.warning("%s", warning)
        ipv6 = any(address.version == 6 for address in config.addresses)
        self.tuns: list[Tun] = []
        self.groups: list[list[socket.socket]] = []  # by listening link, then by worker
        self.inboxes: list[tuple[socket.socket, socket.socket]] = []  # (read, write) by worker
        self.routes: dict[str, int] = {}  # network -> worker whose TUN it goes to
        try:
            for k in range(self.workers):
                self.tuns.append(Tun(config.worker_tun(k), mtu.mtu,
                                     config.addresses if k == 0 else (),
                                     offload=config.offload, ipv6=ipv6))
            for link in listen_links(config):
                self.groups.append(open_group(link, config.pmtu_probe, self.workers))
            for _ in range(self.workers):
                pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for end in pair:
                    end.setblocking(False)
                pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HANDOFF_BUFFER_BYTES)
                self.inboxes.append(pair)
            self._sync_routes(config)
        except Exception:
            self.close()
            raise
        self.procs: list[asyncio.subprocess.Process | None] = [None] * self.workers
        self.restarts = [0] * self.workers
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []

    # -- the workers ------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tasks = [loop.create_task(self._keep_running(k)) for k in range(self.workers)]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_from_signal)
        log.info("server up: %d workers, tun %s .. %s, %d listening socket(s) each",
                 self.workers, self.tuns[0].name, self.tuns[-1].name, len(self.groups))

    def _descriptors(self, k: int) -> tuple[dict[str, Any], list[int]]:
        """What worker k inherits, as the JSON its command line carries, and the fds."""
        tun = self.tuns[k]
        spec = {
            "supervisor": os.getpid(),
            "tun": tun.fd, "tun_name": tun.name, "vnet_hdr": tun.vnet_hdr,
            "offload": tun.offload,
            "sockets": {str(i): group[k].fileno() for i, group in enumerate(self.groups)},
            "inbox": self.inboxes[k][0].fileno(),
            "inboxes": {str(j): self.inboxes[j][1].fileno()
                        for j in range(self.workers) if j != k},
        }
        fds = [tun.fd, self.inboxes[k][0].fileno(),
               *(group[k].fileno() for group in self.groups),
               *(self.inboxes[j][1].fileno() for j in range(self.workers) if j != k)]
        return spec, fds

    async def _keep_running(self, k: int) -> None:
        delay = RESTART_FIRST_S
        while not self.stopping.is_set():
            spec, fds = self._descriptors(k)
            argv = [sys.executable, "-m", "stripe", *self.log_args, "worker", "-c",
                    os.path.abspath(self.config.path), "--worker", str(k),
                    "--fds", json.dumps(spec)]
            born = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(*argv, pass_fds=fds,
                                                            stdin=subprocess.DEVNULL)
            except OSError as exc:
                log.error("cannot start worker %d: %s", k, exc)
                rc: int | None = None
            else:
                self.procs[k] = proc
                log.info("worker %d started (pid %d)", k, proc.pid)
                rc = await proc.wait()
                self.procs[k] = None
            if self.stopping.is_set():
                return
            lived = time.monotonic() - born
            delay = RESTART_FIRST_S if lived >= STABLE_AFTER_S else delay
            self.restarts[k] += 1
            log.warning("worker %d exited (%s) after %.1f s; starting it again in %.1f s: "
                        "its clients handshake again, the other workers' are not affected",
                        k, _exit_reason(rc), lived, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def stop(self) -> None:
        """Ask every worker to stop, wait a little, then kill what is left."""
        self.stopping.set()
        procs = [p for p in self.procs if p is not None and p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            _done, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                             timeout=STOP_GRACE_S)
            if late:
                for proc in procs:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                await asyncio.wait(late)
        for task in self._tasks:
            task.cancel()

    def close(self) -> None:
        for group in self.groups:
            for sock in group:
                sock.close()
        for pair in self.inboxes:
            for end in pair:
                end.close()
        for tun in self.tuns:
            tun.close()  # its routes go with it

    # -- routes -----------------------------------------------------------

    def _sync_routes(self, config: Config) -> list[str]:
        """Each peer's allowed_ips routed to its owner's TUN; routes of
        peers gone removed.  Returns what changed."""
        wanted: dict[str, int] = {}
        for k in range(self.workers):
            for peer in config.owned_peers(k):
                for allowed in peer.allowed_ips:
                    wanted[str(allowed)] = k
        changes = []
        for network, k in wanted.items():
            if self.routes.get(network) != k:
                ip("route", "replace", network, "dev", self.tuns[k].name)
                changes.append(f"route {network} -> worker {k}")
        for network in [n for n in self.routes if n not in wanted]:
            with contextlib.suppress(SetupError):  # gone already
                ip("route", "delete", network, "dev", self.tuns[self.routes[network]].name)
            changes.append(f"route {network} removed")
        self.routes = wanted
        return changes

    # -- status and reload --------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The workers' status, summed, with a row per worker (blocking: the
        control socket runs it in a thread; metrics on the supervisor's loop,
        which carries no traffic)."""
        replies: list[dict[str, Any] | None] = []
        rows = []
        for k in range(self.workers):
            proc = self.procs[k]
            row: dict[str, Any] = {"worker": k, "tun": self.tuns[k].name,
                                   "pid": proc.pid if proc is not None else None,
                                   "restarts": self.restarts[k]}
            try:
                reply = request(self.config.worker_control_socket(k),
                                timeout_s=WORKER_STATUS_TIMEOUT_S)
                if "error" in reply:
                    raise ValueError(reply["error"])
                row["peers"] = len(reply.get("peers", []))
                replies.append(reply)
            except (OSError, ValueError) as exc:
                row["error"] = f"no answer: {exc}"
                replies.append(None)
            rows.append(row)
        merged = merge_workers(replies)
        merged.update(role="server", tun=self.config.tun_name, workers=rows,
                      uptime_s=round(time.monotonic() - self.started, 1),
                      scheduler=self.config.scheduler)
        return merged

    async def status_request(self, _request: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, self.status)

    def _reload_from_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload({}))
        self._tasks.append(task)

    async def reload(self, req: dict[str, Any]) -> dict[str, Any]:
        """Validate the new config here, then every worker applies its share;
        then the routes follow the peers."""
        path = req.get("config") or self.config.path
        files = req.get("files")
        if not isinstance(path, str):
            return {"ok": False, "error": "reload: config must be a path"}
        loop = asyncio.get_running_loop()
        async with self._reload_lock:
            shipped: dict[str, Any] = {}
            reader = (config_mod.shipped_reader(files) if files is not None
                      else config_mod.recording_reader(shipped))
            load = partial(config_mod.load, path, self.config.role, read_file=reader)
            try:
                new = await loop.run_in_executor(None, load)
            except ConfigError as exc:
                return _failed(str(exc))
            reason = config_mod.restart_needed(self.config, new)
            if reason is not None:
                return _failed(reason)
            forward = partial(self._forward_reload, path, files if files is not None else shipped)
            results = await loop.run_in_executor(None, forward)
            changes: list[str] = []
            errors = []
            for k, result in enumerate(results):
                if result.get("ok"):
                    changes += [c for c in result.get("changes", []) if c not in changes]
                else:
                    errors.append(f"worker {k}: {result.get('error', result)}")
            try:
                changes += self._sync_routes(new)
            except SetupError as exc:
                errors.append(str(exc))
            self.config = new
            log.info("reload: %s", ", ".join(changes) or "no changes")
            if errors:
                return _failed("; ".join(errors))
            return {"ok": True, "changes": changes}

    def _forward_reload(self, path: str, files: dict[str, Any]) -> list[dict[str, Any]]:
        results = []
        for k in range(self.workers):
            try:
                results.append(request(self.config.worker_control_socket(k), "reload",
                                       timeout_s=10.0, config=path, files=files))
            except (OSError, ValueError) as exc:
                results.append({"ok": False, "error": f"no answer ({exc}); it reads the "
                                                      "file when it starts again"})
        return results


def _failed(message: str) -> dict[str, Any]:
    log.error("reload failed, still running the previous config: %s", message)
    return {"ok": False, "error": message}


def _exit_reason(rc: int | None) -> str:
    if rc is None:
        return "did not start"
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


async def supervise(config: Config, log_args: tuple[str, ...] = ()) -> None:
    """`stripe server` with workers > 1."""
    loop = asyncio.get_running_loop()
    supervisor = Supervisor(config, log_args)
    control = ControlServer(config.control_socket, {
        "status": supervisor.status_request, "reload": supervisor.reload})
    network = Undo()
    metrics = None
    try:
        try:
            await control.start(shared_dir=CONTROL_SOCKET_DIR)
        except OSError as exc:
            raise SetupError(f"cannot open control socket {config.control_socket}: {exc}") from None
        set_up_network(config, config.tun_name, network)
        supervisor.start(loop)
        if config.metrics:
            try:
                from .metrics import MetricsServer
            except ImportError:
                raise SetupError("metrics needs prometheus-client: "
                                 "pip install 'stripe-vpn[metrics]'") from None
            metrics = MetricsServer(config.metrics, loop, supervisor.status)
        await supervisor.stopping.wait()
    finally:
        await supervisor.stop()
        if metrics is not None:
            metrics.close()
        control.close()
        tear_down_network(network)
        supervisor.close()
        log.info("stopped")


# -- the worker's side -------------------------------------------------------

def inherited_from(spec_json: str) -> Inherited:
    """The descriptors a worker's command line names (see `_descriptors`).
    Only the supervisor writes that line; a wrong one is a SetupError."""
    try:
        spec = json.loads(spec_json)
        _die_with(int(spec["supervisor"]))
        tun = Tun.adopt(int(spec["tun"]), str(spec["tun_name"]), bool(spec["vnet_hdr"]),
                        str(spec["offload"]))
        sockets = {int(i): socket.socket(fileno=int(fd)) for i, fd in spec["sockets"].items()}
        inbox = socket.socket(fileno=int(spec["inbox"]))
        inboxes = {int(j): socket.socket(fileno=int(fd)) for j, fd in spec["inboxes"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise SetupError(f"worker: bad --fds from the supervisor: {exc}") from None
    for sock in [*sockets.values(), inbox, *inboxes.values()]:
        sock.setblocking(False)
    return Inherited(tun, sockets, inbox, inboxes)


def _die_with(supervisor: int) -> None:
    """SIGTERM when the supervisor dies (killed, it cannot stop us itself)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl
        raise SetupError("worker: the supervisor is gone")


class WorkerLogPrefix(logging.Filter):
    """'worker k: ' before each line (the workers share the supervisor's stderr)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.prefix = f"worker {worker}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


async def serve_worker(config: Config, worker: int, spec_json: str) -> None:
    await serve(config.worker_share(worker), inherited_from(spec_json))
