"""Suite-wide: everything under tests/integration/ runs real processes in
network namespaces, so it is marked ``integration`` whatever its module
says (``pytest -m "not integration"`` must run as a normal user).

`scripts/test.sh` runs the suite in two pytest-xdist workers: the lab
tests spend most of their time waiting on shaped links and timers, so two
at once halve the wall time.  A test marked ``exclusive`` (it measures a
rate, a CPU share or a timing that another test beside it would skew, or
it saturates the CPU itself) runs alone: every test holds a shared lock
while it runs, an exclusive one the lock to itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@contextlib.contextmanager
def _slot(run_id: str, exclusive: bool) -> Iterator[None]:
    """A readers-writer lock shared by the workers of one run (flock files
    named after xdist's run id).  The turnstile gives a waiting exclusive
    test priority: while it waits for the running tests to finish, no new
    test starts."""
    base = Path(tempfile.gettempdir()) / f"stripe-tests-{run_id}"
    with open(f"{base}.turnstile", "a") as turnstile, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:  # one process: nothing runs beside the test
        yield
        return
    with _slot(run_id, item.get_closest_marker("exclusive") is not None):
        yield
