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
import shutil
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


# The lock files' directory: made by the controlling pytest before it starts
# its workers (they inherit the variable), removed when it ends.
_LOCK_DIR_ENV = "STRIPE_TEST_LOCK_DIR"


def _in_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def pytest_configure(config: pytest.Config) -> None:
    if not _in_worker() and getattr(config.option, "numprocesses", None):
        os.environ[_LOCK_DIR_ENV] = tempfile.mkdtemp(prefix="stripe-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _in_worker() and _LOCK_DIR_ENV in os.environ:
        shutil.rmtree(os.environ.pop(_LOCK_DIR_ENV), ignore_errors=True)


@contextlib.contextmanager
def _slot(directory: Path, exclusive: bool) -> Iterator[None]:
    """A readers-writer lock shared by the workers of one run (two flock
    files).  The turnstile gives a waiting exclusive test priority: while it
    waits for the running tests to finish, no new test starts."""
    with open(directory / "turnstile", "a") as turnstile, open(directory / "lock", "a") as lock:
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
    directory = os.environ.get(_LOCK_DIR_ENV)
    if directory is None or not _in_worker():
        yield  # one process: nothing runs beside the test
        return
    with _slot(Path(directory), item.get_closest_marker("exclusive") is not None):
        yield
