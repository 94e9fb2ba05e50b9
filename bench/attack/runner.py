"""``python -m bench attack``: throughput and server CPU under attack (issue 5).

Topology (prefix ``sa`` + 4 hex digits; ``python -m bench cleanup sa<hex>``
removes a killed run's leftovers):

* the bench's ``local`` lab (:mod:`bench.lab`): client ``<p>cli`` and server
  ``<p>srv`` joined by ``--links`` veth pairs, link i 10.i.0.1/30 - .2, tbf
  ``--rate`` Mbit/s on both ends' egress (default 2 x 50 Mbit/s: the test is
  whether the server keeps up, not whether the attacker starves a 2-core
  machine of CPU). UDP segmentation offload is off on the client's veths so
  the server side sees (and the capture records) real datagrams, as behind
  most NICs;
* an attacker namespace ``<p>atk`` with its own unshaped veth to the server
  (``<p>av`` 10.99.0.1/30 - ``<p>aw`` 10.99.0.2/30).

The stripe server listens on one wildcard UDP port (5000, no ``[[link]]``),
so the client's links and the attacker reach the same socket. The tunnel
stays up for the whole run: one session, so captured datagrams stay replays
of a live session (a rekey would turn them into unknown sessions, also
counted).

Theory of operation: after the tunnel is up, a short warm-up flow runs while
the server namespace captures ``--capture`` of the client's datagrams (the
replay material and the forger's headers). Then each repeat runs one iperf3
TCP flow of ``--seconds`` without attack, then one with the attacker
(:mod:`bench.attack.flood`) flooding the server's address from just before the flow
until just after it. Per phase: goodput, CPU seconds of the stripe server,
client and attacker over the flow, the increase of the server's drop
counters (``stripe status --json``), its socket's receive-buffer overflows,
drops on the attacker's veth pair, and the authenticated datagrams the client
sent and the server accepted. The attacker counts what it sent per kind.
Every load is bounded: iperf3 by ``-t``, the attacker by its own time and
packet budgets (it also stops on SIGTERM, which the bench sends when the
flow ends).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.attack.flood import DEFAULT_MIX, SPOOFED_NET, Spec
from bench.attack.records import PHASES, PhaseRecord
from bench.attack.report import write_report
from bench.lab import (
    CommandError,
    Flow,
    Lab,
    LabNames,
    LinkSpec,
    Proc,
    client_command,
    delete_namespace,
    ensure_tools,
    last_json_line,
    list_namespaces,
    run,
    run_client,
    start_server,
    terminating_signals_raise,
    udp_drops,
    uninterruptible,
)
from bench.runner import RESULTS_DIR, load_average
from bench.systems import Stripe
from bench.systems.stripe_config import BASE_PORT, TUNNEL_SERVER_ADDR, Keys, write_configs

PREFIX = "sa"
ATTACKER_ADDR = "10.99.0.1"
SERVER_ATTACK_ADDR = "10.99.0.2"
IPERF_PORT = 5201
# The flood starts this long before the flow, so the flow is attacked from
# its first packet (the attacker's interpreter start-up is not on the clock).
FLOOD_LEAD_S = 0.5
FLOOD_READY_TIMEOUT_S = 10.0
# The attacker's own time budget beyond the flow: it stops by itself even
# if the bench never sends its SIGTERM.
FLOOD_SLACK_S = 10.0
# Packet budget when the rate is unpaced: far above what one Python sender
# reaches in a phase (~10^5 pkt/s here), still a bound.
MAX_FLOOD_PACKETS = 20_000_000
# After a phase: the server drains its socket before its counters are read.
SETTLE_S = 0.5
CAPTURE_FLOW_S = 4.0
INIT_POOL = 32  # distinct handshake initiations the attacker cycles through
STATUS_TIMEOUT_S = 10.0


def new_prefix() -> str:
    """``sa`` + 4 hex digits: the attack bench's namespaces (runs use ``sb``)."""
    return PREFIX + secrets.token_hex(2)


@dataclass
class AttackOptions:
    repeat: int = 3
    seconds: float = 10.0
    links: int = 2
    rate_mbit: float = 50.0
    flood_pps: float = 0.0  # 0: as fast as the attacker manages
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    max_packets: int | None = None  # per attacked phase; None: from the rate and time
    capture: int = 300
    sources: int = 0  # spoofed source addresses of the flood (0: the attacker's own)
    source_burst: int = 1  # datagrams from each spoofed source in a row
    scheduler: str = "adaptive"
    cc: str | None = None
    out: Path | None = None
    log_level: str = "info"

    def flood_budget_s(self) -> float:
        return FLOOD_LEAD_S + self.seconds + FLOOD_SLACK_S

    def flood_max_packets(self) -> int:
        if self.max_packets is not None:
            return self.max_packets
        if self.flood_pps > 0:
            return int(self.flood_pps * self.flood_budget_s()) + 1
        return MAX_FLOOD_PACKETS


