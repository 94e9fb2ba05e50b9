"""Suite-wide: everything under tests/integration/ runs real processes in
network namespaces, so it is marked ``integration`` whatever its module
says (``pytest -m "not integration"`` must run as a normal user)."""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)
