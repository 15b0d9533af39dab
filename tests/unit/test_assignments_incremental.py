"""What both ends of a dispatcher session keep up incrementally (#15), checked against the plain
rule it replaces, pure (no store, no session):
- the agent's endpoints and mesh (ADR 65): after any sequence of whole lists and deltas, the
  tuple `AssignmentSet.apply` hands its consumers is, in content and in order, the whole list
  of that moment (by name, by node id), as a full re-sort gave it;
- the specs each side holds (ADR 21): a spec is forgotten exactly when the last task of the set
  that refers to it leaves, on the leader (`SessionSpecs`) and on the agent (`AssignmentSet`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from warren.agent.assignments import AssignmentSet, MeshMember, _member
from warren.api import specconvert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.commitdigest import CommitDigests
from warren.manager.sessiondiff import node_task_diff
from warren.manager.sessionspecs import SessionSpecs
from warren.manager.speccache import SpecCache
from warren.model import Node, ServiceSpec, Task, TaskState, same_but_status
from warren.network.endpointdigest import endpoint_of
from warren.network.lb import Endpoint
from warren.specrefs import SpecRefs
from warren.state import ClusterState, Delete, Put

COMPLETE, INCREMENTAL = dpb.AssignmentsMessage.COMPLETE, dpb.AssignmentsMessage.INCREMENTAL

# Keys whose string order is not their "natural" one, so an order kept by insertion shows.
KEYS = ["svc10", "svc9", "svc1", "a", "B", "web-2", "web-10", "z", "api", "db", "Api", "m0"]
keys = st.sampled_from(KEYS)
entries = st.lists(st.tuples(keys, st.integers(0, 3)), max_size=8)  # (key, which version of its entry)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("whole"), entries),
        st.tuples(st.just("delta"), entries, st.lists(keys, max_size=4)),
        st.tuples(st.just("none")),
    ),
    max_size=30,
)


def _service(name: str, variant: int) -> dpb.ServiceEndpoint:
    return dpb.ServiceEndpoint(
        name=name, vip=f"10.201.0.{2 + KEYS.index(name)}", backends=[f"10.224.0.{2 + j}" for j in range(variant)]
    )


def _node(node_id: str, variant: int) -> dpb.MeshNode:
    return dpb.MeshNode(node_id=node_id, public_key=f"key{variant}", subnet=f"10.224.{KEYS.index(node_id)}.0/24")


@settings(max_examples=150, deadline=None)
@given(history=steps)
@example(history=[("whole", [("svc9", 0)]), ("delta", [("svc10", 0)], [])])  # "svc10" < "svc9"
@example(history=[("whole", [("a", 0), ("z", 0)]), ("delta", [("m0", 1)], ["a"]), ("delta", [("a", 2)], [])])
def test_endpoints_and_mesh_held_are_the_whole_list_in_order_after_any_deltas(history: list) -> None:
    """A random sequence of whole lists, deltas (entries added, changed, removed; in any order
    on the wire) and messages that change neither: at every step the endpoints and the mesh the
    agent hands on are exactly the whole list of that moment, sorted by key."""
    held = AssignmentSet()
    services: dict[str, int] = {}  # the truth: key -> variant
    nodes: dict[str, int] = {}
    for version, step in enumerate(history, start=1):
        msg = dpb.AssignmentsMessage(type=COMPLETE if version == 1 else INCREMENTAL, version=version)
        msg.applies_to = version - 1
        if step[0] == "whole" or version == 1:  # a session starts with the whole list
            services = dict(step[1]) if step[0] == "whole" else {}
            nodes = dict(services)
            # The managers send a whole list sorted, each key once; the agent does not rely on the order.
            msg.services.extend(_service(k, services[k]) for k in services)
            msg.mesh.extend(_node(k, nodes[k]) for k in reversed(nodes))
            msg.services_changed = msg.mesh_changed = True
        elif step[0] == "delta":
            changed = dict(step[1])
            removed = [k for k in dict.fromkeys(step[2]) if k not in changed]  # as the managers: disjoint
            services.update(changed)
            nodes.update(changed)
            for k in removed:
                services.pop(k, None)
                nodes.pop(k, None)
            msg.services.extend(_service(k, v) for k, v in changed.items())  # in the order drawn
            msg.services_removed.extend(removed)
            msg.mesh.extend(_node(k, v) for k, v in reversed(changed.items()))
            msg.mesh_removed.extend(removed)
            msg.services_delta = msg.mesh_delta = True
            msg.services_base, msg.mesh_base = held.endpoints_index, held.mesh_version
        msg.services_index = held.endpoints_index + (step[0] != "none")
        msg.mesh_version = held.mesh_version + (step[0] != "none")
        delta = held.apply(dpb.AssignmentsMessage.FromString(msg.SerializeToString()))
        want_services = tuple(endpoint_of(_service(k, services[k])) for k in sorted(services))
        want_mesh = tuple(_member(_node(k, nodes[k])) for k in sorted(nodes))
        if step[0] == "none" and version > 1:
            assert delta.services is None and delta.mesh is None
        else:
            assert delta.services == want_services
            assert delta.mesh == want_mesh
        assert tuple(held.endpoints.values()) == want_services and list(held.endpoints) == sorted(services)
        assert tuple(held.mesh.values()) == want_mesh and list(held.mesh) == sorted(nodes)


def _task(task_id: str, key: tuple[str, int], desired: TaskState = TaskState.RUNNING) -> Task:
    spec = ServiceSpec(name=key[0], image="busybox")
    return Task(
        id=task_id,
        service_id=key[0],
        service_name=key[0],
        slot=1,
        spec=spec,
        spec_version=key[1],
        desired_state=desired,
        state=TaskState.ASSIGNED,
        node_id="n1",
    )


TASKS = [f"t{i:03}" for i in range(8)]
SPECS = [("s1", 1), ("s1", 2), ("s2", 1)]
spec_ops = st.lists(
    st.one_of(
        st.tuples(st.just("task"), st.sampled_from(TASKS), st.sampled_from(SPECS), st.booleans()),
        st.tuples(st.just("remove"), st.sampled_from(TASKS)),
        st.tuples(st.just("prune")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=spec_ops)
@example(ops=[("task", "t000", ("s1", 1), True), ("task", "t000", ("s1", 2), True), ("prune",)])  # re-pointed
def test_the_leader_forgets_a_spec_as_a_walk_of_the_set_would(ops: list) -> None:
    """Random tasks coming (a task may come again with another spec version), leaving and
    prunes between: the leader sends a spec exactly when the walk over every task (the rule
    before #15) would, and holds the same specs after each prune."""
    specs = SessionSpecs(by_reference=True)
    state = ClusterState()
    refs: dict[str, tuple[str, int]] = {}  # the plain rule's set
    sent: set[tuple[str, int]] = set()
    for op in ops:
        if op[0] == "task":
            task = _task(op[1], op[2], TaskState.RUNNING if op[3] else TaskState.SHUTDOWN)
            out: list[dpb.TaskSpec] = []
            specs.task(task, out, state)
            refs[task.id] = op[2]
            expect_sent = op[3] and op[2] not in sent
            if expect_sent:
                sent.add(op[2])
            assert [(s.service_id, s.spec_version) for s in out] == ([op[2]] if expect_sent else [])
        elif op[0] == "remove":
            specs.remove(op[1])
            refs.pop(op[1], None)
        else:
            specs.prune()
            sent &= set(refs.values())
            assert specs.sent == sent


def test_a_spec_is_forgotten_exactly_when_its_last_task_leaves_on_both_ends() -> None:
    """300 tasks of three spec versions on one node, removed one per message: each end keeps a
    spec while one task of it remains and forgets it with the last, and a later task of that
    version brings it again."""
    keys = [("s1", 1), ("s1", 2), ("s2", 7)]
    tasks = [_task(f"t{i:03}", keys[i % 3]) for i in range(300)]
    leader = SessionSpecs(by_reference=True)
    state = ClusterState()
    sent_specs: list[dpb.TaskSpec] = []
    complete = dpb.AssignmentsMessage(type=COMPLETE, version=1)
    complete.updated.extend(leader.task(t, sent_specs, state) for t in tasks)
    complete.specs.extend(sent_specs)
    leader.prune()
    agent = AssignmentSet()
    agent.apply(complete)
    assert leader.sent == set(keys) == set(agent.specs)
    left = {key: 100 for key in keys}
    for number, task in enumerate(reversed(tasks)):
        leader.remove(task.id)
        leader.prune()
        msg = dpb.AssignmentsMessage(type=INCREMENTAL, applies_to=number + 1, version=number + 2)
        msg.removed.append(task.id)
        agent.apply(msg)
        left[(task.service_id, task.spec_version)] -= 1
        held = {key for key, count in left.items() if count}
        assert leader.sent == held, f"after removing {task.id}"
        assert set(agent.specs) == held, f"after removing {task.id}"
    again: list[dpb.TaskSpec] = []
    back = leader.task(_task("t999", keys[0]), again, state)
    assert [(s.service_id, s.spec_version) for s in again] == [keys[0]]
    msg = dpb.AssignmentsMessage(type=INCREMENTAL, applies_to=301, version=302, updated=[back], specs=again)
    assert [t.id for t in agent.apply(msg).updated] == ["t999"] and set(agent.specs) == {keys[0]}


def test_an_agent_forgets_a_spec_sent_for_no_task_of_its_set() -> None:
    """A spec that arrives with no task referring to it is not kept (the walk dropped it too)."""
    agent = AssignmentSet()
    stray = dpb.TaskSpec(service_id="s9", spec_version=1, spec=specconvert.spec_to_pb(ServiceSpec(name="x", image="y")))
    agent.apply(dpb.AssignmentsMessage(type=COMPLETE, version=1, specs=[stray]))
    assert agent.specs == {}
    agent.apply(dpb.AssignmentsMessage(type=INCREMENTAL, applies_to=1, version=2, specs=[stray]))
    assert agent.specs == {}


def test_spec_refs_count_each_key_once_per_task() -> None:
    refs = SpecRefs()
    refs.refer("a", ("s", 1))
    refs.refer("a", ("s", 1))  # the same task again: still one reference
    refs.refer("b", ("s", 1))
    refs.forget("a")
    assert ("s", 1) in refs and refs.released() == set()
    refs.refer("b", ("s", 2))  # re-pointed: its old key lost its last task
    assert ("s", 1) not in refs and refs.released() == {("s", 1)} and refs.released() == set()
    refs.forget("b")
    refs.refer("c", ("s", 2))  # back before the prune: not released
    assert refs.released() == set() and len(refs) == 1


def test_mesh_and_endpoints_are_held_by_key() -> None:
    held = AssignmentSet()
    held.apply(
        dpb.AssignmentsMessage(
            type=COMPLETE,
            version=1,
            services=[_service("a", 1), _service("z", 0)],
            services_changed=True,
            mesh=[_node("m0", 1)],
            mesh_changed=True,
        )
    )
    assert isinstance(held.endpoints["a"], Endpoint) and "z" in held.endpoints and len(held.endpoints) == 2
    assert held.mesh["m0"] == MeshMember("m0", "key1", "", "10.224.11.0/24")


# -- the leader's sessions read each commit through its digest -------------------------------------
NODES = ["n1", "n2", ""]
task_ops = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(TASKS[:5]),
        st.sampled_from(NODES),
        st.sampled_from([TaskState.ASSIGNED, TaskState.RUNNING, TaskState.FAILED]),
        st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN]),
    ),
    st.tuples(st.just("delete"), st.sampled_from(TASKS[:5])),
    st.tuples(st.just("other"), st.sampled_from(["node", "volume", "service"])),
)
# Commits, each with whether the session reads it together with the next ones (coalesced).
commits = st.lists(st.tuples(st.lists(task_ops, max_size=6), st.booleans()), max_size=10)


