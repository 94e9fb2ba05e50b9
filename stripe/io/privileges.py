"""Become an unprivileged user, keeping exactly the capabilities stripe
still needs once its TUN, sockets and routes are in place.

What needs which capability after set-up:

- CAP_NET_ADMIN: removing the routes, rules and nftables table at exit,
  restoring the forwarding sysctl, opening link sockets on a reload;
- CAP_NET_RAW: SO_BINDTODEVICE on a link socket opened by a reload;
- CAP_NET_BIND_SERVICE: a link port or metrics port below 1024.

The sequence (capabilities(7)): drop every other capability from the
bounding set while still root (needs CAP_SETPCAP); PR_SET_KEEPCAPS so the
permitted set survives setuid; setgroups/setgid/setuid to the user; capset
permitted = effective = the kept set, inheritable empty; clear the ambient
set; PR_SET_NO_NEW_PRIVS, so nothing executed later can gain privileges.

Capabilities, the bounding set and no_new_privs belong to threads: this
runs on the main thread before any other thread lives on (the metrics
server starts after it; `network.in_thread`'s set-up threads end before
it), so every thread stripe runs has the dropped set.  (glibc's setuid
changes the ids of every thread, but a thread started before would keep a
full bounding set and no no_new_privs.)
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
from pathlib import Path

from .tun import SetupError

log = logging.getLogger("stripe")

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
KEPT_CAPABILITIES = (CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW)
CAPABILITY_NAMES = {
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_NET_RAW: "CAP_NET_RAW",
}

# <linux/capability.h> and <linux/prctl.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"dropping privileges: {what}: {os.strerror(err)}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def mask(capabilities: tuple[int, ...] | set[int]) -> int:
    return sum(1 << cap for cap in capabilities)


def _capget() -> tuple[int, int]:
    """(effective, permitted) of the calling thread, as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32)


def _capset(kept: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in range(2):
        bits = (kept >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = data[word].permitted = bits
        data[word].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one as of Linux 5.9


def drop_privileges(user: str) -> None:
    """Become `user` for good with only the capabilities above (those of
    them we hold: a container may grant fewer).  Does nothing unless root."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SetupError(f"dropping privileges: no user {user!r} on this host") from None
    _, permitted = _capget()
    kept = mask(KEPT_CAPABILITIES) & permitted
    # The bounding set limits what anything we might execute could gain;
    # without CAP_SETPCAP (some containers) it stays as it is.
    if permitted & (1 << 8):  # CAP_SETPCAP
        for cap in range(_last_cap() + 1):
            if not kept & (1 << cap):
                _prctl(PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set")
    _prctl(PR_SET_KEEPCAPS, 1, "keep capabilities across setuid")
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)  # real, effective and saved: no way back
    except OSError as exc:
        raise SetupError(f"dropping privileges: cannot become {user}: {exc.strerror}") from None
    _capset(kept)
    _prctl(PR_SET_KEEPCAPS, 0, "reset keep-capabilities")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clear ambient capabilities")
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")
    names = [name for cap, name in sorted(CAPABILITY_NAMES.items()) if kept & (1 << cap)]
    log.info("running as %s (uid %d) from here on, keeping %s", user, entry.pw_uid,
             ", ".join(names) or "no capabilities")
