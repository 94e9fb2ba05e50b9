"""The kernel's worker steering (stripe/io/reuseport.py): its classic BPF
program run by a small interpreter with the kernel's semantics for a
reuseport program (offset 0 is the UDP payload; a load past the end ends
the program with 0; an index past the group means "use the hash").  The
kernel runs it in tests/integration/test_workers.py."""

from __future__ import annotations

import struct

from stripe import steering
from stripe.io import reuseport as rp
from stripe.wire import MessageType


def select(payload: bytes) -> int:
    a = pc = 0
    insns = rp.program()
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code in (rp._LD_B_ABS, rp._LD_W_ABS):
            size = 1 if code == rp._LD_B_ABS else 4
            if k + size > len(payload):
                return 0
            a = int.from_bytes(payload[k:k + size], "big")
        elif code == rp._RSH_K:
            a >>= k
        elif code in (rp._JGE_K, rp._JGT_K):
            pc += jt if (a >= k if code == rp._JGE_K else a > k) else jf
        elif code == rp._RET_K:
            return k
        elif code == rp._RET_A:
            return a
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def transport(mtype: int, receiver: int) -> bytes:
    return struct.pack("!BBHIQIIH", mtype, 0, 0, receiver, 7, 1, 2, 0) + bytes(40)


def test_transport_messages_go_to_the_worker_their_index_names() -> None:
    for mtype in (MessageType.DATA, MessageType.CONTROL, MessageType.DATA_COPY):
        for worker in range(steering.MAX_WORKERS):
            index = steering.session_index(worker, 0x0ABCDEF1)
            assert select(transport(mtype, index)) == worker


def test_everything_else_falls_back_to_the_kernels_hash() -> None:
    initiation = bytes([MessageType.HANDSHAKE_INIT]) + bytes(147)
    assert select(initiation) == rp.FALL_BACK
    assert select(bytes([MessageType.COOKIE_REPLY]) + bytes(63)) == rp.FALL_BACK
    assert select(bytes([0]) + bytes(63)) == rp.FALL_BACK
    assert select(bytes([7]) + bytes(63)) == rp.FALL_BACK
    assert select(bytes([255]) + bytes(63)) == rp.FALL_BACK


def test_a_datagram_too_short_for_an_index_goes_to_worker_zero() -> None:
    assert select(bytes([MessageType.DATA, 0, 0])) == 0
    assert select(b"") == 0


def test_known_answer_program() -> None:
    """The bytes the kernel gets, pinned: a change here is a change of protocol."""
    assert rp.encode(rp.program()).hex() == (
        "300000000000000035000004040000002500030006000000"
        "200000000400000074000000" + "1c000000" +
        "1600000000000000" + "06000000ffffffff")
