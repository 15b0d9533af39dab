"""A new session sends only the endpoints the agent does not hold as they are (#15, ADR 81): the
agent's request carries a digest of each endpoint it holds, and COMPLETE names those that are
current `services_kept` instead of sending them again. On a real Store with the in-memory Raft,
read by the agent's own AssignmentSet (and by the simulator's index-only set)."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.dispatcher_cluster import description
from tests.unit.endpoint_rig import Agent, Rig, _change, _run, _service, _task, ops
from warren.agent.assignments import AssignmentSet, KeyOrdered, VersionGap
from warren.agent.indexonly import IndexOnlyAssignmentSet, SharedEndpoints, TrackingAssignmentSet
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import sessionopen
from warren.manager.server import ApiError, caller
from warren.network.endpointdigest import DIGEST_SIZE, endpoint_digest, endpoint_of
from warren.network.lb import Endpoint
from warren.pki import Identity
from warren.state import Put

# Each step: one commit of 1-4 changes, and whether the agents then reconnect (a leader change).
steps = st.lists(st.tuples(st.lists(ops, min_size=1, max_size=4), st.booleans()), max_size=10)


def _digests(agent: Agent) -> dict[str, bytes]:
    return {d.name: d.digest for d in agent.assignments.endpoint_digests()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=steps)
@example(history=[([("task", 0, 1, "running", 0, 1)], True)])  # one service changed meanwhile
@example(history=[([("rm", 1)], True), ([("service", 1, True, 1, False, "canary")], True)])
def test_a_new_session_sends_only_what_the_agent_does_not_hold(history: list) -> None:
    """A random history of endpoint changes, with reconnections: the digests an agent makes of
    what it holds (whole entries, patched ones, kept ones) are the manager's own, so a new
    session's COMPLETE keeps exactly the services held as they are and sends the others whole,
    and the agent then holds the whole list. The simulator's nodes, which hold only an index,
    send the same digests from the sets they share."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(k)) for k in range(3)] + [Put("task", _task(0, 0, "running", 0))])
            shared = SharedEndpoints()  # the simulator's: the real agent is its tracking node
            real = Agent(deltas=True, patches=True, runs=True, digests=True)
            real.assignments = TrackingAssignmentSet(shared=shared)
            sim = Agent(deltas=True, patches=True, runs=True, digests=True)
            sim.assignments = IndexOnlyAssignmentSet(shared=shared)
            agents = [rig.open(1, real), rig.open(2, sim)]
            await rig.settled(agents)
            for changes, reconnect in history:
                held = _digests(real)
                assert _digests(sim) == held  # at the tracker's index: the same set
                if reconnect:  # the sessions end (a leader change), and the changes come meanwhile
                    for agent in agents:
                        assert agent.reader is not None
                        agent.reader.cancel()
                        await asyncio.gather(agent.reader, return_exceptions=True)
                rig.commit([_change(op) for op in changes])
                if reconnect:
                    for number, agent in enumerate(agents, 1):
                        complete = await rig.reopen(number, agent)
                        log = rig.dispatcher._endpoints
                        current = {name: c.digest() for name, c in log._by_name.items()}
                        assert complete.type == dpb.AssignmentsMessage.COMPLETE and complete.services_changed
                        kept = {name for name, digest in current.items() if held.get(name) == digest}
                        assert set(complete.services_kept) == kept
                        assert {e.name for e in complete.services} == set(current) - kept
                await rig.settled(agents)
                assert real.services == rig.truth()
                # What the agent holds, however it came (whole, patched, kept), has the manager's digests.
                log = rig.dispatcher._endpoints
                assert _digests(real) == {name: c.digest() for name, c in log._by_name.items()}
            truth = rig.truth()
            assert real.services == truth
            assert [d.digest for d in real.assignments.endpoint_digests()] == [endpoint_digest(e) for e in truth]
            assert not real.gaps and not sim.gaps
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-digests-") as root:
        _run(scenario(Path(root)))


