"""``python -m bench run chaos``: a seeded schedule of faults under live traffic.

The lab (`ChaosLab`): client, middle and server namespaces named ``cx`` +
4 hex digits, three links of 10 Mbit/s each way (tbf in the middle) with
10 / 20 / 15 ms one-way delay through the userspace emulator (which also
makes the loss bursts, `bench.lab.emulator`'s ``ge_windows``), and an
attacker namespace on its own veth into the server namespace.  The server
listens on every link (sockets bound to the link's address only, so the
attacker's datagrams reach them too); the client starts with all links but
the spare one (`bench.chaos.schedule`), each bound to its interface only
(no ``source``), so a changed address is followed, not fatal.

Through the tunnel for the whole run: one TCP transfer paced at
`ChaosOptions.tcp_rate_mbit` whose SHA-256 is compared at the end, one UDP
flow and one ping (`bench.chaos.traffic`).  Meanwhile the plan's faults
run one after the other (`FaultRunner`).  Everything is collected into
``chaos.json`` and reported by `bench.chaos.report`.  The namespaces and
every process are removed on success, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.attack.flood import Spec
from bench.attack.runner import capture_datagrams
from bench.chaos import schedule
from bench.chaos.schedule import Fault, Plan, make_plan
from bench.lab import (
    CommandError,
    Direction,
    Lab,
    LabNames,
    LinkSpec,
    Proc,
    delete_namespace,
    in_ns,
    last_json_line,
    list_namespaces,
    run,
    terminating_signals_raise,
    uninterruptible,
)
from bench.lab.spec import BurstLoss
from bench.runner import RESULTS_DIR, load_average
from bench.systems import Stripe
from bench.systems.stripe import stripe_cmd
from bench.systems.stripe_config import BASE_PORT, TUNNEL_SERVER_ADDR, Keys, toml_value

PREFIX = "cx"
LINK_DELAYS_MS = (10.0, 20.0, 15.0, 25.0)
# Loss bursts: GOOD -> BAD with 5 % per packet, back with 25 % (bursts of
# ~4 packets), 70 % lost while BAD: ~12 % of a link's packets in a burst.
BURST = BurstLoss(p=0.05, r=0.25, loss_bad=0.7)
TCP_PORT = 7100
UDP_PORT = 7101
ATTACKER_ADDR = "10.250.0.1"
SERVER_ATTACK_ADDR = "10.250.0.2"
FLOOD_MIX = {"replay": 2, "forged": 1, "malformed": 1, "init": 0}
CAPTURE_COUNT = 200
CAPTURE_S = 2.0
PING_INTERVAL_S = 0.2
# After the last fault the transfer may take this long to finish.
FINISH_GRACE_S = 60.0
# Roaming moves link i's client address into 10.i.0.0/24 (the lab's /30
# holds no second host); the server reaches that /24 over the link.
ROAM_PREFIX_LEN = 24
ROAM_FIRST_HOST = 65
STATUS_TIMEOUT_S = 10.0
SNAPSHOT_LEAD_S = 2.0


@dataclass
class ChaosOptions:
    seconds: float = 600.0
    seed: int = 1
    out: Path | None = None
    log_level: str = "info"
    links: int = 3
    tcp_rate_mbit: float = 6.0
    udp_pps: float = 100.0
    udp_len: int = 400
    flood_pps: float = 10000.0


def link_specs(plan: Plan, rate_mbit: float = schedule.BASE_RATE_MBIT) -> tuple[LinkSpec, ...]:
    """Each link: `rate_mbit` each way, its delay, and its plan's loss bursts."""
    specs = []
    for i in range(plan.n_links):
        windows = plan.burst_windows(i)
        d = Direction(rate_mbit, LINK_DELAYS_MS[i % len(LINK_DELAYS_MS)],
                      burst_loss=BURST if windows else None, burst_windows=windows)
        specs.append(LinkSpec(d, d))
    return tuple(specs)


def fresh_prefix() -> str:
    """``cx`` + 4 hex digits that no namespace uses yet."""
    existing = list_namespaces()
    while True:
        prefix = PREFIX + secrets.token_hex(2)
        if not any(ns.startswith(prefix) for ns in existing):
            return prefix


