"""A record of the changes stripe made to the host, and how to revert them.

`routes` and `nat` record each change right after it succeeded; `network`
plays the record back, newest first, on exit or when a later step of the
set-up fails.  Its own module so the modules that record and the one that
plays back need not import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("stripe")


class Undo:
    """What stripe changed on the host, and how to put each change back.

    Empty state: nothing recorded; `rollback` does nothing.
    Invariant: entries are in the order the changes were made; `rollback`
    empties the record whatever happens, so nothing is reverted twice.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, Callable[[], None]]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, what: str, revert: Callable[[], None]) -> None:
        """`what` was just done (a command line a user would recognise)."""
        log.info("network: %s", what)
        self._entries.append((what, revert))

    def rollback(self) -> list[str]:
        """Revert everything, newest first; a failure is logged and the rest
        still reverted.  Returns the changes that could not be reverted."""
        failed = []
        while self._entries:
            what, revert = self._entries.pop()
            try:
                revert()
            except Exception as exc:  # keep undoing the others
                log.warning("network: could not undo %r: %s", what, exc)
                failed.append(what)
            else:
                log.info("network: undone %s", what)
        return failed
