"""UpdateNode's label checks (issue #10, item 3), without a manager: the integration test
tests/integration/test_input_limits.py runs them against a real one."""

from __future__ import annotations

import time

import grpc
import pytest

from warren.manager.controlnodes import _check_node_labels
from warren.manager.server import ApiError
from warren.model import Node
from warren.validate import MAX_ITEMS


def _node(labels: dict[str, str]) -> Node:
    return Node(id="n1", hostname="n1", labels=labels)


def _refusal(node: Node, add: dict[str, str], remove: tuple[str, ...] = ()) -> str:
    with pytest.raises(ApiError) as err:
        _check_node_labels(node, add, remove)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.message


def test_a_stored_label_from_before_the_checks_can_still_be_removed() -> None:
    node = _node({"bad\x1b[31m": "x", "k" * 1000: "y"})
    _check_node_labels(node, {}, ("bad\x1b[31m", "k" * 1000))
    assert "invalid node label key" in _refusal(node, {}, ("other\x1b",))


def test_reserved_keys_are_neither_set_nor_removed() -> None:
    assert "reserved" in _refusal(_node({}), {"warren.role": "x"})
    assert "reserved" in _refusal(_node({"warren.x": "1"}), {}, ("warren.x",))


def test_a_node_holds_at_most_max_items_labels() -> None:
    full = _node({f"k{i}": "v" for i in range(MAX_ITEMS)})
    assert f"at most {MAX_ITEMS} labels" in _refusal(full, {"one-more": "v"})
    _check_node_labels(full, {"one-more": "v"}, ("k0",))  # replacing one is fine
    _check_node_labels(full, {"k1": "changed"}, ())


def test_checking_a_huge_removal_is_linear() -> None:
    node = _node({f"k{i}": "v" for i in range(100_000)})
    started = time.perf_counter()
    _check_node_labels(node, {"new": "v"}, tuple(f"k{i}" for i in range(100_000)))
    assert time.perf_counter() - started < 5.0
