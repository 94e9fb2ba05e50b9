"""The emulator's trace-driven bottleneck carries what its trace says (root).

A saturating UDP flow (1500-byte IP packets at well over the link's peak
rate) goes through one emulated link; the emulator's own per-second count
of the IP bytes it delivered (mahimahi's measure, `Lab.mark`) must be the
trace's capacity over the same seconds (`Bottleneck.capacity_bytes`)
within 3 %.  Tolerance (why): the flow starts ~0.1-0.3 s after the trace
restart, so second 0 is left out; the emulator counts a packet at the
moment its opportunity (plus propagation delay) was due, not when its loop
got to it, so being late on this shared machine moves nothing across a
second's edge; the 3 % is headroom for a loaded machine.  A trace of
one packet per millisecond must give 12 Mbit/s at the IP level, and a
flushing outage a silent second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.bench.bench_support import fresh_names, lab_running, needs_lab

from bench.lab import Direction, Flow, Lab, LinkSpec, run_client, start_server
from bench.lab.linkmodel import Outage
from bench.lab.synthetic import cellular, write_trace

pytestmark = [*needs_lab, pytest.mark.exclusive]  # measures rates (see tests/conftest.py)

SECONDS = 5
MEASURED = range(1, 4)  # whole seconds of the trace clock compared
PAYLOAD = 1472  # + 8 UDP + 20 IPv4 = one 1500-byte opportunity
TRACE_MEAN_MBIT = 6.0
OFFER_MBIT = 30.0  # over the synthetic trace's peak (2.2 x its mean) and 12 Mbit/s
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = Path(tmp_path_factory.mktemp("tracelab"))
    varying = write_trace(work / "cellular.up", cellular(TRACE_MEAN_MBIT, 8, seed=12))
    per_ms = work / "one-per-ms.up"
    per_ms.write_text("".join(f"{ms}\n" for ms in range(1, 1001)))
    specs = (
        LinkSpec(Direction(trace=str(varying), queue_ms=100), Direction()),
        LinkSpec(Direction(trace=str(per_ms), queue_ms=100), Direction()),
        LinkSpec(Direction(emulated_mbit=12, queue_ms=100),
                 Direction(emulated_mbit=12, queue_ms=100),
                 (Outage(2.0, 1.0, flush=True),)),
    )
    with lab_running(Lab(fresh_names(3), specs, work)) as lab:
        yield lab


def _saturate(lab: Lab, link: int, port: int) -> dict[str, Any]:
    """Restart the traces, send UDP through ``link`` for SECONDS; the mark record."""
    server = start_server(lab.names.server_ns, port, lab.workdir / f"udp{link}.log")
    try:
        lab.mark()
        result = run_client(lab.names.client_ns, lab.names.links[link].server_addr, port,
                            SECONDS, Flow("udp", 1, OFFER_MBIT, PAYLOAD), None)
        record = lab.mark()
    finally:
        server.stop()
    assert result.error is None, result.error
    return record


def _delivered_mbit(lab: Lab, record: dict[str, Any], link: int) -> list[float]:
    up_lane, _ = lab.lane_names(link)
    seconds = record["lanes"][up_lane]
    return [s["delivered_bytes"] * 8 / 1e6 for s in seconds]


def test_a_saturated_trace_link_carries_the_traces_capacity(lab: Lab) -> None:
    record = _saturate(lab, 0, 5301)
    delivered = _delivered_mbit(lab, record, 0)
    capacity = lab.capacity_mbit(0, True, SECONDS)
    assert capacity is not None
    got = sum(delivered[s] for s in MEASURED)
    want = sum(capacity[s] for s in MEASURED)
    assert got == pytest.approx(want, rel=TOLERANCE), (delivered, capacity)
    # The trace varies: this is not a constant link in disguise.
    assert max(capacity[s] for s in MEASURED) > 2 * min(capacity[s] for s in MEASURED)
    assert lab.emulator is not None and lab.emulator.alive()


def test_one_packet_per_millisecond_is_12_mbit(lab: Lab) -> None:
    record = _saturate(lab, 1, 5302)
    delivered = _delivered_mbit(lab, record, 1)
    for s in MEASURED:
        assert delivered[s] == pytest.approx(12.0, rel=TOLERANCE), delivered


def test_a_flushing_outage_silences_the_link(lab: Lab) -> None:
    record = _saturate(lab, 2, 5303)
    delivered = _delivered_mbit(lab, record, 2)
    assert delivered[1] == pytest.approx(12.0, rel=TOLERANCE), delivered
    assert delivered[2] * 1e6 / 8 < 1500  # no data packet (an ARP frame may pass)
    assert delivered[3] == pytest.approx(12.0, rel=TOLERANCE), delivered
    up_lane, _ = lab.lane_names(2)
    assert record["lanes"][up_lane][2]["outage_drop"] > 0