def _changes(ops: list) -> list:
    out: list = []
    for op in ops:
        if op[0] == "put":
            task = msgspec.structs.replace(_task(op[1], ("s1", 1), op[4]), node_id=op[2], state=op[3])
            out.append(Put("task", task))
        elif op[0] == "delete":
            out.append(Delete("task", op[1]))
        elif op[1] == "node":
            out.append(Put("node", Node(id="n9", hostname="n9")))
        elif op[1] == "volume":
            out.append(Delete("volume", "v1"))
        else:
            out.append(Delete("service", "s9"))
    return out


def _walk_every_change(node_id: str, known: dict[str, Task], changes: list) -> tuple[list[str], list[str]]:
    """The session's rule before #15, over every change of the commits: (updated, removed) ids;
    a task whose agent's own report is all that changed is not sent back (SwarmKit's rule)."""
    updated: dict[str, None] = {}
    removed: dict[str, None] = {}
    for change in changes:
        if isinstance(change, Put) and change.kind == "task":
            task = change.obj
            if task.node_id == node_id and (not task.state.terminal or task.desired_state == TaskState.RUNNING):
                sent = known.get(task.id)
                removed.pop(task.id, None)
                echo = sent is not None and task.state > TaskState.ASSIGNED and same_but_status(sent, task)
                if task.id in updated or not echo:
                    updated[task.id] = None
                    known[task.id] = task  # the version sent
            elif task.id in known:
                del known[task.id]
                updated.pop(task.id, None)
                removed[task.id] = None
        elif isinstance(change, Delete) and change.kind == "task" and change.id in known:
            del known[change.id]
            updated.pop(change.id, None)
            removed[change.id] = None
    return list(updated), list(removed)