def server_config(names: LabNames, keys: Keys, tun: str) -> str:
    lines = [
        "[interface]", f"name = {toml_value(tun)}", f'address = ["{TUNNEL_SERVER_ADDR}/24"]',
        "mtu = 1400", f"private_key = {toml_value(keys.server_private)}",
        f"listen_port = {BASE_PORT}", "",
        "[peer]", f"public_key = {toml_value(keys.client_public)}",
    ]  # fmt: skip
    for i, n in enumerate(names.links):
        lines += ["", "[[link]]", f'name = "link{i}"', f"source = {toml_value(n.server_addr)}",
                  f"port = {BASE_PORT + i}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def client_config(names: LabNames, keys: Keys, tun: str, links: list[int]) -> str:
    lines = [
        "[interface]", f"name = {toml_value(tun)}", 'address = ["10.200.0.1/24"]', "mtu = 1400",
        f"private_key = {toml_value(keys.client_private)}", "",
        "[peer]", f"public_key = {toml_value(keys.server_public)}",
    ]  # fmt: skip
    for i in sorted(links):
        n = names.links[i]
        lines += ["", "[[link]]", f'name = "link{i}"', f"interface = {toml_value(n.client_if)}",
                  f'remote = "{n.server_addr}:{BASE_PORT + i}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def rss_mb(pid: int) -> float | None:
    """Resident memory now (VmRSS), MB (10^6 bytes); None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) * 1024 / 1e6, 2)
    return None


def tcp_mib(ns: str) -> dict[str, int]:
    """The namespace's TCP counters (/proc/net/snmp ``Tcp:``), e.g. EstabResets."""
    lines = [ln for ln in run(["cat", "/proc/net/snmp"], ns=ns).stdout.splitlines()
             if ln.startswith("Tcp:")]
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split()[1:], (int(v) for v in lines[1].split()[1:]), strict=True))


