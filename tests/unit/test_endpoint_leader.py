"""What the leader computes and sends per commit (#15, ADR 65, 72, 75): only the services a
commit touched, a plain service from its changed tasks alone, unconfirmed versions at the cost
of what they changed, each service as at one committed index; a task is not sent back to its
node for the status the node reported."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.unit.endpoint_rig import Agent, Rig, _change, _LiveState, _run, _service, _task, ops
from tests.waiting import async_wait_for as until
from warren import strategy
from warren.api import convert
from warren.manager import endpointlog, endpoints
from warren.manager.events import EventHub
from warren.model import TaskState
from warren.state import ClusterState, Put


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> dict[str, int]:
    """Count the calls of `owner.name` from now on, in the returned {"calls": n}."""
    counted = {"calls": 0}
    real = getattr(owner, name)

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        counted["calls"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return counted


def test_a_delta_carries_only_the_changed_services_and_the_leader_recomputes_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 50 services, one task becoming a backend is one entry on the wire to an agent that
    takes deltas, all 50 to an agent that does not announce them (an older one), and one
    service's endpoint computed on the leader (50 before, per change)."""
    built = _count_calls(monkeypatch, convert, "endpoint_to_pb")

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(50)])
            rig.commit([Put("task", _task(k, 0, "running", 0)) for k in range(50)])
            new, old = rig.open(1, Agent(deltas=True)), rig.open(2, Agent(deltas=False))
            await rig.settled([new, old])
            sent, base = (len(new.messages), len(old.messages)), new.index
            built["calls"], rebuilds = 0, rig.dispatcher._endpoints.rebuilds
            rig.commit([Put("task", _task(7, 1, "running", 0))])
            await rig.settled([new, old])
            assert built["calls"] == 1
            assert rig.dispatcher._endpoints.rebuilds == rebuilds  # no recomputation of all
            delta = new.messages[sent[0]]
            assert delta.services_delta and [e.name for e in delta.services] == ["s7"]
            assert list(delta.services[0].backends) == ["10.224.7.2", "10.224.7.6"]
            assert delta.services_base == base and delta.services_index > base
            whole = old.messages[sent[1]]
            assert whole.services_changed and len(whole.services) == 50
            assert new.services == old.services == rig.truth()
        finally:
            await rig.close()

    _run(scenario())


def test_a_plain_service_is_recomputed_from_the_changes_without_reading_its_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 75: a service whose strategy routes every task alike is recomputed from what its
    changed tasks give it, not from its 300 tasks; a change that gives it nothing new (a task
    starting, then running unready) makes no version; a canary's is read from its tasks."""
    read = _count_calls(monkeypatch, strategy, "routing")

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(2)])
            rig.commit([Put("task", _task(0, j, "running", 0)) for j in range(300)])
            agent = rig.open(1, Agent(deltas=True))
            await rig.settled([agent])
            log = rig.dispatcher._endpoints
            read["calls"], rebuilds, at = 0, log.rebuilds, log.current().at
            # One record per task, never walked by a garbage collection (ADR 55).
            assert len(log._counted) == 300 and not any(map(gc.is_tracked, log._counted.values()))
            rig.commit([Put("task", _task(1, 0, "starting", 0))])  # a member, not yet a backend
            await rig.settled([agent])
            assert log.current().at > at and read["calls"] == 0
            at = log.current().at
            rig.commit([Put("task", _task(1, 0, "unhealthy", 0))])  # running, but not ready
            rig.commit([Put("task", _task(0, 7, "running", 0))])  # as it was
            await rig.settled([agent])
            assert log.current().at == at, "a version that changed nothing"
            rig.commit([Put("task", _task(0, 7, "draining", 0))])
            await rig.settled([agent])
            assert log.current().at > at and read["calls"] == 0 and log.rebuilds == rebuilds
            assert agent.services == rig.truth()
            read["calls"] = 0
            rig.commit([Put("service", _service(0, rollout="canary")), Put("task", _task(0, 8, "running", 0, 2))])
            await rig.settled([agent])
            assert read["calls"] == 1  # the canary's service: its tasks read
            assert agent.services == rig.truth()
        finally:
            await rig.close()

    _run(scenario())


