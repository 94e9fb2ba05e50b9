"""The attacker of ``python -m bench attack``, and the capture it replays from.

Run inside a lab namespace (``python -m bench.attack.flood ...``):

* ``capture --port P --count N --seconds S [--iface IF]``: the UDP payloads
  of up to N datagrams arriving at port P (AF_PACKET, cooked, so any
  interface's frames start at the IP header), printed as one comma-separated
  hex line. Bounded by N and S.
* ``send SPEC.json``: floods one UDP target with a mix of datagram kinds,
  bounded in packets AND time, and prints one JSON line with what it sent
  per kind (and its elapsed time) when it stops: at its time budget, at its
  packet budget, or on SIGTERM, whichever comes first.

The kinds, all built before the first send so the loop only sends:

* ``replay``: captured real datagrams of the client, byte for byte;
* ``forged``: a captured transport header (a live session's receiver index)
  with a counter ahead of the client's and random ciphertext of the original
  length: it passes the replay window and costs the server an AEAD attempt;
* ``malformed``: random first byte and random bytes, 0..63 long: short,
  unknown types, unknown sessions, broken handshakes;
* ``init``: handshake initiations with a valid mac1 from a key the server
  does not know (built by the caller, who has the server's public key):
  they pass the cheap check and force the rate limiter / cookie path.

With ``sources`` > 0 in the spec, the datagrams leave from that many
spoofed IPv4 addresses in SPOOFED_NET, ``source_burst`` from each in a row,
then the next (a raw socket:
the kernel fills in the IP total length, id and checksum; the UDP checksum
is 0, which IPv4 allows), so the server's guard and kernel filter have that
many sources to block; the bench routes SPOOFED_NET back to the attacker.

This module imports only the standard library (it starts in a fresh
interpreter in the attacker's namespace, and its start-up is on the clock).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

KINDS = ("replay", "forged", "malformed", "init")
DEFAULT_MIX = {"replay": 1, "forged": 1, "malformed": 1, "init": 1}
# One round = each kind's weight x this many datagrams; time, packet budget
# and pacing are checked once per round, not per datagram.
ROUND_REPEAT = 8
ROUNDS_PREBUILT = 64  # distinct rounds, cycled: pools are walked, not repeated
MALFORMED_MAX_BYTES = 64
# Forged counters land this far ahead of the captured one: inside no window
# yet (the client has not sent them), so the replay check passes.
FORGED_COUNTER_AHEAD = (1 << 20, 1 << 30)

# stripe's transport header (stripe.wire.TRANSPORT_HEADER, "!BBHIQIIH"): the
# fields the forger rewrites. Kept here, checked against stripe's in the
# tests, so the attacker stays a stdlib-only program.
TRANSPORT_HEADER = struct.Struct("!BBHIQIIH")
DATA_TYPE = 4
AEAD_TAG_BYTES = 16

SPOOFED_NET = "10.100.0.0/16"
MAX_SPOOFED_SOURCES = 65_000
SPOOFED_SPORT = 40_000

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
IPPROTO_UDP = 17
UDP_HEADER_BYTES = 8


def parse_mix(text: str) -> dict[str, int]:
    """``"replay:4,init:1"`` -> weights per kind (unnamed kinds: 0);
    ValueError with the reason on anything else."""
    mix = dict.fromkeys(KINDS, 0)
    for part in text.split(","):
        name, sep, weight = part.strip().partition(":")
        if name not in mix:
            raise ValueError(f"{name!r} is not one of {', '.join(KINDS)}")
        if not sep or not weight.strip().isdigit():
            raise ValueError(f"{part.strip()!r}: expected KIND:WEIGHT, e.g. replay:2")
        mix[name] = int(weight)
    if not any(mix.values()):
        raise ValueError("every weight is 0: nothing to send")
    return mix


def udp_payload(packet: bytes, port: int) -> bytes | None:
    """The payload of an IPv4 UDP ``packet`` sent to ``port``, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != IPPROTO_UDP:
        return None
    ihl = (packet[0] & 15) * 4
    udp = packet[ihl:]
    if len(udp) < UDP_HEADER_BYTES or int.from_bytes(udp[2:4], "big") != port:
        return None
    return udp[UDP_HEADER_BYTES:]


def forge(captured: bytes, rng: random.Random) -> bytes | None:
    """A transport datagram with ``captured``'s header, a counter far ahead
    and random ciphertext; None when ``captured`` is no data datagram."""
    if len(captured) < TRANSPORT_HEADER.size + AEAD_TAG_BYTES or captured[0] != DATA_TYPE:
        return None
    mtype, link_id, mask, receiver, counter, link_seq, sent_us, flow_gap = (
        TRANSPORT_HEADER.unpack_from(captured))
    ahead = rng.randrange(*FORGED_COUNTER_AHEAD)
    header = TRANSPORT_HEADER.pack(
        mtype,
        link_id,
        mask,
        receiver,
        (counter + ahead) & 0xFFFF_FFFF_FFFF_FFFF,
        (link_seq + ahead) & 0xFFFF_FFFF,
        sent_us,
        flow_gap,
    )
    return header + rng.randbytes(len(captured) - TRANSPORT_HEADER.size)


