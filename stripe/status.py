"""What `stripe status` shows: a snapshot of an endpoint as JSON-able data,
and that snapshot rendered as a readable table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .aqm import measure_bond
from .control import FEATURE_PARTIAL_CSUM
from .peer import Peer
from .scheduler import usable_links
from .spec import EndpointSpec


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def render(status: dict[str, Any]) -> str:
    lines = [f"stripe {status.get('role', '?')}  tun {status.get('tun', '?')}  "
             f"scheduler {status.get('scheduler', '?')}  up {status.get('uptime_s', '?')} s"]
    for row in status.get("workers", []):
        lines.append(f"worker {row.get('worker')}  tun {row.get('tun')}  pid "
                     f"{_cell(row.get('pid'))}  peers {_cell(row.get('peers'))}  restarts "
                     f"{row.get('restarts', 0)}" + (f"  {row['error']}" if row.get("error")
                                                    else ""))
    mtu = status.get("mtu") or {}
    if mtu:
        extra = {k: v for k, v in mtu.items() if k not in ("tun", "probing", "derivation")}
        lines.append(f"{mtu.get('derivation') or 'mtu ' + str(mtu.get('tun'))}  path probing "
                     f"{'on' if mtu.get('probing') else 'off'}" +
                     "".join(f"  {k.replace('_', ' ')} {v}" for k, v in sorted(extra.items())))
    for peer in status.get("peers", []):
        key = peer.get("public_key", "")
        lines.append("")
        worker = f"  worker {peer['worker']}" if "worker" in peer else ""
        lines.append(f"peer {key[:16]}…{worker}  session {_cell(peer.get('session'))}  "
                     f"last handshake {_cell(peer.get('last_handshake_s_ago'), '{} s ago')}  "
                     f"queued {peer.get('queued', 0)} (skipped by sparse flows "
                     f"{peer.get('skipped_queue', 0)})  mtu {_cell(peer.get('mtu'))}")
        links = peer.get("links", [])
        total_tx = sum(link.get("tx_bytes", 0) for link in links) or 1
        header = ("link", "state", "rtt ms", "loss %", "rate Mb/s", "deliv Mb/s", "queue ms",
                  "window KiB", "downs/stalls", "tx", "rx", "share %", "pmtu", "address")
        rows = [header]
        for link in links:
            loss = link.get("loss")
            rows.append((
                str(link.get("name")), str(link.get("state")), _cell(link.get("rtt_ms")),
                _cell(None if loss is None else round(loss * 100, 2)),
                _cell(link.get("rate_mbps")), _cell(link.get("delivery_mbps")),
                _cell(link.get("qdelay_ms")),
                f"{link.get('inflight_bytes', 0) / 1024:.0f}/"
                f"{link.get('cwnd_bytes', 0) / 1024:.0f}",
                f"{link.get('downs', 0)}/{link.get('stalls', 0)}",
                f"{link.get('tx_packets', 0)} pkt / {_fmt_bytes(link.get('tx_bytes', 0))}",
                f"{link.get('rx_packets', 0)} pkt / {_fmt_bytes(link.get('rx_bytes', 0))}",
                f"{100 * link.get('tx_bytes', 0) / total_tx:.0f}",
                _cell(link.get("path_mtu")),
                _cell(link.get("address")),
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths,
                                                                              strict=True)))
        reorder = peer.get("reorder")
        if reorder:
            lines.append("  reorder: " + ", ".join(f"{k} {v}" for k, v in sorted(reorder.items())))
        if peer.get("resent_packets") or peer.get("resend_failed"):
            lines.append(f"  re-sent when their link went down: {peer.get('resent_packets', 0)}, "
                         f"no other link for: {peer.get('resend_failed', 0)}")
        if peer.get("repaired_packets") or peer.get("repair_missing"):
            lines.append(f"  re-sent when the peer found them lost: "
                         f"{peer.get('repaired_packets', 0)}, no longer kept: "
                         f"{peer.get('repair_missing', 0)}")
        queue = peer.get("queue")
        if queue:
            lines.append(f"  queue management: target {queue['effective_target_ms']:g} ms "
                         f"(configured {queue['target_ms']:g}), bond queue "
                         f"{queue['bond_queue_ms']:g} ms, dropped {queue['dropped']}, "
                         f"marked {queue['marked']}")
        elif "queue" in peer:
            lines.append("  queue management: off")
        redundancy = peer.get("redundancy")
        if redundancy and (redundancy["copies_sent"] or redundancy["copies_first"]):
            lines.append("  redundancy: " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in sorted(redundancy.items())))
    drops = status.get("drops") or {}
    lines.append("")
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    errors = status.get("io_errors") or {}
    if errors:
        lines.append("io errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)


# A server's worker status: these tables of counters are summed, the peers
# listed together (each row says its worker), the rest taken from the first
# worker that answered.
_SUMMED = ("drops", "io_errors", "datapath", "source_guard")


def merge_workers(replies: list[dict[str, Any] | None]) -> dict[str, Any]:
    """One status from the workers' (None: a worker that did not answer)."""
    answered = [(k, reply) for k, reply in enumerate(replies) if reply is not None]
    merged: dict[str, Any] = dict(answered[0][1]) if answered else {}
    merged["peers"] = []
    for table in _SUMMED:
        merged[table] = {}
    for k, reply in answered:
        merged["peers"] += [{**peer, "worker": k} for peer in reply.get("peers", [])]
        for table in _SUMMED:
            into = merged[table]
            for key, value in (reply.get(table) or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
                else:
                    into.setdefault(key, value)
    merged.pop("worker", None)
    merged.pop("pid", None)
    return merged


def snapshot(spec: EndpointSpec, peers_state: list[Peer], drops: Mapping[str, int],
             mtu_counters: Mapping[str, int], now: float) -> dict[str, Any]:
    """The figures `stripe status` shows, as plain JSON-able data (see
    `Endpoint.status`)."""
    peers = []
    for peer in peers_state:
        session = peer.current
        links = []
        for link in peer.links.values():
            h = link.health
            links.append({
                "id": link.link_id, "name": link.name, "state": h.state.value,
                "weight": link.weight, "backup": link.backup,
                "rtt_ms": None if h.srtt_s is None else round(h.srtt_s * 1000, 2),
                "rttvar_ms": None if h.srtt_s is None else round(h.rttvar_s * 1000, 2),
                "min_rtt_ms": None if h.min_rtt_s is None else round(h.min_rtt_s * 1000, 2),
                "rtt_drains": h.min_rtt.drains,
                "probes_sent": h.probes_sent, "probes_acked": h.probes_acked,
                "tx_packets": link.counters.tx_packets, "tx_bytes": link.counters.tx_bytes,
                "rx_packets": link.counters.rx_packets, "rx_bytes": link.counters.rx_bytes,
                "send_errors": link.counters.send_errors,
                "rate_mbps": round(link.est.rate_bps / 1e6, 3),
                "delivery_mbps": round(link.est.delivery_bps / 1e6, 3),
                "loss": round(link.est.loss, 4),
                "qdelay_ms": round(link.est.qdelay_s * 1000, 2),
                "peer_qdelay_ms": round(h.reverse_queue_s * 1000, 2),
                "in_flight_packets": link.est.in_flight_packets,
                "inflight_bytes": link.window.inflight_bytes,
                "cwnd_bytes": round(link.window.cwnd_bytes),
                "capacity_spread": round(link.est.delivery_spread, 3),
                "late_packets": link.counters.late_packets,
                "downs": h.downs, "ups": h.ups, "stalls": h.stalls,
                "owd_min_us": link.est.owd_min_us,
                "address": None if link.path is None
                else f"{link.path[1][0]}:{link.path[1][1]}",
                "path_mtu": None if link.pmtu is None else link.pmtu.path_mtu,
                "pmtu_state": None if link.pmtu is None else link.pmtu.state.value,
            })
        reorder = None
        if session is not None:
            st = session.reorder.stats
            reorder = {
                "held": session.reorder.held,
                "hold_ms": round(session.reorder.hold_s * 1000, 2),
                "delivered": st.delivered, "lost": st.lost, "late": st.late,
                "inferred_releases": st.inferred_releases,
                "deadline_releases": st.deadline_releases, "ahead": st.ahead,
                "max_held": st.max_held,
                "max_wait_ms": round(st.max_wait_s * 1000, 2),
                "late_after_inference": st.late_after_inference,
                "late_after_ms_avg": round(st.late_after_sum_s * 1000 / st.late_after_count, 1)
                if st.late_after_count else None,
                "late_after_ms_max": round(st.late_after_max_s * 1000, 1),
                "repair_requests": st.repair_requests,
                "overdue_requests": st.overdue_requests, "repaired": st.repaired,
                "repair_timeouts": st.repair_timeouts,
                "repair_wait_ms": round(session.reorder.repair_wait_s * 1000, 2),
            }
        peers.append({
            "public_key": peer.spec.public_key.hex(),
            "session": None if session is None else f"{session.local_index:08x}",
            "last_handshake_s_ago": None if peer.handshake.last_completed is None
            else round(now - peer.handshake.last_completed, 1),
            "queued": len(peer.queue), "skipped_queue": peer.queue.skips,
            "links": links, "reorder": reorder, "mtu": peer.mtu,
            "redundancy": _redundancy(peer, links),
            "resent_packets": peer.copies.resent, "resend_failed": peer.copies.resend_failed,
            "repaired_packets": peer.copies.repaired,
            "repair_missing": peer.copies.repair_missing,
            "queue": _queue(peer, now),
            # Inner checksums left partial on the way to this peer (it said
            # it takes them under the current session; see `offload`).
            "partial_csum": spec.partial_csum and session is not None
            and bool(session.peer_features & FEATURE_PARTIAL_CSUM),
        })
    mtu = {"tun": spec.tunnel_mtu, "probing": spec.pmtu_probe, **mtu_counters}
    return {"role": spec.role.value, "peers": peers, "drops": dict(drops),
            "mtu": mtu}


def _queue(peer: Peer, now: float) -> dict[str, Any] | None:
    """Queue management (see `aqm`): its target, the bond's standing queue
    as measured now, and the inner packets it dropped or marked."""
    aqm = peer.aqm
    if aqm is None:
        return None
    bond = measure_bond(usable_links(peer.links.values()), now)
    return {
        "target_ms": round(aqm.target_s * 1000, 2),
        "effective_target_ms": round(aqm.target_for(bond) * 1000, 2),
        "bond_queue_ms": round(bond.queue_s * 1000, 2),
        "dropped": aqm.drops, "marked": aqm.marks,
    }


def _redundancy(peer: Peer, links: list[dict[str, Any]]) -> dict[str, Any]:
    """What the copies cost (sent) and bought (copies that came first)."""
    copies = peer.copies
    sent = sum(link["tx_bytes"] for link in links) - copies.copy_bytes
    return {
        "copies_sent": copies.copies_sent, "copy_bytes": copies.copy_bytes,
        "overhead_percent": round(100 * copies.copy_bytes / sent, 2) if sent > 0 else 0.0,
        "copies_first": copies.copies_first,
    }
