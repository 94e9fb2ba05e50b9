"""Links that behave like cellular ones, in the simulated network: capacity
that steps by ten within a second, queues of half a second, outages.

Loose bounds on purpose (the tight figures live in the benchmark's
real-link scenarios); each says what it protects against."""

from __future__ import annotations

from tests.core.netsim import Sim, SimLink, Trace, ip_packet, packet_seq

from stripe.io.metrics import families
from stripe.links import (
    IDLE_PROBE_INTERVAL_S,
    LINK_DEAD_AFTER_IDLE_S,
    LINK_DEAD_AFTER_MIN_S,
    LINK_DEAD_AFTER_QUEUED_MAX_S,
    LINK_DEAD_AFTER_STALE_S,
    LinkHealth,
    LinkState,
)

PACKET_BYTES = 1250


def offered(start: float, rate_bps: float, seconds: float,
            first: int = 0) -> list[tuple[float, str, bytes]]:
    interval = PACKET_BYTES * 8 / rate_bps
    return [(start + i * interval, "up", ip_packet(first + i, PACKET_BYTES))
            for i in range(int(seconds / interval))]


def stepped(rates_mbit: list[tuple[float, float]], queue_bytes: int = 300_000) -> Trace:
    """A trace of (seconds, Mbit/s) steps, then the last rate for long."""
    times: list[int] = []
    start_ms = 0
    for seconds, mbit in [*rates_mbit, (60.0, rates_mbit[-1][1])]:
        per_ms = mbit * 1e6 / 8 / 1500 / 1000
        count = round(seconds * 1000 * per_ms)
        times += [start_ms + 1 + int(i / per_ms) for i in range(count)]
        start_ms += round(seconds * 1000)
    return Trace(times, start_ms, queue_bytes=queue_bytes)


def data_bytes(sim: Sim) -> list[int]:
    return [link.counters.tx_bytes for link in sim.client.peers[0].links.values()]


def share_over(sim: Sim, seconds: float, start_packet: int) -> float:
    """Link 1's share of the bytes sent over `seconds` of overload."""
    before = data_bytes(sim)
    sim.run(seconds, offered(sim.now, 40e6, seconds, first=start_packet))
    sent = [a - b for a, b in zip(data_bytes(sim), before, strict=True)]
    return sent[1] / sum(sent)


def test_shares_follow_a_tenfold_capacity_step_within_seconds() -> None:
    """Link 1 goes from 2 to 20 Mbit/s and back next to a steady 8 Mbit/s
    link: its share follows within two seconds each way (its window, driven
    by what it delivers, opens and closes; a fixed estimate would not)."""
    fast_for_s = 6.0
    trace = stepped([(3.0, 2.0), (fast_for_s, 20.0), (60.0, 2.0)])
    links = [SimLink(delay_s=0.020, traces={"up": Trace.constant(8e6)}),
             SimLink(delay_s=0.020, traces={"up": trace})]
    sim = Sim(links, scheduler="adaptive", start=1000.0)
    trace.start_s = links[0].traces["up"].start_s = sim.now
    sim.run(1.0)
    assert share_over(sim, 2.0, 0) < 0.35  # 2 of 10 Mbit/s
    # The step up comes at 3 s on the trace clock; after two seconds of it:
    sim.run(trace.start_s + 3.0 + 2.0 - sim.now, offered(sim.now, 40e6, 2.0, first=10**6))
    assert share_over(sim, 2.0, 2 * 10**6) > 0.6  # 20 of 28 Mbit/s: 0.71
    # The step down at 9 s; after two seconds of it, back to its small share.
    sim.run(trace.start_s + 3.0 + fast_for_s + 2.0 - sim.now,
            offered(sim.now, 40e6, 2.0, first=3 * 10**6))
    assert share_over(sim, 2.0, 4 * 10**6) < 0.35


def test_a_link_with_half_a_second_of_queue_is_not_declared_dead() -> None:
    """A 2 Mbit/s link with 500 ms of buffer, kept full: its probes wait
    behind the queue, yet it is never taken for dead or stalled; once it
    stops delivering altogether (its queue drains first: half a second),
    it is out of the schedule within its round trip and queue, and down
    within a few seconds."""
    slow = Trace.constant(2e6, queue_bytes=125_000)  # 500 ms at 2 Mbit/s
    links = [SimLink(delay_s=0.020, traces={"up": slow}),
             SimLink(delay_s=0.020, traces={"up": Trace.constant(2e6, queue_bytes=125_000)})]
    sim = Sim(links, scheduler="weighted")  # a scheduler without windows fills the buffers
    slow.start_s = links[1].traces["up"].start_s = sim.now
    sim.run(1.0)
    sim.run(6.0, offered(sim.now, 8e6, 6.0))
    health = sim.client.peers[0].links[0].health
    assert health.srtt_s is not None and health.srtt_s > 0.3  # the probes saw the queue
    assert health.state is LinkState.UP and health.downs == health.stalls == 0
    links[0].up = False
    cut = sim.now
    out_at = down_at = None
    for i in range(40):
        sim.run(0.1, offered(sim.now, 8e6, 0.1, first=10**6 + i * 1000))
        if out_at is None and not sim.client.peers[0].links[0].up:
            out_at = sim.now - cut
        if health.state is LinkState.DOWN:
            down_at = sim.now - cut
            break
    assert out_at is not None and out_at < 2.0, out_at
    assert down_at is not None and down_at < 3.5, down_at


