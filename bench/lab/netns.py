"""Network namespaces by name: list them, delete one with what runs in it,
and clean up a crashed run's leftovers by prefix."""

from __future__ import annotations

from bench.lab.sh import run


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_namespace(ns: str) -> None:
    """Stop what runs in ``ns`` (by PID) and delete it; its veths go with it."""
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        run(["kill", "-KILL", pid], check=False)
    run(["ip", "netns", "delete", ns], check=False)


def cleanup_prefix(prefix: str) -> list[str]:
    """Remove leftover namespaces whose names start with ``prefix``."""
    if len(prefix) < 2:
        raise ValueError("refusing a prefix shorter than 2 characters")
    gone = [ns for ns in list_namespaces() if ns.startswith(prefix)]
    for ns in gone:
        delete_namespace(ns)
    return gone
