"""A link's minimum RTT when its base delay changes (see stripe.minrtt):
the filter itself with a fake clock, then links in the simulated network
whose delay grows under load, and one whose queue never drains."""

from __future__ import annotations

from tests.core.netsim import Sim, SimLink, Trace, ip_packet

from stripe.links import LinkState
from stripe.minrtt import CONFIRM_SLACK, DRAIN_ANSWER_S, EXPIRE_S, REMEASURE_SAMPLES, MinRtt

PACKET_BYTES = 1250
LOAD_BPS = 3.5e6  # below the two 2 Mbit/s links' sum: queues of the window's size


def test_a_lower_sample_counts_at_once_and_a_higher_one_only_clean_after_expiry() -> None:
    m = MinRtt()
    m.sample(0.050, 10.0, clean=False)
    assert m.value_s == 0.050
    m.sample(0.040, 11.0, clean=False)
    assert m.value_s == 0.040 and m.confirmed_at == 11.0
    m.sample(0.040 * (1 + CONFIRM_SLACK), 12.0, clean=False)  # near it: confirmed
    assert m.value_s == 0.040 and m.confirmed_at == 12.0
    m.sample(0.100, 12.5, clean=True)  # clean, but the minimum is fresh: a queue
    assert m.value_s == 0.040 and m.confirmed_at == 12.0
    late = 12.0 + EXPIRE_S + 0.1
    assert m.expired(late) and not m.expired(late, since=late - 1.0)
    m.sample(0.100, late, clean=False)  # expired, but a queue of ours may be in it
    assert m.value_s == 0.040
    # Measured again: the least of REMEASURE_SAMPLES clean samples, not the
    # first (a jittery link's typical round trip); the all-time least stays.
    samples = [0.130, 0.100, 0.115, 0.140][:REMEASURE_SAMPLES]
    for i, rtt in enumerate(samples):
        assert m.value_s == 0.040
        m.sample(rtt, late + 0.2 * i, clean=True)
    assert m.value_s == min(samples) and not m.expired(late + 0.5)
    assert m.least_s == 0.040


def test_a_drain_ends_when_measured_or_given_up() -> None:
    m = MinRtt(value_s=0.040, confirmed_at=0.0)
    now = EXPIRE_S + 1.0
    m.start_drain(now, srtt_s=0.2)
    assert m.draining and m.drains == 1
    assert not m.clean_at(now + 0.1) and m.clean_at(now + 0.2)
    assert not m.drain_over(now + 0.25)
    for i in range(REMEASURE_SAMPLES):
        assert not m.drain_over(now + 0.32 + 0.1 * i)
        m.sample(0.120 + 0.01 * i, now + 0.32 + 0.1 * i, clean=True)
    done = now + 0.32 + 0.1 * (REMEASURE_SAMPLES - 1)
    assert m.drain_over(done) and m.value_s == 0.120
    m.end_drain(done)
    assert not m.draining
    # Given up: the minimum stands, and is not due again for EXPIRE_S.
    then = done + EXPIRE_S + 1.0
    m.start_drain(then, srtt_s=0.2)
    assert not m.drain_over(then + 0.2 + DRAIN_ANSWER_S - 0.01)
    assert m.drain_over(then + 0.2 + DRAIN_ANSWER_S)
    m.sample(0.300, then + 0.3, clean=True)  # one sample: not enough
    m.end_drain(then + 0.2 + DRAIN_ANSWER_S)
    assert m.value_s == 0.120 and m.candidates == 0
    assert not m.expired(then + 0.2 + DRAIN_ANSWER_S + EXPIRE_S - 0.01)


def offered(start: float, rate_bps: float, seconds: float,
            first: int = 0) -> list[tuple[float, str, bytes]]:
    interval = PACKET_BYTES * 8 / rate_bps
    return [(start + i * interval, "up", ip_packet(first + i, PACKET_BYTES))
            for i in range(int(seconds / interval))]


def sent_bytes(sim: Sim) -> list[int]:
    return [link.counters.tx_bytes for link in sim.client.peers[0].links.values()]


def test_a_link_whose_base_delay_grows_is_used_for_its_capacity() -> None:
    """Two 2 Mbit/s links; link 1's one-way delay grows from 10 to 120 ms
    under load.  Its window is sized from its minimum RTT: kept at the 20
    ms it had (a tenth of what the link now has in flight, with the report
    gap), the link would carry a fifth of the load; measured again within
    EXPIRE_S and a drain, its half."""
    links = [SimLink(delay_s=0.010, traces={"up": Trace.constant(2e6)}),
             SimLink(delay_s=0.010, traces={"up": Trace.constant(2e6)})]
    sim = Sim(links, scheduler="adaptive")
    links[0].traces["up"].start_s = links[1].traces["up"].start_s = sim.now
    sim.run(1.0, offered(sim.now, 6e6, 1.0))
    links[1].delay_s = 0.120
    sim.run(EXPIRE_S + 4.0, offered(sim.now, 6e6, EXPIRE_S + 4.0, first=10**6))
    health = sim.client.peers[0].links[1].health
    assert health.min_rtt_s is not None and health.min_rtt_s > 0.2
    assert health.min_rtt.drains >= 1
    before = sent_bytes(sim)
    sim.run(3.0, offered(sim.now, 6e6, 3.0, first=2 * 10**6))
    sent = [a - b for a, b in zip(sent_bytes(sim), before, strict=True)]
    assert sent[1] / sum(sent) > 0.4


