"""The garbage collector's settings for a serving process: a manager, the simulator (ADR 67).

Under a write load the leader allocates fast (requests, Raft messages, the orchestrator's
state snapshots), and CPython's default collects the youngest generation every 700 net
allocations: about 50 collections a second, each walking whatever young containers are alive
then (a snapshot's dicts of every service among them), promoting them, and so triggering full
collections that walk every service and spec in the state, about 100 ms each at 10,000
services. Collecting every YOUNG_THRESHOLD allocations instead lets most of those objects die
(by reference count) before any collection sees them. Measured through the API (3 managers,
64 clients, 10,000 services): the leader's collector time per write fell from 0.06-0.24 ms to
about 0.01 ms, and full collections became rare. Cyclic garbage waits a little longer: at most
YOUNG_THRESHOLD objects more, a few MiB at worst."""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from itertools import islice
from typing import Any

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 10_000  # CPython's default: 700
# A full collection stops every thread of the process, a manager's Raft thread included: one this
# long is logged. At 100,000 tasks the leader's Raft thread and event loop both stopped for 1.5-1.8 s
# at once, which elected another leader (#15); a collection is the likely cause, not yet shown.
SLOW_COLLECTION = 0.25
# What a slow collection walked is described at most this often (the description walks it again).
DESCRIBE_EVERY = 600.0


def settle() -> tuple[int, int, int]:
    """Set the thresholds for serving, keeping the older generations' ratios; returns them.
    Also time every collection from now on (`seconds_spent`), and log each slower than
    SLOW_COLLECTION."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    if _timer not in gc.callbacks:
        gc.callbacks.append(_timer)
    return gc.get_threshold()


def freeze_survivors() -> None:
    """After each full collection, move what survived out of the collector's sight (gc.freeze):
    for the simulator only (ADR 77), whose live objects grow through a run, so that each of them
    is walked in full collections about once instead of at every one. Cyclic garbage among
    frozen objects is not freed until `thaw`: call it whenever many objects may have died (a
    session lost). A manager must not: its old state versions die all the time."""
    if _freeze_after_full not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full)


def thaw() -> None:
    """Give every frozen object back to the oldest generation, and collect it now: the full
    collection walks them all (seconds, for a simulator of 1,000 nodes), frees those that died,
    and freezes the rest again. Now, at a moment the caller chose: left to the next collection
    that came by itself, the walk once stopped every node in the middle of a leader change."""
    gc.unfreeze()
    gc.collect()


def _freeze_after_full(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()  # the collection is over, and no other can start meanwhile


_started = [0.0]
_spent = [0.0, 0.0, 0.0]  # by generation


def seconds_spent() -> tuple[float, float, float]:
    """The seconds this process has spent collecting each generation since `settle`."""
    return (_spent[0], _spent[1], _spent[2])


def _timer(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    generation = info.get("generation", 2)
    _spent[generation] += took
    if took >= SLOW_COLLECTION:
        log.warning(
            "a garbage collection of generation %d took %.2fs (every thread of this process waited): "
            "%d object(s) collected; the most numerous it walks: %s",
            generation,
            took,
            info.get("collected", 0),
            _described(generation),
        )


_last_described = [-DESCRIBE_EVERY]


def _described(generation: int) -> str:
    """`_most_tracked`, only at debug level and at most once every DESCRIBE_EVERY seconds: it
    walks every object again, with every thread stopped, which lengthens the very stall it
    reports. At S2's size describing a 0.28 s collection stopped a leader's Raft thread for
    1.78 s, and another manager was elected (#15)."""
    if not log.isEnabledFor(logging.DEBUG):
        return "(at debug level, what it walks is described)"
    now = time.monotonic()
    if now - _last_described[0] < DESCRIBE_EVERY:
        return f"(described at most every {DESCRIBE_EVERY:g}s)"
    _last_described[0] = now
    return _most_tracked(generation)


def _most_tracked(generation: int, shown: int = 6) -> str:
    """The kinds of objects the collector tracks in `generation` and younger, most numerous
    first, and what a few of the most numerous kind hold: what makes a slow collection slow.
    Counted only after one (it walks them again)."""
    objects = [o for g in range(max(generation, 0) + 1) for o in gc.get_objects(g)]
    counts = Counter(type(o).__name__ for o in objects)
    if not counts:
        return "none"
    top = counts.most_common(1)[0][0]
    samples = [o for o in objects if type(o).__name__ == top][:: max(1, counts[top] // 3)][:3]
    listed = ", ".join(f"{name} {count:,}" for name, count in counts.most_common(shown))
    return f"{listed} (a few {top}s: {'; '.join(_held(o) for o in samples)})"


def _held(container: object) -> str:
    """What a builtin container holds, briefly: its length and its first items' kinds. Nothing
    else is iterated: a generator would be consumed."""
    if isinstance(container, dict):
        items = list(islice(container.values(), 3))
    elif isinstance(container, (list, tuple, set, frozenset)):
        items = list(islice(container, 3))
    else:
        return type(container).__name__
    return f"{len(container)} of {', '.join(type(i).__name__ for i in items) or 'nothing'}"
