"""Placement constraint parsing and matching."""

from __future__ import annotations

import pytest

from warren.constraints import Constraint, ConstraintError, matches_all, parse_constraint, parse_constraints
from warren.model import Node, NodeRole

NODE = Node(
    id="abc123",
    hostname="Worker-1",
    role=NodeRole.WORKER,
    labels={"zone": "eu-West", "disk": "ssd", "com.example/tier": "gold"},
    os="linux",
    arch="x86_64",
)


@pytest.mark.parametrize(
    ("text", "field", "op", "value"),
    [
        ("node.labels.zone==eu", "node.labels.zone", "==", "eu"),
        ("node.labels.zone!=eu", "node.labels.zone", "!=", "eu"),
        ("  node.hostname == w1  ", "node.hostname", "==", "w1"),
        ("node.role==Manager", "node.role", "==", "manager"),
        ("node.id!=abc", "node.id", "!=", "abc"),
        ("Node.Labels.Zone==x", "node.labels.Zone", "==", "x"),
        ("node.labels.com.example/tier==gold", "node.labels.com.example/tier", "==", "gold"),
        ("node.platform.os==linux", "node.platform.os", "==", "linux"),
    ],
)
def test_parse_gives_canonical_parts(text: str, field: str, op: str, value: str) -> None:
    c = parse_constraint(text)
    assert (c.field, c.op, c.value) == (field, op, value)
    assert str(c) == f"{field}{op}{value}"
    assert parse_constraint(str(c)) == c


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node.labels.zone==eu-west", True),
        ("node.labels.zone==EU-WEST", True),  # values compare case-insensitively, as in Docker
        ("node.labels.zone!=eu-west", False),
        ("node.labels.zone==us", False),
        ("node.labels.zone!=us", True),
        ("node.labels.missing==x", False),  # an absent label only satisfies !=
        ("node.labels.missing!=x", True),
        ("node.labels.Zone==eu-west", False),  # label keys are case-sensitive
        ("node.labels.com.example/tier==gold", True),
        ("node.hostname==worker-1", True),
        ("node.hostname!=worker-1", False),
        ("node.role==worker", True),
        ("node.role==manager", False),
        ("node.role!=manager", True),
        ("node.id==abc123", True),
        ("node.id!=abc123", False),
        ("node.platform.os==linux", True),
        ("node.platform.arch==arm64", False),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert parse_constraint(text).matches(NODE) is expected


def test_matches_all_requires_every_constraint() -> None:
    assert matches_all(parse_constraints(["node.role==worker", "node.labels.disk==ssd"]), NODE)
    assert not matches_all(parse_constraints(["node.role==worker", "node.labels.disk==hdd"]), NODE)
    assert matches_all((), NODE)


def test_constraints_are_values() -> None:
    a, b = parse_constraint("node.labels.a==1"), parse_constraint(" node.labels.a == 1 ")
    assert a == b and hash(a) == hash(b)
    assert a != parse_constraint("node.labels.a!=1")
    assert len({a, b}) == 1
    assert isinstance(a, Constraint)
    assert repr(a) == "Constraint('node.labels.a==1')"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("node.labels.zone", "no operator"),
        ("node.labels.zone=eu", "no operator"),
        ("node.labels.zone==a==b", "more than one operator"),
        ("node.labels.zone==a!=b", "more than one operator"),
        ("==eu", "field before the operator is empty"),
        ("node.labels.zone==", "value after == is empty"),
        ("node.labels.zone!=  ", "value after != is empty"),
        ("node.labels.==x", "bad label key"),
        ("node.labels.a b==x", "bad label key"),
        ("node.name==x", "unknown field 'node.name'"),
        ("engine.labels.x==y", "unknown field"),
        ("node.role==boss", "node.role must be manager or worker"),
        ("node.labels.zone==eu west", "may not contain spaces"),
        ("node.labels.zone===eu", "may not contain"),
    ],
)
def test_bad_input_is_explained(text: str, fragment: str) -> None:
    with pytest.raises(ConstraintError) as info:
        parse_constraint(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message  # the operator sees which constraint was wrong
    assert isinstance(info.value, ValueError)


def test_syntax_help_lists_the_fields() -> None:
    with pytest.raises(ConstraintError, match=r"node\.labels\.KEY") as info:
        parse_constraint("zone")
    assert "node.hostname" in str(info.value)