def bursts(start: float, count: int, first: int) -> list[tuple[float, str, bytes]]:
    """Four packets 0.12 s apart each second: a light flow."""
    return [(start + burst + j * 0.12, "up", ip_packet(first + 4 * burst + j))
            for burst in range(count) for j in range(4)]


def test_a_lightly_used_link_is_measured_again_without_a_drain() -> None:
    """Link 1's one-way delay grows from 10 to 120 ms under a light flow
    over both links (four packets 0.12 s apart each second): nothing of
    ours waits on the link, so its next probe after EXPIRE_S measures the
    new base, no drain needed."""
    sim = Sim([SimLink(delay_s=0.010), SimLink(delay_s=0.010)], scheduler="roundrobin")
    sim.run(1.0, bursts(sim.now, 1, 0))
    sim.links[1].delay_s = 0.120
    sim.run(EXPIRE_S + 4.0, bursts(sim.now, int(EXPIRE_S) + 4, 10**6))
    health = sim.client.peers[0].links[1].health
    assert health.min_rtt_s is not None and health.min_rtt_s > 0.2
    assert health.min_rtt.drains == 0
    assert health.stalls <= 1 and health.state is LinkState.UP  # the jump itself, at most


def test_a_queue_that_never_drains_is_not_taken_for_base_delay() -> None:
    """One 2 Mbit/s link with a 500 ms buffer, offered twice its rate for
    40 s (a UDP stream that never backs off: the window is always full).
    A minimum taken over the last few seconds (tried) takes the queue the
    window keeps for base delay, and the window grows over it: it crept
    from 21 to 34 ms in 40 s, the queue from 16-32 ms to 48.  Drained and
    measured, the minimum stays within a few ms of the link's 20 ms (a
    sample may catch a packet of queue) and the queue what it was with the
    minimum of all time (16-32 ms)."""
    trace = Trace.constant(2e6, queue_bytes=125_000)
    sim = Sim([SimLink(delay_s=0.010, traces={"up": trace})], scheduler="adaptive")
    trace.start_s = sim.now
    sim.run(1.0)
    worst = 0.0
    for i in range(40):
        sim.run(1.0, offered(sim.now, 4e6, 1.0, first=i * 10**5))
        if i >= 10:
            worst = max(worst, trace.backlog(sim.now) * 8 / 2e6)
    health = sim.client.peers[0].links[0].health
    assert health.min_rtt_s is not None and health.min_rtt_s < 0.028
    assert worst < 0.045, worst  # seconds of queue at the link's rate
    assert health.min_rtt.drains >= 1


def test_the_stall_limit_keeps_the_least_rtt_of_all_time() -> None:
    """Two 2 Mbit/s links loaded to 3.5 Mbit/s; link 1's base delay grows
    from 10 to 120 ms each way and its minimum is measured again (0.24 s);
    then the link dies.  Its stall limit is twice the round trip and queue
    it expects plus two report gaps: from the least round trip of all time
    the link is out of the schedule 0.3 s after it died; from the
    re-measured one it took 0.75 s, the flow held up all the while (see
    minrtt)."""
    links = [SimLink(delay_s=0.010, traces={"up": Trace.constant(2e6)}),
             SimLink(delay_s=0.010, traces={"up": Trace.constant(2e6)})]
    sim = Sim(links, scheduler="adaptive")
    links[0].traces["up"].start_s = links[1].traces["up"].start_s = sim.now
    sim.run(1.0, offered(sim.now, LOAD_BPS, 1.0))
    links[1].delay_s = 0.120
    sim.run(EXPIRE_S + 4.0, offered(sim.now, LOAD_BPS, EXPIRE_S + 4.0, first=10**6))
    health = sim.client.peers[0].links[1].health
    assert health.min_rtt_s is not None and health.min_rtt_s > 0.2
    assert health.least_rtt_s is not None and health.least_rtt_s < 0.03
    stalls = health.stalls
    links[1].up = False
    sim.run(0.45, offered(sim.now, LOAD_BPS, 0.45, first=2 * 10**6))
    assert health.stalls > stalls or health.state is LinkState.DOWN
