"""Markers of the jepsen tests (registered here: pyproject's list is shared)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "jepsen: a real cluster under fault injection (tests/jepsen/test_runs.py)"
    )
