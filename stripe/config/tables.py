"""Typed access to the tables of a parsed TOML file, with errors that
name the file and the key.

Every problem becomes one `ConfigError` line that names the file, the key
and what is expected, e.g.::

    b.toml: link[1].remote: expected "HOST:PORT" such as "10.0.0.2:5000", got "10.0.0.2"
"""

from __future__ import annotations

from typing import Any

from .files import FileContent, ReadFile, read_local_file
from .model import ConfigError


class Table:
    """Typed access to one TOML table, with errors that name file and key.
    `source`: the config file as read (its mode and owner matter when it
    holds a secret)."""

    def __init__(self, path: str, where: str, table: Any,
                 read_file: ReadFile = read_local_file,
                 source: FileContent | None = None) -> None:
        self.path, self.where, self.read_file, self.source = path, where, read_file, source
        if not isinstance(table, dict):
            raise self.error("", f"expected a table, got {kind_of(table)}")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        name = f"{self.where}.{key}" if self.where and key else (self.where or key)
        return ConfigError(f"{self.path}: {name}: {message}")

    def get(self, key: str, kind: type, default: Any = ..., *, what: str = "") -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.error(key, f"missing; expected {what or kind.__name__}")
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.error(key, f"expected {what or kind.__name__}, got {kind_of(value)}")
        return value

    def check(self, key: str, ok: bool, message: str) -> None:
        if not ok:
            raise self.error(key, message)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key (known keys here: {known})")


def kind_of(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)

