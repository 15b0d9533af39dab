"""The heap trimmer of long-running processes (the simulator, the agent)."""

from __future__ import annotations

import asyncio

import pytest

from warren import heap


def test_the_heap_is_trimmed_soon_after_start_then_on_a_period(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    loop_time: list[float] = []

    def fake_trimmer() -> object:
        return lambda: calls.append(asyncio.get_running_loop().time() - loop_time[0])

    monkeypatch.setattr(heap, "heap_trimmer", fake_trimmer)

    async def scenario() -> None:
        loop_time.append(asyncio.get_running_loop().time())
        trimming = asyncio.create_task(heap.trim_heap(every=0.05, first=0.02))
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        trimming.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert calls[0] >= 0.02 and calls[0] < calls[1] - 0.04 and calls[1] < calls[2] - 0.04


def test_no_trimmer_means_no_trimming(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "heap_trimmer", lambda: None)
    asyncio.run(asyncio.wait_for(heap.trim_heap(every=0.01, first=0.01), 1))  # returns at once
