"""Object ids: 25 base-36 characters, uniform, from the system's randomness read in bulk."""

from __future__ import annotations

import collections
import os
import threading

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


def test_ids_read_the_system_randomness_in_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not once per id, nor per character: each read releases the GIL and waits to take it back
    behind the manager's other threads (#15)."""
    reads: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(ids.os, "urandom", counting)
    ids._forget_entropy()
    for _ in range(1000):
        ids.new_id()
    assert 0 < len(reads) <= 10  # 4 KiB a read: about 150 ids


def test_each_thread_and_a_forked_child_draw_their_own_ids() -> None:
    ids.new_id()  # this thread's pool now holds bytes a fork would copy
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then exit without pytest's teardown
        os.write(writer, ids.new_id().encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 64).decode()
    os.waitpid(pid, 0)
    os.close(reader)
    parent = ids.new_id()
    assert len(child) == 25 and child != parent

    made: list[str] = []
    workers = [threading.Thread(target=lambda: made.extend(ids.new_id() for _ in range(200))) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(set(made)) == 800
