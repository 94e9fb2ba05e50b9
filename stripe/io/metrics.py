"""The optional Prometheus endpoint: the figures of `stripe status --json`,
labelled by peer and link, read at scrape time.

`[interface] metrics = "127.0.0.1:9586"` turns it on (prometheus-client,
the `metrics` extra).  Nothing is updated per packet: a custom collector
asks the driver for the same snapshot `stripe status` gets, on the event
loop's thread (the core is not thread-safe), and turns it into metric
families on prometheus-client's HTTP thread.  A scrape thus costs the data
path one snapshot, the same as a `stripe status`.

Labels: `peer` is the peer's public key as `stripe status` shows it (the
first 16 hex digits), `link` the link's name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from ..links import LinkState
from .tun import SetupError

log = logging.getLogger("stripe")

SCRAPE_TIMEOUT_S = 2.0
PEER_LABEL_HEX_DIGITS = 16
Metric = GaugeMetricFamily | CounterMetricFamily


def peer_label(public_key_hex: str) -> str:
    return public_key_hex[:PEER_LABEL_HEX_DIGITS]


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"stripe_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"stripe_{name}", doc, labels=labels)


# Status figures come in ms and Mbit/s; Prometheus wants base units.
TO_BASE_UNIT: dict[str, Callable[[float], float]] = {
    "ms": lambda value: round(value / 1000, 9),  # no 5.9999999999999995e-05
    "mbps": lambda value: value * 1e6,
    "": lambda value: value,
}

# Per link: (metric, help, status key, unit).  Gauges where the figure can
# go down, counters (exported with _total) where it only grows.
LINK_GAUGES = (
    ("link_rtt_seconds", "Smoothed round-trip time of the link's probes.", "rtt_ms", "ms"),
    ("link_loss_ratio", "Loss of data packets on the link, as the peer reports it.", "loss", ""),
    ("link_delivery_rate_bits_per_second", "Rate the peer reports receiving on the link.",
     "delivery_mbps", "mbps"),
    ("link_rate_estimate_bits_per_second", "The scheduler's estimate of the link's capacity.",
     "rate_mbps", "mbps"),
    ("link_queue_delay_seconds", "Queueing delay measured on the link.", "qdelay_ms", "ms"),
    ("link_peer_queue_delay_seconds",
     "Queueing delay of what the peer sends on the link, measured here.", "peer_qdelay_ms", "ms"),
    ("link_rtt_variance_seconds", "Mean deviation of the link's probe round-trip times.",
     "rttvar_ms", "ms"),
    ("link_min_rtt_seconds", "The link's minimum round trip (its base delay, both ways).",
     "min_rtt_ms", "ms"),
    ("link_in_flight_packets", "Packets sent on the link that the peer has not reported yet.",
     "in_flight_packets", ""),
    ("link_weight", "The link's configured weight.", "weight", ""),
    ("link_window_bytes", "The link's congestion window: what it may have in flight.",
     "cwnd_bytes", ""),
    ("link_window_used_bytes", "Data bytes in flight on the link, counted against its window.",
     "inflight_bytes", ""),
    ("link_capacity_spread_ratio", "How much the link's delivery rate varies while it is busy.",
     "capacity_spread", ""),
)
LINK_COUNTERS = (
    ("link_sent_bytes", "Bytes of datagrams sent on the link.", "tx_bytes"),
    ("link_received_bytes", "Bytes of datagrams received on the link.", "rx_bytes"),
    ("link_sent_packets", "Datagrams sent on the link.", "tx_packets"),
    ("link_received_packets", "Datagrams received on the link.", "rx_packets"),
    ("link_send_errors", "Sends the link's socket refused.", "send_errors"),
    ("link_probes_sent", "Probes sent on the link.", "probes_sent"),
    ("link_probes_acked", "Probes answered on the link.", "probes_acked"),
    ("link_down_transitions", "Times the link was declared down.", "downs"),
    ("link_up_transitions", "Times the link came back up after being down.", "ups"),
    ("link_stalls", "Times the link stalled (out of the schedule until it delivered again).",
     "stalls"),
    ("link_rtt_drains", "Times the link was drained to measure its minimum round trip again.",
     "rtt_drains"),
    ("link_late_packets", "Packets received on the link after the reorder buffer gave them up.",
     "late_packets"),
)
REORDER_GAUGES = (
    ("reorder_held_packets", "Packets waiting in the reorder buffer.", "held", ""),
    ("reorder_hold_seconds", "The reorder buffer's current hold deadline.", "hold_ms", "ms"),
    ("reorder_max_held_packets", "Most packets ever waiting in the reorder buffer.",
     "max_held", ""),
    ("reorder_max_wait_seconds", "Longest a packet waited in the reorder buffer.",
     "max_wait_ms", "ms"),
)
REDUNDANCY_COUNTERS = (
    ("redundancy_copies_sent", "Redundant copies of data packets sent to the peer.",
     "copies_sent"),
    ("redundancy_copy_bytes", "Bytes of those copies (the cost).", "copy_bytes"),
    ("redundancy_copies_first", "Copies from the peer that arrived before their original.",
     "copies_first"),
)
QUEUE_COUNTERS = (
    ("queue_dropped_packets", "Inner packets dropped by queue management (see queue_target_ms).",
     "dropped"),
    ("queue_marked_packets", "ECN-capable inner packets marked CE instead.", "marked"),
)
PEER_COUNTERS = (
    ("peer_skipped_queue_packets",
     "Packets of sparse flows sent past the peer's queue (see sendqueue).", "skipped_queue"),
    ("peer_resent_packets",
     "Data packets re-sent on another link: theirs went down before the peer reported them.",
     "resent_packets"),
    ("peer_resend_failed_packets", "Of those, packets no other usable link could take.",
     "resend_failed"),
    ("peer_repaired_packets",
     "Data packets re-sent because the peer found them lost and asked (see reorder).",
     "repaired_packets"),
    ("peer_repair_missing_packets",
     "Packets the peer asked for that were no longer kept, or had their one copy.",
     "repair_missing"),
)
REORDER_COUNTERS = (
    ("reorder_delivered_packets", "Packets the reorder buffer released in order.", "delivered"),
    ("reorder_lost_packets", "Counters given up as lost.", "lost"),
    ("reorder_late_packets",
     "Packets that arrived after their counter was passed (delivered out of order).", "late"),
    ("reorder_late_after_inference_packets",
     "Late packets whose counter loss inference had given up (it was wrong).",
     "late_after_inference"),
    ("reorder_inferred_releases", "Releases decided by loss inference.", "inferred_releases"),
    ("reorder_deadline_releases", "Releases forced by the hold deadline.", "deadline_releases"),
    ("reorder_ahead_packets",
     "Packets released ahead of another inner flow's gap (order is kept per flow).", "ahead"),
    ("reorder_repair_requested_packets",
     "Counters found lost and asked of the peer again (see reorder).", "repair_requests"),
    ("reorder_repaired_packets", "Of those, arrived before their gap was given up.",
     "repaired"),
    ("reorder_repair_timeouts", "Gaps given up after waiting for their repair.",
     "repair_timeouts"),
)


def families(status: dict[str, Any]) -> Iterator[Metric]:
    """The metric families for one status snapshot (pure)."""
    up = _gauge("up", "1 when the running process answered this scrape.", [])
    up.add_metric([], 1)
    yield up
    info = _gauge("info", "Role, TUN device and scheduler of this stripe process.",
                  ["role", "tun", "scheduler"])
    info.add_metric([str(status.get("role")), str(status.get("tun")),
                     str(status.get("scheduler"))], 1)
    yield info
    uptime = _gauge("uptime_seconds", "Seconds since the process started.", [])
    uptime.add_metric([], float(status.get("uptime_s", 0)))
    yield uptime
    yield from _peer_families(status.get("peers", []))
    drops = _counter("drops", "Datagrams and packets dropped, by reason.", ["reason"])
    for reason, count in sorted((status.get("drops") or {}).items()):
        drops.add_metric([reason], count)
    yield drops
    errors = _counter("io_errors", "Errors of the TUN device and sockets, by kind.", ["kind"])
    for kind, count in sorted((status.get("io_errors") or {}).items()):
        errors.add_metric([kind], count)
    yield errors


def _peer_families(peers: list[dict[str, Any]]) -> Iterator[Metric]:
    link_labels = ["peer", "link"]
    state = _gauge("link_state", "1 for the link's current state (unknown, up, down).",
                   [*link_labels, "state"])
    share = _gauge("link_share_ratio", "The link's share of the bytes sent to the peer.",
                   link_labels)
    gauges = [(_gauge(name, doc, link_labels), key, TO_BASE_UNIT[unit])
              for name, doc, key, unit in LINK_GAUGES]
    counters = [(_counter(name, doc, link_labels), key) for name, doc, key in LINK_COUNTERS]
    handshake = _gauge("peer_last_handshake_age_seconds", "Seconds since the last handshake.",
                       ["peer"])
    queued = _gauge("peer_queued_packets", "Packets waiting for a session.", ["peer"])
    reorder_gauges = [(_gauge(name, doc, ["peer"]), key, TO_BASE_UNIT[unit])
                      for name, doc, key, unit in REORDER_GAUGES]
    reorder_counters = [(_counter(name, doc, ["peer"]), key)
                        for name, doc, key in REORDER_COUNTERS]
    redundancy_counters = [(_counter(name, doc, ["peer"]), key)
                           for name, doc, key in REDUNDANCY_COUNTERS]
    peer_counters = [(_counter(name, doc, ["peer"]), key) for name, doc, key in PEER_COUNTERS]
    queue_counters = [(_counter(name, doc, ["peer"]), key) for name, doc, key in QUEUE_COUNTERS]
    for peer in peers:
        label = peer_label(str(peer.get("public_key", "")))
        for counter, key in peer_counters:
            counter.add_metric([label], float(peer.get(key, 0)))
        if peer.get("last_handshake_s_ago") is not None:
            handshake.add_metric([label], float(peer["last_handshake_s_ago"]))
        queued.add_metric([label], float(peer.get("queued", 0)))
        links = peer.get("links", [])
        total_tx = sum(link.get("tx_bytes", 0) for link in links)
        for link in links:
            labels = [label, str(link.get("name"))]
            for value in LinkState:
                state.add_metric([*labels, value.value], float(link.get("state") == value.value))
            share.add_metric(labels, link.get("tx_bytes", 0) / total_tx if total_tx else 0.0)
            for family, key, convert in gauges:
                if link.get(key) is not None:
                    family.add_metric(labels, convert(float(link[key])))
            for counter, key in counters:
                counter.add_metric(labels, float(link.get(key, 0)))
        reorder = peer.get("reorder")
        if reorder:
            for family, key, convert in reorder_gauges:
                family.add_metric([label], convert(float(reorder.get(key, 0))))
            for counter, key in reorder_counters:
                counter.add_metric([label], float(reorder.get(key, 0)))
        redundancy = peer.get("redundancy") or {}
        for counter, key in redundancy_counters:
            counter.add_metric([label], float(redundancy.get(key, 0)))
        queue = peer.get("queue") or {}
        for counter, key in queue_counters:
            counter.add_metric([label], float(queue.get(key, 0)))
    yield state
    yield share
    yield from (family for family, *_ in gauges)
    yield from (family for family, *_ in counters)
    yield handshake
    yield queued
    yield from (family for family, *_ in peer_counters)
    yield from (family for family, *_ in reorder_gauges)
    yield from (family for family, *_ in reorder_counters)
    yield from (family for family, *_ in redundancy_counters)
    yield from (family for family, *_ in queue_counters)


class StatusCollector(Collector):
    """Collects by asking the event loop for a status snapshot."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 status: Callable[[], dict[str, Any]]) -> None:
        self._loop = loop
        self._status = status

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration (it would wait on the loop)

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = self._snapshot()
        except Exception as exc:  # a timeout, a closed loop, a bug: not a 500
            log.warning("metrics: no status snapshot for this scrape: %s", exc or "timeout")
            down = _gauge("up", "1 when the running process answered this scrape.", [])
            down.add_metric([], 0)
            yield down
            return
        yield from families(snapshot)

    def _snapshot(self) -> dict[str, Any]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def take() -> None:
            try:
                future.set_result(self._status())
            except Exception as exc:  # reported to the scraping thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(take)
        return future.result(timeout=SCRAPE_TIMEOUT_S)


class MetricsServer:
    """prometheus-client's HTTP server (a thread) serving one StatusCollector."""

    def __init__(self, address: tuple[str, int], loop: asyncio.AbstractEventLoop,
                 status: Callable[[], dict[str, Any]]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(loop, status))
        host, port = address
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise SetupError(f"cannot serve metrics on {host}:{port}: "
                             f"{exc.strerror or exc}") from None
        log.info("metrics: serving Prometheus metrics on http://%s/metrics",
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