def test_a_service_changed_while_away_comes_whole_and_the_others_are_kept() -> None:
    """The agent holds three services; one changes and another goes while it is away (its
    session ended, as in a leader change): COMPLETE sends the changed one whole, keeps the
    third, and the agent holds exactly the new whole list."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(k)) for k in range(3)] + [Put("task", _task(0, 0, "running", 0))])
            agent = rig.open(1, Agent(deltas=True, patches=True, runs=True, digests=True))
            await rig.settled([agent])
            assert agent.reader is not None
            agent.reader.cancel()
            await asyncio.gather(agent.reader, return_exceptions=True)
            rig.commit([_change(("task", 0, 1, "running", 1, 1)), _change(("rm", 1))])
            complete = await rig.reopen(1, agent)
            assert [e.name for e in complete.services] == ["s0"]
            assert list(complete.services_kept) == ["s2"]
            await rig.settled([agent])
            assert agent.services == rig.truth()
            assert [e.name for e in agent.services] == ["s0", "s2"]
            # An agent that sends no digests (an older one) still gets the whole list.
            old = rig.open(2, Agent(deltas=True, patches=True, runs=True))
            await rig.settled([agent, old])
            assert [e.name for e in old.messages[0].services] == ["s0", "s2"] and not old.messages[0].services_kept
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-digests-") as root:
        _run(scenario(Path(root)))


def _whole(*names: str) -> dpb.AssignmentsMessage:
    return dpb.AssignmentsMessage(
        type=dpb.AssignmentsMessage.COMPLETE,
        version=1,
        services=[dpb.ServiceEndpoint(name=n, vip="10.201.0.2", backends=["10.224.0.2"]) for n in names],
        services_changed=True,
        services_index=7,
    )


def test_a_kept_endpoint_the_agent_does_not_hold_resynchronises_from_nothing() -> None:
    """The managers kept a service the agent does not hold: what it sent was not what it held,
    so it resynchronises, and its next session sends no digests (and gets the whole list)."""
    held = AssignmentSet()
    held.apply(_whole("a"))
    complete = _whole()
    complete.services_kept.append("b")
    with pytest.raises(VersionGap, match="'b' kept"):
        held.apply(complete)
    assert held.endpoint_digests() == [] and held.endpoints_index == 0


def test_digests_differ_for_any_field_and_match_for_the_same_endpoint() -> None:
    base = Endpoint("web", "10.201.0.2", ("10.224.0.2", "10.224.0.3"), (("tcp", 80, 8080),))
    variants = [
        Endpoint("web2", *list(vars(base).values())[1:]),
        Endpoint("web", "10.201.0.3", base.backends, base.ports),
        Endpoint("web", base.vip, ("10.224.0.2",), base.ports),
        Endpoint("web", base.vip, base.backends, (("tcp", 81, 8080),)),
        Endpoint("web", base.vip, base.backends, base.ports, canary=("10.224.0.2",), canary_weight=10),
        Endpoint("web", base.vip, base.backends, (), host_ports=(("tcp", 80, 8080),)),
        Endpoint("web", base.vip, base.backends, base.ports, networks=("n1",)),
        Endpoint("web", base.vip, base.backends, base.ports, members=("10.224.0.9",)),
        Endpoint("web", base.vip, base.backends, base.ports, aliases=(("n1", "w"),)),
        Endpoint("web", base.vip, base.backends, base.ports, internal=True),
    ]
    digest = endpoint_digest(base)
    assert len(digest) == DIGEST_SIZE
    assert endpoint_digest(Endpoint(**vars(base))) == digest
    assert len({endpoint_digest(v) for v in variants} | {digest}) == len(variants) + 1
    entry = dpb.ServiceEndpoint(
        name="web",
        vip=base.vip,
        backends=base.backends,
        ports=[dpb.EndpointPort(protocol="tcp", published=80, target=8080)],
    )
    assert endpoint_of(entry) == base


def test_simulated_nodes_send_the_digests_of_the_sets_their_tracker_held_lately() -> None:
    shared = SharedEndpoints(keep=2)
    tracker = TrackingAssignmentSet(shared=shared)
    nodes = [IndexOnlyAssignmentSet(shared=shared) for _ in range(3)]

    def whole(index: int) -> dpb.AssignmentsMessage:
        message = _whole("a", "b")
        message.services_index = index
        message.services[0].backends.append(f"10.224.0.{index}")
        return message

    for index in (7, 8, 9):
        tracker.reset()
        tracker.apply(whole(index))
    assert len(shared) == 2 and 7 not in shared and 8 in shared and 9 in shared  # 7 is no longer kept
    for node, index in zip(nodes, (7, 8, 9), strict=True):
        node.apply(whole(index))
    assert nodes[0].endpoint_digests() == []  # a set the tracker no longer keeps: none
    assert [d.name for d in nodes[1].endpoint_digests()] == ["a", "b"]
    assert nodes[2].endpoint_digests() == tracker.endpoint_digests() != nodes[1].endpoint_digests()
    # The tracker's set changes in place with a delta; what was recorded does not.
    before = nodes[2].endpoint_digests()
    tracker.apply(
        dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.INCREMENTAL,
            applies_to=1,
            version=2,
            services=[dpb.ServiceEndpoint(name="c", vip="10.201.0.3")],
            services_delta=True,
            services_base=9,
            services_index=10,
        )
    )
    assert [d.name for d in tracker.endpoint_digests()] == ["a", "b", "c"]
    assert shared.digests(9) == before and [d.name for d in shared.digests(10)] == ["a", "b", "c"]


def test_too_many_digests_are_an_invalid_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessionopen, "MAX_DIGESTS", 2)
    digests = [dpb.EndpointDigest(name=f"s{k}", digest=b"x" * DIGEST_SIZE) for k in range(3)]
    test_bad_digests_are_invalid_arguments(digests, "at most 2 endpoint digests (got 3)")


def test_an_agent_sends_no_digest_it_would_be_refused_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused, the same request would be refused at every reconnect: an agent that holds more
    endpoints than a request may carry sends none, and a name too long for one is left out."""
    from warren.network import endpointdigest

    held = AssignmentSet()
    held.apply(_whole("a", "b", "c" * 300))
    assert [d.name for d in held.endpoint_digests()] == ["a", "b"]
    monkeypatch.setattr(endpointdigest, "MAX_DIGESTS", 1)
    assert held.endpoint_digests() == []


