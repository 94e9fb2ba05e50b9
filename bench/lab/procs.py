"""Background processes the bench starts, stopped by PID and only by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from bench.lab.sh import in_ns


class Proc:
    """One background process, its output going to a log file.

    ``ip netns exec`` execs its command, so the PID we hold is the command's
    own PID and stopping it never touches anything we did not start.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        ns: str | None,
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file: IO[bytes] = log.open("wb")
        self.popen = subprocess.Popen(
            in_ns(ns, cmd),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            # Own session: a Ctrl-C in the terminal reaches only the bench,
            # which then stops its children in order.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process and of the children
        it runs (a stripe server with workers: the supervisor and each
        worker); 0.0 once the process is gone."""
        total = 0.0
        for pid in process_tree(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # Fields 14 and 15 of stat (utime, stime), counted after the comm field.
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def peak_rss_mb(self) -> float | None:
        """The peak resident set so far (VmHWM), summed over the process and
        its running children; None once the process is gone."""
        peaks = []
        for pid in process_tree(self.pid):
            try:
                peaks.append(vm_hwm_mb(Path(f"/proc/{pid}/status").read_text()))
            except OSError:
                continue
        if not peaks or peaks[0] is None:
            return None
        return round(sum(p for p in peaks if p is not None), 1)

    def stop(self, grace_s: float = 3.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """``sig``, then SIGKILL after ``grace_s``; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace_s)
        self._log_file.close()
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants that are running now, `pid` first."""
    tree, i = [pid], 0
    while i < len(tree):
        for task in _listdir(f"/proc/{tree[i]}/task"):
            try:
                children = Path(f"/proc/{tree[i]}/task/{task}/children").read_text().split()
            except OSError:
                continue
            tree += [int(child) for child in children if int(child) not in tree]
        i += 1
    return tree


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def vm_hwm_mb(status: str) -> float | None:
    """VmHWM (peak RSS) from the text of /proc/PID/status, in MB (10^6 bytes)."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            if unit == "kB":
                return round(int(value) * 1024 / 1e6, 1)
    return None


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminating_signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks clean up.

    Ctrl-C already raises KeyboardInterrupt; the other two would kill the
    bench without tearing the lab down.
    """
    old = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C while tearing down, so a second Ctrl-C cannot leave debris."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def last_json_line(path: Path) -> dict[str, object]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return {}
