"""Fixtures for the chaos suite: a ``lab`` of simulated hosts per test (see hosts.py).

Tests here are skipped with the reason when the machine cannot make network namespaces (not root,
no ``ip netns``). Slow variants are marked ``chaos_slow`` and run only when ``DYN_CHAOS_SLOW=1``
or the marker expression names them (``-m chaos_slow``, as ``scripts/test.sh --chaos`` passes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.hosts import Lab, skip_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    chaos_on = os.environ.get("DYN_CHAOS_SLOW") == "1" or "chaos_slow" in (config.getoption("-m") or "")
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif "chaos_slow" in item.keywords and not chaos_on:
            item.add_marker(
                pytest.mark.skip(reason="slow chaos scenario: set DYN_CHAOS_SLOW=1 (scripts/test.sh --chaos)")
            )


@pytest.fixture
def lab(log_dir: Path) -> Iterator[Lab]:
    """A fresh lab (bridge + hosts) for one test, torn down after it."""
    with Lab(log_dir) as the_lab:
        yield the_lab
