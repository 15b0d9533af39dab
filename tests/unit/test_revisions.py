"""A service's spec history (ADR 33): one-line summaries of each change, bounded history."""

from __future__ import annotations

import itertools

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
def test_the_history_keeps_the_last_versions_and_the_current_spec_once(versions: list[int]) -> None:
    ordered = sorted(versions)
    history: tuple[SpecRevision, ...] = (SpecRevision(ordered[0], None, 0.0, "created"),)
    for before, v in itertools.pairwise(ordered):
        replaced = msgspec.structs.replace(OLD, image=f"app:{before}")
        history = revisions.advance(history, replaced, SpecRevision(v, None, float(v), "x"))
    kept = ordered[-revisions.MAX_REVISIONS :]
    assert [r.version for r in history] == kept
    assert [r.spec is None for r in history] == [v == ordered[-1] for v in kept]  # only the current
    assert all(r.spec is not None and r.spec.image == f"app:{r.version}" for r in history[:-1])
    assert revisions.find(history, kept[0]) is history[0] and revisions.find(history, 0) is None
    previous = revisions.previous(history, ordered[-1])
    assert previous is (history[-2] if len(history) > 1 else None)
