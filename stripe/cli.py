"""The `stripe` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from . import config as config_mod
from .noise import decode_key, encode_key, generate_keypair, public_from_private
from .spec import Role

EXIT_CONFIG = 2
EXIT_SETUP = 1
# The logging options given, for the processes a server with workers starts.
_LOG_ARGS: tuple[str, ...] = ()


def _version() -> str:
    try:
        return version("stripe-vpn")
    except PackageNotFoundError:
        return "0.1.0+source"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="stripe")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="How much to log (to stderr).")
@click.option("--log-format", type=click.Choice(["plain", "json"]), default="plain",
              show_default=True, help="Plain lines, or one JSON object per line.")
def main(log_level: str, log_format: str) -> None:
    """stripe: one flow over the sum of several uplinks, in order, encrypted."""
    global _LOG_ARGS
    _LOG_ARGS = ("--log-level", log_level, "--log-format", log_format)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, log_level.upper()))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message (for log shippers)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        return json.dumps({"time": round(record.created, 3), "level": record.levelname.lower(),
                           "message": record.getMessage()})


def _load(path: str, role: Role,
          read_file: config_mod.ReadFile = config_mod.read_local_file) -> config_mod.Config:
    try:
        return config_mod.load(path, role, read_file=read_file)
    except config_mod.ConfigError as exc:
        click.echo(f"stripe: config error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _run(path: str, role: Role) -> None:
    from .io.driver import serve

    cfg = _load(path, role)
    if cfg.workers > 1:
        from .io.workers import supervise

        _run_loop(lambda: supervise(cfg, _LOG_ARGS))
    else:
        _run_loop(lambda: serve(cfg))


def _run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    from .io.tun import SetupError

    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())
    except SetupError as exc:
        click.echo(f"stripe: {exc}", err=True)
        sys.exit(EXIT_SETUP)
    except KeyboardInterrupt:
        pass


config_option = click.option("-c", "--config", "path", required=True,
                             type=click.Path(dir_okay=False), help="TOML config file.")


@main.command()
@config_option
def server(path: str) -> None:
    """Run the server end: accept the client, stripe traffic back over its links."""
    _run(path, Role.SERVER)


@main.command()
@config_option
def client(path: str) -> None:
    """Run the client end: connect to the server over every configured link."""
    _run(path, Role.CLIENT)


@main.command(hidden=True)
@config_option
@click.option("--worker", "index", type=int, required=True, help="This worker's number.")
@click.option("--fds", required=True, help="The descriptors it inherits (JSON).")
def worker(path: str, index: int, fds: str) -> None:
    """One worker process of a server with `workers = N`: started by
    `stripe server` itself, with the TUN and sockets it opened."""
    from .io.workers import WorkerLogPrefix, serve_worker

    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerLogPrefix(index))
    cfg = _load(path, Role.SERVER)
    if not 0 <= index < cfg.workers:
        click.echo(f"stripe: worker {index}: the config has workers = {cfg.workers}", err=True)
        sys.exit(EXIT_CONFIG)
    _run_loop(lambda: serve_worker(cfg, index, fds))


@main.command()
@config_option
@click.option("--role", type=click.Choice(["client", "server"]),
              help="Validate as this role (default: server if listen_port is set).")
def check(path: str, role: str | None) -> None:
    """Validate a config file; exit 2 with the reason if it is wrong."""
    cfg = _load(path, _role_of(path) if role is None else Role(role))
    links = ", ".join(link.name for link in cfg.links) or "(learned from the client)"
    workers = f", {cfg.workers} workers" if cfg.workers > 1 else ""
    click.echo(f"{path}: ok ({cfg.role.value}, tun {cfg.tun_name}, links: {links}{workers})")


def _role_of(path: str) -> Role:
    """A server's config has a listen_port."""
    try:
        import tomllib

        with open(path, "rb") as f:
            iface = tomllib.load(f).get("interface", {})
        return Role.SERVER if isinstance(iface, dict) and "listen_port" in iface else Role.CLIENT
    except (OSError, ValueError):
        return Role.CLIENT  # load() reports the real problem