def log_problems(paths: list[Path]) -> dict[str, Any]:
    """Tracebacks and ERROR/CRITICAL lines in stripe's logs."""
    tracebacks = 0
    errors: list[str] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        tracebacks += text.count("Traceback (most recent call last)")
        errors += [f"{path.name}: {ln[:300]}" for ln in text.splitlines()
                   if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", ln)]
    return {"tracebacks": tracebacks, "error_lines": len(errors), "first": errors[:20]}


@dataclass
class ChaosLab:
    """The lab, the tunnel, the traffic and the attacker of one chaos run."""

    opts: ChaosOptions
    plan: Plan
    workdir: Path
    prefix: str
    lab: Lab = field(init=False)
    stripe: Stripe | None = None
    keys: Keys | None = None
    client_links: list[int] = field(default_factory=list)
    roamed: dict[int, str] = field(default_factory=dict)  # link -> its client address now
    procs: dict[str, Proc] = field(default_factory=dict)
    stripe_logs: list[Path] = field(default_factory=list)
    server_generation: int = 1
    statuses: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    replays: list[bytes] = field(default_factory=list)
    _attacker_made: bool = False

    def __post_init__(self) -> None:
        names = LabNames.for_prefix(self.prefix, self.plan.n_links)
        self.lab = Lab(names, link_specs(self.plan), self.workdir, topology="network",
                       impairment="userspace")
        self.client_links = list(self.plan.initial_links)

    @property
    def names(self) -> LabNames:
        return self.lab.names

    @property
    def attacker_ns(self) -> str:
        return f"{self.prefix}atk"

    @property
    def tun(self) -> str:
        return f"{self.prefix}tun"

    # -- building ---------------------------------------------------------

    def up(self) -> None:
        self.lab.up()
        sns = self.names.server_ns
        for i in range(len(self.names.links)):
            self._server_route(i)
        ns = self.attacker_ns
        run(["ip", "netns", "add", ns])
        self._attacker_made = True
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        av, aw = f"{self.prefix}av", f"{self.prefix}aw"
        run(["ip", "link", "add", av, "netns", ns, "type", "veth", "peer", "name", aw,
             "netns", sns])  # fmt: skip
        run(["ip", "addr", "add", f"{ATTACKER_ADDR}/30", "dev", av], ns=ns)
        run(["ip", "addr", "add", f"{SERVER_ATTACK_ADDR}/30", "dev", aw], ns=sns)
        run(["ip", "link", "set", av, "up"], ns=ns)
        run(["ip", "link", "set", aw, "up"], ns=sns)
        run(["ip", "route", "add", "10.0.0.0/12", "via", SERVER_ATTACK_ADDR], ns=ns)

    def _server_route(self, i: int) -> None:
        """The server reaches the whole 10.i.0.0/24 over link i (roamed clients)."""
        n = self.names.links[i]
        run(["ip", "route", "replace", f"10.{i}.0.0/{ROAM_PREFIX_LEN}", "dev", n.server_if],
            ns=self.names.server_ns, check=False)

    def configs_dir(self) -> Path:
        return self.workdir / "configs"

    def write_client_config(self) -> Path:
        assert self.keys is not None
        path = self.configs_dir() / "client.toml"
        path.write_text(client_config(self.names, self.keys, self.tun, self.client_links))
        path.chmod(0o600)
        return path

    def start_tunnel(self) -> None:
        self.keys = Keys.generate()
        self.configs_dir().mkdir(parents=True, exist_ok=True)
        server = self.configs_dir() / "server.toml"
        server.write_text(server_config(self.names, self.keys, self.tun))
        server.chmod(0o600)
        client = self.write_client_config()
        self.stripe = Stripe("stripe", server, client, TUNNEL_SERVER_ADDR, self.opts.log_level)
        self.stripe.start(self.lab, self.workdir)
        assert self.stripe.pair is not None
        self.stripe_logs += [p.log for p in self.stripe.pair.processes()]

    def _traffic(self, name: str, ns: str, *args: str) -> Proc:
        proc = Proc(name, [sys.executable, "-m", "bench.chaos.traffic", *args], ns,
                    self.workdir / f"{name}.log", cwd=REPO_ROOT)
        deadline = time.monotonic() + 15
        while "ready" not in proc.tail(3):
            if not proc.alive() or time.monotonic() > deadline:
                raise CommandError(f"{name} did not start:\n{proc.tail()}")
            time.sleep(0.05)
        self.procs[name] = proc
        return proc

    def start_traffic(self) -> None:
        o = self.opts
        total_s = o.seconds + FINISH_GRACE_S
        cns, sns = self.names.client_ns, self.names.server_ns
        size = int(o.tcp_rate_mbit * 1e6 / 8 * o.seconds)
        self._traffic("tcp-recv", sns, "tcp-recv", "--port", str(TCP_PORT),
                      "--seconds", str(total_s + 30))
        self._traffic("udp-recv", sns, "udp-recv", "--port", str(UDP_PORT),
                      "--seconds", str(total_s + 30))
        self._traffic("tcp-send", cns, "tcp-send", "--to", TUNNEL_SERVER_ADDR,
                      "--port", str(TCP_PORT), "--bytes", str(size), "--rate-mbit",
                      str(o.tcp_rate_mbit), "--seed", str(o.seed), "--seconds", str(total_s))
        self._traffic("udp-send", cns, "udp-send", "--to", TUNNEL_SERVER_ADDR,
                      "--port", str(UDP_PORT), "--pps", str(o.udp_pps), "--len", str(o.udp_len),
                      "--seconds", str(o.seconds))
        count = int(o.seconds / PING_INTERVAL_S)
        self.procs["ping"] = Proc(
            "ping", ["ping", "-n", "-D", "-O", "-i", str(PING_INTERVAL_S), "-W", "1",
                     "-c", str(count), "-w", str(int(o.seconds) + 5), TUNNEL_SERVER_ADDR],
            cns, self.workdir / "ping.log")  # fmt: skip

    def capture(self) -> None:
        """The client's datagrams on link 0 as the server sees them: the replays."""
        self.replays = capture_datagrams(self.names.server_ns, BASE_PORT, CAPTURE_COUNT,
                                         CAPTURE_S)

    # -- measuring ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.stripe is not None
        return self.stripe.status()

    def rss_now(self) -> dict[str, float | None]:
        assert self.stripe is not None and self.stripe.pair is not None
        pair = self.stripe.pair
        return {"client": rss_mb(pair.client.pid) if pair.client else None,
                "server": rss_mb(pair.server.pid) if pair.server else None}

    def tcp_counters(self) -> dict[str, dict[str, int]]:
        return {"client": tcp_mib(self.names.client_ns), "server": tcp_mib(self.names.server_ns)}

    # -- faults ---------------------------------------------------------------

    def apply(self, fault: Fault, on: bool) -> dict[str, Any]:
        """Start (`on`) or end one fault; returns what was done."""
        kind, i = fault.kind, fault.link
        note: dict[str, Any] = {}
        if kind == schedule.DOWN:
            assert i is not None
            self.lab.set_link_up(i, not on)
            if not on:
                self._server_route(i)
        elif kind == schedule.BLACKHOLE:
            assert i is not None
            self.lab.set_blackhole(i, on)
        elif kind == schedule.RATE:
            assert i is not None and fault.rate_mbit is not None
            self.lab.set_rate(i, fault.rate_mbit if on else schedule.BASE_RATE_MBIT)
        elif kind == schedule.LOSS:
            note["by"] = "emulator ge_windows"
        elif on and kind == schedule.ROAM:
            assert i is not None
            note.update(self.roam(i))
        elif on and kind in (schedule.ADD, schedule.REMOVE):
            assert i is not None
            if kind == schedule.ADD:
                self.client_links.append(i)
            else:
                self.client_links.remove(i)
            note.update(self.reload())
        elif on and kind == schedule.RESTART:
            note.update(self.restart_server())
        return note

    def roam(self, i: int) -> dict[str, Any]:
        n = self.names.links[i]
        old = self.roamed.get(i, f"{n.client_addr}/30")
        new = f"10.{i}.0.{ROAM_FIRST_HOST + len(self.roamed)}/{ROAM_PREFIX_LEN}"
        cns = self.names.client_ns
        run(["ip", "addr", "add", new, "dev", n.client_if], ns=cns)
        run(["ip", "addr", "del", old, "dev", n.client_if], ns=cns)
        self.roamed[i] = new
        return {"from": old, "to": new}

    def reload(self) -> dict[str, Any]:
        assert self.stripe is not None
        path = self.write_client_config()
        proc = run(in_ns(self.names.client_ns, stripe_cmd("reload", "-c", str(path))),
                   check=False, timeout_s=STATUS_TIMEOUT_S, cwd=REPO_ROOT)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise CommandError(f"stripe reload failed ({proc.returncode}): {out}")
        return {"links": sorted(self.client_links), "reload": out[:300]}

    def snapshot_server(self) -> None:
        """The server's counters and RSS before its restart (they die with it)."""
        assert self.stripe is not None and self.stripe.pair is not None
        assert self.stripe.pair.server is not None
        self.statuses[f"server-{self.server_generation}"] = self.stripe.status().get("server")
        self.rss[f"server-{self.server_generation}-end"] = rss_mb(self.stripe.pair.server.pid)

    def restart_server(self) -> dict[str, Any]:
        """SIGTERM the server, start it again (within 2 s of the signal)."""
        assert self.stripe is not None and self.stripe.pair is not None
        pair = self.stripe.pair
        assert pair.server is not None
        signalled = time.monotonic()
        code = pair.server.stop(grace_s=schedule.SERVER_RESTART_WITHIN_S - 0.5)
        exited = time.monotonic()
        self.server_generation += 1
        pair.server = Proc(
            "stripe-server",
            stripe_cmd("--log-level", pair.log_level, "server", "-c", str(pair.server_config)),
            pair.server_ns, self.workdir / f"stripe-server-{self.server_generation}.log",
            cwd=pair.tree.path, env=pair.tree.env())  # fmt: skip
        started = time.monotonic()
        self.stripe_logs.append(pair.server.log)
        return {"exit_code": code, "exit_s": round(exited - signalled, 3),
                "restarted_after_s": round(started - signalled, 3)}

    def start_flood(self, fault: Fault) -> Proc:
        spec = Spec((self.names.links[0].server_addr, BASE_PORT), self.replays, [], FLOOD_MIX,
                    fault.duration_s + 2.0, int(self.opts.flood_pps * (fault.duration_s + 2)) + 1,
                    self.opts.flood_pps, seed=self.opts.seed)
        path = self.workdir / "flood.json"
        path.write_text(spec.to_json())
        return Proc("flood", [sys.executable, "-m", "bench.attack.flood", "send", str(path)],
                    self.attacker_ns, self.workdir / "flood.log", cwd=REPO_ROOT)

    # -- teardown -------------------------------------------------------------

    def stop_processes(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        if self.stripe is not None:
            self.stripe.stop()

    def down(self) -> None:
        self.stop_processes()
        if self._attacker_made:
            delete_namespace(self.attacker_ns)
            self._attacker_made = False
        self.lab.down()


def run_faults(chaos: ChaosLab, t0: float) -> list[dict[str, Any]]:
    """Run the plan's faults at their times since `t0`; one record per
    fault with when it really started and ended (s since `t0`), what was
    done, and the error if an action failed (the run goes on)."""
    records = []
    for fault in chaos.plan.faults:
        if fault.kind == schedule.RESTART:
            # Reading the counters takes ~1 s: before the restart's time.
            _sleep_until(t0 + fault.start_s - SNAPSHOT_LEAD_S)
            chaos.snapshot_server()
        _sleep_until(t0 + fault.start_s)
        key = f"server-{chaos.server_generation}-start"
        if chaos.server_generation > 1 and key not in chaos.rss:
            # The restarted server's baseline, after the gap that followed it.
            chaos.rss[key] = chaos.rss_now()["server"]
        record: dict[str, Any] = {**fault.to_json(), "t_on": round(time.monotonic() - t0, 3)}
        flood: Proc | None = None
        try:
            if fault.kind == schedule.FLOOD:
                flood = chaos.start_flood(fault)
            else:
                record["on"] = chaos.apply(fault, True)
            if fault.duration_s:
                _sleep_until(t0 + fault.end_s)
                if flood is not None:
                    flood.stop()
                    record["flood"] = last_json_line(flood.log)
                    flood = None
                else:
                    record["off"] = chaos.apply(fault, False)
        except (CommandError, OSError, subprocess.TimeoutExpired) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:1000]
        finally:
            if flood is not None:
                flood.stop()
        record["t_off"] = round(time.monotonic() - t0, 3)
        print(f"chaos: {record['t_on']:7.1f} s  {fault.label}"
              + (f"  ERROR {record['error']}" if "error" in record else ""), flush=True)
        records.append(record)
    return records


def _sleep_until(at: float) -> None:
    while (left := at - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _wait(proc: Proc, timeout_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(max(0.1, timeout_s))


def run_chaos(opts: ChaosOptions) -> Path:
    """One chaos run; returns the results directory (results.md, chaos.json, plots/)."""
    from bench.chaos.report import write_report

    plan = make_plan(opts.seconds, opts.seed, opts.links)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = opts.out or RESULTS_DIR / f"chaos-{stamp}"
    workdir = out / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": load_average(), "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
        "plan": plan.to_json(),
    }  # fmt: skip
    chaos = ChaosLab(opts, plan, workdir, fresh_prefix())
    record["prefix"] = chaos.prefix
    with terminating_signals_raise():
        try:
            chaos.up()
            chaos.start_tunnel()
            chaos.start_traffic()
            chaos.capture()
            record["replays_captured"] = len(chaos.replays)
            t0 = time.monotonic()
            chaos.lab.mark()  # the loss bursts' clock starts now
            record["t0"] = t0
            record["rss_start"] = chaos.rss_now()
            record["tcp_mib_start"] = chaos.tcp_counters()
            record["faults"] = run_faults(chaos, t0)
            _sleep_until(t0 + opts.seconds)
            record["rss_end"] = chaos.rss_now()
            record["rss_restarts"] = chaos.rss
            record["status_end"] = chaos.status()
            record["status_before_restarts"] = chaos.statuses
            _wait(chaos.procs["tcp-send"], FINISH_GRACE_S)
            _wait(chaos.procs["tcp-recv"], 10)
            _wait(chaos.procs["ping"], 10)
            record["tcp_mib_end"] = chaos.tcp_counters()
            record["stripe_problem"] = chaos.stripe.problem() if chaos.stripe else None
        except (CommandError, OSError, subprocess.TimeoutExpired) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        finally:
            with uninterruptible():
                chaos.down()
                record["emulator"] = chaos.lab.emulator_stats
    for name, proc in chaos.procs.items():
        record.setdefault("traffic", {})[name] = (
            proc.log.read_text(errors="replace")[-20000:] if name == "ping"
            else last_json_line(proc.log))
    record["logs"] = log_problems(chaos.stripe_logs)
    record["load_average_after"] = load_average()
    record["left_namespaces"] = [ns for ns in list_namespaces() if ns.startswith(chaos.prefix)]
    (out / "chaos.json").write_text(json.dumps(record, indent=1))
    write_report(out, record)
    return out
