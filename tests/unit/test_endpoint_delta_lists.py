"""Endpoint deltas against whole lists (#15, ADR 65), on the endpoint rig: over random histories
an agent that takes deltas (patches, runs) holds exactly the whole list at every index, as one
sent whole lists does; a delta onto another index, or a base the leader's log no longer holds,
brings the whole list again."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.endpoint_rig import Agent, Rig, _change, _run, _service, _task, ops
from tests.waiting import async_wait_for as until
from warren.agent.assignments import AssignmentSet, VersionGap
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import changelog
from warren.manager.dispatchwire import encode_endpoint_delta
from warren.state import Put

# Each step: one commit of 1-4 changes, whether the lagging agent reads meanwhile, and whether
# the test waits for the agents before the next commit (if not, sessions take several at once).
steps = st.lists(st.tuples(st.lists(ops, min_size=1, max_size=4), st.booleans(), st.booleans()), max_size=14)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=steps)
@example(history=[([("task", 0, 0, "failed", 0, 1)], False, True)])  # a backend leaves by ending
@example(  # the lagging agent misses two versions that changed different services
    history=[
        ([("task", 1, 0, "running", 0, 1)], True, True),
        ([("task", 0, 1, "running", 0, 1)], True, True),
        ([("task", 1, 1, "running", 0, 1)], True, True),
    ]
)
@example(  # the lagging agents miss a backend leaving and coming back: no net patch for it
    history=[
        ([("task", 0, 1, "running", 0, 1), ("task", 0, 2, "running", 0, 1)], False, True),
        ([("task", 1, 0, "running", 0, 1)], True, True),  # a blocked reader still takes the next one
        ([("task", 0, 0, "failed", 0, 1)], True, True),
        ([("task", 0, 0, "running", 0, 1)], True, True),
    ]
)
@example(  # a canary service's tasks change, then it is promoted, then switched blue/green
    history=[
        ([("task", 0, 1, "running", 0, 2), ("service", 0, True, 0, False, "canary")], False, True),
        ([("task", 0, 2, "running", 1, 1)], True, True),
        ([("service", 0, True, 0, False, "")], False, True),
        ([("task", 0, 1, "draining", 0, 2)], True, False),
        ([("service", 0, True, 1, False, "switched"), ("task", 0, 1, "running", 0, 2)], False, True),
        ([("service", 0, True, 1, False, "rollback")], False, True),
    ]
)
@example(  # a task of a canary service changes version only: it becomes a canary
    history=[
        ([("service", 0, True, 0, False, "canary"), ("task", 0, 1, "running", 0, 1)], False, True),
        ([("task", 0, 1, "running", 0, 2)], False, True),
    ]
)
def test_deltas_give_exactly_the_whole_list_at_every_index(history: list) -> None:
    """A random history of endpoint changes (tasks coming, going, draining, failing, of either of
    two versions; services created, removed, losing their VIP, changing ports, in or out of a
    canary, a blue/green set or a rollback; a network turning internal): an agent
    that takes deltas holds, at every index it is sent, exactly what an agent sent whole lists
    holds at that index, and both hold the whole list of the current state once settled."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(k)) for k in range(2)] + [Put("task", _task(0, 0, "running", 0))])
            whole = Agent(deltas=False)
            steady = Agent(deltas=True, assignments=AssignmentSet())
            lagging = Agent(deltas=True, assignments=AssignmentSet())
            patched = Agent(deltas=True, patches=True, assignments=AssignmentSet())
            patched_lagging = Agent(deltas=True, patches=True)
            runs = Agent(deltas=True, patches=True, runs=True)
            runs_lagging = Agent(deltas=True, patches=True, runs=True)
            every = (whole, steady, lagging, patched, patched_lagging, runs, runs_lagging)
            agents = [rig.open(i + 1, a) for i, a in enumerate(every)]
            await rig.settled(agents)
            versions = []  # each version's view with its backends then: still right later (ADR 72)
            for changes, lag, wait in history:
                for slow in (lagging, patched_lagging, runs_lagging):
                    if lag:
                        slow.gate.clear()
                    else:
                        slow.gate.set()
                rig.commit([_change(op) for op in changes])
                if wait:
                    await rig.settled(agents)
                    truth = rig.truth()
                    assert all(a.services == truth for a in agents if a.gate.is_set())
                    # What RoutingReports records for the version: all its backends (ADR 33).
                    backends = rig.dispatcher._endpoints.current().backends
                    assert backends == {b for e in truth for b in e.backends}
                    versions.append((backends, frozenset(backends)))
            for slow in (lagging, patched_lagging, runs_lagging):
                slow.gate.set()
            await rig.settled(agents)
            truth = rig.truth()
            for agent in agents:
                assert agent.services == truth
                assert not agent.gaps
            seen = frozenset().union(*(then for _view, then in versions))
            for view, then in versions:  # as sets, and member by member as the reconciler asks
                assert view == then and {a for a in seen if a in view} == then
            for agent in every[1:]:
                for index, held in agent.seen.items():
                    if index in whole.seen:
                        assert held == whole.seen[index], f"index {index}"
            # The old agent only ever got whole lists; the others only deltas after the first;
            # only those that announced patches got patches, and only those that take runs got
            # a service twice in one message.
            assert not any(m.services_delta for m in whole.messages)
            for agent in every[1:]:
                assert agent.messages[0].services_changed and not agent.messages[0].services_delta
                assert not any(m.services_changed for m in agent.messages[1:])
            for agent in (whole, steady, lagging):
                assert not any(e.patch for m in agent.messages for e in m.services)
            for agent in every[:-2]:
                assert all(len({e.name for e in m.services}) == len(m.services) for m in agent.messages)
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-deltas-") as root:
        _run(scenario(Path(root)))


