"""Specs converted once per distinct spec, shared by every session of the process (the
simulator's 1,000 nodes in one process converted each spec once per node, #15): nodes reading
the same spec hold the same object and still see their own tasks' specs right, a changed spec is
converted anew, a bad one is refused every time and never kept, and the cache is bounded."""

from __future__ import annotations

import pytest

from warren.agent import assignments
from warren.agent.assignments import AssignmentSet, converted_spec
from warren.api import names, specconvert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.model import ServiceSpec

COMPLETE = dpb.AssignmentsMessage.COMPLETE


def _message(spec: ServiceSpec, version: int = 1, task_id: str = "t1") -> dpb.AssignmentsMessage:
    task = pb.Task(id=task_id, service_id="s1", service_name=spec.name, slot=1, spec_version=version,
                   desired_state="running", state="assigned", node_id="n1")  # fmt: skip
    entry = dpb.TaskSpec(service_id="s1", spec_version=version, spec=specconvert.spec_to_pb(spec))
    return dpb.AssignmentsMessage(type=COMPLETE, version=1, updated=[task], specs=[entry])


def test_nodes_reading_the_same_spec_share_one_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignments, "_converted_specs", {})
    conversions: list[str] = []
    real = specconvert.spec_from_pb

    def counting(message: pb.ServiceSpec) -> ServiceSpec:
        conversions.append(message.name)
        return real(message)

    monkeypatch.setattr(specconvert, "spec_from_pb", counting)
    spec = ServiceSpec(name="web", image="busybox:latest", env={"A": "1"}, replicas=3)
    nodes = [AssignmentSet() for _ in range(50)]
    tasks = [node.apply(_message(spec)).updated[0] for node in nodes]
    assert conversions == ["web"]
    assert all(t.spec == spec and t.spec is tasks[0].spec for t in tasks)
    changed = ServiceSpec(name="web", image="busybox:latest", env={"A": "2"}, replicas=3)
    task = AssignmentSet().apply(_message(changed, version=2)).updated[0]
    assert conversions == ["web", "web"] and task.spec == changed and task.spec.env == {"A": "2"}


def test_a_bad_spec_is_refused_each_time_and_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignments, "_converted_specs", {})
    bad = specconvert.spec_to_pb(ServiceSpec(name="web", image="x"))
    bad.mode = "weird"
    for _ in range(2):
        with pytest.raises(names.ConversionError):
            converted_spec(bad)
    assert assignments._converted_specs == {}


def test_the_cache_keeps_at_most_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignments, "_converted_specs", {})
    monkeypatch.setattr(assignments, "CONVERTED_SPECS_LIMIT", 3)
    specs = [ServiceSpec(name=f"svc-{i}", image="x") for i in range(5)]
    for spec in specs:
        assert converted_spec(specconvert.spec_to_pb(spec)) == spec
    assert sorted(s.name for s in assignments._converted_specs.values()) == ["svc-2", "svc-3", "svc-4"]
