"""The manager's collector settings (ADR 67): fewer young collections, same older ratios."""

from __future__ import annotations

import gc
import weakref

from warren import gcpolicy


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


class Tracked:
    """An object the collector tracks (its instances have a __dict__)."""


def test_settle_collects_young_objects_less_often_and_cycles_are_still_freed() -> None:
    before = gc.get_threshold()
    try:
        assert gcpolicy.settle() == (gcpolicy.YOUNG_THRESHOLD, before[1], before[2])
        assert before[0] < gcpolicy.YOUNG_THRESHOLD
        gc.collect()
        collections = gc.get_stats()[0]["collections"]
        # Fewer than YOUNG_THRESHOLD net new containers: no young collection runs.
        kept = [Node() for _ in range(gcpolicy.YOUNG_THRESHOLD // 2)]
        assert gc.get_stats()[0]["collections"] == collections
        garbage = Node()
        garbage_id = id(garbage)
        del garbage, kept
        spent = gcpolicy.seconds_spent()
        gc.collect()
        assert garbage_id not in {id(o) for o in gc.get_objects()}  # cycles are still freed
        after = gcpolicy.seconds_spent()
        assert after[2] > spent[2] and after[:2] == spent[:2]  # the full collection, timed as one
    finally:
        if gcpolicy._timer in gc.callbacks:
            gc.callbacks.remove(gcpolicy._timer)
        gc.set_threshold(*before)


def test_a_slow_collection_is_logged(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """A collection stops every thread of the manager: one slower than SLOW_COLLECTION says so."""
    before = gc.get_threshold()
    try:
        gcpolicy.settle()
        gcpolicy.settle()  # once registered, not twice
        assert gc.callbacks.count(gcpolicy._timer) == 1
        monkeypatch.setattr(gcpolicy, "SLOW_COLLECTION", 0.0)
        monkeypatch.setattr(gcpolicy, "DESCRIBE_EVERY", 0.0)
        many = [Tracked() for _ in range(50_000)]  # the kind the collector walks most
        with caplog.at_level("DEBUG", logger="warren.gcpolicy"):
            gc.collect()
        assert "a garbage collection of generation 2 took" in caplog.text
        assert "the most numerous it walks: Tracked 50,0" in caplog.text, caplog.text
        del many
        caplog.clear()
        pairs = [[i, "x"] for i in range(60_000)]  # what they hold is named, from a few of them
        with caplog.at_level("DEBUG", logger="warren.gcpolicy"):
            gc.collect()
        assert "(a few lists: " in caplog.text and "2 of int, str" in caplog.text, caplog.text
        del pairs
        caplog.clear()
        monkeypatch.setattr(gcpolicy, "DESCRIBE_EVERY", 600.0)  # described just now: not again so soon
        with caplog.at_level("DEBUG", logger="warren.gcpolicy"):
            gc.collect()
        assert "described at most every 600s" in caplog.text and "a few" not in caplog.text, caplog.text
        caplog.clear()
        caplog.clear()
        monkeypatch.setattr(gcpolicy, "DESCRIBE_EVERY", 0.0)
        with caplog.at_level("WARNING", logger="warren.gcpolicy"):  # the default: not described
            gc.collect()
        assert "at debug level, what it walks is described" in caplog.text and "Tracked" not in caplog.text
        caplog.clear()
        monkeypatch.setattr(gcpolicy, "SLOW_COLLECTION", 60.0)
        with caplog.at_level("DEBUG", logger="warren.gcpolicy"):
            gc.collect()
        assert "garbage collection" not in caplog.text
    finally:
        gc.callbacks.remove(gcpolicy._timer)
        gc.set_threshold(*before)


def test_the_simulator_freezes_what_survives_a_full_collection_until_a_thaw() -> None:
    """ADR 77: survivors of a full collection are frozen, so later full collections walk only
    what came since; young cyclic garbage is still freed; frozen cyclic garbage waits for a
    thaw, whose own full collection frees it (at a moment the simulator chose)."""
    baseline = gc.get_freeze_count()
    gc.disable()  # only the collections this test asks for: an automatic one would freeze too
    try:
        gcpolicy.freeze_survivors()
        gcpolicy.freeze_survivors()  # once registered, not twice
        assert gc.callbacks.count(gcpolicy._freeze_after_full) == 1
        kept = [Node() for _ in range(1000)]
        first = weakref.ref(kept[0])
        gc.collect(1)  # a young collection freezes nothing
        assert gc.get_freeze_count() == baseline
        gc.collect()
        assert gc.get_freeze_count() >= baseline + len(kept)
        assert not any(o is first() for o in gc.get_objects())  # out of the collector's sight
        young = Node()
        young_ref = weakref.ref(young)
        del young
        gc.collect(0)
        assert young_ref() is None  # a cycle made after the freeze is still freed
        del kept
        gc.collect()
        assert first() is not None  # a frozen cycle is not...
        gcpolicy.thaw()
        assert first() is None  # ...until a thaw, which collects at once
    finally:
        if gcpolicy._freeze_after_full in gc.callbacks:
            gc.callbacks.remove(gcpolicy._freeze_after_full)
        gc.unfreeze()
        gc.enable()
