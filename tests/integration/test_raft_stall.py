"""A leader whose process stalls, as on a loaded machine, keeps its leadership (ADR 52).

With 500 sim nodes on one manager (load 30 on 2 cores), the Raft thread went 0.4-0.9 s without
running, several times a minute; with election timeouts of 0.3-0.45 s, each such stall of the
leader made the followers elect another one, and every session dropped and reconnected. Three
real managers; the leader is stopped (SIGSTOP, so its connections stay open, as a busy process's
do) for 0.7 s at a time: no election may follow.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager, manager_trio
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc

pytestmark = pytest.mark.integration

# Seconds: longer than the election timeouts before ADR 80 (1-1.5 s), as long as the stalls that
# elected new leaders in S2 (1.09-1.28 s).
STALL = 1.5
STALLS = 3


@pytest.fixture(scope="module")
def managers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Manager]]:
    root: Path = tmp_path_factory.mktemp("stall")
    with manager_trio(root, schedule_on_manager=False) as trio:
        yield trio


def terms(managers: list[Manager]) -> dict[str, tuple[int, str]]:
    """Each reachable manager's Raft term and state."""
    seen = {}
    admin = managers[0].data_dir / "admin"  # the joined managers hold no admin certificate
    for m in managers:
        try:
            with m.channel(admin) as channel:
                info = control_pb2_grpc.ControlStub(channel).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=5)
        except grpc.RpcError:
            continue
        seen[m.root.name] = (info.raft_term, info.raft_state)
    return seen


def test_a_leader_that_stalls_briefly_keeps_leading(managers: list[Manager]) -> None:
    def one_leader() -> Manager | None:
        states = terms(managers)
        leaders = [m for m in managers if states.get(m.root.name, (0, ""))[1] == "leader"]
        return leaders[0] if len(leaders) == 1 and len(states) == 3 else None

    leader = wait_for(one_leader, timeout=20, message="one leader among three managers")
    assert leader.process is not None
    term = terms(managers)[leader.root.name][0]
    for _ in range(STALLS):
        leader.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(STALL)  # the stall itself, not a wait for a condition
        finally:
            leader.process.send_signal(signal.SIGCONT)
        wait_for(lambda: len(terms(managers)) == 3, timeout=10, message="every manager answering")
    # No election, then or for a while after: every manager still in the first term.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        states = terms(managers)
        assert {t for t, _ in states.values()} == {term}, states
        assert states[leader.root.name][1] == "leader", states
        time.sleep(0.2)
