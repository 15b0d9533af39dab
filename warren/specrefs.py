"""Which spec version each task of an assignment set refers to, counted per spec (ADR 21).

Both ends of a dispatcher session forget a spec once no task in the set refers to it, after
each message. Walking every task of the node at every message to find those specs cost the S1
leader 4 % of its CPU (#15); a count per spec, kept as tasks come and go, makes that
O(changed tasks). Pure: shared by the manager's `SessionSpecs` and the agent's `AssignmentSet`
so that both apply the same rule to the same set.
"""

from __future__ import annotations

SpecKey = tuple[str, int]  # (service id, spec version)


class SpecRefs:
    """Task id -> its spec key, with the number of tasks referring to each key."""

    __slots__ = ("_count", "_of", "_released")

    def __init__(self) -> None:
        self._of: dict[str, SpecKey] = {}
        self._count: dict[SpecKey, int] = {}
        self._released: set[SpecKey] = set()  # keys whose count fell to 0 since `released()`

    def refer(self, task_id: str, key: SpecKey) -> None:
        """`task_id` is in the set and refers to `key` (perhaps another key than before)."""
        old = self._of.get(task_id)
        if old == key:
            return
        if old is not None:
            self._drop(old)
        self._of[task_id] = key
        self._count[key] = self._count.get(key, 0) + 1

    def forget(self, task_id: str) -> None:
        """`task_id` left the set."""
        old = self._of.pop(task_id, None)
        if old is not None:
            self._drop(old)

    def _drop(self, key: SpecKey) -> None:
        left = self._count[key] - 1
        if left:
            self._count[key] = left
        else:
            del self._count[key]
            self._released.add(key)

    def __contains__(self, key: object) -> bool:
        """Whether some task in the set refers to `key`."""
        return key in self._count

    def __len__(self) -> int:
        return len(self._of)

    def released(self) -> set[SpecKey]:
        """The keys no task refers to any more that lost their last task since the last call:
        the only specs a prune can have to forget."""
        gone = {key for key in self._released if key not in self._count}
        self._released = set()
        return gone
