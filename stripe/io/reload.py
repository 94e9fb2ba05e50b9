"""Hot reload in the shell: re-read the config, open the sockets of added
links, hand the core the new spec, close the sockets that went away.

Triggered by SIGHUP (the process reads the file itself) or by `stripe
reload -c FILE`, whose "reload" request on the control socket carries the
files as root read them: after dropping to `user`, the process may no longer
be allowed to read a root-only config or key file.

Every step that can fail comes before anything changes, so a failed reload
leaves the old config running untouched and says why in one line:

1. load and validate the config (ConfigError), in a worker thread: it
   resolves host names and looks up users, which may wait on the network,
   and the tunnel must not stop while it does;
2. refuse keys that only a restart can change (`config.restart_needed`);
3. plan in the core (ReconfigError, e.g. the server's key changed);
4. open every new socket, all or none (SetupError, e.g. a port in use).

Then the core is reconfigured, new sockets are watched and, on a server,
listening sockets no longer configured are closed (a link whose return path
used one fails its next send and leaves the schedule; the client's packets
on another socket bring it back).  A client's removed links keep their
sockets until the core says they drained (`Endpoint.sockets_to_close`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

from .. import config as config_mod
from ..config import Config, ConfigError, LinkConfig, ReadFile
from ..endpoint import Endpoint
from ..reconfig import ReconfigError, Reconfiguration
from ..spec import Role
from .sockets import listen_links, open_link_sockets
from .tun import SetupError

log = logging.getLogger("stripe")


class Reloadable(Protocol):
    """What a reload needs of the running process (the driver)."""

    config: Config

    @property
    def core(self) -> Endpoint: ...

    @property
    def sockets(self) -> Mapping[int, socket.socket]: ...

    def add_socket(self, index: int, sock: socket.socket) -> None: ...

    def close_socket(self, index: int) -> None: ...

    def flush(self, now: float) -> None:
        """Drain the core's outputs (the reconfiguration may send)."""


class Reloader:
    """Applies a changed config to a running driver, one reload at a time."""

    def __init__(self, driver: Reloadable) -> None:
        self.driver = driver
        self._lock = asyncio.Lock()
        # Server: what each listening socket was opened for, by socket id.
        self._listening: dict[int, LinkConfig] = (
            dict(enumerate(listen_links(driver.config)))
            if driver.config.role is Role.SERVER else {})

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The control socket's "reload": {"config": PATH, "files": {...}} from
        `stripe reload` (files as root read them), or nothing: read from disk."""
        path, files = request.get("config"), request.get("files")
        if path is not None and not isinstance(path, str):
            return {"ok": False, "error": "reload: config must be a path"}
        if files is None:
            return await self.reload(path)
        return await self.reload(path, config_mod.shipped_reader(files))

    async def reload(self, path: str | None = None,
                     read_file: ReadFile = config_mod.read_local_file) -> dict[str, Any]:
        """Re-read the config (`path`, or the running one's) and apply it.
        Returns {"ok": True, "changes": [...]} or {"ok": False, "error": "..."}."""
        async with self._lock:
            old = self.driver.config
            load = partial(config_mod.load, path or old.path, old.role, read_file=read_file)
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, load)
            except ConfigError as exc:
                return self._failed(str(exc))
            if old.worker is not None:  # a server worker runs its share of it
                new = new.worker_share(old.worker)
            return self.apply(new)

    def apply(self, new: Config) -> dict[str, Any]:
        """Apply a loaded config (on the event loop: nothing here waits)."""
        driver = self.driver
        old = driver.config
        try:
            reason = config_mod.restart_needed(old, new)
            if reason is not None:
                raise ReconfigError(reason)
            change = driver.core.plan_reconfigure(new.endpoint_spec())
            listening, to_open, to_close, socket_changes = self._plan_sockets(new, change)
            # The sockets going away may hold a port a new one binds (see sockets).
            going = [*to_close, *(ls.link_id for ls in change.removed_links)]
            opened = open_link_sockets(to_open, old.pmtu_probe,
                                       [driver.sockets[i] for i in going if i in driver.sockets])
        except (ReconfigError, SetupError) as exc:
            return self._failed(str(exc))
        now = time.monotonic()
        driver.core.reconfigure(change, now)
        for index, sock in opened.items():
            driver.add_socket(index, sock)
        for index in to_close:
            driver.close_socket(index)
        self._listening = listening
        driver.config = new
        changes = [*change.changes, *socket_changes]
        log.info("reload: %s", ", ".join(changes) or "no changes")
        driver.flush(now)
        return {"ok": True, "changes": changes}

    def _failed(self, message: str) -> dict[str, Any]:
        if "cannot read" in message and os.geteuid() != 0:
            message += " (this process dropped root: `stripe reload -c FILE` reads as root)"
        log.error("reload failed, still running the previous config: %s", message)
        return {"ok": False, "error": message}

    def _plan_sockets(self, new: Config, change: Reconfiguration) -> tuple[
            dict[int, LinkConfig], dict[int, LinkConfig], list[int], list[str]]:
        """Server: the listening sockets afterwards, those to open and to close
        (by socket id), and what that changes.  Client: the added links'
        sockets (socket id == link id)."""
        if new.role is Role.CLIENT:
            by_name = {link.name: link for link in new.links}
            return {}, {ls.link_id: by_name[ls.name] for ls in change.added_links}, [], []
        after: dict[int, LinkConfig] = {}
        to_open: dict[int, LinkConfig] = {}
        next_id = max(self.driver.sockets, default=-1) + 1
        for link in listen_links(new):
            index = next((i for i, was in self._listening.items()
                          if i not in after and _bound_alike(was, link)), None)
            if index is None:
                index, next_id = next_id, next_id + 1
                to_open[index] = link
            after[index] = link
        to_close = [i for i in self._listening if i not in after]
        changes = [f"socket {link.name} ({link.binding}) added" for link in to_open.values()]
        changes += [f"socket {self._listening[i].name} ({self._listening[i].binding}) removed"
                    for i in to_close]
        return after, to_open, to_close, changes


def _bound_alike(a: LinkConfig, b: LinkConfig) -> bool:
    return (a.interface, a.source, a.port) == (b.interface, b.source, b.port)
