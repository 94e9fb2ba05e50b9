"""A lab: client and server namespaces joined by N shaped, possibly impaired links.

Topology per link ``i`` (addresses 10.i.0.1/30 client, 10.i.0.2/30 server):

* ``local`` topology: one veth pair client <-> server, ``tbf`` on each end's
  egress; the classic two-device lab of the demo (the bottleneck queue is in
  the sending endpoint itself).
* ``network`` topology (and always when a link needs delay/jitter/loss):
  client <-> middle <-> server, two veth pairs per link, ``tbf`` on the
  middle's egress veths, so the bottleneck queue is in the network, not in
  either endpoint (as with a real ISP link). The middle joins each pair with
  a Linux bridge, or, when a link is impaired, with ``bench.lab.emulator`` (L2
  bridging in userspace with delay/jitter/loss) or netem where the kernel
  has it.  A direction with an emulated bottleneck (a mahimahi trace or a
  constant rate with its own drop-tail queue, `bench.lab.linkmodel`), burst
  loss, stepping delay or outages always takes the emulator, and no tbf:
  its rate is the emulator's.  ``Lab.mark`` restarts the traces and returns
  what each lane carried per second since the previous mark.
* impairment ``nftables``: random loss only, at kernel speed (the emulator
  carries tens of Mbit/s, not Gbit/s): nftables drop rules on each link's
  receiving endpoint, segmentation offloads off so a drop takes one
  packet, either topology.

Every lab also carries the extras the baselines need: 10.9.0.1/32 and
10.9.0.2/32 on the endpoints' ``lo`` with ECMP routes across all links, and
in-kernel MPTCP endpoints (the server announces its other link addresses).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from bench import REPO_ROOT
from bench.lab.emulator import bottleneck_from_spec
from bench.lab.linkmodel import Bottleneck
from bench.lab.netns import delete_namespace, list_namespaces
from bench.lab.procs import Proc, last_json_line
from bench.lab.sh import CommandError, ensure_tools, run
from bench.lab.shaping import (
    DEFAULT_QUEUE_MS,
    OFFLOADS_OFF,
    SEGMENTATION_OFF,
    netem_args,
    netem_works,
    nft_loss_ruleset,
    tbf_args,
)
from bench.lab.spec import ECMP_CLIENT_ADDR, ECMP_SERVER_ADDR, Direction, LabNames, LinkSpec

# Before each run the links must be idle: a TCP socket closed with data in
# its send buffer keeps sending after its iperf3 client exits (an MPTCP bbr
# run went on at full rate for ~1 s), and the next system's run would start
# against it.  Idle = less than this many bytes in a window (ARP, neighbour
# probes, a lone retransmission are far below it), two windows in a row.
QUIET_WINDOW_S = 0.2
QUIET_BYTES = 2000
QUIET_MAX_WAIT_S = 15.0


class Counters(NamedTuple):
    """Interface statistics, named as in /sys/class/net/IF/statistics."""

    tx_bytes: int
    rx_bytes: int
    tx_packets: int
    rx_packets: int


def _veth(a: str, ns_a: str, b: str, ns_b: str) -> None:
    run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])


@dataclass
class Lab:
    """Build with :meth:`up`, always tear down with :meth:`down` (idempotent)."""

    names: LabNames
    specs: tuple[LinkSpec, ...]
    workdir: Path
    queue_ms: float = DEFAULT_QUEUE_MS
    # How delay/jitter/loss are made: "auto" (netem where the kernel has it,
    # else the userspace emulator), "netem", "userspace", or "nftables"
    # (random loss only, at kernel speed: drop rules at each receiving end).
    impairment: str = "auto"
    # "local": tbf on the endpoints (the default, which tests/integration
    # relies on); "network": bottleneck in a middle namespace (the suite's).
    topology: str = "local"
    use_netem: bool = field(default=False, init=False)
    emulator: Proc | None = field(default=None, init=False)
    emulator_stats: dict[str, object] = field(default_factory=dict, init=False)
    _marks: int = field(default=0, init=False)
    _models: dict[tuple[int, bool], Bottleneck | None] = field(default_factory=dict, init=False)
    _created: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if len(self.specs) != len(self.names.links):
            raise ValueError("one LinkSpec per link")
        if self.topology not in ("network", "local"):
            raise ValueError(f"topology is network or local, not {self.topology!r}")
        if self.via_middle and not self.names.mid_ns:
            raise ValueError("these lab names have no middle namespace: use topology local")
        if self.nft_loss and any(
            d.delay_ms or d.jitter_ms for s in self.specs for d in (s.up, s.down)
        ):
            raise ValueError("impairment nftables makes random loss only, no delay or jitter")

    @property
    def nft_loss(self) -> bool:
        """Loss by nftables rules on the endpoints, not by a middle namespace."""
        return self.impairment == "nftables"

    @property
    def impaired(self) -> bool:
        """Do the links need a middle that delays or drops (emulator or netem)?"""
        if self.nft_loss:
            return False
        return any(s.up.impaired or s.down.impaired for s in self.specs)

    @property
    def via_middle(self) -> bool:
        return self.impaired or self.topology == "network"

    @property
    def uses_emulator(self) -> bool:
        return self.impaired and not self.use_netem

    @property
    def needs_emulator(self) -> bool:
        """Does a link need what only the userspace emulator does (a
        bottleneck, burst loss, stepping delay, outages)?"""
        return any(d.needs_emulator for s in self.specs for d in (s.up, s.down))

    @property
    def impairment_used(self) -> str:
        """How the links are made, for the report."""
        if self.nft_loss:
            where = "bridge in a middle namespace" if self.via_middle else "direct veths"
            return (
                f"{where}, no segmentation offloads, random loss by nftables drop rules at "
                "each receiving endpoint"
            )
        if not self.via_middle:
            return "direct veths, tbf on the endpoints"
        if not self.impaired:
            return "bridge in a middle namespace, tbf there"
        if self.use_netem:
            return "netem + tbf in a middle namespace"
        if self.needs_emulator:
            return ("userspace emulator in a middle namespace: trace-driven or constant-rate "
                    "bottlenecks with drop-tail queues there (tbf on fixed-rate links)")
        return "userspace emulator + tbf in a middle namespace"

    @property
    def namespaces(self) -> list[str]:
        nss = [self.names.client_ns, self.names.server_ns]
        return [*nss, self.names.mid_ns] if self.via_middle else nss

    # -- building -------------------------------------------------------

    def up(self) -> None:
        tools = ["ip", "tc"] + (["ethtool"] if self.via_middle or self.nft_loss else [])
        tools += ["nft"] if self.nft_loss else []
        ensure_tools(tools)
        existing = set(list_namespaces())
        clash = [ns for ns in self.namespaces if ns in existing]
        if clash:
            raise CommandError(
                f"namespaces {clash} already exist; remove them first "
                f"(`ip netns delete NAME`) or use `python -m bench cleanup PREFIX`"
            )
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns])
            self._created.append(ns)
            run(["ip", "link", "set", "lo", "up"], ns=ns)
        for ns in (self.names.client_ns, self.names.server_ns):
            self._sysctl(ns, "net.ipv4.conf.all.rp_filter=0")
            self._sysctl(ns, "net.ipv4.conf.default.rp_filter=0")
            # Hash on ports too, so parallel ECMP flows may take different links.
            self._sysctl(ns, "net.ipv4.fib_multipath_hash_policy=1")
        if self.impaired and self.needs_emulator:
            if self.impairment == "netem":
                raise CommandError("--impairment netem: these links need the userspace "
                                   "emulator (trace-driven bottleneck, burst loss or outages)")
        elif self.impaired:
            self.use_netem = self.impairment == "netem" or (
                self.impairment == "auto" and netem_works(self.names.mid_ns)
            )
            if self.impairment == "netem" and not netem_works(self.names.mid_ns):
                raise CommandError("--impairment netem: this kernel has no netem qdisc")
        if self.via_middle:
            # The middle is a wire: it must not speak on its links itself.
            self._sysctl(self.names.mid_ns, "net.ipv6.conf.all.disable_ipv6=1")
            self._sysctl(self.names.mid_ns, "net.ipv6.conf.default.disable_ipv6=1")
        for i in range(len(self.specs)):
            self._build_link(i)
            if self.nft_loss:
                self._drop_at_random(i)
        self._ecmp()
        self._mptcp_endpoints()
        if self.uses_emulator:
            self._start_emulator()

    def _sysctl(self, ns: str, setting: str) -> None:
        key, value = setting.split("=")
        path = "/proc/sys/" + key.replace(".", "/")
        run(["sh", "-c", f"echo {value} > {path}"], ns=ns)

    def _build_link(self, i: int) -> None:
        n, spec = self.names.links[i], self.specs[i]
        cns, sns = self.names.client_ns, self.names.server_ns
        if not self.via_middle:
            _veth(n.client_if, cns, n.server_if, sns)
            if self.nft_loss:
                # A veth hands a TSO/GSO super-packet to its peer whole; one
                # random drop would then take dozens of packets at once.
                # Without segmentation offloads every frame is one packet,
                # as on a wire.
                for ns, dev in ((cns, n.client_if), (sns, n.server_if)):
                    run(["ethtool", "-K", dev, *SEGMENTATION_OFF], ns=ns)
            self._shape(cns, n.client_if, spec.up.rate_mbit)
            self._shape(sns, n.server_if, spec.down.rate_mbit)
        else:
            mns = self.names.mid_ns
            _veth(n.client_if, cns, n.mid_client_if, mns)
            _veth(n.server_if, sns, n.mid_server_if, mns)
            for ns, dev in (
                (cns, n.client_if),
                (sns, n.server_if),
                (mns, n.mid_client_if),
                (mns, n.mid_server_if),
            ):
                # The userspace emulator copies frames as they are: checksums
                # must be complete and frames MTU-sized, so no offloads on
                # this path (also with a bridge or netem, so all compare).
                run(["ethtool", "-K", dev, *OFFLOADS_OFF], ns=ns, check=False)
            for dev in (n.mid_client_if, n.mid_server_if):
                run(["ip", "link", "set", dev, "up"], ns=mns)
            if not self.uses_emulator:
                bridge = f"{self.names.mid_ns[:-3]}b{i}"
                run(["ip", "link", "add", bridge, "type", "bridge"], ns=mns)
                for dev in (n.mid_client_if, n.mid_server_if):
                    run(["ip", "link", "set", dev, "master", bridge], ns=mns)
                run(["ip", "link", "set", bridge, "up"], ns=mns)
            self._shape(mns, n.mid_server_if, spec.up.rate_mbit, spec.up)
            self._shape(mns, n.mid_client_if, spec.down.rate_mbit, spec.down)
        run(["ip", "addr", "add", f"{n.client_addr}/30", "dev", n.client_if], ns=cns)
        run(["ip", "addr", "add", f"{n.server_addr}/30", "dev", n.server_if], ns=sns)
        run(["ip", "link", "set", n.client_if, "up"], ns=cns)
        run(["ip", "link", "set", n.server_if, "up"], ns=sns)

    def _shape(
        self, ns: str, dev: str, rate_mbit: float | None, impair: Direction | None = None
    ) -> None:
        """tbf for the rate; with netem, netem (delay, jitter, loss) as root, tbf its child."""
        parent = ["root"]
        if self.use_netem and impair is not None and impair.impaired:
            run(
                ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", *netem_args(impair)],
                ns=ns,
            )
            parent = ["parent", "1:1", "handle", "10:"]
        if rate_mbit is None:
            return
        run(
            ["tc", "qdisc", "replace", "dev", dev, *parent, *tbf_args(rate_mbit, self.queue_ms)],
            ns=ns,
        )

    def _ecmp(self) -> None:
        cns, sns = self.names.client_ns, self.names.server_ns
        run(["ip", "addr", "add", f"{ECMP_CLIENT_ADDR}/32", "dev", "lo"], ns=cns)
        run(["ip", "addr", "add", f"{ECMP_SERVER_ADDR}/32", "dev", "lo"], ns=sns)
        self._ecmp_routes("add")

    def _ecmp_routes(self, verb: str) -> None:
        to_server: list[str] = []
        to_client: list[str] = []
        for n in self.names.links:
            to_server += ["nexthop", "via", n.server_addr, "dev", n.client_if]
            to_client += ["nexthop", "via", n.client_addr, "dev", n.server_if]
        run(["ip", "route", verb, f"{ECMP_SERVER_ADDR}/32", *to_server], ns=self.names.client_ns)
        run(["ip", "route", verb, f"{ECMP_CLIENT_ADDR}/32", *to_client], ns=self.names.server_ns)

    def _mptcp_endpoints(self) -> None:
        """Let kernel MPTCP open one subflow per link (no-op without MPTCP)."""
        if not mptcp_available():
            return
        n_links = str(len(self.names.links))
        for ns in (self.names.client_ns, self.names.server_ns):
            run(
                ["ip", "mptcp", "limits", "set", "subflow", n_links, "add_addr_accepted", n_links],
                ns=ns,
                check=False,
            )
        for n in self.names.links[1:]:
            run(
                ["ip", "mptcp", "endpoint", "add", n.server_addr, "dev", n.server_if, "signal"],
                ns=self.names.server_ns,
                check=False,
            )

    def _start_emulator(self) -> None:
        spec = [
            s.emulator_spec(n.mid_client_if, n.mid_server_if)
            for n, s in zip(self.names.links, self.specs, strict=True)
        ]
        self.emulator = Proc(
            "emulator",
            [sys.executable, "-m", "bench.lab.emulator", json.dumps(spec)],
            self.names.mid_ns,
            self.workdir / "emulator.log",
            # Where ``bench`` imports from, whatever the caller's directory.
            cwd=REPO_ROOT,
        )
        # The emulator prints "ready" once its sockets are bound.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "ready" in self.emulator.tail(5):
                return
            if not self.emulator.alive():
                break
            time.sleep(0.05)
        raise CommandError("link emulator did not start:\n" + self.emulator.tail())

    # -- operating ------------------------------------------------------

    def lane_names(self, i: int) -> tuple[str, str]:
        """The emulator's names of link ``i``'s lanes: (up, down)."""
        n = self.names.links[i]
        return f"{n.mid_client_if}>", f"{n.mid_server_if}>"

    def capacity_mbit(self, i: int, up: bool, seconds: int) -> list[float] | None:
        """Link ``i``'s capacity one way (``up``: client -> server) in each of
        the first ``seconds`` seconds of its trace clock (outages excluded), in
        Mbit/s of IP packets; None if the emulator does not make its rate."""
        key = (i, up)
        if key not in self._models:
            spec = self.specs[i]
            direction = spec.up if up else spec.down
            self._models[key] = (
                bottleneck_from_spec(direction.emulator_spec(), spec.outages)
                if direction.bottleneck else None
            )
        model = self._models[key]
        if model is None:
            return None
        return [round(model.capacity_bytes(k, k + 1) * 8 / 1e6, 3) for k in range(seconds)]

    def mark(self, timeout_s: float = 5.0) -> dict[str, object]:
        """Restart the emulator's traces and outage schedules now; returns its
        record of the time since the previous mark (``{"mark", "t0",
        "seconds", "lanes": {lane: [per-second counts]}}``, see
        `bench.lab.emulator`).  CommandError without an emulator or a record."""
        if self.emulator is None or not self.emulator.alive():
            raise CommandError("no link emulator runs in this lab")
        number = self._marks
        self._marks += 1
        os.kill(self.emulator.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = _find_mark(self.emulator.log, number)
            if record is not None:
                return record
            time.sleep(0.01)
        raise CommandError(f"the link emulator did not answer mark {number}:\n"
                           + self.emulator.tail())

    def counters(self) -> list[Counters]:
        """Counters of each link's client-side interface, read in one command."""
        files = [
            f"/sys/class/net/{n.client_if}/statistics/{name}"
            for n in self.names.links
            for name in Counters._fields
        ]
        values = [int(v) for v in run(["cat", *files], ns=self.names.client_ns).stdout.split()]
        k = len(Counters._fields)
        return [Counters(*values[k * i : k * (i + 1)]) for i in range(len(self.names.links))]

    def wait_quiet(self) -> float:
        """Wait until the links carry (next to) nothing, at most
        QUIET_MAX_WAIT_S; returns how long it waited.  Raises CommandError if
        they are still busy then: a run would not measure what it says."""
        start = time.monotonic()
        before = self.counters()
        quiet = 0
        while quiet < 2:
            if time.monotonic() - start > QUIET_MAX_WAIT_S:
                raise CommandError(f"the lab's links were still busy after {QUIET_MAX_WAIT_S:g} s "
                                   "(a previous run's traffic?)")
            time.sleep(QUIET_WINDOW_S)
            after = self.counters()
            moved = sum(a.tx_bytes - b.tx_bytes + a.rx_bytes - b.rx_bytes
                        for a, b in zip(after, before, strict=True))
            quiet = quiet + 1 if moved < QUIET_BYTES else 0
            before = after
        return time.monotonic() - start

    def set_link_up(self, i: int, up: bool) -> None:
        """Cut or restore link ``i`` by its endpoint interfaces' state."""
        n = self.names.links[i]
        state = "up" if up else "down"
        run(["ip", "link", "set", n.client_if, state], ns=self.names.client_ns)
        run(["ip", "link", "set", n.server_if, state], ns=self.names.server_ns)
        if up:
            # The kernel marked link i's nexthops dead; replace the routes
            # whole (atomic: the flow never finds itself without a route).
            self._ecmp_routes("replace")

    def set_rate(self, i: int, rate_mbit: float) -> None:
        """Step link ``i``'s tbf rate, both directions, where it was shaped
        (a rate step of the access link; the queue's length in ms is kept)."""
        n = self.names.links[i]
        ends = ((self.names.mid_ns, n.mid_server_if), (self.names.mid_ns, n.mid_client_if)) \
            if self.via_middle else ((self.names.client_ns, n.client_if),
                                     (self.names.server_ns, n.server_if))
        if self.use_netem or any(d.bottleneck for d in (self.specs[i].up, self.specs[i].down)):
            raise CommandError("set_rate steps a root tbf: not with netem or an emulated "
                               "bottleneck")
        for ns, dev in ends:
            run(["tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate_mbit, self.queue_ms)],
                ns=ns)

    def _drop_at_random(self, i: int) -> None:
        """Link ``i``'s loss, per direction, as drop rules at the receiving end."""
        n, spec = self.names.links[i], self.specs[i]
        for ns, dev, loss in (
            (self.names.server_ns, n.server_if, spec.up.loss),
            (self.names.client_ns, n.client_if, spec.down.loss),
        ):
            if loss:
                run(["nft", nft_loss_ruleset(f"loss{i}", dev, loss)], ns=ns)

    def set_blackhole(self, i: int, on: bool) -> None:
        """Silently drop everything arriving on link ``i`` at both ends.

        A netdev ingress hook drops frames after they crossed the wire, so
        neither sender sees an error: interfaces stay up, as when an ISP
        fails upstream.
        """
        n = self.names.links[i]
        table = f"blackhole{i}"
        for ns, dev in ((self.names.client_ns, n.client_if), (self.names.server_ns, n.server_if)):
            if on:
                rules = (
                    f"table netdev {table} {{ chain blackhole {{ type filter hook ingress "
                    f'device "{dev}" priority -500; policy drop; }}; }}'
                )
                run(["nft", rules], ns=ns)
            else:
                run(["nft", "delete", "table", "netdev", table], ns=ns, check=False)

    def down(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator_stats = last_json_line(self.emulator.log)
            self.emulator = None
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created.clear()


def _find_mark(log: Path, number: int) -> dict[str, object] | None:
    """The emulator's complete record of mark ``number`` in its log, if written yet."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines(keepends=True):
        if line.startswith(f'{{"mark": {number},') and line.endswith("\n"):
            record = json.loads(line)
            return dict(record) if isinstance(record, dict) else None
    return None


def mptcp_available() -> bool:
    try:
        return Path("/proc/sys/net/mptcp/enabled").read_text().strip() == "1"
    except OSError:
        return False
