"""Reading the files a config names: the config itself and key files.

Reads go through a `ReadFile` so a process that dropped root can be handed
the files root read for it: `stripe reload -c FILE` reads them as root
(`recording_reader`) and ships them over the control socket
(`shipped_reader`), with their mode and owner.

Secrets stay private: a key file, and a config that holds a private_key or
preshared_key inline, must give no permission to group or others, and must
belong to root or to the user running stripe (anyone else who owns it can
read it, or replace the key).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..noise import decode_key

if TYPE_CHECKING:
    from .tables import Table


class FileContent(NamedTuple):
    mode: int  # st_mode
    uid: int  # the owner
    data: bytes


# Reads one file, OSError if it cannot.  Injected so a process that dropped
# root can be handed files root read for it (reload).
ReadFile = Callable[[Path], FileContent]


def read_local_file(path: Path) -> FileContent:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return FileContent(st.st_mode, st.st_uid, f.read())


def recording_reader(into: dict[str, Any]) -> ReadFile:
    """Reads like read_local_file and keeps a JSON-able copy of every file in
    `into`, for `shipped_reader` at the other end of the control socket."""

    def read(path: Path) -> FileContent:
        content = read_local_file(path)
        into[str(path)] = {"mode": content.mode, "uid": content.uid,
                           "data": base64.b64encode(content.data).decode()}
        return content

    return read


def shipped_reader(files: object) -> ReadFile:
    """Serves the files `recording_reader` kept; a file that is absent or
    malformed in `files` reads as missing (an OSError, so a config error)."""

    def read(path: Path) -> FileContent:
        entry = files.get(str(path)) if isinstance(files, dict) else None
        if isinstance(entry, dict):
            mode, uid, data = entry.get("mode"), entry.get("uid"), entry.get("data")
            if type(mode) is int and type(uid) is int and isinstance(data, str):
                try:
                    return FileContent(mode, uid, base64.b64decode(data, validate=True))
                except (binascii.Error, ValueError):
                    pass
        raise FileNotFoundError(errno.ENOENT, "not among the files sent with the request")

    return read


def check_private(reader: Table, key: str, path: Path, content: FileContent,
                  what: str = "is", fix: str = "") -> None:
    """Refuse a file holding a secret that others can read or replace:
    ConfigError naming the config's `key`, the file and the fix."""
    if content.mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise reader.error(key, f"{path} {what} open to group or others; "
                                f"run: chmod 600 {path}{fix}")
    runner = os.geteuid()
    if content.uid not in (0, runner):
        name = _user_name(runner)
        raise reader.error(key, f"{path} is owned by uid {content.uid}, not by root or the "
                                f"user running stripe ({name}); run: chown {name} {path}")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def key_from(reader: Table, inline: str, file_key: str, required: bool,
             secret: bool = True) -> bytes | None:
    """The key given inline (`inline`) or in a file (`file_key`); `secret`:
    a private or preshared key (see the module doc)."""
    text = reader.get(inline, str, None, what="a base64 key (see `stripe genkey`)")
    file_name = reader.get(file_key, str, None, what="a file path")
    if text is not None and file_name is not None:
        raise reader.error(inline, f"give either {inline} or {file_key}, not both")
    key = inline
    if file_name is not None:
        key = file_key
        path = Path(reader.path).parent / file_name
        try:
            content = reader.read_file(path)
            text = content.data.decode(errors="replace")  # not base64 either way: reported below
        except OSError as exc:
            raise reader.error(file_key, f"cannot read {path}: {exc.strerror}") from None
        check_private(reader, file_key, path, content)
    elif text is not None and secret and reader.source is not None:
        check_private(reader, inline, Path(reader.path), reader.source,
                      "holds this key and is", f" (or move the key to {file_key})")
    if text is None:
        if required:
            raise reader.error(inline, f"missing; expected {inline} or {file_key}")
        return None
    try:
        return decode_key(text)
    except ValueError as exc:
        raise reader.error(key, f"expected a base64 32-byte key: {exc}") from None
