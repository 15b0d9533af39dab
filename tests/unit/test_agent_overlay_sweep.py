"""The agent's sweep of its task-network ledger (ADR 23): only what it no longer holds goes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from warren.agent.overlay import Overlay
from warren.network import tasknet


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_the_sweep_releases_the_ledgers_tasks_the_agent_no_longer_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tasknet.ledger_dir(tmp_path)
    ledger.mkdir(parents=True)
    for task_id in ("held", "gone1", "gone2"):
        (ledger / task_id).touch()
    released: list[str] = []

    def release(where: Path, task_id: str) -> bool:
        released.append(task_id)
        (where / task_id).unlink()
        return True

    monkeypatch.setattr(tasknet, "release", release)

    async def scenario() -> None:
        overlay = Overlay(tmp_path, "node1", _inline)
        await overlay._sweep()  # not tracking a worker yet: nothing is a leftover
        assert released == []
        overlay.track(lambda: {"held"})
        await overlay._sweep()

    asyncio.run(scenario())
    assert sorted(released) == ["gone1", "gone2"]
    assert tasknet.recorded(ledger) == ["held"]
