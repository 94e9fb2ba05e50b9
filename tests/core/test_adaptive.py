"""The adaptive scheduler and link estimators, on simulated links of known
rate and delay, with a fake clock (no configuration of link rates)."""

from __future__ import annotations

import pytest
from tests.core.netsim import Sim, SimLink, ip_packet, packet_seq

from stripe.links import LinkState

PACKET_BYTES = 1250


def offered(start: float, rate_bps: float, seconds: float, first: int = 0,
            direction: str = "up") -> list[tuple[float, str, bytes]]:
    interval = PACKET_BYTES * 8 / rate_bps
    count = int(seconds / interval)
    return [(start + i * interval, direction, ip_packet(first + i, PACKET_BYTES))
            for i in range(count)]


def data_share(sim: Sim, before: list[int]) -> list[float]:
    now = [link.counters.tx_bytes for link in sim.client.peers[0].links.values()]
    sent = [a - b for a, b in zip(now, before, strict=True)]
    return [x / sum(sent) for x in sent]


def tx_bytes(sim: Sim) -> list[int]:
    return [link.counters.tx_bytes for link in sim.client.peers[0].links.values()]


@pytest.mark.parametrize(("rates", "delays"), [
    ((8e6, 2e6), (0.005, 0.005)),
    ((10e6, 5e6, 3e6, 2e6), (0.005, 0.015, 0.030, 0.050)),
])
def test_shares_converge_to_capacity_ratio(rates: tuple[float, ...],
                                           delays: tuple[float, ...]) -> None:
    links = [SimLink(delay_s=d, rate_bps=r) for r, d in zip(rates, delays, strict=True)]
    sim = Sim(links, scheduler="adaptive")
    sim.run(1.0)
    load = 0.92 * sum(rates)
    # Converge within 5 s, then measure the next 5 s.
    sim.run(5.0, offered(sim.now, load, 5.0))
    before = tx_bytes(sim)
    start = sim.now
    sim.run(5.0, offered(start, load, 5.0, first=10**6))
    share = data_share(sim, before)
    ideal = [r / sum(rates) for r in rates]
    for got, want in zip(share, ideal, strict=True):
        assert got == pytest.approx(want, abs=0.06), (share, ideal)
    # Every link's queue stays short: no bufferbloat from a wrong split.
    for link in sim.client.peers[0].links.values():
        assert link.est.qdelay_s < 0.060, (link.name, link.est.qdelay_s)
    got = [packet_seq(p) for p in sim.delivered["server"]]
    assert got == sorted(got)
    assert len(got) > 0.97 * len(offered(0, load, 10.0))


def test_fast_link_preferred_when_load_is_light() -> None:
    links = [SimLink(delay_s=0.010, rate_bps=10e6), SimLink(delay_s=0.040, rate_bps=10e6)]
    sim = Sim(links, scheduler="adaptive")
    sim.run(1.0)
    sim.run(2.0, offered(sim.now, 1e6, 2.0))
    before = tx_bytes(sim)
    sim.run(2.0, offered(sim.now, 1e6, 2.0, first=10**6))
    share = data_share(sim, before)
    assert share[0] > 0.85, share  # the 40 ms link only carries probes and feedback


def test_blackholed_link_leaves_schedule_fast_under_load() -> None:
    links = [SimLink(delay_s=0.005, rate_bps=10e6), SimLink(delay_s=0.005, rate_bps=10e6)]
    sim = Sim(links, scheduler="adaptive")
    sim.run(1.0)
    sim.run(2.0, offered(sim.now, 12e6, 2.0))
    links[1].up = False
    cut = sim.now
    step = 0.01
    down_at = None
    for i in range(60):
        sim.run(step, offered(sim.now, 12e6, step, first=10**6 + i * 1000))
        if sim.client.peers[0].links[1].health.state in (LinkState.STALE, LinkState.DOWN):
            down_at = sim.now
            break
    # Out of the schedule (stale) in 0.22 s in this simulation: feedback keeps
    # arriving over the live link (sent over the blackholed one, as by lowest
    # RTT, it hid the stall: 0.47 s).
    assert down_at is not None and down_at - cut < 0.3, down_at and down_at - cut


def test_a_window_whose_reports_stop_coming_opens_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reports that would empty a full window are lost (probes still
    get through): the sender writes its in-flight data off after a few
    round trips instead of waiting for reports that only data would bring."""
    links = [SimLink(delay_s=0.010, rate_bps=5e6), SimLink(delay_s=0.010, rate_bps=5e6)]
    sim = Sim(links, scheduler="adaptive")
    sim.run(1.0)
    sim.run(2.0, offered(sim.now, 8e6, 2.0))
    with monkeypatch.context() as lost:
        lost.setattr(sim.server._links, "_send_feedback", lambda *args: None)
        sim.run(1.0, offered(sim.now, 8e6, 1.0, first=10**6))
    assert all(link.up for link in sim.client.peers[0].links.values())
    delivered = len(sim.delivered["server"])
    sim.run(2.0, offered(sim.now, 8e6, 2.0, first=2 * 10**6))
    # Data flows again at the links' rate (without the timeout: nothing).
    assert len(sim.delivered["server"]) - delivered > 0.5 * 2.0 * 10e6 / 8 / 1200
