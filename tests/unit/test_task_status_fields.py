"""Which fields of a task are its agent's report (`model.same_but_status`, #15): the managers send
a task back to its node only when another field changed, as SwarmKit's dispatcher does."""

from __future__ import annotations

import msgspec
import pytest

from tests.unit.agent_fakes import make_task
from warren.model import ServiceSpec, Task, TaskState, same_but_status

# What an agent reports of its task (warren.commands.tasks._task_update sets these from a report).
REPORTED = {"state", "message", "error", "exit_code", "runtime_id", "health", "updated_at", "started_at", "ready_at"}


def _other(value: object) -> object:
    """A different value of the same kind."""
    if isinstance(value, TaskState):
        return TaskState.RUNNING if value != TaskState.RUNNING else TaskState.FAILED
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, ServiceSpec):
        return msgspec.structs.replace(value, image="other")
    if value is None:
        return 3
    raise AssertionError(f"no other value for {value!r}")


@pytest.mark.parametrize("name", [f.name for f in msgspec.structs.fields(Task)])
def test_a_field_counts_as_the_managers_unless_the_agent_reports_it(name: str) -> None:
    task = make_task("t1", state=TaskState.PREPARING)
    changed = msgspec.structs.replace(task, **{name: _other(getattr(task, name))})
    assert changed != task
    assert same_but_status(task, changed) == (name in REPORTED)


def test_every_reported_field_is_a_field_of_a_task() -> None:
    assert {f.name for f in msgspec.structs.fields(Task)} >= REPORTED
