"""Pure parts of the agent's protocol handling: version chain, report coalescing, failover."""

from __future__ import annotations

import grpc
import pytest

from warren import tls
from warren.agent.assignments import AssignmentSet, VersionGap
from warren.agent.session import Backoff, ManagerList, leader_hint
from warren.agent.status import Report, StatusQueue
from warren.api import convert
from warren.api.convert import report_to_pb, task_from_pb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.model import HealthCheck, RestartCondition, RestartPolicy, ServiceSpec, Task, TaskState

S = TaskState
COMPLETE = dpb.AssignmentsMessage.COMPLETE
INCREMENTAL = dpb.AssignmentsMessage.INCREMENTAL


def pb_task(task_id: str, desired: str = "running", state: str = "assigned") -> pb.Task:
    spec = ServiceSpec(
        name="web",
        image="busybox",
        command=("sh", "-c", "sleep 1"),
        restart=RestartPolicy(RestartCondition.ON_FAILURE, delay=2.0, max_attempts=3, window=60),
        health=HealthCheck(kind="tcp", target="127.0.0.1:80", interval=1.0),
        stop_grace_period=4.0,
    )
    task = Task(
        id=task_id, service_id="s", service_name="web", slot=1, spec=spec, spec_version=2, attempt=1, node_id="n"
    )
    msg = convert.task_to_pb(task, with_spec=True)
    msg.desired_state, msg.state = desired, state
    return msg


def message(kind: int, version: int, applies_to: int = 0, updated=(), removed=(), session: str = "s1"):  # type: ignore[no-untyped-def]
    return dpb.AssignmentsMessage(
        type=kind,
        session_id=session,
        version=version,
        applies_to=applies_to,
        updated=list(updated),
        removed=list(removed),
        managers=["10.0.0.1:4242"],
    )


# -- assignments -------------------------------------------------------------------------------------
def test_task_round_trips_through_the_wire() -> None:
    task = task_from_pb(pb_task("t1"))
    assert task.spec.restart == RestartPolicy(RestartCondition.ON_FAILURE, 2.0, 3, 60)
    assert task.spec.health is not None and task.spec.health.target == "127.0.0.1:80"
    assert task.spec.stop_grace_period == 4.0
    assert (task.desired_state, task.state, task.attempt, task.spec_version) == (S.RUNNING, S.ASSIGNED, 1, 2)


def test_complete_then_chained_incrementals() -> None:
    view = AssignmentSet()
    delta = view.apply(message(COMPLETE, 1, updated=[pb_task("a"), pb_task("b")]))
    assert delta.complete and {t.id for t in delta.updated} == {"a", "b"}
    assert delta.managers == ("10.0.0.1:4242",)
    delta = view.apply(message(INCREMENTAL, 2, 1, updated=[pb_task("c")], removed=["a"]))
    assert not delta.complete and delta.removed == ("a",)
    delta = view.apply(message(INCREMENTAL, 3, 2, updated=[pb_task("b", desired="shutdown")]))
    assert view.tasks["b"].desired_state == S.SHUTDOWN
    assert set(view.tasks) == {"b", "c"} and view.version == 3


def test_version_gap_is_detected() -> None:
    view = AssignmentSet()
    view.apply(message(COMPLETE, 1, updated=[pb_task("a")]))
    view.apply(message(INCREMENTAL, 2, 1))
    with pytest.raises(VersionGap):
        view.apply(message(INCREMENTAL, 4, 3))  # version 3 was missed
    with pytest.raises(VersionGap):
        view.apply(message(INCREMENTAL, 3, 2, session="other"))


def test_incremental_before_complete_is_a_gap() -> None:
    view = AssignmentSet()
    with pytest.raises(VersionGap):
        view.apply(message(INCREMENTAL, 2, 1))
    view.apply(message(COMPLETE, 1))
    view.reset()  # a new session: its own chain starts with COMPLETE again
    with pytest.raises(VersionGap):
        view.apply(message(INCREMENTAL, 2, 1))


def test_unreadable_task_does_not_poison_the_message() -> None:
    view = AssignmentSet()
    view.apply(message(COMPLETE, 1, updated=[pb_task("a")]))
    bad = pb_task("a")
    bad.spec.restart.condition = "sometimes"
    fresh_bad = pb_task("z")
    fresh_bad.spec.mode = "weird"
    delta = view.apply(message(COMPLETE, 1, updated=[bad, fresh_bad, pb_task("b")]))
    assert {t.id for t in delta.updated} == {"a", "b"}  # a's previous copy is kept, not orphaned
    assert [i for i, _ in delta.invalid] == ["a", "z"]


# -- status coalescing -------------------------------------------------------------------------------
def test_reports_coalesce_to_the_latest_state_per_task() -> None:
    q = StatusQueue()
    for n, state in enumerate([S.ACCEPTED, S.PREPARING, S.STARTING, S.RUNNING]):
        q.put(Report("t1", state, float(n)))
    q.put(Report("t2", S.ACCEPTED, 10.0))
    q.put(Report("t1", S.PREPARING, 11.0))  # stale: would move backwards
    batch = q.take()
    assert [(r.task_id, r.state) for r in batch] == [("t1", S.RUNNING), ("t2", S.ACCEPTED)]
    assert len(q) == 0


def test_same_state_newer_report_wins_for_health_changes() -> None:
    q = StatusQueue()
    q.put(Report("t1", S.RUNNING, 1.0, health="starting"))
    q.put(Report("t1", S.RUNNING, 2.0, health="healthy"))
    assert q.take()[0].health == "healthy"


