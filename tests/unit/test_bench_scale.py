"""The scale benchmark's own checks (#15): its parameters and its lost/duplicated slot count."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bench import bench_scale


def test_a_size_below_one_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_scale.main(["--set", "small", "--nodes", "0"])
    assert exited.value.code == 2
    assert "--nodes must be at least 1" in capsys.readouterr().err


class FakeCluster:
    def __init__(self, tasks: list[Any]) -> None:
        self._tasks = tasks

    def tasks(self, manager: Any) -> list[Any]:
        return self._tasks


def task(service: str, slot: int, state: str) -> SimpleNamespace:
    return SimpleNamespace(service_id=service, slot=slot, state=state)


def test_slot_counts_find_lost_and_duplicated_slots() -> None:
    tasks = [
        task("a", 1, "running"),
        task("a", 1, "shutdown"),  # history of a slot that runs again: fine
        task("a", 2, "running"),
        task("a", 2, "running"),  # duplicated
        task("b", 1, "failed"),  # lost: nothing runs in the slot
        task("b", 2, "running"),
    ]
    ones, lost, duplicated = bench_scale._slot_counts(FakeCluster(tasks), None)  # type: ignore[arg-type]
    assert (ones, lost, duplicated) == (2, 1, 1)
