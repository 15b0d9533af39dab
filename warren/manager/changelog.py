"""What changed between the versions of a keyed list the dispatcher sends every session (the
endpoints by service name, the mesh by node id), for deltas (ADR 65).

Each version records the keys it changed from the one before (added, altered or removed); the
keys changed from an older version onto the newest are their union, while that version is still
in the bounded log. The owner keeps the entries themselves, and one encoding per base asked for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

HISTORY = 64  # versions a session may be behind and still get a delta


class ChangeLog:
    def __init__(self, history: int = HISTORY) -> None:
        # (version, base, keys, details): what the owner recorded about some keys' changes
        self._log: deque[tuple[int, int, frozenset[str], Mapping[str, Any]]] = deque(maxlen=history)

    def record(
        self, version: int, base: int, keys: set[str] | frozenset[str], details: Mapping[str, Any] | None = None
    ) -> None:
        """Version `version` follows `base` and changed `keys`; `details` says how, for some."""
        self._log.append((version, base, frozenset(keys), details or {}))

    def since(self, base: int) -> set[str] | None:
        """The keys changed from version `base` onto the newest; None if `base` is not in the
        log any more (or never was): the whole list must be sent."""
        steps = self.steps(base)
        if steps is None:
            return None
        return set().union(*(keys for keys, _ in steps))

    def steps(self, base: int) -> list[tuple[frozenset[str], Mapping[str, Any]]] | None:
        """Each version's changed keys and details from version `base` onto the newest, oldest
        first; None if `base` is not in the log any more (or never was)."""
        found = self.versions(base)
        return None if found is None else [(changed, details) for _, changed, details in found]

    def versions(self, base: int) -> list[tuple[int, frozenset[str], Mapping[str, Any]]] | None:
        """`steps`, each with its version."""
        found: list[tuple[int, frozenset[str], Mapping[str, Any]]] = []
        for version, before, changed, details in reversed(self._log):
            found.append((version, changed, details))
            if before == base:
                found.reverse()
                return found
            if version <= base:
                break
        return None
