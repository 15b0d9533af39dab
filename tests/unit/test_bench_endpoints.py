"""The endpoint benchmark's cases run (a benchmark no test runs broke unnoticed once)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_endpoints import _creating_case
from warren import gcpolicy


@pytest.fixture
def collector_as_it_was() -> Iterator[None]:
    """The case settles the collector as a manager does (ADR 67): give the other tests of this
    process their thresholds and callbacks back."""
    threshold, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.set_threshold(*threshold)
    if gcpolicy._timer in gc.callbacks and gcpolicy._timer not in callbacks:
        gc.callbacks.remove(gcpolicy._timer)


@pytest.mark.usefixtures("collector_as_it_was")
def test_the_creating_case_times_each_create_and_reports_what_the_sessions_got(tmp_path: Path) -> None:
    out = _creating_case(20, 2, 4, 4, 1, tmp_path)
    assert out["creates"] == 4
    assert len(out["leader_cpu_per_change_ms_all"]) == 4  # type: ignore[arg-type]
    assert out["message_bytes"] > 0  # type: ignore[operator]
