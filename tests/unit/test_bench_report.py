"""`bench.run --report`: every stored figure in one table, each row naming its run's commit."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report
from bench.common import figure


def _result(commit: str, dirty: bool, figures: list[dict[str, object]]) -> dict[str, object]:
    machine = {"git_commit": commit, "git_dirty": dirty, "date": "2026-12-06T11:00:00+00:00", "loadavg_at_start": [0.5]}
    return {"figures": figures, "machine": machine}


def test_a_row_from_another_commit_or_a_changed_tree_says_so(tmp_path: Path) -> None:
    results = {
        "a": _result("aaaaaaa1", False, [figure("writes/s", 2500.0, "/s", 2000, ">=")]),
        "b": _result("aaaaaaa1", True, [figure("p99", 120.0, "ms", 100, "<=")]),
        "c": _result("bbbbbbb2", False, [figure("reported", 3.14159, "s")]),
    }
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    table = report.markdown(report.load(tmp_path, ["a", "b", "c", "absent"]))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "Most results are from commit `aaaaaaa`" in table
    assert "| writes/s | 2,500 /s | >= 2,000 /s | met | `aaaaaaa`, 2026-12-06 11:00, 0.5 |" in rows["a"]
    assert "| p99 | 120 ms | <= 100 ms | **NOT MET** | `aaaaaaa` (changed tree)" in rows["b"]
    assert "| reported | 3.14 s |  |  | **other commit** `bbbbbbb`" in rows["c"]
    assert "absent" not in rows
