"""Under a stream of commits, a slow reconcile pass is not run back to back: the next pass waits
at least as long as the last one took (ADR 51), so passes take at most about half the time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.unit.test_manager_services import Manager, run
from warren import reconciler
from warren.manager import orchestrator as orchestrator_module
from warren.state import Put

PASS_SECONDS = 0.05
WINDOW = 1.0


def test_slow_passes_under_a_stream_of_commits_leave_the_manager_half_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = reconciler.reconcile_pass
    passes: list[float] = []

    def slow_reconcile(*args: Any, **kwargs: Any) -> Any:
        passes.append(time.monotonic())
        time.sleep(PASS_SECONDS)  # a pass over a large cluster (it runs in a worker thread)
        return real(*args, **kwargs)

    monkeypatch.setattr(reconciler, "reconcile_pass", slow_reconcile)

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        running = asyncio.create_task(manager.orchestrator.run())
        try:
            await asyncio.sleep(0.2)  # the first passes after the start
            with manager.store.read() as state:
                cluster = state.cluster
            start = time.monotonic()
            while time.monotonic() - start < WINDOW:
                manager.store.put(Put("cluster", cluster))  # a commit, as a stream of writes makes
                await asyncio.sleep(0.005)
            in_window = [t for t in passes if start <= t < start + WINDOW]
            # Each pass takes >= PASS_SECONDS and is followed by a gap as long: at most one pass
            # per 2 * PASS_SECONDS (back to back, there were about one per PASS_SECONDS).
            assert 1 <= len(in_window) <= WINDOW / (2 * PASS_SECONDS) + 1, len(in_window)
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    run(scenario())
    assert orchestrator_module.MAX_PASS_GAP >= PASS_SECONDS
