"""The lab's own mechanics: link cuts, blackholes, ECMP, teardown (needs root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.bench.bench_support import fresh_names, lab_running, needs_lab

import bench.lab.topology
from bench.lab import (
    ECMP_SERVER_ADDR,
    CommandError,
    Lab,
    LabNames,
    LinkSpec,
    cleanup_prefix,
    in_ns,
    list_namespaces,
    new_prefix,
    run,
)

pytestmark = needs_lab


@pytest.fixture(params=["local", "network"])
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(fresh_names(2), (LinkSpec.symmetric(20),) * 2, tmp_path, topology=request.param)
    with lab_running(lab):
        yield lab


def _pings(lab: Lab, addr: str) -> bool:
    cmd = ["ping", "-c1", "-W1", addr]
    return run(cmd, ns=lab.names.client_ns, check=False).returncode == 0


def test_blackhole_is_silent_and_reversible(lab: Lab) -> None:
    assert _pings(lab, "10.1.0.2")
    lab.set_blackhole(1, True)
    assert not _pings(lab, "10.1.0.2")
    assert _pings(lab, "10.0.0.2")
    link = run(
        ["ip", "-br", "link", "show", lab.names.links[1].client_if], ns=lab.names.client_ns
    ).stdout
    assert " UP " in link  # the interface never noticed
    lab.set_blackhole(1, False)
    assert _pings(lab, "10.1.0.2")


def test_link_down_and_up_restores_ecmp(lab: Lab) -> None:
    assert _pings(lab, ECMP_SERVER_ADDR)
    lab.set_link_up(1, False)
    assert not _pings(lab, "10.1.0.2")
    lab.set_link_up(1, True)
    assert _pings(lab, "10.1.0.2")
    route = run(["ip", "route", "show", f"{ECMP_SERVER_ADDR}/32"], ns=lab.names.client_ns).stdout
    assert route.count("nexthop") == 2


def test_counters_see_traffic(lab: Lab) -> None:
    before = lab.counters()
    assert _pings(lab, "10.0.0.2")
    after = lab.counters()
    assert after[0].tx_bytes > before[0].tx_bytes
    assert after[1].tx_bytes - before[1].tx_bytes < 1000  # only stray IPv6 chatter


def _background_pings(lab: Lab, count: int) -> subprocess.Popen[bytes]:
    """`count` 1000-byte pings 10 ms apart over link 0: a bounded flow."""
    cmd = in_ns(lab.names.client_ns,
                ["ping", "-q", "-i", "0.01", "-s", "1000", "-c", str(count), "10.0.0.2"])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_wait_quiet_waits_out_traffic_left_by_a_previous_run(lab: Lab) -> None:
    assert lab.wait_quiet() < 1.0  # idle: two quiet windows
    pings = _background_pings(lab, 150)  # ~1.5 s of traffic
    try:
        waited = lab.wait_quiet()
    finally:
        pings.wait(10)
    assert waited >= 1.0


def test_wait_quiet_gives_up_on_links_that_stay_busy(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.lab.topology, "QUIET_MAX_WAIT_S", 0.6)
    pings = _background_pings(lab, 200)
    try:
        with pytest.raises(CommandError, match="still busy"):
            lab.wait_quiet()
    finally:
        pings.wait(10)


def test_refuses_existing_namespaces(lab: Lab, tmp_path: Path) -> None:
    twin = Lab(lab.names, lab.specs, tmp_path / "twin", topology=lab.topology)
    with pytest.raises(CommandError, match="already exist"):
        twin.up()
    twin.down()  # must not delete what it did not create
    assert lab.names.client_ns in list_namespaces()


def test_cleanup_prefix(tmp_path: Path) -> None:
    prefix = "hb" + new_prefix()[2:]
    lab = Lab(LabNames.for_prefix(prefix, 1), (LinkSpec.symmetric(None),), tmp_path)
    try:
        lab.up()
        assert sorted(cleanup_prefix(prefix)) == sorted(lab.namespaces)
    finally:
        lab.down()
    with pytest.raises(ValueError):
        cleanup_prefix("h")
