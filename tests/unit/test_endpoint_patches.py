"""Endpoint patches and runs (#15, ADR 65, ADR 78), on the endpoint rig and the agent's own
AssignmentSet: a backend's change travels as that address only; a session several versions
behind gets each version's patch in order, or one composed; a patch or run that does not fit
what the agent holds resynchronises."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.unit.endpoint_rig import TASKS, Agent, Rig, _run, _service, _task
from tests.waiting import async_wait_for as until
from warren.agent.assignments import AssignmentSet, VersionGap
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import endpointlog
from warren.manager.dispatchwire import encode_endpoint_delta
from warren.state import Put


def test_a_backend_leaving_travels_as_a_patch_of_that_address_only() -> None:
    """At S2's size a service has 1,000 backends: a delta of one task's change carries the
    address that changed, not the service's whole lists, to an agent that takes patches."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(0))] + [Put("task", _task(0, j, "running", 0)) for j in range(TASKS)])
            agent = rig.open(1, Agent(deltas=True, patches=True))
            await rig.settled([agent])
            gone = _task(0, 1, "failed", 0)
            rig.commit([Put("task", gone)])
            await rig.settled([agent])
            [entry] = [e for m in agent.messages[1:] for e in m.services]
            assert entry.patch and not entry.backends and not entry.members
            assert (list(entry.backends_removed), list(entry.members_removed)) == ([gone.overlay_address],) * 2
            assert not entry.backends_added and not entry.members_added
            assert agent.services == rig.truth() and len(agent.services[0].backends) == TASKS - 1
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-deltas-") as root:
        _run(scenario(Path(root)))


@pytest.mark.parametrize("bounded", [False, True])
def test_a_session_behind_by_several_versions_gets_each_version_s_own_patch_in_order(
    bounded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 78: an agent that takes runs, two versions behind, gets one message naming the
    service once per version (each version's encoding, shared), and holds the truth after it;
    one that takes patches only gets the service once, its patch composed for its base. A run
    longer than MAX_RUN_BYTES goes composed."""
    if bounded:
        monkeypatch.setattr(endpointlog, "MAX_RUN_BYTES", 1)

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(0)), Put("task", _task(0, 0, "running", 0))])
            runs = rig.open(1, Agent(deltas=True, patches=True, runs=True))
            composed = rig.open(2, Agent(deltas=True, patches=True))
            await rig.settled([runs, composed])
            runs.gate.clear()  # each reads the next message, then stops reading
            composed.gate.clear()
            before = (len(runs.messages), len(composed.messages))
            rig.commit([Put("task", _task(0, 1, "running", 0))])
            await until(
                lambda: (len(runs.messages), len(composed.messages)) == (before[0] + 1, before[1] + 1),
                timeout=5,
                message="each reader to take the message of the commit, and stop",
            )
            sent = (len(runs.messages), len(composed.messages))
            added = []
            for j in (2, 3):  # two versions, a task more each, while neither reads
                task = _task(0, j, "running", 0)
                rig.commit([Put("task", task)])
                added.append([task.overlay_address])
                log = rig.dispatcher._endpoints
                await until(  # a version of its own
                    lambda log=log: log.current().at == rig.store.applied_index, timeout=5, message="its version"
                )
            runs.gate.set()
            composed.gate.set()
            await rig.settled([runs, composed])
            [run] = runs.messages[sent[0] :]
            if bounded:
                assert [e.name for e in run.services] == ["s0"] and run.services[0].patch
                assert sorted(run.services[0].backends_added) == sorted(a for [a] in added)
            else:
                assert [e.name for e in run.services] == ["s0", "s0"] and all(e.patch for e in run.services)
                assert [list(e.backends_added) for e in run.services] == added
            [once] = composed.messages[sent[1] :]
            assert [e.name for e in once.services] == ["s0"]
            assert sorted(once.services[0].backends_added) == sorted(a for [a] in added)
            assert runs.services == composed.services == rig.truth()
            assert len(runs.services[0].backends) == 4 and not runs.gaps
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-deltas-") as root:
        _run(scenario(Path(root)))


def test_a_patch_onto_lists_it_was_not_made_for_resynchronises() -> None:
    def holding_web() -> AssignmentSet:
        held = AssignmentSet()
        web = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.224.0.2"])
        complete = dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.COMPLETE, version=1, services_changed=True, services_index=5, services=[web]
        )
        held.apply(complete)
        return held

    def delta(patch: dpb.ServiceEndpoint) -> dpb.AssignmentsMessage:
        return dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=1, version=2, services_delta=True,
            services_base=5, services_index=6, services=[patch],
        )  # fmt: skip

    fits = holding_web().apply(delta(dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.3"])))
    assert fits.services is not None and fits.services[0].backends == ("10.224.0.2", "10.224.0.3")
    for patch in (
        dpb.ServiceEndpoint(name="web", patch=True, backends_removed=["10.224.0.9"]),  # not held
        dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.2"]),  # already held
        dpb.ServiceEndpoint(name="api", patch=True, backends_added=["10.224.0.3"]),  # no entry to patch
    ):
        with pytest.raises(VersionGap, match="patch"):
            holding_web().apply(delta(patch))


def test_a_run_patches_each_entry_as_the_run_left_it_and_one_that_does_not_fit_changes_nothing() -> None:
    """ADR 78: the agent applies a delta's entries in order; a patch that does not fit the entry
    as the run left it resynchronises, with nothing held changed."""

    def holding_web() -> AssignmentSet:
        held = AssignmentSet()
        web = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.224.0.2"])
        held.apply(
            dpb.AssignmentsMessage(
                type=dpb.AssignmentsMessage.COMPLETE, version=1, services_changed=True, services_index=5, services=[web]
            )
        )
        return held

    def run(*entries: dpb.ServiceEndpoint) -> dpb.AssignmentsMessage:
        parts = [dpb.AssignmentsMessage(services=[entry]).SerializeToString() for entry in entries]
        header = encode_endpoint_delta([], [], 5, 8)
        return dpb.AssignmentsMessage.FromString(
            dpb.AssignmentsMessage(type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=1, version=2).SerializeToString()
            + b"".join(parts)
            + header
        )

    held = holding_web()
    taken = held.apply(
        run(
            dpb.ServiceEndpoint(name="web", vip="10.201.0.2", patch=True, backends_added=["10.224.0.3"]),
            dpb.ServiceEndpoint(name="api", vip="10.201.0.3", backends=["10.224.1.2"]),
            dpb.ServiceEndpoint(
                name="web", vip="10.201.0.2", patch=True, backends_added=["10.224.0.4"], backends_removed=["10.224.0.2"]
            ),
            dpb.ServiceEndpoint(name="api", vip="10.201.0.3", patch=True, backends_added=["10.224.1.3"]),
        )
    )
    assert taken.services is not None and taken.services_index == 8
    assert {e.name: e.backends for e in taken.services} == {
        "api": ("10.224.1.2", "10.224.1.3"),
        "web": ("10.224.0.3", "10.224.0.4"),
    }
    held = holding_web()
    before = (held.endpoints.ordered(), held.endpoints_index)
    with pytest.raises(VersionGap, match="patch"):
        held.apply(  # the second adds again what the first added
            run(
                dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.3"]),
                dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.3"]),
            )
        )
    assert (held.endpoints.ordered(), held.endpoints_index) == before
