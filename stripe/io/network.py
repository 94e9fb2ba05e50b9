"""Changes stripe makes to the host's network besides its TUN and sockets:
routing automation (`routes`) and NAT (`nat`), all optional, all undone.

Every change is recorded in an `Undo` (see `undo`) right after it
succeeded, together with the action that reverts it.  On exit (SIGTERM, SIGINT) and when a later
step of the set-up fails, the record is played back newest first, so what
is left of the host is what was there before stripe started.

Netlink work (pyroute2) runs in a short-lived thread of its own: pyroute2
0.9 drives its sockets with an asyncio loop of its own, which can neither
nest in the driver's running loop nor open a netlink endpoint on uvloop.
A fresh thread per call also starts with the calling thread's capabilities,
which matters after `privileges.drop_privileges` (capabilities are per
thread, and only the main thread keeps CAP_NET_ADMIN).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from ..config import Config
from .tun import SetupError
from .undo import Undo

log = logging.getLogger("stripe")

T = TypeVar("T")


def in_thread(work: Callable[[], T]) -> T:
    """Run `work` in a new thread and wait for it (see the module docstring
    for why); its exception, if any, is raised here."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="stripe-netlink")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def wanted(config: Config) -> bool:
    return config.route_all or config.link_routes or bool(config.masquerade)


def set_up_network(config: Config, tun_name: str, undo: Undo) -> None:
    """Apply what the config asks for, recording each change in `undo`.
    Raises SetupError with one line; the caller rolls `undo` back."""
    if not wanted(config):
        return
    try:
        from pyroute2.netlink.exceptions import NetlinkError

        from . import nat, routes  # pyroute2 is only needed when asked for
    except ImportError:
        raise SetupError("route_all, link_routes and masquerade need pyroute2: "
                         "pip install 'stripe-vpn[routing]'") from None

    def work() -> None:
        if config.route_all or config.link_routes:
            routes.set_up(config, tun_name, undo)
        if config.masquerade:
            nat.set_up(config, tun_name, undo)

    try:
        in_thread(work)
    except SetupError:
        raise
    except (OSError, NetlinkError) as exc:  # a dump or lookup the kernel refused
        raise SetupError(f"network set-up failed: {exc}") from None


def tear_down_network(undo: Undo) -> None:
    if len(undo):
        in_thread(undo.rollback)
