"""Group commit bounded by bytes as well as by count (ADR 20)."""

from __future__ import annotations

from warren import commands
from warren.manager.raft_proposals import MAX_BATCH, MAX_BATCH_BYTES, _batch_length


def _queued(sizes: list[int]) -> list[tuple[commands.Command, int, None, float]]:
    queued = [commands.UpdateNode(f"n{i}", 0.0, labels_add={"pad": "x" * size}) for i, size in enumerate(sizes)]
    return [(command, len(commands.encode(command)), None, 0.0) for command in queued]


def test_a_batch_stops_before_it_passes_the_byte_bound() -> None:
    queued = _queued([300_000] * 10)
    taken = _batch_length(queued)
    assert taken == 3
    assert sum(len(commands.encode(c)) for c, *_ in queued[:taken]) <= MAX_BATCH_BYTES


def test_a_command_larger_than_the_bound_goes_alone() -> None:
    assert _batch_length(_queued([MAX_BATCH_BYTES + 10, 10])) == 1
    assert _batch_length(_queued([10, MAX_BATCH_BYTES + 10])) == 1


def test_small_commands_are_bounded_by_count() -> None:
    assert _batch_length(_queued([10] * (MAX_BATCH + 5))) == MAX_BATCH
    assert _batch_length(_queued([10] * 7)) == 7
