"""Coverage-guided fuzzing of stripe's receive path with atheris.

    pip install atheris
    python fuzz/fuzz_receive.py -max_total_time=300 -print_final_stats=1

One established client/server pair (in memory, fake clock) is built once.
Each input is split by its first byte: which endpoint receives it, and
whether it is sent raw or spliced over a real captured datagram (so the
fuzzer gets past the header into the authenticated paths quickly).  Any
exception escaping `receive_datagram`, any packet delivered to the TUN from
unauthenticated input, or any change of session state is a finding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from tests.core.netsim import Sim, SimLink, client_addr, ip_packet, server_addr

SIM = Sim([SimLink(), SimLink()], seed=7)
SIM.run(1.0)
SIM.run(0.5, [(SIM.now, "up", ip_packet(i)) for i in range(10)])
CAPTURED = [d for _, _, d in SIM.wire_log]
SIM.client.packets_to_deliver()
SIM.server.packets_to_deliver()


def state() -> tuple[object, ...]:
    out: list[object] = []
    for endpoint in (SIM.client, SIM.server):
        peer = endpoint.peers[0]
        session = peer.current
        assert session is not None
        out += [session.replay.highest, session.control_replay.highest,
                session.reorder.next_seq, session.local_index, peer.handshake.last_init_timestamp,
                tuple(link.path for link in peer.links.values())]
    return tuple(out)


BASELINE = state()


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    selector, body = data[0], data[1:]
    if selector & 1:
        base = CAPTURED[(selector >> 1) % len(CAPTURED)]
        offset = body[0] % len(base) if body else 0
        payload = base[:offset] + body[1:] + base[offset + max(len(body) - 1, 0):]
        if payload == base:
            return
    else:
        payload = body
    if selector & 0x80:
        SIM.client.receive_datagram(0, payload, server_addr(0), SIM.now)
    else:
        SIM.server.receive_datagram(1, payload, client_addr(1), SIM.now)
    if SIM.client.packets_to_deliver() or SIM.server.packets_to_deliver():
        raise AssertionError("unauthenticated input reached the TUN")
    SIM.client.datagrams_to_send()
    SIM.server.datagrams_to_send()
    if state() != BASELINE:
        raise AssertionError("unauthenticated input changed session state")


def report() -> None:
    print("drops by reason, client:", dict(SIM.client.drops), file=sys.stderr)
    print("drops by reason, server:", dict(SIM.server.drops), file=sys.stderr)


if __name__ == "__main__":
    import atexit

    atexit.register(report)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