def counter_increase(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that grew from ``before`` to ``after``, by how much."""
    grown = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(grown.items()) if v > 0}


def link_packets(status: dict[str, Any], key: str) -> int:
    """Sum of ``key`` (tx_packets, rx_packets) over every peer's links."""
    return sum(
        int(link.get(key, 0)) for peer in status.get("peers", []) for link in peer.get("links", [])
    )


@dataclass
class Snapshot:
    """What the bench reads before and after a phase (outside its CPU window)."""

    server: dict[str, Any]
    client: dict[str, Any]
    udp: udp_drops.UdpDrops
    veth_drops: int


@dataclass
class AttackLab:
    """The bench's local lab plus an attacker namespace; :meth:`down` is idempotent."""

    lab: Lab
    attacker_ns: str
    attacker_if: str
    server_if: str
    _created: bool = False

    @classmethod
    def for_prefix(cls, prefix: str, links: int, rate_mbit: float, workdir: Path) -> AttackLab:
        specs = tuple(LinkSpec.symmetric(rate_mbit) for _ in range(links))
        lab = Lab(LabNames.for_prefix(prefix, links), specs, workdir, topology="local")
        return cls(lab, f"{prefix}atk", f"{prefix}av", f"{prefix}aw")

    @property
    def names(self) -> LabNames:
        return self.lab.names

    def up(self) -> None:
        if self.attacker_ns in list_namespaces():
            raise CommandError(
                f"namespace {self.attacker_ns} already exists; "
                f"remove it with `python -m bench cleanup {self.attacker_ns}`"
            )
        self.lab.up()
        for link in self.names.links:
            run(
                ["ethtool", "-K", link.client_if, "tx-udp-segmentation", "off"],
                ns=self.names.client_ns,
            )
        ns, sns = self.attacker_ns, self.names.server_ns
        run(["ip", "netns", "add", ns])
        self._created = True
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        run(
            ["ip", "link", "add", self.attacker_if, "netns", ns, "type", "veth", "peer",
             "name", self.server_if, "netns", sns]
        )  # fmt: skip
        run(["ip", "addr", "add", f"{ATTACKER_ADDR}/30", "dev", self.attacker_if], ns=ns)
        run(["ip", "addr", "add", f"{SERVER_ATTACK_ADDR}/30", "dev", self.server_if], ns=sns)
        run(["ip", "link", "set", self.attacker_if, "up"], ns=ns)
        run(["ip", "link", "set", self.server_if, "up"], ns=sns)
        # Spoofed sources (--sources) are routed back to the attacker, so the
        # server's reverse-path check and its replies treat them as real.
        run(["ip", "route", "add", SPOOFED_NET, "via", ATTACKER_ADDR, "dev", self.server_if],
            ns=sns)

    def veth_drops(self) -> int:
        """Frames dropped on the attacker's veth pair so far (both ends, rx and tx)."""
        total = 0
        for ns, dev in (
            (self.attacker_ns, self.attacker_if),
            (self.names.server_ns, self.server_if),
        ):
            files = [f"/sys/class/net/{dev}/statistics/{c}" for c in ("rx_dropped", "tx_dropped")]
            total += sum(int(v) for v in run(["cat", *files], ns=ns).stdout.split())
        return total

    def down(self) -> None:
        if self._created:
            delete_namespace(self.attacker_ns)
            self._created = False
        self.lab.down()


@dataclass
class Bench:
    """A running attack lab: the tunnel, iperf3's server, the attacker's material."""

    opts: AttackOptions
    alab: AttackLab
    workdir: Path
    stripe: Stripe | None = None
    iperf_server: Proc | None = None
    replays: list[bytes] = field(default_factory=list)
    inits: list[bytes] = field(default_factory=list)

    def start(self) -> None:
        names = self.alab.names
        keys = Keys.generate()
        server_cfg, client_cfg = write_configs(
            self.workdir / "configs",
            names,
            self.alab.lab.specs,
            keys,
            self.opts.scheduler,
            names.client_ns[:-3] + "tun",
            one_port=True,
        )
        self.stripe = Stripe(
            f"stripe-{self.opts.scheduler}",
            server_cfg,
            client_cfg,
            TUNNEL_SERVER_ADDR,
            self.opts.log_level,
        )
        self.stripe.start(self.alab.lab, self.workdir)
        self.iperf_server = start_server(
            names.server_ns, IPERF_PORT, self.workdir / "iperf3-server.log"
        )
        self.inits = initiations(keys.server_public, INIT_POOL)
        self.replays = self.capture()

    def capture(self) -> list[bytes]:
        """The client's datagrams as the server's side of the links sees them,
        recorded during a short warm-up flow."""
        names = self.alab.names
        warmup = Proc(
            "iperf3-warmup",
            client_command(TUNNEL_SERVER_ADDR, IPERF_PORT, CAPTURE_FLOW_S, Flow(), self.opts.cc),
            names.client_ns,
            self.workdir / "iperf3-warmup.log",
        )
        try:
            captured = capture_datagrams(
                names.server_ns, BASE_PORT, self.opts.capture, CAPTURE_FLOW_S
            )
            try:
                warmup.popen.wait(CAPTURE_FLOW_S + 25)
            except subprocess.TimeoutExpired:
                raise CommandError("the warm-up iperf3 flow did not end") from None
        finally:
            warmup.stop()
        if not captured:
            raise CommandError("captured no datagrams of the client's during the warm-up flow")
        return captured

    def snapshot(self, after: bool) -> Snapshot:
        """Both ends' counters. The reads take a few tenths of a second each
        while the idle tunnel still sends probes, so before a phase the client
        is read first and after it the server: the server's window then lies
        inside the client's, and with nothing injected the server cannot have
        accepted more authenticated datagrams than the client sent."""
        assert self.stripe is not None
        status = self.stripe.status(server_first=after)
        for role in ("server", "client"):
            if "error" in status.get(role, {"error": "no answer"}):
                raise CommandError(f"stripe status ({role}): {status.get(role)}")
        return Snapshot(
            status["server"],
            status["client"],
            udp_drops.read(self.alab.names.server_ns),
            self.alab.veth_drops(),
        )

    def cpu_seconds(self, flood: Proc | None) -> dict[str, float]:
        assert self.stripe is not None
        cpu = self.stripe.cpu_seconds()
        if flood is not None:
            cpu["flood"] = flood.cpu_seconds()
        return cpu

    def start_flood(self, repeat: int) -> Proc:
        spec = Spec(
            (SERVER_ATTACK_ADDR, BASE_PORT),
            self.replays,
            self.inits,
            self.opts.mix,
            self.opts.flood_budget_s(),
            self.opts.flood_max_packets(),
            self.opts.flood_pps,
            seed=repeat,
            sources=self.opts.sources,
            source_burst=self.opts.source_burst,
        )
        path = self.workdir / f"flood-r{repeat}.json"
        path.write_text(spec.to_json())
        flood = Proc(
            "flood",
            [sys.executable, "-m", "bench.attack.flood", "send", str(path)],
            self.alab.attacker_ns,
            self.workdir / f"flood-r{repeat}.log",
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + FLOOD_READY_TIMEOUT_S
        while "ready" not in flood.tail(3):
            if not flood.alive() or time.monotonic() > deadline:
                flood.stop()
                raise CommandError("the attacker did not start:\n" + flood.tail())
            time.sleep(0.05)
        time.sleep(FLOOD_LEAD_S)
        return flood

    def phase(self, repeat: int, attacked: bool) -> PhaseRecord:
        """One flow, attacked or not; never raises for a failed flow."""
        opts, names = self.opts, self.alab.names
        record = PhaseRecord(repeat, PHASES[attacked], opts.seconds)
        flood: Proc | None = None
        try:
            before = self.snapshot(after=False)
            if attacked:
                flood = self.start_flood(repeat)
            cpu_before = self.cpu_seconds(flood)
            started = time.monotonic()
            result = run_client(
                names.client_ns, TUNNEL_SERVER_ADDR, IPERF_PORT, opts.seconds, Flow(), opts.cc
            )
            record.wall_s = round(time.monotonic() - started, 3)
            used = {k: v - cpu_before[k] for k, v in self.cpu_seconds(flood).items()}
            if flood is not None:
                flood.stop()
                record.flood = last_json_line(flood.log)
            time.sleep(SETTLE_S)
            after = self.snapshot(after=True)
            record.goodput_mbit = round(result.goodput_mbit, 3)
            record.retransmits = result.retransmits
            record.cpu_seconds = {k: round(v, 3) for k, v in used.items()}
            record.cpu_percent = {k: round(100 * v / record.wall_s, 1) for k, v in used.items()}
            record.drops = counter_increase(before.server["drops"], after.server["drops"])
            # Buffer overflows anywhere, or the tunnel sockets' own drops,
            # which also count what stripe's kernel filter for blocked
            # sources dropped (stripe.io.source_filter).
            drops = udp_drops.between(before.udp, after.udp)
            record.socket_drops = max(drops["all"], drops["tunnel_sockets"])
            record.veth_drops = after.veth_drops - before.veth_drops
            record.client_sent = link_packets(after.client, "tx_packets") - link_packets(
                before.client, "tx_packets"
            )
            record.server_accepted = link_packets(after.server, "rx_packets") - link_packets(
                before.server, "rx_packets"
            )
            guard = after.server.get("source_guard", {})
            record.blocked_sources = guard.get("blocked")
            record.filtered_sources = guard.get("in_kernel_filter")
            assert self.stripe is not None
            record.error = result.error or self.stripe.problem()
            if attacked and not record.flood:
                record.error = record.error or "the attacker printed no result:\n" + (
                    flood.tail() if flood else ""
                )
        except (CommandError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            if flood is not None:
                flood.stop()
        return record

    def stop(self) -> None:
        if self.iperf_server is not None:
            self.iperf_server.stop()
        if self.stripe is not None:
            self.stripe.stop()


def capture_datagrams(
    ns: str, port: int, count: int, seconds: float, iface: str | None = None
) -> list[bytes]:
    """UDP payloads of up to ``count`` datagrams arriving at ``port`` in ``ns``
    (on ``iface``, or any interface) within ``seconds``: ``bench.attack.flood capture``."""
    cmd = [sys.executable, "-m", "bench.attack.flood", "capture", "--port", str(port),
           "--count", str(count), "--seconds", str(seconds)]  # fmt: skip
    if iface:
        cmd += ["--iface", iface]
    out = run(cmd, ns=ns, timeout_s=seconds + 20, cwd=REPO_ROOT).stdout.strip()
    return [bytes.fromhex(h) for h in out.split(",") if h]


def initiations(server_public: str, count: int) -> list[bytes]:
    """Handshake initiations to the server from a key it does not know:
    valid mac1 (anyone who knows the server's public key can make one)."""
    from stripe.handshake import PendingInitiation
    from stripe.noise import decode_key, generate_keypair

    attacker_private, _ = generate_keypair()
    public = decode_key(server_public)
    now = time.time()
    return [
        PendingInitiation(attacker_private, public, None, 0x5A000000 + i, 0, now).datagram
        for i in range(count)
    ]


def _note(record: PhaseRecord) -> str:
    cpu = record.cpu_percent.get("stripe-server")
    note = f"{record.goodput_mbit:.2f} Mbit/s, server CPU {cpu if cpu is not None else '-'} %"
    sent = record.flood.get("sent")
    if isinstance(sent, dict) and record.flood.get("elapsed_s"):
        pps = sum(sent.values()) / float(record.flood["elapsed_s"])
        note += f", flood {pps:,.0f} pkt/s"
    if record.error:
        note += f"  ERROR: {record.error.splitlines()[0][:120]}"
    return note


def run_attack(opts: AttackOptions) -> Path:
    """Build the lab, run every phase, write the report; returns the results directory."""
    ensure_tools(["ip", "tc", "ethtool", "iperf3", "ping"])
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = opts.out or RESULTS_DIR / f"attack-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    prefix = new_prefix()
    workdir = out / "work"
    meta: dict[str, Any] = {
        "started": stamp,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "prefix": prefix,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "flood_budget_s": opts.flood_budget_s(),
        "flood_max_packets": opts.flood_max_packets(),
    }
    records: list[PhaseRecord] = []
    alab = AttackLab.for_prefix(prefix, opts.links, opts.rate_mbit, workdir)
    bench = Bench(opts, alab, workdir)
    sys.stderr.write(
        f"attack: lab {prefix}* ({opts.links} x {opts.rate_mbit:g} Mbit/s), "
        f"{opts.repeat} x 2 flows of {opts.seconds:g} s; results in {out}; "
        f"leftovers after a crash: python -m bench cleanup {prefix}\n"
    )
    with terminating_signals_raise():
        try:
            alab.up()
            bench.start()
            meta["captured"] = len(bench.replays)
            for repeat in range(1, opts.repeat + 1):
                for attacked in (False, True):
                    record = bench.phase(repeat, attacked)
                    records.append(record)
                    raw = out / "raw" / f"r{repeat}-{record.phase}.json"
                    raw.parent.mkdir(parents=True, exist_ok=True)
                    raw.write_text(json.dumps(record.to_json(), indent=1))
                    sys.stderr.write(f"  r{repeat} {record.phase}: {_note(record)}\n")
        finally:
            with uninterruptible():
                bench.stop()
                alab.down()
            meta["load_average"] = load_average()
            (out / "meta.json").write_text(json.dumps(meta, indent=1))
            if records:
                write_report(out, records, meta)
    return out
