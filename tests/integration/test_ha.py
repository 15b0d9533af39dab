"""Three real managers on loopback (issue #4): joining with a manager token, writes through
followers, failover after kill -9 of the leader, restart with the data directory, no-quorum
errors, consistent reads and demotion."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.ports import free_port_run
from tests.integration.harness import Joiner, Manager, join_managers, leader_of, manager_trio
from tests.waiting import holds, wait_for
from warren.cli.errors import Exit

pytestmark = pytest.mark.integration


def _info(manager: Manager, via: Manager | None = None) -> dict:
    result = manager.cli("--manager", (via or manager).addr, "cluster", "info", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Manager]]:
    with manager_trio(tmp_path) as managers:
        yield managers


def _create(via: Manager, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return via.cli("--manager", via.addr, "service", "create", name, "--image", "busybox", "--detach", *extra)


def test_three_managers_share_one_state_and_serve_writes_anywhere(trio: list[Manager]) -> None:
    first = trio[0]
    info = _info(first)
    assert len(info["managers"]) == 3
    assert all(m["voter"] and not m.get("error") for m in info["managers"]), info["managers"]
    assert sum(1 for m in info["managers"] if m.get("raft_state") == "leader") == 1

    # A write sent to a follower is forwarded; once acknowledged, every manager has it.
    follower = next(m for m in trio if _info(m)["raft_state"] == "follower")
    created = _create(follower, "web", "--replicas", "2")
    assert created.returncode == 0, created.stderr
    for manager in trio:
        listed = manager.cli("--manager", manager.addr, "--consistent", "service", "ls", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        assert [s["spec"]["name"] for s in json.loads(listed.stdout)] == ["web"]

    # A call through the context (no --manager) teaches it every manager, for failover.
    assert first.cli("node", "ls").returncode == 0
    config = json.loads(first.config.read_text())
    assert sorted(config["contexts"]["default"]["managers"]) == sorted(m.addr for m in trio)


def test_leader_kill_fails_over_and_the_restarted_manager_catches_up(trio: list[Manager]) -> None:
    assert trio[0].cli("node", "ls").returncode == 0  # the context learns every manager
    leader = leader_of(trio)
    survivors = [m for m in trio if m is not leader]
    for manager in trio:  # each process names itself with its Raft role (issue #16)
        _wait_for_title(manager, "leader" if manager is leader else "follower")
    leader.kill()
    started = time.monotonic()
    new_leader = leader_of(survivors)
    # The context lists every manager, so the plain CLI finds one that answers.
    created = new_leader.cli("service", "create", "after", "--image", "busybox", "--detach")
    assert created.returncode == 0, created.stderr
    assert time.monotonic() - started < 15
    _wait_for_title(new_leader, "leader")  # renamed on the role change

    leader.start(timeout=40)  # the same command on the same data directory: resumes and rejoins
    wait_for(
        lambda: "after" in leader.cli("--manager", leader.addr, "service", "ls").stdout,
        timeout=20,
        message="the restarted manager to catch up",
    )
    assert all(m["voter"] and not m.get("error") for m in _info(leader)["managers"])


def _wait_for_title(manager: Manager, role: str) -> None:
    """`warren: manager <node> (<role>)` in the process's /proc/<pid>/cmdline, as ps shows it."""
    assert manager.process is not None
    path = Path(f"/proc/{manager.process.pid}/cmdline")
    wanted = f"warren: manager {manager.node_id} ({role})".encode()
    wait_for(lambda: path.read_bytes().rstrip(b"\0") == wanted, timeout=15, message=wanted.decode())


def test_the_survivors_of_a_leader_crash_keep_the_link_they_elect_over(trio: list[Manager]) -> None:
    """Followers never send each other Raft messages, and PySyncObj drops a link that has read
    nothing for 3.5 s at its next send: the first vote request after a crash used to close the
    survivors' link instead of reaching the other survivor, costing a whole election timeout."""
    leader = leader_of(trio)
    survivors = [m for m in trio if m is not leader]
    time.sleep(5.0)  # the scenario: longer than PySyncObj's connection timeout with no election
    marks = {m.raft_port: len(m.log()) for m in survivors}
    leader.kill()
    leader_of(survivors)
    first, second = survivors
    for m, other in ((first, second), (second, first)):
        # The link logging is what this test reads: it must be there, or a reworded message
        # would make the absence below prove nothing.
        assert f"Raft connection to 127.0.0.1:{other.raft_port} up" in m.log()
        lost = f"Raft connection to 127.0.0.1:{other.raft_port} lost"
        assert lost not in m.log()[marks[m.raft_port] :], m.log()[marks[m.raft_port] :]


