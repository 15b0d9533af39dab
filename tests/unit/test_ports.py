"""Test ports under pytest-xdist (ADR 41): each worker hands out ports of its own slice only, so
two workers never give the same port to two daemons."""

from __future__ import annotations

import pytest

from tests.fixtures import ports


def test_outside_xdist_the_whole_range_is_used() -> None:
    assert ports.worker_range(10000, 32768, {}) == range(10000, 32768)
    one_worker = {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"}
    assert ports.worker_range(10000, 32768, one_worker) == range(10000, 32768)


@pytest.mark.parametrize("workers", [2, 3, 4, 8])
def test_worker_slices_are_disjoint_and_inside_the_range(workers: int) -> None:
    slices = [
        ports.worker_range(10000, 32768, {"PYTEST_XDIST_WORKER": f"gw{i}", "PYTEST_XDIST_WORKER_COUNT": str(workers)})
        for i in range(workers)
    ]
    taken: set[int] = set()
    for given in slices:
        assert given.start >= 10000 and given.stop <= 32768 and len(given) >= (32768 - 10000) // workers
        assert taken.isdisjoint(given)
        taken.update(given)


def test_a_worker_beyond_the_count_is_refused() -> None:
    with pytest.raises(RuntimeError, match="gw4 of 4"):
        ports.worker_range(10000, 32768, {"PYTEST_XDIST_WORKER": "gw4", "PYTEST_XDIST_WORKER_COUNT": "4"})


def test_free_port_stays_in_this_workers_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    monkeypatch.setattr(ports, "_next", None)  # a fresh process's starting point
    monkeypatch.setattr(ports, "_given", set())
    mine = ports.worker_range(ports.LOWEST, ports._ephemeral_start())
    given = [ports.free_port() for _ in range(50)] + [ports.free_port_run(3) + 2]
    assert all(port in mine for port in given), (mine, given)
    assert len(set(given)) == len(given)
