"""Open and configure the TUN device (python-pytun, IFF_TUN | IFF_NO_PI)."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytun


class SetupError(Exception):
    """The system refused something the config asked for."""


class Tun:
    def __init__(self, name: str, mtu: int,
                 addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]) -> None:
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise SetupError(
                f"cannot create TUN device {name!r}: {exc} "
                "(needs root or CAP_NET_ADMIN and /dev/net/tun; is the name in use?)"
            ) from None
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        try:
            self._dev.mtu = mtu
            if not any(address.version == 6 for address in addresses):
                # No IPv6 in the tunnel: keep the kernel from sending router
                # solicitations and multicast reports from a link-local address
                # through it (the peer would drop them as unroutable).
                _disable_ipv6(self.name)
            for address in addresses:
                _ip("addr", "add", str(address), "dev", self.name)
            self._dev.up()
        except (pytun.Error, SetupError) as exc:
            self.close()
            raise SetupError(f"cannot configure TUN device {name!r}: {exc}") from None
        os.set_blocking(self.fd, False)

    def close(self) -> None:
        self._dev.close()  # a non-persistent TUN disappears with its last fd


def _disable_ipv6(name: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass  # no IPv6 in this kernel: nothing to disable


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SetupError(f"ip {' '.join(args)}: {result.stderr.strip()}")
