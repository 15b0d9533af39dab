"""A service's spec history (ADR 33): one-line summaries of each change, bounded history."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from warren import revisions
from warren.model import HealthCheck, ServiceMode, ServiceSpec, SpecRevision

OLD = ServiceSpec(name="web", image="app:1", env={"PORT": "80", "OLD": "x"}, replicas=2)


def test_a_summary_names_each_change_briefly() -> None:
    new = msgspec.structs.replace(
        OLD,
        image="app:2",
        env={"PORT": "8080", "DEBUG": "1"},
        replicas=4,
        mode=ServiceMode.GLOBAL,
        health=HealthCheck(command=("true",)),
    )
    assert revisions.summary(OLD, new) == (
        "image app:1 -> app:2; env +DEBUG -OLD ~PORT; mode replicated -> global; replicas 2 -> 4; health changed"
    )
    assert revisions.summary(None, OLD) == "created"
    assert revisions.summary(OLD, OLD) == "no change (a forced update)"


def test_long_or_odd_values_are_cut_and_escaped() -> None:
    new = msgspec.structs.replace(OLD, image="registry.example/" + "a" * 100 + "\x1b[2J")
    line = revisions.summary(OLD, new)
    assert "\x1b" not in line and len(line) < 100 and line.endswith("...")


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=30, unique=True))
def test_the_history_keeps_the_last_versions_in_order(versions: list[int]) -> None:
    history: tuple[SpecRevision, ...] = ()
    for v in sorted(versions):
        history = revisions.remember(history, SpecRevision(v, OLD, float(v), "x"))
    kept = sorted(versions)[-revisions.MAX_REVISIONS :]
    assert [r.version for r in history] == kept
    assert revisions.find(history, kept[0]) is history[0]
    assert revisions.find(history, 0) is None