class _StateOnly:
    @contextlib.contextmanager
    def read(self) -> Iterator[ClusterState]:
        yield ClusterState()


UP = (TaskState.RUNNING, TaskState.RUNNING)  # (state, desired state)


@settings(max_examples=100, deadline=None)
@given(history=commits)
@example(  # a task put on the node and moved away in the same commit; one the node held deleted
    history=[
        ([("put", "t001", "n1", *UP)], False),
        ([("put", "t000", "n1", *UP), ("put", "t000", "n2", *UP), ("delete", "t001")], False),
    ]
)
def test_a_session_reading_commit_digests_sends_what_walking_every_change_sent(history: list) -> None:
    """Random commits of tasks put on the node, elsewhere, moved away, ending, deleted, and of
    other kinds, read one by one or several at once: `node_task_diff` over the commits'
    digests updates and removes exactly the tasks, in the order, that walking every change did,
    and the digests say whether nodes or volumes changed."""
    store = _StateOnly()
    digests = CommitDigests()
    known: dict[str, Task] = {}
    walked_known: dict[str, Task] = {}
    pending: list[tuple[int, list]] = []
    for index, (ops, more) in enumerate(history, start=1):
        pending.append((index, _changes(ops)))
        if more and index < len(history):
            continue
        read = [digests.of(i, changes) for i, changes in pending]
        specs = SessionSpecs(by_reference=True)
        updated, removed = node_task_diff("n1", known, read, specs, [], store.read)
        every = [change for _, changes in pending for change in changes]
        assert ([t.id for t in updated], removed) == _walk_every_change("n1", walked_known, every)
        assert known == walked_known
        assert any(d.nodes_changed for d in read) == any(c.kind == "node" for c in every)
        assert any(d.volumes_changed for d in read) == any(c.kind == "volume" for c in every)
        ours = [t.id for d in read for t in d.tasks_on("n1")]
        assert ours == [c.obj.id for c in every if isinstance(c, Put) and c.kind == "task" and c.obj.node_id == "n1"]
        pending = []


