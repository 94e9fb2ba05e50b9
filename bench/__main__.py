"""Command line: ``python -m bench {demo,run,list,cleanup}``."""

from __future__ import annotations

import argparse
import os
import sys

from bench.lab import cleanup_prefix

CC_CHOICES = ("cubic", "bbr")


def _need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, veths, qdiscs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="issue-2 demo: plain link vs ECMP vs stripe")
    demo.add_argument("--seconds", type=float, default=20.0)
    demo.add_argument(
        "--cc",
        choices=CC_CHOICES,
        default=None,
        help="TCP congestion control for iperf3 -C (default: system's)",
    )
    demo.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))

    clean = sub.add_parser("cleanup", help="delete leftover namespaces with a prefix")
    clean.add_argument(
        "prefix",
        nargs="?",
        default="sb",
        help="namespace name prefix (default: sb, the bench runs')",
    )

    args = parser.parse_args(argv)
    if args.command == "demo":
        _need_root()
        from bench.demo import run_demo

        return run_demo(args.seconds, args.cc, args.log_level)
    if args.command == "cleanup":
        _need_root()
        gone = cleanup_prefix(args.prefix)
        print("removed: " + (" ".join(gone) if gone else "nothing"))
        return 0
    return 2


def entry() -> int:
    try:
        return main()
    except KeyboardInterrupt:
        # The labs tear themselves down in their finally blocks.
        print("bench: interrupted; everything it created was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry())