def malformed(rng: random.Random) -> bytes:
    """Random bytes, 0..MALFORMED_MAX_BYTES-1 long: never a whole valid message."""
    return rng.randbytes(rng.randrange(MALFORMED_MAX_BYTES))


def pools(
    replays: Sequence[bytes], inits: Sequence[bytes], rng: random.Random, size: int = 256
) -> dict[str, list[bytes]]:
    """The datagrams of each kind; a kind without material gets an empty pool."""
    forged = [d for d in (forge(c, rng) for c in replays) if d is not None]
    while forged and len(forged) < size:
        forged += [d for d in (forge(c, rng) for c in replays) if d is not None]
    return {
        "replay": list(replays),
        "forged": forged[:size],
        "malformed": [malformed(rng) for _ in range(size)],
        "init": list(inits),
    }


@dataclass
class Plan:
    """Rounds of datagrams, each round the same count per kind."""

    rounds: list[list[bytes]]
    kinds: list[list[int]]  # per round, the KINDS index of each datagram
    per_round: dict[str, int]
    round_bytes: list[dict[str, int]]

    @property
    def round_len(self) -> int:
        return sum(self.per_round.values())


def plan(mix: dict[str, int], material: dict[str, list[bytes]]) -> Plan:
    """Interleave the kinds by weight; kinds with weight 0 or no material drop out."""
    active = {k: w for k, w in mix.items() if w > 0 and material.get(k)}
    if not active:
        raise ValueError(f"nothing to send: mix {mix}, material {sorted(material)}")
    cursor = dict.fromkeys(active, 0)
    rounds: list[list[bytes]] = []
    kinds: list[list[int]] = []
    round_bytes: list[dict[str, int]] = []
    for _ in range(ROUNDS_PREBUILT):
        datagrams: list[bytes] = []
        which: list[int] = []
        sizes = dict.fromkeys(active, 0)
        # The kinds interleaved within the round (weight w: w in a row, then
        # the next kind), so the server sees the mix at every instant.
        for _ in range(ROUND_REPEAT):
            for kind, weight in active.items():
                pool = material[kind]
                for _ in range(weight):
                    data = pool[cursor[kind] % len(pool)]
                    cursor[kind] += 1
                    datagrams.append(data)
                    which.append(KINDS.index(kind))
                    sizes[kind] += len(data)
        rounds.append(datagrams)
        kinds.append(which)
        round_bytes.append(sizes)
    per_round = {k: w * ROUND_REPEAT for k, w in active.items()}
    return Plan(rounds, kinds, per_round, round_bytes)


@dataclass
class FloodResult:
    sent: dict[str, int] = field(default_factory=dict)  # datagrams the kernel accepted
    payload_bytes: dict[str, int] = field(default_factory=dict)  # UDP payload bytes of those
    errors: dict[str, int] = field(default_factory=dict)  # sendto refused (ENOBUFS, ...)
    elapsed_s: float = 0.0  # first send to last
    stopped_by: str = ""  # "time" | "packets" | "signal"

    def to_json(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "bytes": self.payload_bytes,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_by": self.stopped_by,
        }


def spoofed_sources(count: int) -> list[bytes]:
    """`count` packed addresses in SPOOFED_NET (10.100.0.1 onwards)."""
    if not 1 <= count <= MAX_SPOOFED_SOURCES:
        raise ValueError(f"spoofed sources: 1..{MAX_SPOOFED_SOURCES}, not {count}")
    return [bytes([10, 100, (i + 1) >> 8, (i + 1) & 0xFF]) for i in range(count)]


