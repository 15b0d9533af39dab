"""Property tests of placement constraints: their text round-trips, the parser raises only
ConstraintError, and matching agrees with the definition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core_histories import FAST
from warren.constraints import ConstraintError, parse_constraint
from warren.model import Node, NodeRole

label_keys = st.text("abz019_.-/", min_size=1, max_size=8).filter(lambda k: k[0] not in "./-")
values = st.text("abcXYZ019_.:-", min_size=1, max_size=8)


@st.composite
def constraint_texts(draw: st.DrawFn) -> str:
    field = draw(st.sampled_from(["node.id", "node.hostname", "node.role", "label"]))
    op = draw(st.sampled_from(["==", "!="]))
    if field == "label":
        field = "node.labels." + draw(label_keys)
    value = draw(st.sampled_from(["manager", "worker"])) if field == "node.role" else draw(values)
    pad = draw(st.sampled_from(["", " "]))
    return f"{pad}{field}{pad}{op}{pad}{value}{pad}"


@FAST
@given(constraint_texts())
def test_constraint_text_round_trips(text: str) -> None:
    c = parse_constraint(text)
    assert str(c) == text.replace(" ", "")
    assert parse_constraint(str(c)) == c


@FAST
@given(st.text(max_size=30))
def test_constraint_parser_only_raises_constraint_error(text: str) -> None:
    try:
        c = parse_constraint(text)
    except ConstraintError as exc:
        assert str(exc).startswith("invalid constraint")
    else:
        assert parse_constraint(str(c)) == c


@FAST
@given(
    constraint_texts(),
    st.dictionaries(label_keys, values, max_size=3),
    values,
    st.sampled_from(list(NodeRole)),
)
def test_constraint_matching_agrees_with_its_definition(
    text: str, labels: dict[str, str], hostname: str, role: NodeRole
) -> None:
    n = Node(id="node-1", hostname=hostname, role=role, labels=labels)
    c = parse_constraint(text)
    actual = {"node.id": n.id, "node.hostname": n.hostname, "node.role": role.value}.get(c.field)
    if c.field.startswith("node.labels."):
        actual = labels.get(c.field.removeprefix("node.labels."))
    equal = actual is not None and actual.lower() == c.value.lower()
    assert c.matches(n) == (equal if c.op == "==" else not equal)