def test_failed_batch_is_requeued_without_overriding_newer_reports() -> None:
    q = StatusQueue()
    q.put(Report("t1", S.RUNNING, 1.0))
    q.put(Report("t2", S.RUNNING, 1.0))
    batch = q.take()
    q.put(Report("t1", S.FAILED, 2.0, error="task exited with code 1"))
    q.requeue(batch)
    pending = {r.task_id: r.state for r in q.take()}
    assert pending == {"t1": S.FAILED, "t2": S.RUNNING}


def test_report_encoding() -> None:
    msg = report_to_pb(Report("t1", S.FAILED, 5.0, error="boom", exit_code=0, runtime_id="r", health="unhealthy"))
    assert (msg.state, msg.has_exit_code, msg.exit_code, msg.health) == ("failed", True, 0, "unhealthy")
    assert not report_to_pb(Report("t1", S.RUNNING, 5.0)).has_exit_code


# -- failover helpers ---------------------------------------------------------------------------------
class _Err(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_leader_hint_follows_only_a_named_leader() -> None:
    assert leader_hint(_Err(grpc.StatusCode.UNAVAILABLE, "not the leader; the leader is at 10.0.0.2:4242")) == (
        "10.0.0.2:4242"
    )
    assert leader_hint(_Err(grpc.StatusCode.UNAVAILABLE, "not the leader; the leader is at unknown")) is None
    assert leader_hint(_Err(grpc.StatusCode.UNAVAILABLE, "connection refused")) is None
    assert leader_hint(_Err(grpc.StatusCode.NOT_FOUND, "the leader is at 10.0.0.2:4242")) is None


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(0.2, 5.0)
    delays = [b.next() for _ in range(8)]
    assert 0.18 <= delays[0] <= 0.22
    assert all(d <= 5.5 for d in delays) and delays[-1] >= 4.5
    b.reset()
    assert b.next() <= 0.22


def test_manager_list_rotates_and_prefers_the_leader() -> None:
    m = ManagerList(["a:1", "b:1", "a:1", ""])
    assert m.addrs == ["a:1", "b:1"] and m.current() == "a:1"
    m.advance()
    assert m.current() == "b:1"
    m.advance()
    assert m.current() == "a:1"
    assert m.merge(["c:1", "b:1"]) and not m.merge(["c:1"])
    m.prefer("d:1")
    assert m.current() == "d:1" and "d:1" in m.addrs
    assert ManagerList().current() is None


# -- specs once per session (ADR 21) -----------------------------------------------------------------
def by_reference(task_id: str, desired: str = "running", version: int = 2) -> tuple[pb.Task, dpb.TaskSpec]:
    """The task as a manager sends it to an agent that reads specs by reference, and its spec."""
    full = pb_task(task_id, desired)
    full.spec_version = version
    entry = dpb.TaskSpec(service_id=full.service_id, spec_version=version, spec=full.spec)
    full.ClearField("spec")
    return full, entry


def test_tasks_find_their_spec_in_this_or_an_earlier_message_of_the_session() -> None:
    view = AssignmentSet()
    a, spec_a = by_reference("a")
    first = message(COMPLETE, 1, updated=[a])
    first.specs.append(spec_a)
    delta = view.apply(first)
    assert not delta.invalid and delta.updated[0].spec.stop_grace_period == 4.0
    b, _ = by_reference("b")
    delta = view.apply(message(INCREMENTAL, 2, 1, updated=[b]))  # same version: no spec again
    assert not delta.invalid and delta.updated[0].spec == view.tasks["a"].spec

    # A task whose spec was never sent, and that the agent does not hold, cannot run.
    c, _ = by_reference("c", version=3)
    delta = view.apply(message(INCREMENTAL, 3, 2, updated=[c]))
    assert delta.invalid == (("c", "its spec (service s version 3) was not sent"),)

    # A new session forgets the old session's specs.
    view.reset()
    d, _ = by_reference("d")
    delta = view.apply(message(COMPLETE, 1, updated=[d]))
    assert [i for i, _ in delta.invalid] == ["d"]


def test_a_task_to_stop_uses_the_spec_the_agent_holds_or_none() -> None:
    held_task = task_from_pb(pb_task("held"))
    view = AssignmentSet(held=lambda task_id: held_task if task_id == "held" else None)
    stop_held, _ = by_reference("held", desired="shutdown")
    stop_unknown, _ = by_reference("never-started", desired="shutdown")
    delta = view.apply(message(COMPLETE, 1, updated=[stop_held, stop_unknown]))
    assert not delta.invalid
    tasks = {t.id: t for t in delta.updated}
    assert tasks["held"].spec == held_task.spec  # stopped with its own stop signal and grace period
    assert tasks["never-started"].desired_state == S.SHUTDOWN


def test_specs_no_task_refers_to_are_forgotten() -> None:
    view = AssignmentSet()
    a, spec_a = by_reference("a")
    first = message(COMPLETE, 1, updated=[a])
    first.specs.append(spec_a)
    view.apply(first)
    assert set(view.specs) == {("s", 2)}
    view.apply(message(INCREMENTAL, 2, 1, removed=["a"]))
    assert view.specs == {}


def test_a_full_spec_in_the_task_is_still_read() -> None:
    """From a manager that sends each task's spec (before ADR 21)."""
    delta = AssignmentSet().apply(message(COMPLETE, 1, updated=[pb_task("a")]))
    assert not delta.invalid and delta.updated[0].spec.stop_grace_period == 4.0


def test_report_texts_are_cut_so_a_batch_fits_the_request_limit() -> None:
    encoded = report_to_pb(Report("t", S.FAILED, 1.0, message="m" * 10_000, error="e" * 10_000))
    assert len(encoded.message) == len(encoded.error) == 4096
    batch = dpb.UpdateTaskStatusRequest(session_id="s" * 32, updates=[encoded] * 1000)
    assert batch.ByteSize() < tls.MAX_REQUEST_BYTES