def test_a_session_far_behind_gets_the_whole_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its base is no longer in the leader's bounded log of changes: a whole list, not a delta."""
    monkeypatch.setattr(changelog, "HISTORY", 2)

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(4)])
            steady, lagging = rig.open(1, Agent(deltas=True)), rig.open(2, Agent(deltas=True))
            await rig.settled([steady, lagging])
            lagging.gate.clear()
            for k in range(4):  # four versions: it reads the first, then stops reading
                rig.commit([Put("task", _task(k, 0, "running", 0))])
                await rig.settled([steady])
            count = len(lagging.messages)
            lagging.gate.set()
            await rig.settled([steady, lagging])
            caught_up = lagging.messages[count]  # what it gets next: the whole list
            assert caught_up.services_changed and not caught_up.services_delta
            assert lagging.services == steady.services == rig.truth()
            assert any(m.services_delta for m in steady.messages)
        finally:
            await rig.close()

    _run(scenario())


def test_a_delta_onto_another_index_is_a_gap_and_a_new_session_brings_the_whole_list(tmp_path: Path) -> None:
    """The agent applies a delta only onto exactly the index it holds; otherwise it reopens its
    session, whose COMPLETE message carries the whole list again."""
    held = AssignmentSet()
    held.apply(
        dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.COMPLETE,
            version=1,
            services=[dpb.ServiceEndpoint(name="a", vip="10.201.0.2", backends=["10.224.0.2"])],
            services_changed=True,
            services_index=10,
        )
    )
    wrong = dpb.AssignmentsMessage()
    wrong.ParseFromString(
        dpb.AssignmentsMessage(type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=1, version=2).SerializeToString()
        + encode_endpoint_delta([dpb.ServiceEndpoint(name="b", vip="10.201.0.3")], ["a"], 9, 12)
    )
    with pytest.raises(VersionGap, match="delta onto index 9, we hold 10"):
        held.apply(wrong)
    assert held.version == 1 and list(held.endpoints) == ["a"]  # nothing applied

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(3)])
            agent = rig.open(1, Agent(deltas=True))
            await rig.settled([agent])
            agent.assignments.endpoints_index -= 1  # as if it had missed a delta
            rig.commit([Put("task", _task(1, 0, "running", 0))])
            await until(lambda: agent.gaps, message="the gap")
            assert agent.messages[-1].services_delta
            assert agent.services != rig.truth()  # the delta was not applied
            rig.open(1, agent)  # what the agent's session does on a gap: reopen
            await rig.settled([agent])
            assert agent.messages[-1].services_changed and not agent.messages[-1].services_delta
            assert agent.services == rig.truth()
        finally:
            await rig.close()

    _run(scenario())
