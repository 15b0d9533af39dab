"""`--format json` converts flat messages without json_format's per-field machinery (#15): the
dicts, their key order and the printed JSON are json_format's, for any task, and for the
messages it hands back to json_format (a set message field, maps, repeated fields)."""

from __future__ import annotations

import json
import math

from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.api.v1 import types_pb2 as pb
from warren.cli import flatjson

TEXT = st.text(max_size=12)
UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
DOUBLE = st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0, 1.7e9, 1e-300]) | st.floats()


def _reference(message: object) -> dict[str, object]:
    return json_format.MessageToDict(
        message,  # type: ignore[arg-type]
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


@st.composite
def tasks(draw: st.DrawFn) -> pb.Task:
    fields = {
        "id": TEXT,
        "service_name": TEXT,
        "slot": UINT64,
        "node_id": TEXT,
        "state": TEXT,
        "message": TEXT,
        "has_exit_code": st.booleans(),
        "exit_code": INT32,
        "spec_version": UINT64,
        "attempt": UINT64,
        "created_at": DOUBLE,
        "ready_at": DOUBLE,
        "relocates": TEXT,
        "image": TEXT,
    }
    chosen = draw(st.sets(st.sampled_from(sorted(fields))))
    task = pb.Task(**{name: draw(fields[name]) for name in chosen})
    if draw(st.booleans()):
        task.spec.name = draw(TEXT)  # a set message field: json_format's own answer
    return task


def _same(a: object, b: object) -> bool:
    """Equal as printed JSON (NaN is not equal to itself as a float, but is "NaN" in both)."""
    return json.dumps(a, indent=2) == json.dumps(b, indent=2)


@settings(max_examples=300, deadline=None)
@given(tasks())
def test_a_task_converts_as_json_format_converts_it(task: pb.Task) -> None:
    ours, theirs = flatjson.message_dict(task), _reference(task)
    assert list(ours) == list(theirs)  # the same keys in the same order
    assert _same(ours, theirs)


def test_messages_that_are_not_flat_go_to_json_format() -> None:
    node = pb.Node(id="n1", hostname="h", labels={"zone": "a"})
    node.resources.nano_cpus = 2_000_000_000
    spec = pb.ServiceSpec(name="web", image="x", env={"A": "1"}, constraints=["node.role==worker"])
    for message in (node, spec, pb.Node(), pb.ServiceSpec()):
        assert _same(flatjson.message_dict(message), _reference(message))
    assert flatjson._plan(pb.ServiceSpec.DESCRIPTOR) is None  # repeated fields: not flat
    assert flatjson._plan(pb.Task.DESCRIPTOR) is not None
