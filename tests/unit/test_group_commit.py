"""Group commit with a bound on the entries in flight (ADR 51): proposals that arrive one by one
while entries are in flight wait and share the next entry, instead of each becoming an entry.

The Raft log is replaced by a recorder here; tests/integration/test_raft_store.py runs the same
path against a real PySyncObj node and LMDB store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pysyncobj import FAIL_REASON

from warren import commands
from warren.manager import metrics, raft_proposals
from warren.manager.ports import ProposalError
from warren.manager.raft_proposals import MAX_IN_FLIGHT, Proposals
from warren.model import Service, ServiceSpec


class _NoLimits:
    stalled = None

    def refusal(self, _cost: int) -> None:
        return None

    def reserve(self, _cost: int) -> int:
        return 0

    def release(self, _charge: int) -> None:
        pass


class _AppliedIndex:
    """The store's applied index, which the Raft thread advances (here, the test)."""

    def __init__(self, applied_index: int) -> None:
        self.applied_index = applied_index


class _RecordingRaft(Proposals):
    """The proposing side of RaftNode, whose log only records the entries proposed; a test settles them."""

    def __init__(self, applied_index: int = 1 << 62) -> None:  # no PySyncObj: only the proposing side
        self._init_proposals()
        self.capacity = _NoLimits()  # type: ignore[assignment]
        self._store = _AppliedIndex(applied_index)  # type: ignore[assignment]
        self.entries: list[tuple[bytes, Callable[[bytes | None, int], None]]] = []

    def check_quorum(self) -> None:
        pass

    def _apply_entry(self, blob: bytes, callback: Callable[[bytes | None, int], None]) -> None:  # type: ignore[override]
        self.entries.append((blob, callback))

    def commands_in(self, entry: int) -> int:
        decoded = commands.decode(self.entries[entry][0])
        return len(decoded.commands) if isinstance(decoded, commands.Batch) else 1

    def settle(self, entry: int, index: int | None = None) -> None:
        """Report entry `entry` applied (at Raft `index`, by default its position), each command
        with a result, as the Raft thread would."""
        decoded = commands.decode(self.entries[entry][0])
        count = len(decoded.commands) if isinstance(decoded, commands.Batch) else 1
        at = entry if index is None else index
        results = [commands.Result(id=f"r{entry}.{i}", index=at) for i in range(count)]
        blob = commands.encode_result(results if isinstance(decoded, commands.Batch) else results[0])
        self.entries[entry][1](blob, FAIL_REASON.SUCCESS)


def _create(i: int) -> commands.CreateService:
    return commands.CreateService(Service(id=f"id{i}", spec=ServiceSpec(name=f"s{i}", image="x")))


async def _turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_proposals_arriving_one_by_one_share_an_entry_while_others_are_in_flight() -> None:
    node = _RecordingRaft()

    async def scenario() -> None:
        proposals = []
        for i in range(MAX_IN_FLIGHT + 5):  # one per turn of the loop, as gRPC requests arrive
            proposals.append(asyncio.ensure_future(node.propose_async(_create(i))))
            await _turns()
        assert len(node.entries) == MAX_IN_FLIGHT  # the rest wait for a free slot
        node.settle(0)
        await _turns()
        assert len(node.entries) == MAX_IN_FLIGHT + 1
        assert node.commands_in(MAX_IN_FLIGHT) == 5  # the five that waited, in one entry
        for entry in range(1, len(node.entries)):
            node.settle(entry)
        results = await asyncio.gather(*proposals)
        assert [r.id for r in results[:MAX_IN_FLIGHT]] == [f"r{i}.0" for i in range(MAX_IN_FLIGHT)]
        assert [r.id for r in results[MAX_IN_FLIGHT:]] == [f"r{MAX_IN_FLIGHT}.{i}" for i in range(5)]

    asyncio.run(scenario())


def test_an_entry_never_called_back_frees_its_slot_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """PySyncObj drops an entry a deposed leader held without calling back: the pipe must not stall."""
    monkeypatch.setattr(raft_proposals, "IN_FLIGHT_TIMEOUT", 0.05)
    node = _RecordingRaft()

    async def scenario() -> None:
        lost = [asyncio.ensure_future(node.propose_async(_create(i), timeout=0.2)) for i in range(MAX_IN_FLIGHT)]
        for i in range(MAX_IN_FLIGHT):
            await _turns()
            lost.append(asyncio.ensure_future(node.propose_async(_create(100 + i), timeout=0.2)))
        await _turns()
        waiting = len(node.entries)
        later = asyncio.ensure_future(node.propose_async(_create(200)))
        for _ in range(200):
            if len(node.entries) > waiting:
                break
            await asyncio.sleep(0.01)
        assert len(node.entries) > waiting  # sent once the slots timed out
        for entry in range(len(node.entries)):
            node.settle(entry)
        assert (await later).ok
        await asyncio.gather(*lost, return_exceptions=True)

    asyncio.run(scenario())


