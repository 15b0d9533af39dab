"""Object ids: 25 base-36 characters, uniform, from one draw of the system's randomness."""

from __future__ import annotations

import collections
import random

import pytest

from warren import ids


def test_ids_are_25_base36_characters_and_do_not_repeat() -> None:
    made = [ids.new_id() for _ in range(5000)]
    assert all(len(i) == 25 and set(i) <= set("0123456789abcdefghijklmnopqrstuvwxyz") for i in made)
    assert len(set(made)) == len(made)
    # Every character at every position: 5000 * 25 draws of 36 characters, about 3,472 each.
    counts = collections.Counter("".join(made))
    assert len(counts) == 36 and min(counts.values()) > 3000 and max(counts.values()) < 3950
    assert all(len({i[p] for i in made}) == 36 for p in range(25))


def test_an_id_reads_the_system_randomness_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not once per character: ids are made on the event loop, one per create (ADR 51)."""
    reads = []
    real = random._urandom  # type: ignore[attr-defined]

    def counting(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(random, "_urandom", counting)
    for _ in range(100):
        ids.new_id()
    assert len(reads) <= 200  # a redraw when the 130 bits pass 36**25 (about 4 in 10)