def test_the_leader_converts_a_spec_version_once_for_every_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten sessions sending the same spec version convert it once; a new version, or another
    spec under the same version (a restored cluster), is converted again."""
    calls: list[str] = []
    real = specconvert.spec_to_pb

    def counting(spec: ServiceSpec):  # type: ignore[no-untyped-def]
        calls.append(spec.image)
        return real(spec)

    monkeypatch.setattr(specconvert, "spec_to_pb", counting)
    shared = SpecCache()
    state = ClusterState()
    for session in range(10):
        out: list[dpb.TaskSpec] = []
        SessionSpecs(by_reference=True, encoded=shared).task(_task(f"t{session}", ("s1", 1)), out, state)
        assert out[0].spec == real(ServiceSpec(name="s1", image="busybox"))
    assert calls == ["busybox"]
    newer = msgspec.structs.replace(_task("t0", ("s1", 2)), spec=ServiceSpec(name="s1", image="nginx"))
    other = msgspec.structs.replace(_task("t0", ("s1", 2)), spec=ServiceSpec(name="s1", image="redis"))
    for task in (newer, newer, other):
        out = []
        SessionSpecs(by_reference=True, encoded=shared).task(task, out, state)
        assert out[0].spec.image == task.spec.image
    assert calls == ["busybox", "nginx", "redis"]
