"""Per-call cost of stripe.offload and stripe.coalesce: ``python -m bench.offload_cost``.

A 64 KB IPv4 TSO super-packet (TCP timestamps, 1360-byte segments, the MSS
of a 1400-byte tunnel MTU) is split, and its segments are coalesced back;
a second batch interleaves two flows.  Both with full checksums (what
goes to a peer that does not take partial ones) and partial ones (the
pseudo-header sum only; the data path's mode between two offload ends, see
`offload`), and coalesce verifying checksums or not (the data path's mode:
the AEAD vouched for the bytes).  Prints the best of several repeats
per segment / per packet: on a shared machine the minimum is the honest
figure, the rest is other load.
"""

from __future__ import annotations

import argparse
import os
import struct
import timeit
from collections.abc import Callable
from functools import partial

from stripe import coalesce, offload

MSS = 1360
TIMESTAMPS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1, 2)


def super_packet(mss: int = MSS, sport: int = 40000, version: int = 4) -> bytes:
    """virtio header + the largest super-packet a 64 KB TSO skb makes at `mss`."""
    ip_len = 20 if version == 4 else 40
    header_len = ip_len + 20 + len(TIMESTAMPS)
    payload = os.urandom((65535 - header_len) // mss * mss)
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, 1, 1, ((20 + len(TIMESTAMPS)) // 4) << 4,
                      0x18, 502, 0, 0) + TIMESTAMPS
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, header_len + len(payload), 7, 0x4000, 64, 6,
                         0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        ip = ip[:10] + offload.checksum(ip).to_bytes(2, "big") + ip[12:]
        gso = offload.VIRTIO_NET_HDR_GSO_TCPV4
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64,
                         bytes(15) + b"\1", bytes(15) + b"\2")
        gso = offload.VIRTIO_NET_HDR_GSO_TCPV6
    vnet = offload.pack_vnet_hdr(offload.VnetHdr(
        offload.VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, header_len, mss, ip_len, 16))
    return vnet + ip + tcp + payload


def best_us(call: Callable[[], object], repeat: int, number: int) -> float:
    return min(timeit.repeat(call, repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    for version in (4, 6):
        raw = super_packet(version=version)
        segments = offload.split_tun_read(raw)
        two_flows = [s for pair in zip(segments, offload.split_tun_read(
            super_packet(sport=40001, version=version)), strict=True) for s in pair]
        assert len(coalesce.coalesce(segments)) == 1 and len(coalesce.coalesce(two_flows)) == 2
        count = len(segments)
        split = best_us(partial(offload.split_tun_read, raw), args.repeat, args.number)
        split_partial = best_us(partial(offload.split_tun_read, raw, partial=True), args.repeat,
                                args.number)
        lone = segments[0]
        written = best_us(partial(offload.partial_vnet_hdr, lone), args.repeat, args.number * 10)
        merge = best_us(partial(coalesce.coalesce, segments), args.repeat, args.number)
        unverified = best_us(partial(coalesce.coalesce, segments, verify=False), args.repeat,
                             args.number)
        mixed = best_us(partial(coalesce.coalesce, two_flows), args.repeat, args.number)
        print(f"IPv{version}: {len(raw) - 10}-byte super-packet, {count} segments of {MSS}")
        print(f"  split_tun_read  {split:8.1f} us  = {split / count:5.2f} us per segment")
        print(f"  split_tun_read, partial checksums  {split_partial:8.1f} us  = "
              f"{split_partial / count:5.2f} us per segment")
        print(f"  coalesce        {merge:8.1f} us  = {merge / count:5.2f} us per packet")
        print(f"  coalesce, unverified  {unverified:8.1f} us  = {unverified / count:5.2f} us "
              "per packet")
        print(f"  header for a lone packet (partial_vnet_hdr): {written:5.2f} us")
        print(f"  coalesce 2 flows interleaved: {mixed / (2 * count):5.2f} us per packet")


if __name__ == "__main__":
    main()
