from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Manager


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path)
    try:
        m.start()
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    """One manager for a whole test file, for tests that leave its state as they found it
    (refused requests, reads): a manager start is most of such a test's time."""
    m = Manager(tmp_path_factory.mktemp("shared-manager"))
    try:
        m.start()
        yield m
    finally:
        m.stop()
