"""The kernel filter's program (stripe/io/source_filter.py), run by a small
classic BPF interpreter here; the kernel runs it in
tests/integration/test_source_filter.py.  And the bookkeeping around it:
changes batched into few rebuilds, blocks summed up in few log lines."""

from __future__ import annotations

import ipaddress
import random
import struct

from stripe.io import source_filter as sf

HANDSHAKE_INIT, DATA = 1, 4


def run(insns: list[sf.Insn], net: bytes, payload: bytes,
        rng: random.Random | None = None) -> int:
    """What a classic BPF socket filter returns for a UDP datagram: `net` is
    its IP header, the program sees the UDP header at offset 0; `rng` stands
    in for the kernel's prandom."""
    transport = bytes(8) + payload
    a = x = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if (code, jt, jf, k) == sf._LD_RANDOM:
            a = (rng or random.Random(0)).getrandbits(32)
        elif code in (sf._LD_B_ABS, sf._LD_W_ABS):
            size = 1 if code == sf._LD_B_ABS else 4
            offset = k - 2**32 if k >= 2**31 else k
            data, at = (net, offset - sf.SKF_NET_OFF) if offset < 0 else (transport, offset)
            if at + size > len(data):
                return 0
            a = int.from_bytes(data[at:at + size], "big")
        elif code == sf._RSH_K:
            a >>= k
        elif code == sf._LDX_IMM:
            x = k
        elif code == sf._TXA:
            a = x
        elif code == sf._MOD_K:
            a %= k
        elif code == sf._JA:
            pc += k
        elif code in (sf._JGT_K, sf._JGE_K, sf._JEQ_K):
            taken = {sf._JGT_K: a > k, sf._JGE_K: a >= k, sf._JEQ_K: a == k}[code]
            pc += jt if taken else jf
        elif code == sf._RET_K:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def ipv4_header(source: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, 0, 0, 64, 17, 0,
                       ipaddress.IPv4Address(source).packed, bytes([10, 0, 0, 1]))


def ipv6_header(source: str) -> bytes:
    destination = ipaddress.IPv6Address("fd00::1").packed
    return struct.pack("!IHBB16s16s", 6 << 28, 40, 17, 64, ipaddress.IPv6Address(source).packed,
                       destination)


def passes(insns: list[sf.Insn], source: str, first_byte: int = DATA,
           rng: random.Random | None = None) -> bool:
    net = ipv6_header(source) if ":" in source else ipv4_header(source)
    return run(insns, net, bytes([first_byte]) + bytes(40), rng) != 0


def v4(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + i * 7919))


def test_every_blocked_source_is_dropped_and_no_other() -> None:
    rng = random.Random(1)
    blocked4 = [v4(i) for i in range(1500)]
    blocked6 = [f"fd{rng.randrange(16):02x}:{rng.randrange(3)}:{rng.randrange(9)}:{i}::/64"
                for i in range(300)]
    insns = sf.program([sf.parse(key) for key in blocked4 + blocked6])  # type: ignore[misc]
    assert len(insns) <= sf.BPF_MAXINSNS
    assert insns[-1][0] == sf._RET_K
    for host in [*blocked4[::37], blocked4[-1]]:
        assert not passes(insns, host)
        assert passes(insns, host, HANDSHAKE_INIT)  # handshakes always pass
        assert not passes(insns, host, 0)
    for prefix in [*blocked6[::11], blocked6[-1]]:
        network = ipaddress.IPv6Network(prefix)
        assert not passes(insns, str(network[1]))
        assert not passes(insns, str(network[-1]))  # the whole /64
        assert passes(insns, str(network[1]), HANDSHAKE_INIT)
    assert passes(insns, v4(5000))
    assert passes(insns, "10.0.0.1")
    assert passes(insns, "fd00:0:0:1::1")  # not one of the /64s (each has a 4th word >= 0)
    assert passes(insns, str(ipaddress.IPv6Network(blocked6[0]).network_address + 2**64))


def test_ipv4_only_ipv6_only_and_empty_halves() -> None:
    only4 = sf.program([sf.parse("192.0.2.1")])  # type: ignore[list-item]
    assert not passes(only4, "192.0.2.1") and passes(only4, "192.0.2.2")
    assert passes(only4, "fd00::1")
    only6 = sf.program([sf.parse("2001:db8::/64")])  # type: ignore[list-item]
    assert not passes(only6, "2001:db8::99") and passes(only6, "2001:db8:0:1::99")
    assert passes(only6, "192.0.2.1")
    assert sf.parse("not an address") is None and sf.parse("2001:db8::/48") is None


def test_a_blocked_sources_datagrams_are_sampled() -> None:
    """One in `handshake_sample` handshakes from a blocked source passes
    (at random), and one in OTHERS_SAMPLE of its other datagrams (what
    keeps its block); everything from other sources passes."""
    rng = random.Random(3)
    keys = [v4(i) for i in range(200)] + ["2001:db8:1:2::/64"]
    insns = sf.program([sf.parse(k) for k in keys], handshake_sample=8)  # type: ignore[misc]
    for host in (v4(3), v4(150), "2001:db8:1:2::9"):
        passed = sum(passes(insns, host, HANDSHAKE_INIT, rng) for _ in range(4000))
        assert 400 <= passed <= 600, (host, passed)  # ~500
        passed = sum(passes(insns, host, DATA, rng) for _ in range(64_000))
        assert 850 <= passed <= 1150, (host, passed)  # ~1,000
    assert all(passes(insns, v4(5000), HANDSHAKE_INIT, rng) for _ in range(100))
    assert all(passes(insns, v4(5000), DATA, rng) for _ in range(100))
    unsampled = sf.program([sf.parse(v4(3))])  # type: ignore[list-item]
    assert all(passes(unsampled, v4(3), HANDSHAKE_INIT, rng) for _ in range(100))
    assert sf.OTHERS_SAMPLE == 64


