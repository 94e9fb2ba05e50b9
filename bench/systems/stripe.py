"""stripe as a system compared: its commands (keys, config checks, status) and
its server and client processes in a lab.

A stripe system runs the code of one checkout (:class:`StripeTree`): the
current one, or another given with ``--stripe-tree LABEL=DIR`` (say a ``git
worktree`` of an older commit), whose systems are named
``stripe-<variant>@LABEL`` and run side by side with the current tree's in
the same lab. Keys and config files come from the current tree; ``stripe
check``, ``server``, ``client`` and ``status`` run from the system's own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.lab import CommandError, Lab, Proc, in_ns, run
from bench.systems.base import Target
from bench.systems.tunnel import TunnelPair, TunnelSystem

# A tree's label: short, and safe in system names, file names and paths.
TREE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")


def stripe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stripe", *args]


@dataclass(frozen=True, slots=True)
class StripeTree:
    """A checkout of stripe whose ``python -m stripe`` a system runs.

    Run with the tree as working directory and first on PYTHONPATH, so its
    ``stripe`` package is found before the one this environment has
    installed (an editable install's finder comes after the path).
    ``label`` is None for the current tree.
    """

    path: Path = REPO_ROOT
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> StripeTree:
        """``LABEL=DIR`` from the command line; ValueError says what is wrong."""
        label, eq, directory = text.partition("=")
        if not eq or not directory:
            raise ValueError(f"{text!r}: expected LABEL=DIR")
        if not TREE_LABEL.fullmatch(label):
            raise ValueError(
                f"{label!r}: a label is 1-16 letters, digits, '-' or '_', starting with a "
                "letter or digit"
            )
        path = Path(directory).expanduser().resolve()
        tree = cls(path, label)
        if not tree.available():
            raise ValueError(f"{directory}: not a checkout of stripe (no stripe/__main__.py)")
        return tree

    def available(self) -> bool:
        return (self.path / "stripe" / "__main__.py").is_file()

    def system_name(self, variant: str) -> str:
        """``stripe-<variant>``, and ``@<label>`` for another tree."""
        return f"stripe-{variant}" + (f"@{self.label}" if self.label else "")

    def env(self) -> dict[str, str]:
        """The environment of this tree's stripe processes."""
        inherited = os.environ.get("PYTHONPATH")
        path = str(self.path) + (os.pathsep + inherited if inherited else "")
        return {**os.environ, "PYTHONPATH": path}

    def stripe_file(self) -> str:
        """Where ``import stripe`` comes from in this tree's environment."""
        return run(
            [sys.executable, "-c", "import stripe; print(stripe.__file__)"],
            timeout_s=20,
            cwd=self.path,
            env=self.env(),
        ).stdout.strip()

    def describe(self) -> dict[str, str]:
        """For the run's meta.json: the directory, its commit, the stripe it imports;
        CommandError if that stripe is not this tree's own."""
        imported = self.stripe_file()
        if not Path(imported).resolve().is_relative_to(self.path):
            raise CommandError(
                f"--stripe-tree {self.label}: python -m stripe would run {imported}, "
                f"not the code in {self.path}"
            )
        commit = run(["git", "-C", str(self.path), "rev-parse", "--short", "HEAD"], check=False)
        return {"dir": str(self.path), "stripe": imported, "commit": commit.stdout.strip()}


CURRENT_TREE = StripeTree()


def stripe_available() -> bool:
    return CURRENT_TREE.available()


def genkey() -> str:
    return run(stripe_cmd("genkey"), timeout_s=20, cwd=REPO_ROOT).stdout.strip()


def pubkey(private: str) -> str:
    proc = subprocess.run(
        stripe_cmd("pubkey"),
        input=private + "\n",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise CommandError(f"stripe pubkey failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def check_config(path: Path, ns: str, tree: StripeTree = CURRENT_TREE) -> tuple[bool, str]:
    """``stripe check -c`` inside ``ns``, where the config's interfaces exist:
    does this stripe accept this config (e.g. its scheduler)?"""
    proc = subprocess.run(
        in_ns(ns, stripe_cmd("check", "-c", str(path))),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=tree.path,
        env=tree.env(),
    )
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


@dataclass
class StripePair(TunnelPair):
    """A stripe server in ``server_ns`` and client in ``client_ns``, run from ``tree``."""

    server_config: Path = Path()
    client_config: Path = Path()
    log_level: str = "info"
    tree: StripeTree = CURRENT_TREE

    def start(self) -> None:
        self.server = self._spawn("server", self.server_config, self.server_ns)
        self.client = self._spawn("client", self.client_config, self.client_ns)

    def _spawn(self, role: str, config: Path, ns: str) -> Proc:
        return Proc(
            f"stripe-{role}",
            stripe_cmd("--log-level", self.log_level, role, "-c", str(config)),
            ns,
            self.workdir / f"stripe-{role}.log",
            cwd=self.tree.path,
            env=self.tree.env(),
        )


@dataclass
class Stripe(TunnelSystem):
    """The tunnel, from ready-made config files (demo) or generated ones (suite)."""

    label: str
    server_config: Path
    client_config: Path
    tunnel_server_addr: str
    log_level: str = "info"
    tree: StripeTree = CURRENT_TREE
    pair: StripePair | None = field(default=None, init=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    def start(self, lab: Lab, workdir: Path) -> Target:
        self.pair = StripePair(
            lab.names.client_ns,
            lab.names.server_ns,
            workdir,
            server_config=self.server_config,
            client_config=self.client_config,
            log_level=self.log_level,
            tree=self.tree,
        )
        self.pair.start()
        self.pair.wait_ready(self.tunnel_server_addr)
        return Target(self.tunnel_server_addr)

    def status(self, server_first: bool = False) -> dict[str, Any]:
        """``stripe status --json`` of both ends: per-link RTT, loss, drops.

        The two are read one after the other, the client first unless
        ``server_first`` (the order matters when comparing their counters)."""
        out: dict[str, Any] = {}
        if self.pair is None:
            return out
        ends = [
            ("client", self.client_config, self.pair.client_ns),
            ("server", self.server_config, self.pair.server_ns),
        ]
        # The control socket's name carries the namespace: ask from inside it.
        for role, config, ns in reversed(ends) if server_first else ends:
            proc = subprocess.run(
                in_ns(ns, stripe_cmd("status", "-c", str(config), "--json")),
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                cwd=self.tree.path,
                env=self.tree.env(),
            )
            try:
                out[role] = json.loads(proc.stdout)
            except json.JSONDecodeError:
                out[role] = {"error": (proc.stderr or proc.stdout).strip()[:300]}
        return out