@pytest.mark.serial  # "fast" is timed: alone, after the workers (ADR 41)
def test_without_quorum_writes_fail_fast_and_reads_still_work(trio: list[Manager]) -> None:
    assert _create(trio[0], "before").returncode == 0
    leader = leader_of(trio)
    others = [m for m in trio if m is not leader]
    for manager in others:
        manager.kill()
    survivor = leader

    def refused() -> tuple[subprocess.CompletedProcess[str], float] | None:
        started = time.monotonic()
        result = _create(survivor, "lost")
        if result.returncode != 0 and "no quorum: 1 of 3 managers reachable" in result.stderr:
            return result, time.monotonic() - started
        return None

    # Once the leader notices its followers are gone, a write is refused at once: the answer
    # comes well within the CLI's 10 s deadline, so it did not wait for a commit that cannot come.
    result, took = wait_for(refused, timeout=20, message="a no-quorum refusal")
    assert result.returncode == Exit.UNAVAILABLE
    assert took < 10
    reads = survivor.cli("--manager", survivor.addr, "service", "ls", "--format", "json")
    assert reads.returncode == 0, reads.stderr
    assert [s["spec"]["name"] for s in json.loads(reads.stdout)] == ["before"]
    consistent = survivor.cli("--manager", survivor.addr, "--consistent", "service", "ls")
    assert consistent.returncode != 0 and "quorum" in consistent.stderr

    for manager in others:  # healed: the write that was refused can be made now
        manager.start(timeout=40)
    assert wait_for(lambda: _create(survivor, "lost").returncode == 0, timeout=20, message="writes after heal")


def test_demoting_a_manager_shrinks_the_quorum(trio: list[Manager]) -> None:
    leader = leader_of(trio)
    target = next(m for m in trio if m is not leader)
    demoted = leader.cli("--manager", leader.addr, "node", "demote", target.node_id)
    assert demoted.returncode == 0, demoted.stderr
    wait_for(lambda: target.process.poll() is not None, timeout=15, message="the demoted manager to stop")
    assert "demoted" in target.log()
    info = _info(leader)
    assert sorted(m["node_id"] for m in info["managers"]) == sorted(m.node_id for m in trio if m is not target)
    # Two managers remain, and both are needed: with one more gone, writes are refused.
    assert _create(leader, "two").returncode == 0
    restarted = target.cli(
        "cluster", "join", "--token", target.token, target.founder.join_addr, "--data-dir", str(target.data_dir)
    )
    assert restarted.returncode != 0 and "demoted" in restarted.stderr


def test_an_agent_learns_new_managers_and_follows_the_leader(tmp_path: Path) -> None:
    (tmp_path / "m1").mkdir()
    first = Manager(tmp_path / "m1", start_args=["--heartbeat-period", "1s"])
    managers = [first]
    (tmp_path / "worker").mkdir()
    worker = Joiner(tmp_path / "worker", first)
    try:
        first.start()
        worker.join(first.join_token("worker"), "--runtime", "exec")

        def worker_status(via: Manager) -> str:
            result = via.cli("--manager", via.addr, "node", "ls", "--format", "json", timeout=10)
            if result.returncode != 0:
                return ""
            nodes = json.loads(result.stdout)
            return next((n["status"] for n in nodes if n["role"] == "worker"), "")

        wait_for(lambda: worker_status(first) == "ready", timeout=30, message="the worker to register")
        join_managers(first, ["m2", "m3"], into=managers)
        # Joined after the agent's session opened: the session tells it about them.
        wait_for(
            lambda: (
                set(json.loads((worker.data_dir / "node.json").read_text())["managers"]) >= {m.addr for m in managers}
            ),
            timeout=15,
            message="the agent to learn every manager",
        )
        leader = leader_of(managers)
        leader.kill()
        survivors = [m for m in managers if m is not leader]
        new_leader = leader_of(survivors)
        # Down after 3 missed 1 s heartbeats unless its session moved to the new leader; it stays ready.
        try:
            holds(lambda: worker_status(new_leader) == "ready", 4.0, interval=0.5, message="the worker ready")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{worker.all_logs()[-3000:]}") from None
    finally:
        worker.stop_all()
        for manager in managers:
            manager.stop()