def test_the_key_ordered_copy_changes_apart() -> None:
    original = KeyOrdered([("a", 1), ("b", 2)])
    copy = original.copy()
    copy.merge([("c", 3)], ["a"])
    assert list(original) == ["a", "b"] and list(copy) == ["b", "c"]


@pytest.mark.parametrize(
    ("digests", "message"),
    [
        ([dpb.EndpointDigest(name="web", digest=b"x" * 3)], "has 3 bytes, not 16"),
        ([dpb.EndpointDigest(name="x" * 256, digest=b"x" * DIGEST_SIZE)], "service name has 1-255 bytes"),
        ([dpb.EndpointDigest(name="", digest=b"x" * DIGEST_SIZE)], "service name has 1-255 bytes"),
    ],
)
def test_bad_digests_are_invalid_arguments(digests: list[dpb.EndpointDigest], message: str) -> None:
    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            caller.set(Identity("node001", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
            request = dpb.SessionRequest(description=description(1), endpoint_digests=digests)
            with pytest.raises(ApiError) as raised:
                await anext(aiter(rig.dispatcher.Session(request, None)))
            assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert message in raised.value.message
            with rig.store.read() as state:
                assert "node001" not in state.nodes  # refused before registering anything
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-digests-") as root:
        _run(scenario(Path(root)))
