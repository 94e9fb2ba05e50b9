"""Render a status reply (see `Endpoint.status`) as a readable table."""

from __future__ import annotations

from typing import Any


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
    for peer in status.get("peers", []):
        key = peer.get("public_key", "")
        lines.append("")
        lines.append(f"peer {key[:16]}…  session {_cell(peer.get('session'))}  "
                     f"last handshake {_cell(peer.get('last_handshake_s_ago'), '{} s ago')}  "
                     f"queued {peer.get('queued', 0)}")
        links = peer.get("links", [])
        total_tx = sum(link.get("tx_bytes", 0) for link in links) or 1
        header = ("link", "state", "rtt ms", "loss %", "rate Mb/s", "deliv Mb/s", "queue ms",
                  "tx", "rx", "share %", "address")
        rows = [header]
        for link in links:
            loss = link.get("loss")
            rows.append((
                str(link.get("name")), str(link.get("state")), _cell(link.get("rtt_ms")),
                _cell(None if loss is None else round(loss * 100, 2)),
                _cell(link.get("rate_mbps")), _cell(link.get("delivery_mbps")),
                _cell(link.get("qdelay_ms")),
                f"{link.get('tx_packets', 0)} pkt / {_fmt_bytes(link.get('tx_bytes', 0))}",
                f"{link.get('rx_packets', 0)} pkt / {_fmt_bytes(link.get('rx_bytes', 0))}",
                f"{100 * link.get('tx_bytes', 0) / total_tx:.0f}",
                _cell(link.get("address")),
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths,
                                                                              strict=True)))
        reorder = peer.get("reorder")
        if reorder:
            lines.append("  reorder: " + ", ".join(f"{k} {v}" for k, v in sorted(reorder.items())))
    drops = status.get("drops") or {}
    lines.append("")
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    errors = status.get("io_errors") or {}
    if errors:
        lines.append("io errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)
