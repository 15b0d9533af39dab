"""The scale benchmark's own checks (#15): its parameters and its lost/duplicated slot count."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bench import bench_scale, scale_cli, scale_failure


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
    ones, lost, duplicated = scale_failure._slot_counts(FakeCluster(tasks), None)  # type: ignore[arg-type]
    assert (ones, lost, duplicated) == (2, 1, 1)


@pytest.mark.parametrize(
    ("shares", "windows"), [([0.9, 0.5, 0.2, 0.1], 4), ([0.9, 0.2, 0.8, 0.25, 0.1], 5), ([0.9, 0.6] * 20, None)]
)
def test_s4_waits_for_a_quiet_leader(monkeypatch: pytest.MonkeyPatch, shares: list[float], windows: int | None) -> None:
    """S4 is timed once the leader uses under QUIET_SHARE of a core, two windows in a row; a
    leader that stays busy is reported as such when the wait ends. (The leader's CPU is a
    script here: a real process's share depends on how loaded the machine running the test is.)"""
    window = 0.01
    monkeypatch.setattr(scale_cli, "QUIET_WINDOW_S", window)
    script = iter(shares)
    used = [0.0]

    def cpu_seconds(pid: int) -> float:
        """Each window's end adds the next scripted share of the window."""
        used[0] += next(script, 0.0) * window if cpu_seconds.ends else 0.0
        cpu_seconds.ends = not cpu_seconds.ends
        return used[0]

    cpu_seconds.ends = False  # type: ignore[attr-defined]
    monkeypatch.setattr(scale_cli, "cpu_seconds", cpu_seconds)
    cluster = SimpleNamespace(leader=lambda: SimpleNamespace(process=SimpleNamespace(pid=1)))
    settle = scale_cli.quiet_leader(cluster, limit=0.25)  # type: ignore[arg-type]
    seen = settle["leader_cpu_shares"]
    assert seen == pytest.approx(shares[: len(seen)], abs=0.01)
    assert settle["quiet"] is (windows is not None)
    if windows is not None:  # quiet at the first two quiet windows in a row, not before
        assert len(seen) == windows
    else:
        assert len(seen) >= 4
