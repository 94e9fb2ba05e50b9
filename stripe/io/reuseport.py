"""The kernel's half of worker steering (`workers = N`, see `stripe.steering`):
N sockets on one port with SO_REUSEPORT, and a classic BPF program on the
group that picks the socket of the worker a datagram's session belongs to.

The program runs on the UDP payload (the kernel skips the UDP header for
it) and returns an index into the group, in the order the sockets were
bound (the supervisor binds worker 0's first and keeps every socket open
for its whole life, so the order never changes):

- a transport message (DATA, CONTROL or DATA_COPY): the receiver index's
  top bits, which name the worker (`steering.worker_of`);
- anything else (a handshake initiation, junk): an index past the group,
  which makes the kernel fall back to its own hash of the addresses and
  ports.  A too-short datagram ends the program with 0: worker 0 drops it.

An index that names no worker (top bits >= N, forged) falls back likewise.
"""

from __future__ import annotations

import socket

from ..config import LinkConfig
from ..steering import WORKER_SHIFT
from ..wire import MessageType
from .sockets import open_link_socket
from .source_filter import Insn, encode, set_program
from .tun import SetupError

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
_LD_B_ABS, _LD_W_ABS, _RSH_K = 0x30, 0x20, 0x74
_JGE_K, _JGT_K = 0x35, 0x25
_RET_K, _RET_A = 0x06, 0x16
FALL_BACK = 0xFFFFFFFF  # past any group: the kernel's hash decides
_RECEIVER_INDEX_OFFSET = 4  # see wire: type, link id, link mask, receiver index
_TRANSPORT_FIRST = MessageType.DATA.value
_TRANSPORT_LAST = MessageType.DATA_COPY.value
assert {t.value for t in (MessageType.DATA, MessageType.CONTROL, MessageType.DATA_COPY)} == \
    set(range(_TRANSPORT_FIRST, _TRANSPORT_LAST + 1))


def program() -> list[Insn]:
    """The steering program (the same for any number of workers)."""
    return [
        (_LD_B_ABS, 0, 0, 0),                        # A = type
        (_JGE_K, 0, 4, _TRANSPORT_FIRST),            # < DATA: fall back
        (_JGT_K, 3, 0, _TRANSPORT_LAST),             # > DATA_COPY: fall back
        (_LD_W_ABS, 0, 0, _RECEIVER_INDEX_OFFSET),   # A = receiver index (big-endian)
        (_RSH_K, 0, 0, WORKER_SHIFT),                # A = its worker
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, FALL_BACK),
    ]


def open_group(link: LinkConfig, probe_pmtu: bool, count: int) -> list[socket.socket]:
    """`count` sockets for one listening link, bound alike with
    SO_REUSEPORT in worker order, the steering program on their group."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(open_link_socket(link, probe_pmtu, reuse_port=True))
        set_program(sockets[0], SO_ATTACH_REUSEPORT_CBPF, encode(program()))
    except (OSError, SetupError) as exc:
        for sock in sockets:
            sock.close()
        if isinstance(exc, SetupError):
            raise
        raise SetupError(f"link {link.name}: cannot steer datagrams to the workers "
                         f"(SO_ATTACH_REUSEPORT_CBPF): {exc.strerror or exc}") from None
    return sockets
