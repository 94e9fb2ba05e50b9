"""Path MTU: derivation, the per-link search (fake clock), oversized inner
packets, and both endpoints probing over simulated links with an MTU."""

from __future__ import annotations

import struct

import pytest
from tests.core.netsim import Sim, SimLink, ip_packet
from tests.core.test_icmp import echo_request_v4, reference_checksum, udp_v6

from stripe import control, pmtu
from stripe.pmtu import LinkPath, PmtuSearch, SearchState

# -- derivation -------------------------------------------------------------


def test_derivation_takes_the_tightest_link() -> None:
    paths = [LinkPath("wan", 1500, 4, "interface eth0"),
             LinkPath("lte", 1400, 4, "route via wwan0")]
    result = pmtu.derive_tunnel_mtu(paths, ipv6_inside=False)
    assert result.mtu == 1330
    assert result.explanation == "mtu 1330 = link lte 1400 (route via wwan0) - 70"
    assert result.warnings == ()


def test_derivation_counts_ipv6_overhead_and_clamps() -> None:
    v6 = pmtu.derive_tunnel_mtu([LinkPath("fibre", 1500, 6, "interface eth0")], False)
    assert v6.mtu == 1410 and "- 90" in v6.explanation
    small = pmtu.derive_tunnel_mtu([LinkPath("ppp", 1300, 4, "interface ppp0")], True)
    assert small.mtu == 1280 and "raised to the minimum 1280" in small.explanation
    assert small.warnings and "1230" in small.warnings[0]
    jumbo = pmtu.derive_tunnel_mtu([LinkPath("lan", 65536, 4, "interface lo")], False)
    assert jumbo.mtu == 9000 and "capped at 9000" in jumbo.explanation


def test_derivation_without_links_falls_back_to_ethernet() -> None:
    result = pmtu.derive_tunnel_mtu([], ipv6_inside=False)
    assert result.mtu == 1430 and "1500" in result.explanation


def test_configured_mtu_above_a_link_warns_with_the_numbers() -> None:
    paths = [LinkPath("wan", 1500, 4, "interface eth0"), LinkPath("lte", 1400, 4, "interface x")]
    assert pmtu.check_configured_mtu(1300, paths) == []
    (warning,) = pmtu.check_configured_mtu(1400, paths)
    assert "mtu 1400 is larger than link lte allows: 1400 (interface x) - 70 = 1330" in warning


# -- the search, with a fake clock --------------------------------------------


class FakePath:
    """A path of `mtu` bytes with a fixed RTT: drives one PmtuSearch like the
    endpoint does (small probes always get through, as health probes do)."""

    def __init__(self, mtu: int, rtt_s: float = 0.02, max_size: int = 1500) -> None:
        self.mtu = mtu
        self.local_mtu = 65535  # above it the OS refuses to send (EMSGSIZE)
        self.rtt_s = rtt_s
        self.search = PmtuSearch(576, max_size)
        self.now = 0.0
        self.probes: list[tuple[float, int]] = []
        self.up = True
        self._acks: list[tuple[float, int]] = []

    def run(self, seconds: float, step_s: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step_s, 6)
            for at, probe_id in [a for a in self._acks if a[0] <= self.now]:
                self._acks.remove((at, probe_id))
                self.search.on_ack(probe_id, self.now)
            # Health probes every 0.2 s get through while the path is up.
            alive_at = (self.now - self.rtt_s) // 0.2 * 0.2 if self.up else -1.0
            probe = self.search.poll(self.now, pmtu.probe_timeout_s(self.rtt_s), alive_at)
            if probe is not None:
                probe_id, size = probe
                self.probes.append((self.now, size))
                if size > self.local_mtu:
                    self.search.on_too_big(size, self.now)
                elif self.up and size <= self.mtu:
                    self._acks.append((self.now + self.rtt_s, probe_id))


@pytest.mark.parametrize("path_mtu", [1500, 1492, 1400, 1300, 1280, 1001, 577])
def test_search_finds_the_path_mtu_to_the_byte(path_mtu: int) -> None:
    path = FakePath(path_mtu)
    path.run(15.0)
    assert path.search.state is SearchState.COMPLETE
    assert path.search.path_mtu == path_mtu
    # The full size first, then a binary search: ~log2(924) sizes.
    assert path.probes[1][1] == 1500
    sizes = {size for _, size in path.probes}
    assert len(sizes) <= 12


