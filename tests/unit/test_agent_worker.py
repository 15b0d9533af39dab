"""The worker and its cache: COMPLETE is authoritative, restarts re-adopt, strays are removed."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import lmdb
import msgspec

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.assignments import AssignmentDelta
from warren.agent.cache import AgentCache, LocalState
from warren.agent.controller import container_spec
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.model import TaskState

S = TaskState


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


# -- cache -------------------------------------------------------------------------------------------
def test_cache_round_trip_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "agent.db"
    cache = AgentCache(path)
    a, b = make_task("a"), make_task("b", state=S.RUNNING)
    cache.replace_tasks({"a": a, "b": b})
    cache.put_local("a", LocalState(state=S.RUNNING, runtime_id="ra", started=True, attempt=2))
    cache.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700

    cache = AgentCache(path)
    assert cache.tasks() == {"a": a, "b": b}
    assert cache.local_states()["a"].attempt == 2
    cache.replace_tasks({"b": b}, keep={"a"})  # a left the set but is still being removed
    assert set(cache.tasks()) == {"a", "b"}
    cache.replace_tasks({"b": b})
    assert set(cache.tasks()) == {"b"}
    cache.forget("a")
    assert cache.local_states() == {}
    cache.close()


def test_cache_with_another_schema_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    cache = AgentCache(path)
    cache.put_tasks([make_task("a")])
    cache.close()
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"999", db=env.open_db(b"meta", txn=txn))
    env.close()
    cache = AgentCache(path)
    assert cache.tasks() == {}
    cache.close()


# -- worker ------------------------------------------------------------------------------------------
def _worker(rt: FakeRuntime, cache: AgentCache, tmp_path: Path) -> tuple[Worker, StatusQueue]:
    queue = StatusQueue()
    return Worker(make_env(rt, Recorder(), tmp_path), cache, queue), queue


def test_complete_set_is_authoritative(tmp_path: Path) -> None:
    rt = FakeRuntime()
    cache = AgentCache(tmp_path / "agent.db")

    async def scenario() -> None:
        worker, queue = _worker(rt, cache, tmp_path)
        await worker.start()
        worker.set_connected(True)
        worker.apply(AssignmentDelta(complete=True, updated=(make_task("a"), make_task("b"))))
        await until(lambda: len(rt.running()) == 2, message="two running")
        # Reconnect: the managers replaced b while we were away; only a is ours now.
        worker.apply(AssignmentDelta(complete=True, updated=(make_task("a", state=S.RUNNING),)))
        await until(lambda: "b" not in worker.controllers, message="b removed")
        assert [c.labels["warren.task.id"] for c in rt.list()] == ["a"]
        assert set(cache.tasks()) == {"a"} and set(cache.local_states()) == {"a"}
        assert {r.task_id for r in queue.take()} <= {"a", "b"}
        await worker.close()

    run(scenario())
    cache.close()


def test_restarted_agent_readopts_instead_of_starting_duplicates(tmp_path: Path) -> None:
    rt = FakeRuntime()
    cache = AgentCache(tmp_path / "agent.db")

    async def first_life() -> None:
        worker, _ = _worker(rt, cache, tmp_path)
        await worker.start()
        worker.apply(AssignmentDelta(complete=True, updated=(make_task("a"), make_task("b"))))
        await until(lambda: len(rt.running()) == 2, message="two running")
        await until(lambda: all(c.local.state == S.RUNNING for c in worker.controllers.values()), message="state")
        await worker.close()  # the process dies; its containers live on

    async def second_life() -> None:
        rt.calls.clear()
        worker, queue = _worker(rt, cache, tmp_path)
        await worker.start()
        await async_holds(
            lambda: rt.steps("prepare") == [] and rt.steps("start") == [], 0.2, message="nothing prepared or started"
        )
        assert {c.local.state for c in worker.controllers.values()} == {S.RUNNING}
        # The re-adopted processes are watched: an exit is noticed and reported.
        worker.set_connected(True)
        rt.exit(rt.of_task("a")[0].runtime_id, 1)
        await until(lambda: worker.controllers["a"].local.state == S.FAILED, message="exit seen")
        queue.take()  # sent, but say the session broke before the managers applied it
        worker.apply(AssignmentDelta(complete=True, updated=(make_task("a", state=S.RUNNING), make_task("b"))))
        reports = {r.task_id: r for r in queue.take()}
        assert reports["a"].state == S.FAILED  # behind on the managers' side: reported again
        await worker.close()

    run(first_life())
    run(second_life())
    assert len(rt.steps("start")) == 0
    cache.close()


def test_containers_of_unknown_tasks_are_removed_at_the_first_complete_set(tmp_path: Path) -> None:
    rt = FakeRuntime()
    cache = AgentCache(tmp_path / "agent.db")
    for task_id in ("stray", "known"):
        rid = rt.prepare(container_spec(make_task(task_id), tmp_path))
        rt.start(rid)

    async def scenario() -> None:
        worker, _ = _worker(rt, cache, tmp_path)
        await worker.start()
        # nothing is removed before the managers say what is ours
        await async_holds(lambda: len(rt.running()) == 2, 0.2, message="both containers kept")
        known = make_task("known", state=S.RUNNING)
        worker.apply(AssignmentDelta(complete=True, updated=(known,)))
        await until(lambda: len(rt.containers) == 1, message="stray removed")
        assert rt.of_task("known") and rt.of_task("known")[0].state.value == "running"
        await worker.close()

    run(scenario())
    assert len(rt.steps("start")) == 2  # only the two started by the test: "known" was adopted
    cache.close()


def test_incremental_removal_and_shutdown(tmp_path: Path) -> None:
    rt = FakeRuntime()
    cache = AgentCache(tmp_path / "agent.db")

    async def scenario() -> None:
        worker, queue = _worker(rt, cache, tmp_path)
        await worker.start()
        a, b = make_task("a"), make_task("b")
        worker.apply(AssignmentDelta(complete=True, updated=(a, b)))
        await until(lambda: len(rt.running()) == 2, message="two running")
        worker.apply(AssignmentDelta(complete=False, updated=(msgspec.structs.replace(a, desired_state=S.SHUTDOWN),)))
        await until(lambda: worker.controllers["a"].local.state == S.SHUTDOWN, message="a shut down")
        worker.apply(AssignmentDelta(complete=False, removed=("b",)))
        await until(lambda: not rt.containers, message="all removed")
        assert "b" not in worker.controllers and "b" not in cache.tasks()
        assert {r.task_id: r.state for r in queue.take()}["a"] == S.SHUTDOWN
        await worker.close()

    run(scenario())
    cache.close()


def test_unreadable_new_task_is_rejected(tmp_path: Path) -> None:
    rt = FakeRuntime()
    cache = AgentCache(tmp_path / "agent.db")

    async def scenario() -> None:
        worker, queue = _worker(rt, cache, tmp_path)
        await worker.start()
        worker.apply(AssignmentDelta(complete=True, invalid=(("bad", "unreadable task spec: nope"),)))
        (report,) = queue.take()
        assert (report.task_id, report.state, report.error) == ("bad", S.REJECTED, "unreadable task spec: nope")
        await worker.close()

    run(scenario())
    cache.close()


def test_counts_by_state_counts_each_controllers_local_state(tmp_path: Path) -> None:
    """What the agent's metrics and the simulator's status report: tasks per local state, by label."""
    from types import SimpleNamespace

    worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), AgentCache(tmp_path / "agent.db"), StatusQueue())
    states = [S.RUNNING, S.RUNNING, S.PREPARING, S.FAILED, S.RUNNING]
    worker.controllers = {f"t{i}": SimpleNamespace(local=LocalState(state=s)) for i, s in enumerate(states)}
    assert worker.counts_by_state() == {"running": 3, "preparing": 1, "failed": 1}
    worker.controllers = {}
    assert worker.counts_by_state() == {}
