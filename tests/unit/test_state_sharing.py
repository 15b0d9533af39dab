"""Tasks share their service's spec object in the state, however they arrive (ADR 55).

A task decoded from a Raft entry, from LMDB or from a snapshot carries its own copy of its
spec; at 10,000 tasks those copies were most of the manager's memory (4.3 KB a task).
"""

from __future__ import annotations

import gc
import sys

import msgspec

from warren import commands
from warren.commands import codec
from warren.commands.types import ApplyPlan, TaskUpdate
from warren.model import (
    HealthCheck,
    Mount,
    MountType,
    Node,
    NodeStatus,
    PortConfig,
    Resources,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceSpec,
    SpecRevision,
    Task,
    TaskState,
    UpdateConfig,
)
from warren.state import ClusterState, Put

SPEC = ServiceSpec(name="web", image="nginx:1", env={"A": "1"}, labels={"tier": "front"})
NODE = Node(id="node-1", hostname="h1", status=NodeStatus.READY, resources=Resources(4_000_000_000, 8 << 30))


def _state() -> ClusterState:
    state = ClusterState()
    state.apply([Put("node", NODE), Put("service", Service(id="svc-1", spec=SPEC))])
    return state


def _task(n: int, spec: ServiceSpec = SPEC, version: int = 1) -> Task:
    return Task(
        id=f"task-{n}",
        service_id="svc-1",
        service_name="web",
        slot=n,
        spec=spec,
        spec_version=version,
        node_id="node-1",
    )


def _through_the_log(state: ClusterState, plan: ApplyPlan) -> None:
    _result, changes = commands.apply(state, codec.decode(codec.encode(plan)))
    state.apply(changes)


def test_tasks_created_through_the_log_share_the_services_spec() -> None:
    state = _state()
    _through_the_log(state, ApplyPlan(created=tuple(_task(n) for n in range(1, 4))))
    service = state.services["svc-1"]
    assert len(state.tasks) == 3
    for task in state.tasks.values():
        assert task.spec is service.spec
        assert task.service_id is service.id and task.node_id is state.nodes["node-1"].id
    # and a status report keeps it shared, with its message shared between tasks
    _through_the_log(
        state,
        ApplyPlan(
            updated=tuple(TaskUpdate(id=t, at=2.0, state=TaskState.RUNNING, message="started") for t in state.tasks)
        ),
    )
    first, *others = state.tasks.values()
    assert all(t.spec is service.spec and t.message is first.message for t in others)


def test_tasks_loaded_as_from_disk_share_the_spec() -> None:
    state = _state()
    state.apply([Put("task", _task(n)) for n in range(1, 3)])
    encoder = msgspec.msgpack.Encoder()
    loaded = ClusterState()  # as Store._load: services first, then each task decoded alone
    loaded.apply(
        [
            Put("node", NODE),
            Put("service", msgspec.msgpack.decode(encoder.encode(state.services["svc-1"]), type=Service)),
        ]
    )
    loaded.apply([Put("task", msgspec.msgpack.decode(encoder.encode(t), type=Task)) for t in state.tasks.values()])
    assert all(t.spec is loaded.services["svc-1"].spec for t in loaded.tasks.values())
    assert loaded.tasks == state.tasks  # the same values


def test_a_task_of_an_older_version_shares_the_historys_spec() -> None:
    old_spec = msgspec.structs.replace(SPEC, image="nginx:0")
    state = ClusterState()
    history = (SpecRevision(version=1, spec=old_spec, at=1.0, summary=""), SpecRevision(2, None, 2.0, "image"))
    state.apply([Put("service", Service(id="svc-1", spec=SPEC, version=2, history=history))])
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(_task(1, old_spec, 1)), type=Task)
    state.apply([Put("task", decoded)])
    assert state.tasks["task-1"].spec is history[0].spec


def test_a_spec_that_differs_is_kept_as_it_is() -> None:
    state = _state()
    other = msgspec.structs.replace(SPEC, env={"A": "2"})  # claims version 1, but is not its spec
    state.apply([Put("task", _task(1, other))])
    assert state.tasks["task-1"].spec is other


def test_tasks_are_not_tracked_by_the_cycle_collector() -> None:
    assert not gc.is_tracked(_task(1))


def test_a_decoded_spec_and_its_parts_are_not_tracked_by_the_cycle_collector() -> None:
    """At S2 the leader's full collections walked ~57,000 decoded specs' parts; one of 1.01 s
    stopped its Raft thread long enough to elect another manager (#15)."""
    full = ServiceSpec(
        name="web",
        image="busybox:latest",
        env={"A": "1"},
        labels={"tier": "front"},
        command=("sh", "-c", "httpd"),
        restart=RestartPolicy(RestartCondition.ON_FAILURE, 2.0, 3, 60),
        health=HealthCheck(target="127.0.0.1:80"),
        update=UpdateConfig(parallelism=2),
        rollback=UpdateConfig(parallelism=1),
        ports=(PortConfig(target=80, published=8080),),
        mounts=(Mount(type=MountType.TMPFS, target="/tmp"),),
        reservations=Resources(nano_cpus=500_000_000),
    )
    decoded = codec.decode(codec.encode(commands.CreateService(Service(id="s1", spec=full, version=1))))
    spec = decoded.service.spec
    assert spec == full
    parts = [decoded.service, spec, spec.restart, spec.health, spec.update, spec.rollback, spec.deploy,
             spec.container, spec.reservations, *spec.ports, *spec.mounts]  # fmt: skip
    assert [type(p).__name__ for p in parts if gc.is_tracked(p)] == []


def test_encodings_leave_out_default_values_and_still_read_full_ones() -> None:
    """Each task is stored in LMDB and each created one in a Raft entry with its spec: fields at
    their defaults are left out (half the bytes of a task), and an encoding that has them all,
    as written before, reads the same."""
    task = _task(1)
    encoded = msgspec.msgpack.encode(task)
    assert b"stop_grace_period" not in encoded and b"draining_since" not in encoded
    assert msgspec.msgpack.decode(encoded, type=Task) == task
    full = {f.name: getattr(task, f.name) for f in msgspec.structs.fields(Task)}
    full["spec"] = {f.name: getattr(SPEC, f.name) for f in msgspec.structs.fields(ServiceSpec)}
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(full), type=Task) == task


def test_a_copy_fed_the_changes_as_stored_holds_the_live_states_objects() -> None:
    """ADR 92: the orchestrator's copy is brought up to date with the changes the store tells
    its watchers, which are the changes as the live state stored them. A task decoded from the
    log, with its own spec and its own strings, is stored shared; fed the changes as stored, the
    copy holds that very object, not a second equal one (which at S2's size was up to 100,000
    more tasks held between full passes)."""
    live = _state()
    copy = live.copy()
    task = msgspec.structs.replace(_task(1), message="started")
    decoded = Put("task", msgspec.msgpack.decode(msgspec.msgpack.encode(task), type=Task))  # as from the log
    assert decoded.obj.spec is not SPEC and decoded.obj.message is not sys.intern("started")

    stored = live.apply([decoded])
    copy.apply(stored)
    assert copy.tasks["task-1"] is live.tasks["task-1"]
    assert live.tasks["task-1"].spec is live.services["svc-1"].spec

    fed_the_input = _state()
    fed_the_input.services = dict(live.services)  # the same service objects as the live state
    fed_the_input.apply([decoded])
    assert fed_the_input.tasks["task-1"] is not live.tasks["task-1"]  # equal, but a second object
    assert fed_the_input.tasks["task-1"] == live.tasks["task-1"]