def test_an_idle_owner_arms_no_timer_while_a_search_waits_for_evidence() -> None:
    """A try timed out and no small probe since has come back: nothing can
    happen before one does, so an idle owner polls at its probes instead of
    every EVIDENCE_WAIT_S (2,000 idle links spun 20,000 wake-ups a second
    under overload); a busy one keeps the short timer."""
    path = FakePath(1300)
    path.up = False  # an outage: tries and small probes alike go unanswered
    path.run(3.0)
    search = path.search
    assert search.awaiting_evidence
    assert search.owner_timer(float("-inf"), idle=True) is None
    assert search.owner_timer(float("-inf"), idle=False) == search.next_timer()
    path.up = True
    path.run(15.0)
    assert search.path_mtu == 1300 and not search.awaiting_evidence


def test_a_complete_search_rests_until_data_is_sent_after_its_last_probe() -> None:
    path = FakePath(1300)
    path.run(15.0)
    search = path.search
    assert search.state is SearchState.COMPLETE
    assert search.owner_timer(search.last_probe - 1.0, idle=False) is None  # no data since
    assert search.owner_timer(search.last_probe + 1.0, idle=True) == search.next_timer()


def test_search_time_is_a_few_seconds() -> None:
    path = FakePath(1300)
    while path.search.path_mtu is None:
        path.run(0.1)
    # ~10 sizes, about half of them failing 3 times at 3 RTTs (>= 0.2 s).
    assert path.now < 6.0


def test_full_path_is_found_in_two_round_trips() -> None:
    path = FakePath(1500)
    while path.search.path_mtu is None:
        path.run(0.01)
    assert path.now == pytest.approx(2 * path.rtt_s, abs=0.02)
    assert [size for _, size in path.probes] == [576, 1500]


def test_black_hole_is_found_by_the_confirmation() -> None:
    path = FakePath(1500)
    path.run(1.0)
    assert path.search.path_mtu == 1500
    path.mtu = 1300  # large packets now vanish, nobody tells us
    path.run(pmtu.CONFIRM_INTERVAL_S + 8.0)
    assert path.search.path_mtu == 1300
    assert path.search.black_holes == 1


def test_notes_say_what_happened() -> None:
    path = FakePath(1500)
    path.run(1.0)
    assert path.search.take_notes() == ["path mtu 1500 (carries 1430 inside the tunnel)"]
    path.mtu = 1300
    path.run(pmtu.CONFIRM_INTERVAL_S + 8.0)
    assert path.search.take_notes() == [
        "1500-byte probes vanish: searching the path mtu again",
        "path mtu 1300 (carries 1230 inside the tunnel)"]
    assert path.search.take_notes() == []


def test_shrinking_below_the_confirmed_size_during_a_raise_restarts() -> None:
    path = FakePath(1300)
    path.run(10.0)
    path.run(pmtu.RAISE_INTERVAL_S, step_s=0.5)  # now searching upwards from 1300
    assert path.search.state is SearchState.SEARCHING and path.search.lo == 1300
    path.mtu = path.local_mtu = 1200
    path.search.on_too_big(1250, path.now)  # a data packet of the old size
    assert path.search.state is SearchState.BASE
    path.run(5.0)
    assert path.search.path_mtu == 1200


def test_loss_brings_the_confirmation_forward() -> None:
    path = FakePath(1500)
    path.run(1.0)
    path.mtu = 1300
    path.search.confirm_soon(path.now)
    path.run(6.0)
    assert path.search.path_mtu == 1300


def test_local_too_big_restarts_at_once_below_that_size() -> None:
    path = FakePath(1500)
    path.run(1.0)
    path.mtu = 1300
    path.search.on_too_big(1500, path.now)
    assert path.search.state is SearchState.BASE
    path.run(5.0)
    assert path.search.path_mtu == 1300
    assert 1500 not in [size for at, size in path.probes if at > 1.0]


def test_local_interface_shrinking_is_found_without_timeouts() -> None:
    path = FakePath(1500)
    path.run(1.0)
    path.mtu = path.local_mtu = 1300
    path.run(pmtu.CONFIRM_INTERVAL_S)  # the next confirmation fails at once
    assert path.search.path_mtu == 1300 and path.search.state is SearchState.COMPLETE
    # Sizes the OS refuses are never retried: no probe waited for a timeout
    # above 1300, so the search took a few round trips only.
    big = [size for at, size in path.probes if at > 1.0 and size > 1300]
    assert len(big) == len(set(big))


def test_interface_below_the_base_size_is_an_error_not_a_busy_loop() -> None:
    path = FakePath(1500)
    path.local_mtu = 500
    path.run(5.0)
    assert path.search.state is SearchState.ERROR
    assert len(path.probes) == 1


def test_a_false_alarm_costs_nothing() -> None:
    path = FakePath(1500)
    path.run(1.0)
    path.mtu = 1000  # a moment in which the confirmation gets lost
    path.search.confirm_soon(path.now)
    while path.search.black_holes == 0:
        path.run(0.01)
    path.mtu = 1500
    published = []
    for _ in range(100):
        path.run(0.01)
        published.append(path.search.path_mtu)
    assert set(published) == {1500}
    assert path.search.state is SearchState.COMPLETE


