"""`service ls`'s replica counts: the cluster-wide pass (/metrics) and the per-service count
(ListServices pages) agree with the rule, for any mix of tasks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from warren.model import Service, ServiceMode, ServiceSpec, Task, TaskState
from warren.state import ClusterState, replica_counts

SERVICES = [
    Service(id="rep", spec=ServiceSpec(name="rep", image="x", replicas=4)),
    Service(id="glob", spec=ServiceSpec(name="glob", image="x", mode=ServiceMode.GLOBAL)),
]
_tasks = st.lists(
    st.tuples(st.sampled_from(["rep", "glob"]), st.sampled_from(list(TaskState)), st.sampled_from(list(TaskState))),
    max_size=40,
)


def _reference(service: Service, tasks: list[Task]) -> tuple[int, int]:
    mine = [t for t in tasks if t.service_id == service.id and t.desired_state == TaskState.RUNNING]
    live = sum(1 for t in mine if not t.state.terminal)
    running = sum(1 for t in mine if t.state == TaskState.RUNNING)
    return (service.spec.replicas if service.spec.mode == ServiceMode.REPLICATED else live), running


@settings(max_examples=200, deadline=None)
@given(_tasks)
def test_both_counts_follow_the_rule(drawn: list[tuple[str, TaskState, TaskState]]) -> None:
    tasks = [
        Task(
            id=f"t{i}",
            service_id=sid,
            service_name=sid,
            slot=i,
            spec=SERVICES[0].spec,
            spec_version=1,
            state=s,
            desired_state=d,
        )
        for i, (sid, s, d) in enumerate(drawn)
    ]
    state = ClusterState()
    for task in tasks:
        state.tasks[task.id] = task
        state.tasks_by_service[task.service_id].add(task.id)
    everyone = replica_counts(SERVICES, tasks)
    for service in SERVICES:
        assert everyone[service.id] == _reference(service, tasks)
        assert state.replica_counts(service) == _reference(service, tasks)
