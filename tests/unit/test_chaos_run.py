"""The chaos runner's own bookkeeping, with the lab and the cluster replaced by fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos import run


class _Lab:
    def __init__(self, run_id: str, state_file: Path) -> None:
        self.state_file = state_file

    def create(self, names: list[str]) -> None:
        pass


class _BrokenCluster:
    def __init__(self, *args: object) -> None:
        pass

    def bring_up(self) -> None:
        raise RuntimeError("cluster bring-up timed out at m1")

    def stop_all(self) -> None:
        pass


def test_a_cluster_that_does_not_start_exits_2_and_the_summary_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "Lab", _Lab)
    monkeypatch.setattr(run, "Cluster", _BrokenCluster)
    monkeypatch.setattr(run, "cleanup_state", lambda state_file: [])
    args = run.parse_args(["--seed", "1", "--rounds", "1", "--out", str(tmp_path)])
    lines: list[str] = []
    assert run.Runner(args, out=lines.append).run() == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == 2 and summary["rounds"] == 0
    assert any("cluster bring-up failed: cluster bring-up timed out at m1" in line for line in lines)