def test_promoted_workers_become_voting_managers_and_demote_back(tmp_path: Path) -> None:
    (tmp_path / "m1").mkdir()
    first = Manager(tmp_path / "m1", start_args=["--heartbeat-period", "1s"])
    workers: list[Joiner] = []
    try:
        first.start()
        token = first.join_token("worker")
        ports = {}
        for name in ("w1", "w2"):
            (tmp_path / name).mkdir()
            worker = Joiner(tmp_path / name, first)
            workers.append(worker)
            ports[name] = free_port_run(3)  # a manager's API, Raft and join ports
            worker.join(token, "--runtime", "exec", "--manager-listen-addr", f"127.0.0.1:{ports[name]}")

        def nodes() -> list[dict]:
            return first.cli_json("node", "ls")

        wait_for(lambda: sum(n["status"] == "ready" for n in nodes()) == 3, timeout=30, message="both workers")
        w1_id = json.loads((workers[0].data_dir / "node.json").read_text())["node_id"]
        promoted = first.cli("node", "promote", w1_id, timeout=90)
        assert promoted.returncode == 0, promoted.stderr + workers[0].all_logs()[-3000:]
        info = _info(first)
        assert len(info["managers"]) == 2 and all(m["voter"] and not m["error"] for m in info["managers"])
        assert f"127.0.0.1:{ports['w1']}" in {m["api_addr"] for m in info["managers"]}
        assert (
            first.cli("service", "create", "two", "--image", "busybox", "--detach", "--", "sleep", "600").returncode
            == 0
        )

        # The promoted node keeps running its agent: it is ready and runs tasks as before.
        w1 = next(n for n in nodes() if n["id"] == w1_id)
        assert (w1["role"], w1["status"]) == ("manager", "ready")

        # A promoted node's manager is part of the node: after kill -9 and `worker start`, it resumes.
        w2_id = json.loads((workers[1].data_dir / "node.json").read_text())["node_id"]
        promoted = first.cli("node", "promote", w2_id, timeout=90)
        assert promoted.returncode == 0, promoted.stderr + workers[1].all_logs()[-3000:]
        workers[1].kill()
        workers[1].start("worker", "start", "--data-dir", str(workers[1].data_dir))
        wait_for(
            lambda: (
                len(_info(first)["managers"]) == 3
                and all(m["voter"] and not m["error"] for m in _info(first)["managers"])
            ),
            timeout=40,
            message="three reachable managers after the restart",
        )

        demoted = first.cli("node", "demote", w1_id, timeout=60)
        assert demoted.returncode == 0, demoted.stderr
        info = _info(first)
        assert sorted(m["node_id"] for m in info["managers"]) == sorted([first.node_id, w2_id])
        wait_for(lambda: "demoted" in workers[0].log(), timeout=15, message="the promoted manager to stop")
        assert workers[0].processes[-1].poll() is None  # the agent keeps running
        wait_for(
            lambda: next(n for n in nodes() if n["id"] == w1_id)["status"] == "ready",
            timeout=15,
            message="the demoted node to stay ready",
        )
    finally:
        for worker in workers:
            worker.stop_all()
        first.stop()


def test_role_changes_that_cannot_work_are_refused_with_a_clear_status(tmp_path: Path) -> None:
    import grpc

    from warren.api.v1 import control_pb2 as pb

    (tmp_path / "m1").mkdir()
    only = Manager(tmp_path / "m1")
    try:
        only.start()
        control = only.control()
        cases = [
            ("boss", grpc.StatusCode.INVALID_ARGUMENT, "role must be one of manager, worker"),
            ("worker", grpc.StatusCode.FAILED_PRECONDITION, "is the last manager"),
        ]
        for role, code, needle in cases:
            with pytest.raises(grpc.RpcError) as err:
                control.UpdateNode(pb.UpdateNodeRequest(node=only.node_id, role=role), timeout=10)
            assert err.value.code() == code and needle in err.value.details()
        demote = only.cli("node", "demote", only.node_id)
        assert demote.returncode == Exit.CONFLICT and "last manager" in demote.stderr
        assert only.cli("node", "promote", "no-such-node").returncode == Exit.NOT_FOUND
        info = _info(only)
        assert [m["node_id"] for m in info["managers"]] == [only.node_id]  # nothing changed
    finally:
        only.stop()