def test_outage_is_not_taken_for_too_big() -> None:
    path = FakePath(1500)
    path.up = False
    path.run(5.0)  # the base probe is out, unanswered
    assert path.search.state is SearchState.BASE  # waiting, not failing
    sent = len(path.probes)
    path.run(3.0)
    assert len(path.probes) == sent  # and not sending either
    path.up = True
    path.run(2.0)
    assert path.search.path_mtu == 1500


def test_a_larger_path_is_found_after_the_raise_interval() -> None:
    path = FakePath(1300)
    path.run(10.0)
    assert path.search.path_mtu == 1300
    path.mtu = 1500
    path.run(pmtu.RAISE_INTERVAL_S - 20.0, step_s=0.1)
    assert path.search.path_mtu == 1300
    path.run(30.0, step_s=0.05)
    assert path.search.path_mtu == 1500


def test_peer_that_never_answers_leaves_error_state_and_no_mtu() -> None:
    path = FakePath(100)  # nothing gets through, small probes do
    path.run(5.0)
    assert path.search.state is SearchState.ERROR and path.search.path_mtu is None
    assert path.search.next_timer() == pytest.approx(path.probes[-1][0] + 0.2 * 3 + 60,
                                                     abs=0.5)


def test_timer_always_moves_forward() -> None:
    path = FakePath(1300)
    for _ in range(2000):
        path.run(0.01)
        assert path.search.next_timer() > path.now or path.search.size is not None


# -- oversized inner packets -------------------------------------------------


def test_oversize_answers_df_and_ipv6_and_fragments_the_rest() -> None:
    oversize = pmtu.Oversize()
    sent, answer = oversize.handle(echo_request_v4(), 1232, now=1.0)
    assert sent == [] and answer is not None and struct.unpack_from("!H", answer, 26)[0] == 1232
    sent, answer = oversize.handle(udp_v6(), 1232, now=1.0)
    # IPv6 never hears of less than 1280.
    assert sent == [] and answer is not None and struct.unpack_from("!I", answer, 44)[0] == 1280
    sent, answer = oversize.handle(echo_request_v4(flags=0), 1232, now=1.0)
    assert answer is None and len(sent) == 2 and all(len(f) <= 1232 for f in sent)
    assert oversize.counters == {"icmp_sent": 2, "fragmented": 1, "fragments": 2}


def test_oversize_answers_are_rate_limited() -> None:
    oversize = pmtu.Oversize(refilled_at=0.0)
    answers = [oversize.handle(echo_request_v4(), 1232, now=0.0)[1] for _ in range(100)]
    assert sum(a is not None for a in answers) == pmtu.ICMP_BURST
    assert oversize.counters["icmp_rate_limited"] == 100 - pmtu.ICMP_BURST
    later = [oversize.handle(echo_request_v4(), 1232, now=1.0)[1] for _ in range(200)]
    assert sum(a is not None for a in later) == pmtu.ICMP_BURST  # refilled, to the burst


# -- control messages ----------------------------------------------------------


def test_pmtu_probe_is_padded_to_the_size_and_decodes() -> None:
    for size in (508, 1000, 1432, 8932):
        data = control.encode_pmtu_probe(7, size, 2**40)
        assert len(data) == size
        message, counter = control.decode(data)
        assert isinstance(message, control.PmtuProbe) and message.probe_id == 7
        assert counter == 2**40
    assert control.decode(control.encode(control.PmtuAck(9), 0))[0] == control.PmtuAck(9)


def test_bad_padding_is_a_control_error() -> None:
    import msgpack

    with pytest.raises(control.ControlError, match="bad_padding"):
        control.decode(msgpack.packb({"t": 6, "i": 1, "p": "text", "d": 0}))


# -- both endpoints over simulated links -------------------------------------


def sim_with_mtus(*mtus: int | None) -> Sim:
    return Sim([SimLink(delay_s=0.01, mtu=mtu) for mtu in mtus], tunnel_mtu=1430,
               pmtu_probe=True)


def path_mtus(endpoint: object) -> list[int | None]:
    links = endpoint.peers[0].links.values()  # type: ignore[attr-defined]
    return [None if link.pmtu is None else link.pmtu.path_mtu for link in links]


def test_both_ends_probe_each_link_and_take_the_smallest() -> None:
    sim = sim_with_mtus(None, 1300)
    sim.run(8.0)
    assert path_mtus(sim.client) == [1500, 1300]
    assert path_mtus(sim.server) == [1500, 1300]
    assert sim.client.peers[0].mtu == sim.server.peers[0].mtu == 1230


