"""The index-only assignment set of `warren sim`'s nodes (ADR 71) against the agent's own
AssignmentSet: fed the same messages (random histories of whole lists, deltas onto the right
or a wrong endpoints index or mesh version, and messages that change neither), it must keep
the same endpoints index and mesh version, see a gap exactly when the real set does, report a
change exactly when the real set does, and hold no entry."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.agent.assignments import AssignmentSet, VersionGap
from warren.agent.indexonly import IndexOnlyAssignmentSet
from warren.api.v1 import dispatcher_pb2 as dpb

COMPLETE = dpb.AssignmentsMessage.COMPLETE
INCREMENTAL = dpb.AssignmentsMessage.INCREMENTAL


def _service(k: int, backends: int) -> dpb.ServiceEndpoint:
    return dpb.ServiceEndpoint(
        name=f"svc{k:03}", vip=f"10.201.0.{k + 2}", backends=[f"10.224.{k}.{j + 2}" for j in range(backends)]
    )


def _node(k: int, key: int) -> dpb.MeshNode:
    return dpb.MeshNode(node_id=f"n{k:03}", public_key=f"k{k}-{key}", subnet=f"10.224.{k}.0/24")


# One step: what the message carries for the endpoints and for the mesh (nothing, the whole
# list, or a delta onto the base held, one behind or one ahead), and its services (changed or
# removed) and mesh nodes.
changes = st.sampled_from(["none", "whole", "delta", "delta-behind", "delta-ahead"])
step = st.tuples(
    changes,
    changes,
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=3),
    st.lists(st.integers(0, 5), max_size=2),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), max_size=3),
    st.lists(st.integers(0, 5), max_size=2),
)


def _message(real: AssignmentSet, step: tuple, index: int, mesh_version: int) -> dpb.AssignmentsMessage:  # type: ignore[type-arg]
    endpoints, mesh, services, removed, nodes, gone = step
    if real.version is None:  # no COMPLETE on this session yet (the start, or after a gap)
        msg = dpb.AssignmentsMessage(type=COMPLETE, version=1, session_id="s")
        endpoints, mesh = "whole", "whole"
    else:
        msg = dpb.AssignmentsMessage(type=INCREMENTAL, applies_to=real.version, version=real.version + 1)
    offsets = {"delta": 0, "delta-behind": -1, "delta-ahead": 1}
    if endpoints == "whole":
        msg.services.extend(_service(k, b) for k, b in services)
        msg.services_changed, msg.services_index = True, index
    elif endpoints in offsets:
        msg.services.extend(_service(k, b) for k, b in services)
        msg.services_removed.extend(f"svc{k:03}" for k in removed)
        msg.services_delta, msg.services_index = True, index
        msg.services_base = real.endpoints_index + offsets[endpoints]
    if mesh == "whole":
        msg.mesh.extend(_node(k, key) for k, key in nodes)
        msg.mesh_changed, msg.mesh_version = True, mesh_version
    elif mesh in offsets:
        msg.mesh.extend(_node(k, key) for k, key in nodes)
        msg.mesh_removed.extend(f"n{k:03}" for k in gone)
        msg.mesh_delta, msg.mesh_version = True, mesh_version
        msg.mesh_base = real.mesh_version + offsets[mesh]
    return msg


@settings(max_examples=300, deadline=None)
@given(history=st.lists(step, min_size=1, max_size=25))
def test_the_index_only_set_keeps_the_real_sets_indexes_and_gaps(history: list) -> None:  # type: ignore[type-arg]
    real, bare = AssignmentSet(), IndexOnlyAssignmentSet()
    index = mesh_version = 10
    gaps = 0
    for step in history:
        index, mesh_version = index + 1, mesh_version + 1
        msg = _message(real, step, index, mesh_version)
        outcomes = []
        for held in (real, bare):
            try:
                outcomes.append(held.apply(held.decode(msg.SerializeToString())))  # as its session reads it
            except VersionGap as exc:
                outcomes.append(exc)
        mine, twin = outcomes
        assert isinstance(mine, VersionGap) == isinstance(twin, VersionGap), (mine, twin)
        if isinstance(mine, VersionGap):
            gaps += 1
            real.reset()  # what the session does: reopen, and a COMPLETE comes next
            bare.reset()
        else:
            assert not isinstance(twin, VersionGap)
            assert (twin.services is None) == (mine.services is None) and not twin.services
            assert (twin.mesh is None) == (mine.mesh is None) and not twin.mesh
            assert twin.services_index == mine.services_index
        assert (bare.version, bare.endpoints_index, bare.mesh_version) == (
            real.version,
            real.endpoints_index,
            real.mesh_version,
        )
        assert not bare.endpoints and not bare.mesh


def test_the_index_only_message_reads_every_field_but_the_entries_and_keeps_their_bytes() -> None:
    """#15: a simulated node reads its messages without their endpoint and mesh entries (never
    parsed); every other field of AssignmentsMessage, one added later included, reads the same."""
    from warren.agent.indexonly import ENTRY_FIELDS, IndexOnlyMessage
    from warren.api.v1 import types_pb2 as pb

    full = dpb.AssignmentsMessage(
        type=INCREMENTAL,
        session_id="s1",
        applies_to=4,
        version=5,
        updated=[pb.Task(id="t1", state="running")],
        removed=["t0"],
        managers=["127.0.0.1:1"],
        mesh=[_node(1, 1)],
        mesh_changed=True,
        services=[_service(2, 3)],
        services_changed=True,
        vip_range="10.201.0.0/16",
        specs=[dpb.TaskSpec(service_id="svc", spec_version=2)],
        services_index=9,
        volumes=["v1"],
        volumes_changed=True,
        pull_logins=[dpb.PullLogin(task_id="t1", host="reg:5000")],
        services_delta=True,
        services_base=8,
        services_removed=["svc001"],
        mesh_delta=True,
        mesh_base=2,
        mesh_version=3,
        mesh_removed=["n002"],
        heartbeat_period=5.0,
        reconnect_spread=1.0,
        services_kept=["svc009"],
    )
    fields = {f.name for f in dpb.AssignmentsMessage.DESCRIPTOR.fields}
    assert {f.name for f, _ in full.ListFields()} == fields, "every field set: a new one must be added here"
    data = full.SerializeToString()
    bare = IndexOnlyMessage.FromString(data)
    kept = {f.name for f in IndexOnlyMessage.DESCRIPTOR.fields}
    assert kept == fields - set(ENTRY_FIELDS)
    for name in kept:
        assert getattr(bare, name) == getattr(full, name), name
    assert len(bare.SerializeToString()) == len(data)  # the entries kept as bytes, not dropped
    assert IndexOnlyAssignmentSet.decode == IndexOnlyMessage.FromString
    assert AssignmentSet.decode == dpb.AssignmentsMessage.FromString


def test_a_wrong_base_is_a_gap_that_applies_nothing() -> None:
    bare = IndexOnlyAssignmentSet()
    bare.apply(
        dpb.AssignmentsMessage(
            type=COMPLETE,
            version=1,
            services=[_service(0, 2)],
            services_changed=True,
            services_index=5,
            mesh=[_node(0, 0)],
            mesh_changed=True,
            mesh_version=3,
        )
    )
    for base, mesh_base in ((4, 3), (5, 2)):
        wrong = dpb.AssignmentsMessage(
            type=INCREMENTAL,
            applies_to=1,
            version=2,
            services=[_service(1, 1)],
            services_delta=True,
            services_base=base,
            services_index=6,
            mesh=[_node(1, 0)],
            mesh_delta=True,
            mesh_base=mesh_base,
            mesh_version=4,
        )
        with pytest.raises(VersionGap):
            bare.apply(wrong)
        assert (bare.version, bare.endpoints_index, bare.mesh_version) == (1, 5, 3)


def test_the_index_only_set_holds_no_entry_of_a_large_whole_list() -> None:
    """400 services of 10 backends and 200 nodes, applied by 10 sets: the real sets hold them
    (~2 MB per node at S1's size), the index-only sets nearly nothing (the simulator's tracking
    node holds the endpoints for all of them, ADR 81)."""
    whole = dpb.AssignmentsMessage(
        type=COMPLETE,
        version=1,
        services=[_service(k, 10) for k in range(400)],
        services_changed=True,
        services_index=5,
        mesh=[_node(k, 0) for k in range(200)],
        mesh_changed=True,
        mesh_version=3,
    ).SerializeToString()

    def held_bytes(kind: Callable[[], AssignmentSet]) -> int:
        gc.collect()
        tracemalloc.start()
        sets = [kind() for _ in range(10)]
        for held in sets:
            held.apply(dpb.AssignmentsMessage.FromString(whole))
        used = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert all((s.endpoints_index, s.mesh_version) == (5, 3) for s in sets)
        return used

    assert held_bytes(IndexOnlyAssignmentSet) < held_bytes(AssignmentSet) / 20
