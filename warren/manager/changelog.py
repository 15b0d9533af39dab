"""What changed between the versions of a keyed list the dispatcher sends every session (the
endpoints by service name, the mesh by node id), for deltas (ADR 65).

Each version records the keys it changed from the one before (added, altered or removed); the
keys changed from an older version onto the newest are their union, while that version is still
in the bounded log. The owner keeps the entries themselves, and one encoding per base asked for.
"""

from __future__ import annotations

from collections import deque

HISTORY = 64  # versions a session may be behind and still get a delta


class ChangeLog:
    def __init__(self, history: int = HISTORY) -> None:
        self._log: deque[tuple[int, int, frozenset[str]]] = deque(maxlen=history)  # (version, base, keys)

    def record(self, version: int, base: int, keys: set[str] | frozenset[str]) -> None:
        """Version `version` follows `base` and changed `keys`."""
        self._log.append((version, base, frozenset(keys)))

    def since(self, base: int) -> set[str] | None:
        """The keys changed from version `base` onto the newest; None if `base` is not in the
        log any more (or never was): the whole list must be sent."""
        keys: set[str] = set()
        for version, before, changed in reversed(self._log):
            keys.update(changed)
            if before == base:
                return keys
            if version <= base:
                break
        return None