def _pmtu_probes(sim: Sim, start: int) -> dict[str, int]:
    """PMTU probes on the wire since wire_log[start] (the padded
    datagrams), by direction."""
    counts = {"up": 0, "down": 0}
    for direction, _, data in sim.wire_log[start:]:
        counts[direction] += len(data) > 600
    return counts


def test_an_idle_link_is_not_confirmed_until_data_comes() -> None:
    """Once its search is done, a link that carries no data carries no
    padded probes (a server with a thousand idle clients confirmed 2,000
    links from both ends every 10 s); data after idleness confirms the size
    at once."""
    sim = sim_with_mtus(None, 1300)
    sim.run(8.0)
    start = len(sim.wire_log)
    sim.run(3 * pmtu.CONFIRM_INTERVAL_S)
    assert _pmtu_probes(sim, start) == {"up": 0, "down": 0}
    start = len(sim.wire_log)
    sim.run(0.5, [(sim.now + 0.01, "up", ip_packet(1, 200))])
    # The client confirms the links it sent data on; the server sent none.
    assert _pmtu_probes(sim, start) == {"up": 2, "down": 0}
    assert path_mtus(sim.client) == [1500, 1300]


def test_probing_does_not_upset_the_link_estimates() -> None:
    sim = sim_with_mtus(None, 1300)
    traffic = [(sim.now + i * 0.002, "up", ip_packet(i, 1000)) for i in range(3000)]
    sim.run(8.0, traffic)
    for link in sim.client.peers[0].links.values():
        assert link.up and link.health.downs == link.health.stalls == 0  # never went down
        assert link.est.loss < 0.01
    assert len(sim.delivered["server"]) == 3000


def test_oversized_packet_gets_icmp_answer_back_on_the_tun() -> None:
    sim = sim_with_mtus(1300, None)
    sim.run(8.0)
    packet = echo_request_v4(size=1400)
    sim.run(0.1, [(sim.now, "up", packet)])
    (answer,) = sim.delivered["client"]
    assert answer[9] == 1 and answer[20:22] == bytes([3, 4])
    assert struct.unpack_from("!H", answer, 26)[0] == 1230
    assert reference_checksum(answer[20:]) == 0
    assert sim.server.drops["too_big"] == 0 and sim.client.drops["too_big"] == 1
    assert sim.client.status(sim.now)["mtu"].get("icmp_sent", 0) == 1
    assert sim.delivered["server"] == []


def test_oversized_packet_without_df_arrives_in_fragments() -> None:
    sim = sim_with_mtus(1300, 1300)
    sim.run(8.0)
    packet = echo_request_v4(size=1400, flags=0)
    sim.run(0.5, [(sim.now, "up", packet)])
    fragments = sim.delivered["server"]
    assert len(fragments) == 2 and all(len(f) <= 1232 for f in fragments)
    assert b"".join(f[20:] for f in fragments) == packet[20:]


def test_black_hole_mid_run_lowers_the_mtu() -> None:
    sim = sim_with_mtus(None, None)
    sim.run(3.0)
    assert sim.client.peers[0].mtu == 1430
    sim.links[1].mtu = 1280
    traffic = [(sim.now + i * 0.01, "up", ip_packet(i, 1400)) for i in range(1000)]
    sim.run(10.0, traffic)
    assert path_mtus(sim.client) == [1500, 1280]
    assert sim.client.peers[0].mtu == 1210
    # Large packets on link 1 vanished until the search finished (data loss
    # brings the confirmation forward); the later ones (no DF) went as
    # fragments, and all of them arrived.
    assert sim.client.status(sim.now)["mtu"].get("fragmented", 0) > 0
    firsts = {int.from_bytes(p[20:28], "big") for p in sim.delivered["server"]
              if struct.unpack_from("!H", p, 6)[0] & 0x1FFF == 0}
    assert set(range(500, 1000)) <= firsts


def test_emsgsize_from_the_driver_starts_a_search_at_once() -> None:
    from tests.core.netsim import server_addr

    sim = sim_with_mtus(None, None)
    sim.run(3.0)
    sim.links[1].mtu = 1300
    sim.client.datagram_too_big(1, server_addr(1), 1500 - 28, sim.now)
    sim.run(6.0)  # well before the next confirmation would have noticed
    assert path_mtus(sim.client) == [1500, 1300]
    assert sim.client.peers[0].links[1].pmtu.black_holes == 1  # type: ignore[union-attr]
    # Some other path (an unknown address) is ignored.
    sim.client.datagram_too_big(1, ("192.0.2.1", 9), 1000, sim.now)
    assert path_mtus(sim.client) == [1500, 1300]