@main.command()
@config_option
@click.option("--socket", "socket_path", type=click.Path(),
              help="The control socket (default: the one the config names).")
def reload(path: str, socket_path: str | None) -> None:
    """Apply a changed config to the running stripe without dropping the
    session: links added, removed or re-weighted, peers, scheduler.  Prints
    what changed; exits nonzero with the reason if the change was refused
    (the old config keeps running).  SIGHUP does the same, but then the
    process must be able to read the files itself (it may have dropped root)."""
    import os
    from pathlib import Path

    from .io.control_socket import request

    path = os.path.abspath(path)  # the process may run in another directory
    files: dict[str, object] = {}
    cfg = _load(path, _role_of(path), config_mod.recording_reader(files))
    sock = Path(socket_path) if socket_path else cfg.control_socket
    try:
        reply = request(sock, "reload", timeout_s=10.0, config=path, files=files)
    except (OSError, ValueError) as exc:
        click.echo(f"stripe: reload: no stripe answering on {sock}: {exc}", err=True)
        sys.exit(EXIT_SETUP)
    if not reply.get("ok"):
        click.echo(f"stripe: reload refused, the old config keeps running: "
                   f"{reply.get('error', reply)}", err=True)
        sys.exit(EXIT_SETUP)
    changes = reply.get("changes") or ["no changes"]
    click.echo("reload: " + ", ".join(str(change) for change in changes))


@main.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Find the socket from this config (its control_socket or TUN name).")
@click.option("-i", "--interface", "tun", default="stripe0", show_default=True,
              help="Find the socket from the TUN name.")
@click.option("--socket", "socket_path", type=click.Path(), help="The control socket itself.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--watch", type=float, default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
def status(path: str | None, tun: str, socket_path: str | None, as_json: bool,
           watch: float | None) -> None:
    """Show links, RTT, loss, rates, reordering and drops of a running stripe."""
    import json
    import time
    from pathlib import Path

    from .io.control_socket import refuses_connections, request
    from .status import render

    if socket_path:
        sockets = [Path(socket_path)]
    elif path:
        try:
            import tomllib

            with open(path, "rb") as f:
                iface = tomllib.load(f).get("interface", {})
            name = iface.get("name", "stripe0")
            role = Role.SERVER if "listen_port" in iface else Role.CLIENT
            sockets = [Path(iface.get("control_socket") or
                            config_mod.default_control_socket(name, role))]
        except (OSError, ValueError, AttributeError) as exc:
            click.echo(f"stripe: status: cannot read {path}: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
    else:
        # A socket file left by a stripe that ended (one that ran as the
        # other role with the same TUN name, say) must not hide a live one.
        candidates = [config_mod.default_control_socket(tun, role) for role in Role]
        present = [p for p in candidates if p.exists()]
        sockets = ([p for p in present if not refuses_connections(p)] or present[:1]
                   or candidates[:1])
    while True:
        replies = []
        for sock in sockets:
            try:
                reply = request(sock)
            except (OSError, ValueError) as exc:
                click.echo(f"stripe: status: no stripe answering on {sock}: {exc}", err=True)
                sys.exit(EXIT_SETUP)
            if "error" in reply:
                click.echo(f"stripe: status: {reply['error']}", err=True)
                sys.exit(EXIT_SETUP)
            replies.append(reply)
        if as_json:
            text = json.dumps(replies[0] if len(replies) == 1 else replies, indent=2,
                              sort_keys=True)
        else:
            text = "\n\n".join(render(reply) for reply in replies)
        if watch is None:
            click.echo(text)
            return
        click.clear()
        click.echo(text)
        try:
            time.sleep(max(watch, 0.2))
        except KeyboardInterrupt:
            return


@main.command()
def genkey() -> None:
    """Print a new private key (base64)."""
    private, _ = generate_keypair()
    click.echo(encode_key(private))


@main.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key."""
    try:
        private = decode_key(sys.stdin.read())
    except ValueError as exc:
        click.echo(f"stripe: pubkey: stdin is not a private key: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(encode_key(public_from_private(private)))