def test_a_task_is_not_sent_back_to_its_node_for_a_status_the_node_reported(tmp_path: Path) -> None:
    """SwarmKit's rule (#15): a task the node holds is sent again when the managers change it
    (here: its desired state), not when the only change is the status its agent reported
    (preparing, starting, running, healthy). Up to ASSIGNED the state is the managers' own."""

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(0))])
            agent = rig.open(1, Agent(deltas=True))
            await rig.settled([agent])
            task = msgspec.structs.replace(_task(0, 0, "starting", 0), node_id="node001", state=TaskState.PENDING)

            def sent() -> list[tuple[str, str]]:
                return [(t.state, t.desired_state) for m in agent.messages for t in m.updated if t.id == task.id]

            for state in (TaskState.PENDING, TaskState.ASSIGNED):
                task = msgspec.structs.replace(task, state=state)
                rig.commit([Put("task", task)])
                await until(lambda s=state: sent()[-1:] == [(s.label, "running")], message=f"{state.label} sent")
            for state, fields in (
                (TaskState.PREPARING, {"message": "preparing"}),
                (TaskState.STARTING, {"message": "starting", "runtime_id": "c1"}),
                (TaskState.RUNNING, {"message": "started", "started_at": 5.0, "ready_at": 5.0, "health": "healthy"}),
            ):
                task = msgspec.structs.replace(task, state=state, updated_at=5.0, **fields)
                rig.commit([Put("task", task)])
                await rig.settled([agent])  # its endpoint changed meanwhile: messages went out
            rig.commit([Put("task", msgspec.structs.replace(task, desired_state=TaskState.SHUTDOWN))])
            await until(lambda: sent()[-1:] == [("running", "shutdown")], message="the desired state sent")
            assert sent() == [("pending", "running"), ("assigned", "running"), ("running", "shutdown")], sent()
            assert agent.services == rig.truth()  # it became a backend all the same
        finally:
            await rig.close()

    _run(scenario())


def test_versions_a_node_has_not_confirmed_cost_what_they_changed_not_what_they_hold(tmp_path: Path) -> None:
    """ADR 72: a node that has not confirmed holds (in RoutingReports) every version sent since.
    With 2,000 backends, 40 versions each adding one cost the leader's manager code a few KiB
    each, not a set of 2,000 addresses each (72 KiB; at S2's 100,000 backends, 4 MiB a version)."""

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(40)])
            rig.commit([Put("task", _task(k, j, "running", 0)) for k in range(40) for j in range(50)])
            agent = rig.open(1, Agent(deltas=True))  # it never heartbeats: it confirms nothing
            await rig.settled([agent])
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for k in range(40):
                rig.commit([Put("task", _task(k, 50, "running", 0))])
                await rig.settled([agent])
            grown = tracemalloc.take_snapshot().compare_to(before, "filename")
            tracemalloc.stop()
            sent = rig.dispatcher._heartbeats.routes._sent["node001"]
            assert len(sent) == 41 and all("10.224.0.2" in backends for backends in sent.values())
            manager = sum(d.size_diff for d in grown if "/warren/manager/" in d.traceback[0].filename)
            # Whole sets: 72 KiB a version (2.9 MB measured). Now ~1 KiB a version for the routing;
            # endpoint patches (ADR 65) keep a few KiB more per version in their bounded log.
            assert manager < 40 * 16 * 1024, f"{manager} bytes for 40 versions"
        finally:
            await rig.close()

    _run(scenario())


def _entries(state: ClusterState) -> dict[str, tuple]:
    computed = (endpoints.computed(state, s) for s in state.services.values() if s.vip)
    return {c.name: (c.backends, c.members, c.head) for c in computed}


@settings(max_examples=60, deadline=None)
@example(  # a canary ends (plain again) in the commit that takes a task's address, not yet
    # delivered when the commit before it, which touched the service, is taken in
    commits=[
        (
            [
                ("service", 1, True, 0, False, "canary"),
                ("task", 1, 0, "running", 0, 1),
                ("task", 1, 1, "running", 1, 2),
            ],
            1,
        ),
        ([("task", 1, 2, "running", 0, 1)], 0),
        ([("service", 1, True, 0, False, ""), ("task", 1, 0, "no address", 0, 1)], 1),
    ]
)
@given(
    commits=st.lists(
        st.tuples(st.lists(ops.filter(lambda op: op[0] != "network"), min_size=1, max_size=3), st.integers(0, 3)),
        max_size=25,
    )
)
def test_each_service_is_held_as_it_was_at_one_committed_index(commits: list) -> None:
    """The live state may be commits ahead of the events delivered (ADR 75): every service's
    entry the log holds is that service's entry at one index from the last delivered to the
    last applied, never a mix of two (its tasks' addresses of one, its strategy of another)."""

    async def scenario() -> None:
        store = _LiveState()
        hub = EventHub(asyncio.get_running_loop())
        log = endpointlog.EndpointLog(store, hub)  # type: ignore[arg-type]
        log.open()
        history = {0: _entries(store.state)}
        undelivered: list = []
        delivered = 0
        for changes, deliver in commits:
            batch = [_change(op) for op in changes]
            store.state.apply(batch)
            store.applied_index += 1
            history[store.applied_index] = _entries(store.state)
            undelivered.append((store.applied_index, batch))
            for event in undelivered[:deliver]:
                hub._deliver(event)
                delivered = event[0]
            del undelivered[:deliver]
            log.current()
            held = {n: (c.backends, c.members, c.head) for n, c in log._by_name.items()}
            span = range(delivered, store.applied_index + 1)
            for name in set(held).union(*(history[i] for i in span)):
                assert any(held.get(name) == history[i].get(name) for i in span), (name, delivered, store.applied_index)
        log.close()

    asyncio.run(scenario())