def test_a_new_event_loop_starts_with_free_slots() -> None:
    """Entries left in flight by a loop that ended (a test's asyncio.run) hold no slot in the next."""
    node = _RecordingRaft()

    left: list[asyncio.Future] = []

    async def leave_in_flight() -> None:
        for i in range(MAX_IN_FLIGHT):
            left.append(asyncio.ensure_future(node.propose_async(_create(i))))
            await _turns()

    asyncio.run(leave_in_flight())
    sent = len(node.entries)

    async def next_loop() -> None:
        proposal = asyncio.ensure_future(node.propose_async(_create(50)))
        await _turns()
        assert len(node.entries) == sent + 1
        node.settle(sent)
        assert (await proposal).ok

    asyncio.run(next_loop())


def test_a_write_answers_only_once_this_manager_applied_its_entry() -> None:
    """Read-your-writes (ADR 58): a result carries its entry's Raft index; called back before this
    manager's store applied it, the proposal waits for the store, so the next read here sees it."""
    node = _RecordingRaft(applied_index=6)

    async def scenario() -> None:
        proposal = asyncio.ensure_future(node.propose_async(_create(0)))
        await _turns()
        node.settle(0, index=7)
        await asyncio.sleep(0.05)
        assert not proposal.done()  # acknowledged by the leader, not applied here yet
        node._store.applied_index = 7  # type: ignore[attr-defined]
        assert (await asyncio.wait_for(proposal, 1)).index == 7

    asyncio.run(scenario())


def test_a_write_this_manager_does_not_apply_in_time_fails_unavailable() -> None:
    node = _RecordingRaft(applied_index=6)

    async def scenario() -> None:
        proposal = asyncio.ensure_future(node.propose_async(_create(0), timeout=0.1))
        await _turns()
        node.settle(0, index=7)
        with pytest.raises(ProposalError) as raised:
            await proposal
        assert raised.value.code == "unavailable"

    asyncio.run(scenario())


def _stage_totals() -> dict[str, tuple[float, float]]:
    """Each proposal stage's (count, sum of seconds) so far, from the manager's registry."""
    totals: dict[str, list[float]] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "warren_raft_proposal_seconds":
            continue
        for sample in family.samples:
            stage = totals.setdefault(sample.labels["stage"], [0.0, 0.0])
            if sample.name.endswith("_count"):
                stage[0] = sample.value
            elif sample.name.endswith("_sum"):
                stage[1] = sample.value
    return {stage: (count, total) for stage, (count, total) in totals.items()}


def test_a_proposal_records_how_long_it_queued_and_replicated() -> None:
    """The stages that #15's bench reads through Prometheus: a proposal that waited for a slot
    counts its wait as "queued", and its entry's time until applied as "replicated"."""
    node = _RecordingRaft()
    before = _stage_totals()

    async def scenario() -> None:
        first = []
        for i in range(MAX_IN_FLIGHT):  # one entry each: every slot taken
            first.append(asyncio.ensure_future(node.propose_async(_create(i))))
            await _turns()
        waiting = asyncio.ensure_future(node.propose_async(_create(99)))
        await asyncio.sleep(0.05)  # the slots stay taken: it queues
        node.settle(0)
        await _turns()
        await asyncio.sleep(0.03)  # its entry is in flight
        for entry in range(1, len(node.entries)):
            node.settle(entry)
        await asyncio.gather(*first, waiting)

    asyncio.run(scenario())
    after = _stage_totals()

    def added(stage: str) -> tuple[float, float]:
        count, total = before.get(stage, (0.0, 0.0))
        return after[stage][0] - count, after[stage][1] - total

    queued_count, queued_seconds = added("queued")
    assert queued_count == MAX_IN_FLIGHT + 1 and queued_seconds >= 0.04  # it queued during the 0.05 s hold
    replicated_count, replicated_seconds = added("replicated")
    assert replicated_count == MAX_IN_FLIGHT + 1 and replicated_seconds >= 0.05 + 0.03
    assert added("answered")[0] == MAX_IN_FLIGHT + 1