def test_an_idle_link_that_stops_is_down_within_a_second_of_data() -> None:
    """Idle, a link is probed rarely (see links): it is found dead by those
    probes within LINK_DEAD_AFTER_IDLE_S, or within a second of the first
    data, whichever comes first."""
    links = [SimLink(delay_s=0.020), SimLink(delay_s=0.020)]
    sim = Sim(links, scheduler="adaptive")
    sim.run(2.0)
    links[1].up = False
    sim.run(0.5)
    cut = sim.now
    health = sim.client.peers[0].links[1].health
    assert health.state is LinkState.UP  # idle: nobody knows yet
    sim.run(0.01, [(sim.now, "up", ip_packet(0))])
    while health.state is not LinkState.DOWN and sim.now - cut < 3:
        sim.run(0.05)
    assert sim.now - cut < 1.0
    assert health.downs == 1
    sim2 = Sim([SimLink(delay_s=0.020), SimLink(delay_s=0.020)], scheduler="adaptive")
    sim2.run(2.0)
    sim2.links[1].up = False
    sim2.run(LINK_DEAD_AFTER_IDLE_S + IDLE_PROBE_INTERVAL_S)
    assert sim2.client.peers[0].links[1].health.state is LinkState.DOWN


def test_a_fixed_rate_line_whose_rate_falls_tenfold_keeps_a_short_queue() -> None:
    """A steady 10 Mbit/s line falls to 1 Mbit/s under load: its window is
    cut to what it now delivers within a second or two; without the cut the
    window sized for 10 Mbit/s would keep over a second of queue."""
    trace = stepped([(6.0, 10.0), (60.0, 1.0)], queue_bytes=1_000_000)
    links = [SimLink(delay_s=0.020, traces={"up": Trace.constant(8e6, queue_bytes=1_000_000)}),
             SimLink(delay_s=0.020, traces={"up": trace})]
    sim = Sim(links, scheduler="adaptive", start=1000.0)
    trace.start_s = links[0].traces["up"].start_s = sim.now
    sim.run(1.0, offered(sim.now, 30e6, 1.0))
    sim.run(trace.start_s + 9.0 - sim.now, offered(sim.now, 30e6, 8.0, first=10**6))
    backlog = trace.backlog(sim.now)
    assert backlog * 8 / 1e6 < 0.4, backlog  # seconds of queue at the new rate


def test_a_cellular_fade_under_load_is_stale_not_down() -> None:
    """A link under load goes silent for 0.8 s (its trace has no delivery
    opportunity; the LTE traces have such fades): it leaves the schedule
    (STALE) within a few round trips, but is not declared DOWN, and carries
    data again as soon as it delivers, without RECOVER_ACKS probes first.
    Under the RTO-like bound alone it was DOWN after ~0.5 s of it."""
    fade = stepped([(4.0, 8.0), (0.8, 0.0), (60.0, 8.0)])
    links = [SimLink(delay_s=0.030, traces={"up": fade}),
             SimLink(delay_s=0.030, traces={"up": Trace.constant(8e6)})]
    sim = Sim(links, scheduler="adaptive", start=1000.0)
    fade.start_s = links[1].traces["up"].start_s = sim.now
    sim.run(1.0)
    sim.run(fade.start_s + 4.0 - sim.now, offered(sim.now, 12e6, 3.0))
    health = sim.client.peers[0].links[0].health
    assert health.state is LinkState.UP and health.stalls == 0
    sim.run(0.6, offered(sim.now, 12e6, 0.6, first=10**6))
    assert health.state is LinkState.STALE  # out of the schedule
    sim.run(0.8, offered(sim.now, 12e6, 0.8, first=2 * 10**6))  # the fade ends at 0.8 s
    assert health.state is LinkState.UP
    assert health.downs == 0
    assert share_over(sim, 2.0, 3 * 10**6) > 0.3  # back to its half, or near


def test_a_stale_link_that_stays_silent_is_down_after_a_second() -> None:
    """The pure rule: silence after an ack takes an UP link DOWN at the
    RTO-like bound (0.45 s here), a STALE one that delivered since waking
    only after LINK_DEAD_AFTER_STALE_S, a STALE one not heard from since it
    woke at the short bound again."""
    def health(state: LinkState, woke_at: float = float("-inf")) -> LinkHealth:
        return LinkHealth(state=state, srtt_s=0.03, rttvar_s=0.005, last_ack_time=10.0,
                          last_heard=10.0, woke_at=woke_at)

    up = health(LinkState.UP)
    assert up.update(10.44) is None and up.update(10.46) is LinkState.DOWN
    stale = health(LinkState.STALE)
    assert stale.update(10.9) is None
    assert stale.update(10.0 + LINK_DEAD_AFTER_STALE_S + 0.01) is LinkState.DOWN
    unproven = health(LinkState.STALE, woke_at=10.2)
    assert unproven.update(10.2 + LINK_DEAD_AFTER_MIN_S + 0.01) is LinkState.DOWN


