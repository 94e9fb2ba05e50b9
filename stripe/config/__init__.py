"""stripe's configuration: TOML files in, a validated `Config` out.

- `model`: the `Config` and `LinkConfig` records, defaults and limits;
- `tables`: typed access to TOML tables, errors naming file and key;
- `files`: reading the config and key files (also as root, for a reload);
- `parse`: the whole file into a `Config` (`load`);
- `restart`: which changes a reload can apply and which need a restart.
"""

from .files import FileContent, ReadFile, read_local_file, recording_reader, shipped_reader
from .model import (
    AUTO_MTU,
    CONTROL_SOCKET_DIR,
    DEFAULT_PMTU_PROBE,
    LINK_TABLE_BASE,
    Config,
    ConfigError,
    LinkConfig,
    default_control_socket,
)
from .parse import load
from .restart import LIVE_FIELDS, RESTART_KEYS, SECRET_FIELDS, restart_needed

__all__ = [
    "AUTO_MTU", "CONTROL_SOCKET_DIR", "DEFAULT_PMTU_PROBE", "LINK_TABLE_BASE", "LIVE_FIELDS",
    "RESTART_KEYS",
    "SECRET_FIELDS", "Config", "ConfigError", "FileContent", "LinkConfig", "ReadFile",
    "default_control_socket",
    "load", "read_local_file", "recording_reader", "restart_needed", "shipped_reader",
]