class SpoofingSender:
    """``sendto`` like a UDP socket's, ``burst`` datagrams from each of
    ``sources`` in turn (IPv4 + UDP headers built here, raw socket)."""

    def __init__(self, sources: Sequence[bytes], target: tuple[str, int],
                 burst: int = 1) -> None:
        # IPPROTO_RAW implies IP_HDRINCL: we write the IP header.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        dst = socket.inet_aton(target[0])
        self._headers = [struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, IPPROTO_UDP, 0,
                                     src, dst) for src in sources]
        self._burst = max(1, burst)
        self._sent = 0

    def sendto(self, data: bytes, target: tuple[str, int]) -> int:
        header = self._headers[self._sent // self._burst % len(self._headers)]
        self._sent += 1
        udp = struct.pack("!HHHH", SPOOFED_SPORT, target[1], UDP_HEADER_BYTES + len(data), 0)
        return self.sock.sendto(header + udp + data, (target[0], 0))

    def close(self) -> None:
        self.sock.close()


class _Stop:
    """Set by SIGTERM; the send loop looks once per round."""

    requested = False

    @classmethod
    def handler(cls, _signum: int, _frame: FrameType | None) -> None:
        cls.requested = True


def send(
    sock: socket.socket | SpoofingSender,
    target: tuple[str, int],
    flood: Plan,
    budget_s: float,
    max_packets: int,
    pps: float = 0.0,
) -> FloodResult:
    """Send rounds of ``flood`` to ``target`` until ``budget_s`` has passed,
    ``max_packets`` would be exceeded, or SIGTERM; ``pps`` > 0 paces the
    rounds to that many datagrams per second (0: as fast as possible)."""
    result = FloodResult(
        dict.fromkeys(flood.per_round, 0),
        dict.fromkeys(flood.per_round, 0),
        dict.fromkeys(flood.per_round, 0),
    )
    errors = [0] * len(KINDS)
    max_rounds = max_packets // flood.round_len
    sendto = sock.sendto
    n_rounds = len(flood.rounds)
    round_s = flood.round_len / pps if pps > 0 else 0.0
    start = time.monotonic()
    end = start + budget_s
    done = 0
    result.stopped_by = "packets"
    while done < max_rounds:
        now = time.monotonic()
        if now >= end:
            result.stopped_by = "time"
            break
        if _Stop.requested:
            result.stopped_by = "signal"
            break
        if round_s:
            due = start + done * round_s
            if due > now:
                time.sleep(min(due - now, end - now))
                continue
        i = done % n_rounds
        for kind, data in zip(flood.kinds[i], flood.rounds[i], strict=True):
            try:
                sendto(data, target)
            except OSError:
                errors[kind] += 1
        for name, count in flood.per_round.items():
            result.sent[name] += count
            result.payload_bytes[name] += flood.round_bytes[i][name]
        done += 1
    result.elapsed_s = time.monotonic() - start
    for name, per in flood.per_round.items():
        failed = errors[KINDS.index(name)]
        # A refused datagram's bytes: the kind's mean size (the loop does not
        # track which datagram failed; refusals are rare).
        mean_bytes = result.payload_bytes[name] // max(1, done * per)
        result.errors[name] = failed
        result.sent[name] -= failed
        result.payload_bytes[name] -= failed * mean_bytes
    return result


@dataclass(frozen=True)
class Spec:
    """What ``send`` is told, as a JSON file written by the bench."""

    target: tuple[str, int]
    replays: list[bytes]
    inits: list[bytes]
    mix: dict[str, int]
    budget_s: float
    max_packets: int
    pps: float = 0.0
    seed: int = 0
    sources: int = 0  # spoofed source addresses; 0: the attacker's own
    source_burst: int = 1  # datagrams from each spoofed source in a row

    def to_json(self) -> str:
        return json.dumps(
            {
                "target": list(self.target),
                "replays": [d.hex() for d in self.replays],
                "inits": [d.hex() for d in self.inits],
                "mix": self.mix,
                "budget_s": self.budget_s,
                "max_packets": self.max_packets,
                "pps": self.pps,
                "seed": self.seed,
                "sources": self.sources,
                "source_burst": self.source_burst,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Spec:
        raw = json.loads(text)
        host, port = raw["target"]
        return cls(
            (str(host), int(port)),
            [bytes.fromhex(h) for h in raw["replays"]],
            [bytes.fromhex(h) for h in raw["inits"]],
            {str(k): int(v) for k, v in raw["mix"].items()},
            float(raw["budget_s"]),
            int(raw["max_packets"]),
            float(raw["pps"]),
            int(raw["seed"]),
            int(raw.get("sources", 0)),
            int(raw.get("source_burst", 1)),
        )


def capture(port: int, count: int, seconds: float, iface: str | None = None) -> list[bytes]:
    """UDP payloads of up to ``count`` datagrams arriving at ``port`` within ``seconds``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    if iface:
        sock.bind((iface, 0))
    sock.settimeout(0.2)
    out: list[bytes] = []
    end = time.monotonic() + seconds
    while len(out) < count and time.monotonic() < end:
        try:
            packet, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[2] == PACKET_OUTGOING:
            continue
        payload = udp_payload(packet, port)
        if payload is not None:
            out.append(payload)
    sock.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack.flood", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="print captured UDP payloads as comma-separated hex")
    cap.add_argument("--port", type=int, required=True)
    cap.add_argument("--count", type=int, required=True)
    cap.add_argument("--seconds", type=float, required=True)
    cap.add_argument("--iface", default=None)
    snd = sub.add_parser("send", help="flood as SPEC.json says; print what was sent as JSON")
    snd.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    if args.command == "capture":
        print(",".join(d.hex() for d in capture(args.port, args.count, args.seconds, args.iface)))
        return 0
    spec = Spec.from_json(args.spec.read_text())
    signal.signal(signal.SIGTERM, _Stop.handler)
    flood = plan(spec.mix, pools(spec.replays, spec.inits, random.Random(spec.seed)))
    sock: socket.socket | SpoofingSender
    if spec.sources:
        sock = SpoofingSender(spoofed_sources(spec.sources), spec.target, spec.source_burst)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("ready", flush=True)
    result = send(sock, spec.target, flood, spec.budget_s, spec.max_packets, spec.pps)
    sock.close()
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