def test_a_queue_either_way_lengthens_the_silence_before_down() -> None:
    """The queues a link holds, ours (the peer's report) and the peer's
    towards us (what arrives on it), add twice themselves to the silence
    allowed, whatever the RTT: a queue that has just grown, which the
    smoothed RTT does not show yet, holds the probes' acks back as much.
    Up to LINK_DEAD_AFTER_QUEUED_MAX_S in all."""
    def health(state: LinkState, queue_s: float, reverse_queue_s: float) -> LinkHealth:
        return LinkHealth(state=state, srtt_s=0.08, rttvar_s=0.02, last_ack_time=10.0,
                          last_heard=10.0, queue_s=queue_s, reverse_queue_s=reverse_queue_s)

    for queue_s, reverse_queue_s in ((0.4, 0.0), (0.0, 0.4), (0.2, 0.2)):
        up = health(LinkState.UP, queue_s, reverse_queue_s)
        assert up.update(10.0 + LINK_DEAD_AFTER_MIN_S + 0.79) is None
        assert up.update(10.0 + LINK_DEAD_AFTER_MIN_S + 0.81) is LinkState.DOWN
        stale = health(LinkState.STALE, queue_s, reverse_queue_s)
        assert stale.update(10.0 + LINK_DEAD_AFTER_STALE_S + 0.79) is None
        assert stale.update(10.0 + LINK_DEAD_AFTER_STALE_S + 0.81) is LinkState.DOWN
    deep = health(LinkState.STALE, 1.0, 1.0)
    assert deep.update(10.0 + LINK_DEAD_AFTER_QUEUED_MAX_S - 0.01) is None
    assert deep.update(10.0 + LINK_DEAD_AFTER_QUEUED_MAX_S + 0.01) is LinkState.DOWN


def test_packets_that_come_after_the_hold_are_counted_on_the_link_that_was_late() -> None:
    """Link 1's delay jumps from 20 to 800 ms for a second under load (a fade
    after packets were given to it): the server gets them after its reorder
    hold gave their slots up, delivers them (once each) and counts them on
    link 1, the link that held the bond up, in its status and metrics."""
    links = [SimLink(delay_s=0.020, rate_bps=8e6, queue_limit_s=0.2),
             SimLink(delay_s=0.020, rate_bps=4e6, queue_limit_s=0.2)]
    sim = Sim(links, scheduler="adaptive")
    sim.run(1.0)
    sim.run(2.0, offered(sim.now, 10e6, 2.0))
    links[1].delay_s = 0.8
    sim.run(1.0, offered(sim.now, 10e6, 1.0, first=10**6))
    links[1].delay_s = 0.020
    sim.run(3.0, offered(sim.now, 10e6, 2.0, first=2 * 10**6))
    server_links = list(sim.server.peers[0].links.values())
    late = sim.server.peers[0].current.reorder.stats.late
    assert late > 0
    assert server_links[1].counters.late_packets == late
    assert server_links[0].counters.late_packets == 0
    got = [packet_seq(p) for p in sim.delivered["server"]]
    assert len(got) == len(set(got))
    status = sim.server.status(sim.now)
    assert [link["late_packets"] for link in status["peers"][0]["links"]] == [0, late]
    metrics = {m.name: m for m in families(status)}
    assert [sample.value for sample in metrics["stripe_link_late_packets"].samples] == [0, late]


def test_acks_behind_the_peers_deep_queue_do_not_take_a_link_down() -> None:
    """A download fills link 0's server-to-client queue, then the trace's
    rate falls eightfold: the probe acks wait behind two seconds of queue
    in the peer's direction, while this end's direction is empty.  The
    data still arriving on the link shows that queue (its one-way delay),
    so the silence is not a death; counting only this end's direction's
    queue, the link went DOWN about a second into the fall."""
    falls = stepped([(4.0, 8.0), (60.0, 1.0)], queue_bytes=250_000)
    links = [SimLink(delay_s=0.020, traces={"down": falls}),
             SimLink(delay_s=0.020, traces={"down": Trace.constant(8e6, queue_bytes=250_000)})]
    sim = Sim(links, scheduler="weighted")  # a scheduler without windows fills the buffers
    falls.start_s = links[1].traces["down"].start_s = sim.now
    sim.run(1.0)
    download = [(t, "down", packet) for t, _way, packet in offered(sim.now, 20e6, 7.0)]
    sim.run(7.0, download)
    health = sim.client.peers[0].links[0].health
    assert falls.backlog(sim.now) > 150_000  # the fall left over a second of queue
    assert health.downs == 0 and health.state is LinkState.UP
    assert health.reverse_queue_s > 0.5
    status = sim.client.status(sim.now)  # shown, for an operator asking why
    link = status["peers"][0]["links"][0]
    assert link["peer_qdelay_ms"] == round(health.reverse_queue_s * 1000, 2)
    metrics = {m.name: m for m in families(status)}
    assert metrics["stripe_link_peer_queue_delay_seconds"].samples[0].value > 0.5
