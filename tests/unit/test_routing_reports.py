"""What a node may route to (ADR 33, ADR 72): the union of the backends sent since the version
it confirmed, kept as intervals per address that mean what whole sets meant, and forgotten once
no view can ask or the node is removed."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from warren.manager.backendhistory import BackendHistory
from warren.manager.routingreports import RoutingReports

_ADDRESSES = st.frozensets(st.sampled_from([f"10.0.0.{i}" for i in range(8)]), max_size=8)
_REPORTS = st.lists(
    st.one_of(
        st.tuples(st.just("sent"), st.integers(0, 3), st.integers(1, 12), _ADDRESSES),
        st.tuples(st.just("applied"), st.integers(0, 3), st.integers(0, 12)),
        st.tuples(st.just("forget"), st.integers(0, 3)),
    ),
    max_size=40,
)


@given(_REPORTS)
def test_routing_snapshot_is_the_union_of_the_sends_since_the_confirmed_one(reports: list[tuple]) -> None:
    """What a node may route to, as the reconciler asks it (membership, equality, size), is the
    union of the backends sent at or after the index it confirmed; a node that confirmed none
    is unknown. The snapshot leaves the union unbuilt (it was 40 % of the leader in S1)."""
    routing = RoutingReports()
    sent: dict[str, dict[int, frozenset[str]]] = {}
    applied: dict[str, int] = {}
    for op, n, *rest in reports:
        node = f"n{n}"
        if op == "sent":
            routing.sent(node, rest[0], rest[1])
            sent.setdefault(node, {})[rest[0]] = rest[1]
        elif op == "applied":
            routing.applied(node, rest[0])
            if rest[0] and rest[0] in sent.get(node, {}) and rest[0] >= applied.get(node, 0):
                applied[node] = rest[0]
        else:
            routing.forget(node)
            sent.pop(node, None)
            applied.pop(node, None)
    known = routing.snapshot()
    assert set(known) == set(applied)
    for node, index in applied.items():
        union = frozenset().union(*(b for i, b in sent[node].items() if i >= index))
        assert known[node] == union and len(known[node]) == len(union) and set(known[node]) == union
        assert all((f"10.0.0.{i}" in known[node]) == (f"10.0.0.{i}" in union) for i in range(8))


class ReferenceRoutingReports:
    """RoutingReports as it was before ADR 72, each version's whole frozenset of backends per
    send: the meaning the interval representation must keep (ADR 33)."""

    MAX_UNCONFIRMED = RoutingReports.MAX_UNCONFIRMED

    def __init__(self) -> None:
        self._sent: dict[str, dict[int, frozenset[str]]] = {}
        self._applied: dict[str, int] = {}

    def sent(self, node_id: str, index: int, backends: frozenset[str]) -> None:
        sent = self._sent.setdefault(node_id, {})
        sent[index] = backends
        if len(sent) > self.MAX_UNCONFIRMED:
            self.forget(node_id)

    def applied(self, node_id: str, index: int) -> None:
        sent = self._sent.get(node_id)
        if not index or sent is None or index not in sent or index < self._applied.get(node_id, 0):
            return
        self._applied[node_id] = index
        for older in [i for i in sent if i < index]:
            del sent[older]

    def forget(self, node_id: str) -> None:
        self._sent.pop(node_id, None)
        self._applied.pop(node_id, None)

    def snapshot(self) -> dict[str, frozenset[str]]:
        return {
            node: frozenset().union(*(b for i, b in self._sent.get(node, {}).items() if i >= applied))
            for node, applied in self._applied.items()
        }


_POOL = [f"10.0.0.{i}" for i in range(8)]
_HISTORY_OPS = st.lists(
    st.one_of(
        # A new endpoint version: its label's step up, its backends, extra addresses "touched"
        # that did not change (a service recomputed with the same backends).
        st.tuples(st.just("version"), st.integers(1, 3), _ADDRESSES, _ADDRESSES),
        st.tuples(st.just("sent"), st.integers(0, 3)),  # the current version, to that node
        st.tuples(st.just("applied"), st.integers(0, 3), st.integers(0, 8)),  # the k-th newest sent, or junk
        st.tuples(st.just("forget"), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(_HISTORY_OPS)
@example(  # a node that confirmed the last version holding an address, removed by the next one
    [
        ("version", 1, frozenset({"10.0.0.1"}), frozenset()),
        ("sent", 0),
        ("applied", 0, 0),
        ("version", 1, frozenset(), frozenset()),
    ]
)
@example(  # an address leaving and coming back, and a node holding only the versions around it
    [
        ("version", 1, frozenset({"10.0.0.1"}), frozenset()),
        ("sent", 0),
        ("applied", 0, 0),
        ("version", 2, frozenset(), frozenset()),
        ("sent", 0),
        ("applied", 0, 0),
        ("version", 1, frozenset({"10.0.0.1"}), frozenset()),
        ("sent", 1),
        ("applied", 1, 0),
        ("version", 1, frozenset(), frozenset()),
        ("sent", 1),
    ]
)
def test_routing_from_backend_intervals_means_what_whole_sets_meant(ops: list[tuple]) -> None:
    """ADR 72: versions recorded as intervals per address, sent, confirmed and forgotten in any
    order, answer "may node N route to X" exactly as the whole frozensets of ADR 33 did, also
    after the history forgot the spells no view can ask about any more."""
    history = BackendHistory()
    routing, reference = RoutingReports(), ReferenceRoutingReports()
    backends: frozenset[str] = frozenset()
    current = history.record(1, backends, ())
    sent_to: dict[str, list[int]] = {}
    for op, *args in ops:
        if op == "version":
            step, new, touched = args
            current = history.record(current.at + step, new, (backends ^ new) | touched)
            backends = new
        elif op == "sent":
            node = f"n{args[0]}"
            routing.sent(node, current.at, current)
            reference.sent(node, current.at, backends)
            sent_to.setdefault(node, []).append(current.at)
        elif op == "applied":
            node, k = f"n{args[0]}", args[1]
            indexes = sent_to.get(node, [])
            index = indexes[-1 - k] if k < len(indexes) else k  # a junk index when k is past them
            routing.applied(node, index)
            reference.applied(node, index)
        else:
            routing.forget(f"n{args[0]}")
            reference.forget(f"n{args[0]}")
        assert set(current) == backends
        known, expected = routing.snapshot(), reference.snapshot()
        assert set(known) == set(expected)
        for node, union in expected.items():
            assert [a in known[node] for a in _POOL] == [a in union for a in _POOL], node
            assert set(known[node]) == union and len(known[node]) == len(union)


def test_backend_history_holds_what_versions_changed_not_what_they_hold() -> None:
    """1,000 backends and 200 versions that each move one: the history holds about one spell per
    change (whole sets: 200 x 1,000), and forgets the ended ones once no view can ask."""
    history = BackendHistory()
    backends = {f"10.224.{i // 256}.{i % 256}" for i in range(1_000)}
    views = [history.record(1, backends, backends)]
    for step in range(200):
        gone, new = f"10.224.{step // 256}.{step % 256}", f"10.225.{step // 256}.{step % 256}"
        backends = (backends - {gone}) | {new}
        views.append(history.record(2 + step, backends, {gone, new}))
    assert history.spells() == 1_000 + 200
    assert "10.224.0.0" in views[0] and "10.224.0.0" not in views[1] and "10.225.0.0" in views[1]
    assert len(views[100]) == 1_000
    del views[:-1]  # only the newest is still viewed
    history.record(500, backends, ())
    assert history.spells() == 1_000
    with pytest.raises(ValueError, match="not above"):
        history.record(500, backends, ())


def test_a_removed_node_no_longer_keeps_its_versions_alive() -> None:
    """A node that never confirmed keeps the versions sent to it, and the history every spell
    that ended since; once it is removed (`node rm` revokes it) the routes forget it."""
    history, routing = BackendHistory(), RoutingReports()
    backends = {f"10.224.0.{i}" for i in range(100)}
    routing.sent("gone", 1, history.record(1, backends, backends))
    routing.sent("kept", 2, history.record(2, backends, ()))
    routing.applied("kept", 2)
    for step in range(50):  # the node "kept" confirms each; "gone" none
        old, new = f"10.224.0.{step}", f"10.225.0.{step}"
        backends = (backends - {old}) | {new}
        current = history.record(3 + step, backends, {old, new})
        routing.sent("kept", current.at, current)
        routing.applied("kept", current.at)
    assert history.spells() == 150  # the ended ones kept for "gone"'s version 1
    known = routing.snapshot(revoked={"gone": object()})
    assert set(known) == {"kept"} and "10.224.0.0" not in known["kept"]
    history.record(100, backends, ())
    assert history.spells() == 100
