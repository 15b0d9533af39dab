"""Placement constraints (`node.labels.zone==eu`, `node.role!=manager`, ...), parsed once and
matched against nodes. Pure.

Matching follows Docker Swarm: values compare case-insensitively, and a constraint on a label
the node does not carry is satisfied only by `!=`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from warren.model import Node
from warren.text import has_control, shown

Op = Literal["==", "!="]

LABEL_PREFIX = "node.labels."
_PLAIN_FIELDS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_ROLES = ("manager", "worker")
# Used with fullmatch: `$` also matches before a trailing newline.
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_VALUE_RE = re.compile(r"[^\s=!\x00-\x1f\x7f-\x9f]+")

_SYNTAX = "expected FIELD==VALUE or FIELD!=VALUE, with FIELD one of " + ", ".join((*_PLAIN_FIELDS, "node.labels.KEY"))


class ConstraintError(ValueError):
    """A constraint that cannot be parsed; str() is a message for the operator."""


class Constraint:
    """One parsed constraint. `field` is the canonical field name (`node.labels.<key>` for labels)."""

    __slots__ = ("_folded", "field", "label", "op", "value")

    def __init__(self, field: str, op: Op, value: str) -> None:
        self.field = field
        self.op: Op = op
        self.value = value
        self.label = field[len(LABEL_PREFIX) :] if field.startswith(LABEL_PREFIX) else ""
        self._folded = value.casefold()

    def _actual(self, node: Node) -> str | None:
        """The node's value for this field; None when the node lacks the label."""
        if self.label:
            return node.labels.get(self.label)
        field = self.field
        if field == "node.id":
            return node.id
        if field == "node.hostname":
            return node.hostname
        if field == "node.role":
            return node.role.value
        if field == "node.platform.os":
            return node.os
        return node.arch

    def matches(self, node: Node) -> bool:
        actual = self._actual(node)
        equal = actual is not None and actual.casefold() == self._folded
        return equal if self.op == "==" else not equal

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"

    def __repr__(self) -> str:
        return f"Constraint({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Constraint):
            return NotImplemented
        return (self.field, self.op, self.value) == (other.field, other.op, other.value)

    def __hash__(self) -> int:
        return hash((self.field, self.op, self.value))


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint; raises ConstraintError saying what is wrong and what is expected."""
    if has_control(text):  # strip() below would hide a newline or tab around the field
        raise ConstraintError(f"invalid constraint {shown(text)}: it contains control characters")
    stripped = text.strip(" ")
    operators: tuple[Op, ...] = ("==", "!=")
    found = [(i, op) for op in operators for i in _find_all(stripped, op)]
    if len(found) != 1:
        problem = "no operator" if not found else "more than one operator"
        raise ConstraintError(f"invalid constraint {shown(text)}: {problem}; {_SYNTAX}")
    index, op = found[0]
    raw_field, value = stripped[:index].strip(" "), stripped[index + 2 :].strip(" ")
    field = _canonical_field(text, raw_field)
    if not value:
        raise ConstraintError(f"invalid constraint {shown(text)}: the value after {op} is empty")
    if not _VALUE_RE.fullmatch(value):
        raise ConstraintError(
            f"invalid constraint {shown(text)}: the value {shown(value)} may not contain spaces, '=' or '!'"
        )
    if field == "node.role":
        value = value.lower()
        if value not in _ROLES:
            raise ConstraintError(f"invalid constraint {shown(text)}: node.role must be manager or worker")
    return Constraint(field, op, value)


def parse_constraints(texts: Iterable[str]) -> tuple[Constraint, ...]:
    return tuple(parse_constraint(t) for t in texts)


def matches_all(constraints: Iterable[Constraint], node: Node) -> bool:
    return all(c.matches(node) for c in constraints)


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], 0
    while (i := text.find(needle, start)) >= 0:
        found.append(i)
        start = i + len(needle)
    return found


def _canonical_field(text: str, raw: str) -> str:
    """Field names are case-insensitive (as in Docker); label keys keep their case."""
    if not raw:
        raise ConstraintError(f"invalid constraint {shown(text)}: the field before the operator is empty; {_SYNTAX}")
    lowered = raw.lower()
    if lowered in _PLAIN_FIELDS:
        return lowered
    if lowered.startswith(LABEL_PREFIX):
        key = raw[len(LABEL_PREFIX) :]
        if not _LABEL_KEY_RE.fullmatch(key):
            raise ConstraintError(f"invalid constraint {shown(text)}: bad label key {shown(key)}")
        return LABEL_PREFIX + key
    raise ConstraintError(f"invalid constraint {shown(text)}: unknown field {shown(raw)}; {_SYNTAX}")
