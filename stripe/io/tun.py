"""Open and configure the TUN device (python-pytun, IFF_TUN | IFF_NO_PI).

With offload on, the device is opened with IFF_VNET_HDR and TUNSETOFFLOAD
(checksum + TSO, + UDP segmentation where the kernel has it): every read
and write then carries a 10-byte virtio_net_hdr, and the kernel hands over
TCP super-packets of up to 64 KB instead of one MTU-sized packet per read
(see `stripe.offload` for what is done with them).  A kernel that refuses
any of it gets the plain device; `offload` says which one is in use.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess

import pytun

# <linux/if_tun.h>
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20  # Linux 6.2+
TUN_F_USO6 = 0x40
TCP_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN


class SetupError(Exception):
    """The system refused something the config asked for."""


class Tun:
    def __init__(self, name: str, mtu: int,
                 addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...],
                 offload: bool = False, ipv6: bool | None = None) -> None:
        """`ipv6`: whether the tunnel carries IPv6 (default: if an address
        is IPv6; a worker's TUN has no address but routes)."""
        # What the device does; "off: <why>" when the plain device is in use.
        self.offload = "off: disabled in the config"
        self.vnet_hdr = False
        self._dev: pytun.TunTapDevice | None = _open(name, vnet_hdr=offload)
        if offload:
            flags = _enable_offloads(self._dev.fileno())
            if flags:
                self.vnet_hdr = True
                self.offload = _describe(flags)
            else:
                self.offload = "off: the kernel refused TUNSETOFFLOAD"
                self._dev.close()
                self._dev = _open(name, vnet_hdr=False)
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        try:
            self._dev.mtu = mtu
            if not (any(address.version == 6 for address in addresses) if ipv6 is None
                    else ipv6):
                # No IPv6 in the tunnel: keep the kernel from sending router
                # solicitations and multicast reports from a link-local address
                # through it (the peer would drop them as unroutable).
                _disable_ipv6(self.name)
            for address in addresses:
                ip("addr", "add", str(address), "dev", self.name)
            self._dev.up()
        except (pytun.Error, SetupError) as exc:
            self.close()
            raise SetupError(f"cannot configure TUN device {name!r}: {exc}") from None
        os.set_blocking(self.fd, False)

    @classmethod
    def adopt(cls, fd: int, name: str, vnet_hdr: bool, offload: str) -> Tun:
        """A device another process opened and configured (a server worker
        gets its TUN from the supervisor, which keeps it open: routes stay
        when a worker restarts)."""
        tun = cls.__new__(cls)
        tun._dev = None
        tun.name, tun.fd, tun.vnet_hdr, tun.offload = name, fd, vnet_hdr, offload
        os.set_blocking(fd, False)
        return tun

    def close(self) -> None:
        if self._dev is None:
            os.close(self.fd)
        else:
            self._dev.close()  # a non-persistent TUN disappears with its last fd


def _open(name: str, vnet_hdr: bool) -> pytun.TunTapDevice:
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        raise SetupError(
            f"cannot create TUN device {name!r}: {exc} "
            "(needs root or CAP_NET_ADMIN and /dev/net/tun; is the name in use?)"
        ) from None


def _enable_offloads(fd: int) -> int:
    """The TUNSETOFFLOAD flags the kernel accepted (0: none).  UDP
    segmentation first, then TCP only (kernels before 6.2 refuse USO)."""
    for flags in (TCP_OFFLOADS | TUN_F_USO4 | TUN_F_USO6, TCP_OFFLOADS):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
            return flags
        except OSError:
            continue
    return 0


def _describe(flags: int) -> str:
    names = [("csum", TUN_F_CSUM), ("tso4", TUN_F_TSO4), ("tso6", TUN_F_TSO6),
             ("tso_ecn", TUN_F_TSO_ECN), ("uso4", TUN_F_USO4), ("uso6", TUN_F_USO6)]
    return "vnet_hdr " + ",".join(name for name, bit in names if flags & bit)


def _disable_ipv6(name: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass  # no IPv6 in this kernel: nothing to disable


def ip(*args: str) -> None:
    """`ip ARGS`, or SetupError with its message."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SetupError(f"ip {' '.join(args)}: {result.stderr.strip()}")