def test_the_sample_follows_the_rate_of_blocked_handshakes() -> None:
    """The core saw 20,000 handshakes a second from blocked sources: the
    ratio grows until they come under the ceiling; when the flood ends it
    falls back to 1, and each change asks for a rebuild."""
    filters = sf.SourceFilter()
    filters.update(["192.0.2.1"], [])
    assert filters.rebuild(0.0)[0]
    assert filters.handshake_sample == 1
    seen, t, offered = 0, 0.0, 20_000
    for _ in range(6):
        t += 1.0
        seen += round(offered / filters.handshake_sample)
        filters.note_handshakes(seen, t)
        filters.rebuild(t)
    assert offered / filters.handshake_sample <= sf.BLOCKED_HANDSHAKES_PER_S
    assert filters.handshake_sample <= 2 * offered / sf.BLOCKED_HANDSHAKES_PER_S
    for _ in range(3):  # the flood is over
        t += 1.0
        filters.note_handshakes(seen, t)
        filters.rebuild(t)
    assert filters.handshake_sample == 1
    assert filters.next_due() is not None  # still looking while sources are blocked


def test_too_many_for_one_program_keeps_the_newest() -> None:
    filters = sf.SourceFilter()
    keys = [v4(i) for i in range(5000)]
    filters.update(keys, [])
    rebuilt, code = filters.rebuild(0.0)
    assert rebuilt and code is not None
    assert len(code) // 8 <= sf.BPF_MAXINSNS
    assert 3900 < filters.filtered < 4096
    insns = [struct.unpack_from("=HBBI", code, i) for i in range(0, len(code), 8)]
    assert not passes(insns, keys[-1])  # the newest block is in the kernel
    assert passes(insns, keys[0])  # the oldest is dropped after reading


def test_four_thousand_fit_with_larger_leaves_and_few_use_short_ones() -> None:
    """4,000 blocked sources all fit in one program (its leaves grow to
    255 values); 1,000 use leaves of 64, so a datagram from a source not
    blocked runs few instructions."""
    for n, most in ((4000, sf.BPF_MAXINSNS), (1000, 1100)):
        keys = [v4(i) for i in range(n)]
        filters = sf.SourceFilter()
        filters.update(keys, [])
        _rebuilt, code = filters.rebuild(0.0)
        assert code is not None and filters.filtered == n
        assert len(code) // 8 <= most
        insns = [struct.unpack_from("=HBBI", code, i) for i in range(0, len(code), 8)]
        assert not any(passes(insns, k) for k in keys[::97])
        assert passes(insns, v4(n + 1))


def test_changes_are_batched_into_few_rebuilds() -> None:
    filters = sf.SourceFilter()
    interval = 1.0 / sf.MAX_REBUILDS_PER_S
    filters.update(["192.0.2.1"], [])
    assert filters.next_due() is not None
    assert filters.rebuild(5.0)[0]  # the first change goes at once
    rebuilds = 0
    for i in range(200):  # 200 changes in one second
        now = 5.0 + 0.005 * (i + 1)
        filters.update([v4(i)], ["192.0.2.1"] if i == 10 else [])
        rebuilt, _code = filters.rebuild(now)
        rebuilds += rebuilt
    assert rebuilds == int(1.0 / interval)
    filters.update(["192.0.2.7"], [])
    filters.summary(6.0)  # (the log's turn comes later)
    due = filters.next_due()
    assert due is not None and 6.0 < due <= 6.0 + interval
    assert not filters.rebuild(due - 0.01)[0]
    assert filters.rebuild(due)[0]
    assert not filters.rebuild(due + 10)[0]  # nothing changed since
    # A block a handshake lifted goes to the kernel at once, turn or not.
    filters.update([], [v4(7)], urgent=True)
    assert filters.next_due() == float("-inf")
    assert filters.rebuild(due + 10.01)[0]
    filters.update([], [v4(i) for i in range(200)] + ["192.0.2.7"])
    rebuilt, code = filters.rebuild(due + 20)
    assert rebuilt and code is None  # nothing blocked: the filter comes off
    filters.update([], ["198.51.100.1"])  # never blocked: no change
    assert not filters.rebuild(due + 30)[0]


def test_blocks_are_summed_up_once_per_interval() -> None:
    filters = sf.SourceFilter()
    lines = []
    for i in range(300):  # a block every 0.1 s for 30 s
        filters.update([v4(i)], [])
        line = filters.summary(100.0 + i / 10)
        if line is not None:
            lines.append(line)
    assert len(lines) == 3  # the first block at once, then one line per interval
    assert lines[0].startswith("source guard: 1 source blocked (e.g. ")
    assert "source guard: 100 sources blocked in the last 10 s" in lines[1]
    assert f"e.g. {v4(1)}, {v4(2)}, {v4(3)})" in lines[1]
    assert "101 blocked now" in lines[1]
    assert filters.summary(129.9) is None
    last = filters.summary(130.0)
    assert last is not None and "99 sources blocked" in last
    assert filters.summary(150.0) is None  # nothing new
