"""bench.status_trace: where it finds a stripe's control socket, what a
trace keeps of a status answer, and the per-link summary of a trace."""

from __future__ import annotations

import json
from pathlib import Path

from bench import status_trace
from bench.status_trace import control_socket, summarize, trim


def _link(link_id: int, cwnd: int, inflight: int, tx: int, qdelay: float) -> dict[str, object]:
    return {"id": link_id, "state": "up", "inflight_bytes": inflight, "cwnd_bytes": cwnd,
            "delivery_mbps": 5.0, "rate_mbps": 5.0, "qdelay_ms": qdelay, "rtt_ms": 20.0,
            "tx_bytes": tx, "capacity_spread": 0.1, "downs": 0, "probes_sent": 7}


def test_the_socket_is_the_configs_own_or_the_default_with_the_namespace(tmp_path: Path) -> None:
    own = tmp_path / "own.toml"
    own.write_text('[interface]\nname = "st1"\ncontrol_socket = "/tmp/x.sock"\n')
    assert control_socket(own, "client", "ns1") == Path("/tmp/x.sock")
    default = tmp_path / "default.toml"
    default.write_text('[interface]\nname = "st1"\n')
    assert control_socket(default, "server", "lab-s") == Path("/run/stripe/st1-server-lab-s.sock")


def test_a_trace_keeps_the_links_window_queue_and_the_edge_queue() -> None:
    status = {"role": "client", "drops": {"queue_full": 7}, "peers": [{
        "queued": 12, "queue": {"bond_queue_ms": 3.5, "dropped": 2},
        "reorder": {"held": 4, "hold_ms": 30.0, "lost": 9, "repaired": 5, "max_held": 80},
        "resent_packets": 0, "links": [_link(0, 3000, 1500, 10, 1.0)]}]}
    row = trim(status)
    peer = row["peers"][0]
    assert (peer["queued"], peer["bond_queue_ms"], peer["aqm_dropped"], peer["held"]) == (
        12, 3.5, 2, 4)
    # The reorder buffer's totals (where the inner flow's gaps went) and the
    # endpoint's drops by reason, as running totals.
    assert (peer["lost"], peer["repaired"], peer["repair_timeouts"]) == (9, 5, None)
    assert "max_held" not in peer and row["drops"] == {"queue_full": 7}
    assert "probes_sent" not in peer["links"][0]
    assert peer["links"][0]["cwnd_bytes"] == 3000
    json.dumps(row)  # one JSON line per answer


def test_the_summary_counts_full_windows_cuts_and_shares() -> None:
    rows = []
    for i in range(10):
        # Link 0: full in every sample while packets wait, cut once (at 5);
        # link 1: never full; link 0 sends 3x what link 1 does.
        cwnd0 = 30000 if i < 5 else 15000
        rows.append({"t": i * 0.1, "role": "client", "peers": [{
            "queued": 5, "links": [_link(0, cwnd0, cwnd0, 3000 * i, 20.0),
                                   _link(1, 30000, 1000, 1000 * i, 2.0)]}]})
    text = summarize(rows)
    lines = text.splitlines()
    assert lines[0].startswith("client: 10 samples") and "100 % of them" in lines[0]
    link0 = lines[2].split()
    link1 = lines[3].split()
    assert link0[:2] == ["0", "75.0%"] and link1[:2] == ["1", "25.0%"]
    assert link0[4] == "100%" and link0[5] == "100%" and link1[4] == "0%"
    assert float(link0[6]) == 1.0  # one cut in 1 s
    assert float(link1[6]) == 0.0


def test_the_command_line_reads_traces_and_rejects_unreadable_ones(
        tmp_path: Path) -> None:
    trace = tmp_path / status_trace.TRACE_FILE
    trace.write_text(json.dumps({"t": 0.0, "role": "server", "peers": [{
        "queued": 0, "links": [_link(0, 3000, 0, 0, 0.0)]}]}) + "\n")
    assert status_trace.main([str(trace)]) == 0
    assert status_trace.main([str(tmp_path / "missing.jsonl")]) == 1
    assert status_trace.main([]) == 2


def test_the_tracer_polls_a_control_socket_until_stopped(tmp_path: Path) -> None:
    import socket
    import threading
    import time

    from bench.status_trace import StatusTracer

    path = tmp_path / "c.sock"
    answer = {"peers": [{"queued": 1, "links": [_link(0, 3000, 1500, 10, 1.0)]}]}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:  # one JSON line in, one out, as stripe's control socket
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(json.dumps(answer).encode() + b"\n")

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    out = tmp_path / status_trace.TRACE_FILE
    tracer = StatusTracer([("client", path), ("server", tmp_path / "absent.sock")], out)
    tracer.start()
    time.sleep(0.35)
    tracer.stop()
    done.set()
    server_thread.join()
    server.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 2 and {r["role"] for r in rows} == {"client"}
    assert rows[0]["peers"][0]["links"][0]["cwnd_bytes"] == 3000
    assert tracer.errors >= 2  # the absent server end, counted, not raised
    assert not tracer.is_alive()


def test_the_timeline_shows_one_end_second_by_second() -> None:
    from bench.status_trace import timeline

    rows = [{"t": i * 0.1, "role": "server", "peers": [{
        "queued": 10 if i < 10 else 0, "held": 0,
        "links": [_link(0, 30000, 15000 if i < 10 else 0, 0, 4.0)]}]} for i in range(20)]
    rows.append({"t": 0.0, "role": "client", "peers": []})
    lines = timeline(rows, "server").splitlines()
    assert len(lines) == 3  # a header, then seconds 0 and 1
    first, second = lines[1].split(), lines[2].split()
    assert first[:3] == ["0.0", "10", "0"] and first[4] == "30/15"
    assert second[:2] == ["1.0", "0"] and second[4] == "30/0"
    assert status_trace.main(["--timeline", "nobody", "x"]) == 2
