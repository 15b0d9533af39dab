"""The manager's /metrics registry carries what the scale benchmark (#15) reads back."""

from __future__ import annotations

from prometheus_client import generate_latest

from warren.manager.metrics import REGISTRY


def test_the_registry_reports_the_process_memory_and_cpu() -> None:
    text = generate_latest(REGISTRY).decode()
    samples = {line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples["process_resident_memory_bytes"] > 1 << 20
    assert samples["process_cpu_seconds_total"] > 0


def test_a_scheduling_pass_of_seconds_is_told_apart_from_a_longer_one() -> None:
    text = generate_latest(REGISTRY).decode()
    bounds = {
        float(line.split('le="', 1)[1].split('"', 1)[0])
        for line in text.splitlines()
        if line.startswith("warren_scheduler_pass_duration_seconds_bucket{")
    }
    assert {5.0, 10.0}.issubset(bounds)
