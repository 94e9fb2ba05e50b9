"""Reading the files a config names: the config itself and key files.

Reads go through a `ReadFile` so a process that dropped root can be handed
the files root read for it: `stripe reload -c FILE` reads them as root
(`recording_reader`) and ships them over the control socket
(`shipped_reader`).  Key files must not be readable by group or others.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..noise import decode_key

if TYPE_CHECKING:
    from .tables import Table

# Reads one file: (st_mode, content), OSError if it cannot.  Injected so a
# process that dropped root can be handed files root read for it (reload).
ReadFile = Callable[[Path], tuple[int, bytes]]


def read_local_file(path: Path) -> tuple[int, bytes]:
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_mode, f.read()


def recording_reader(into: dict[str, Any]) -> ReadFile:
    """Reads like read_local_file and keeps a JSON-able copy of every file in
    `into`, for `shipped_reader` at the other end of the control socket."""

    def read(path: Path) -> tuple[int, bytes]:
        mode, data = read_local_file(path)
        into[str(path)] = {"mode": mode, "data": base64.b64encode(data).decode()}
        return mode, data

    return read


def shipped_reader(files: object) -> ReadFile:
    """Serves the files `recording_reader` kept; a file that is absent or
    malformed in `files` reads as missing (an OSError, so a config error)."""

    def read(path: Path) -> tuple[int, bytes]:
        entry = files.get(str(path)) if isinstance(files, dict) else None
        if isinstance(entry, dict):
            mode, data = entry.get("mode"), entry.get("data")
            if type(mode) is int and isinstance(data, str):
                try:
                    return mode, base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    pass
        raise FileNotFoundError(errno.ENOENT, "not among the files sent with the request")

    return read


def key_from(reader: Table, inline: str, file_key: str, required: bool) -> bytes | None:
    text = reader.get(inline, str, None, what="a base64 key (see `stripe genkey`)")
    file_name = reader.get(file_key, str, None, what="a file path")
    if text is not None and file_name is not None:
        raise reader.error(inline, f"give either {inline} or {file_key}, not both")
    key = inline
    if file_name is not None:
        key = file_key
        path = Path(reader.path).parent / file_name
        try:
            mode, raw = reader.read_file(path)
            text = raw.decode(errors="replace")  # not base64 either way: reported below
        except OSError as exc:
            raise reader.error(file_key, f"cannot read {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise reader.error(
                file_key, f"{path} is readable by group or others; run: chmod 600 {path}"
            )
    if text is None:
        if required:
            raise reader.error(inline, f"missing; expected {inline} or {file_key}")
        return None
    try:
        return decode_key(text)
    except ValueError as exc:
        raise reader.error(key, f"expected a base64 32-byte key: {exc}") from None
