"""The endpoint benchmark's cases run (a benchmark no test runs broke unnoticed once)."""

from __future__ import annotations

from pathlib import Path

from bench.bench_endpoints import _creating_case


def test_the_creating_case_times_each_create_and_reports_what_the_sessions_got(tmp_path: Path) -> None:
    out = _creating_case(20, 2, 4, 4, 1, tmp_path)
    assert out["creates"] == 4
    assert len(out["leader_cpu_per_change_ms_all"]) == 4  # type: ignore[arg-type]
    assert out["message_bytes"] > 0  # type: ignore[operator]
