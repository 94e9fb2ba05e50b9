"""The pure core, on a fake clock: no sockets, no root."""
