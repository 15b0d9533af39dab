"""Which addresses were service backends at which endpoint version, kept as intervals (ADRs 33, 72).

`RoutingReports` must answer "may node N still route to address X?" from the endpoint versions
sent to N since the one it confirmed. It used to keep each version's whole set of backends: at
100,000 tasks a set of ~100,000 strings (~4 MiB), and with 1,000 nodes confirming at different
times dozens of versions alive at once (issue #15, S2: the largest holder of the leader's memory).
Here each address has the version intervals in which it was a backend instead, so a version
costs what it changed, not what it holds, and a version is asked about through a `BackendsAt`.

Thread safety: the event loop records versions; the reconciler's thread asks membership through
the views it was given. Every update is one dict or tuple operation (atomic under the GIL), and a
closed interval is stored before the open one is dropped, so a reader never misses a spell.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet

Interval = tuple[int, int]  # [from, until): the versions in which an address was a backend


class BackendHistory:
    """The backends of every version some `BackendsAt` still refers to. Versions are labelled by
    strictly increasing integers (Raft indexes); a version is given by what it added and removed."""

    def __init__(self) -> None:
        self._since: dict[str, int] = {}  # a backend now -> the version its current spell began at
        self._closed: dict[str, tuple[Interval, ...]] = {}  # address -> its ended spells, oldest first
        self._ends: deque[tuple[int, str]] = deque()  # (until, address) of ended spells, in order
        self._views: dict[int, weakref.ref[BackendsAt]] = {}  # version -> its view, while alive
        self.latest = -1

    def record(self, at: int, backends: AbstractSet[str], touched: Iterable[str]) -> BackendsAt:
        """Version `at` (above every version recorded) holds `backends`; only the addresses in
        `touched` may differ from the version before. The view of the new version."""
        if at <= self.latest:
            raise ValueError(f"version {at} is not above {self.latest}")
        since, closed = self._since, self._closed
        for address in touched:
            began = since.get(address)
            if address in backends:
                if began is None:
                    since[address] = at
            elif began is not None:
                closed[address] = (*closed.get(address, ()), (began, at))  # before the open one goes
                del since[address]
                self._ends.append((at, address))
        self.latest = at
        self._prune()
        view = BackendsAt(self, at)
        self._views[at] = weakref.ref(view)
        return view

    def held_within(self, address: str, versions: tuple[int, ...]) -> bool:
        """Whether `address` was a backend in any of `versions` (sorted, each still viewed)."""
        began = self._since.get(address)  # read before the ended spells: see the module's note
        if began is not None and versions and versions[-1] >= began:
            return True
        for start, until in self._closed.get(address, ()):
            i = bisect_left(versions, start)
            if i < len(versions) and versions[i] < until:
                return True
        return False

    def backends_at(self, at: int) -> Iterator[str]:
        """Every backend of version `at` (for tests and printing: O(addresses known))."""
        for address, began in list(self._since.items()):
            if began <= at:
                yield address
        for address, spells in list(self._closed.items()):
            if any(start <= at < until for start, until in spells):
                yield address

    def _prune(self) -> None:
        """Forget the spells that ended at or before the oldest version still viewed: no view
        can ask about them. Amortised O(1) per spell."""
        views = self._views
        for at in [at for at, ref in views.items() if ref() is None]:
            del views[at]
        oldest = min(views, default=self.latest)
        ends, closed = self._ends, self._closed
        while ends and ends[0][0] <= oldest:
            _until, address = ends.popleft()
            rest = closed[address][1:]  # spells end in order: the first one is the oldest
            if rest:
                closed[address] = rest
            else:
                del closed[address]

    def spells(self) -> int:
        """Intervals held, open and ended (for tests and the memory benchmark)."""
        return len(self._since) + len(self._ends)


class BackendsAt(AbstractSet[str]):
    """The backends of one version, as a set; the history keeps them while this view lives."""

    __slots__ = ("__weakref__", "at", "history")

    def __init__(self, history: BackendHistory, at: int) -> None:
        self.history = history
        self.at = at

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.history.held_within(address, (self.at,))

    def __iter__(self) -> Iterator[str]:
        return self.history.backends_at(self.at)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"BackendsAt({self.at}, {sorted(self)!r})"
