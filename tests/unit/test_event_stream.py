"""StreamEvents (ADR 45) on the in-memory Raft over a real LMDB store: replay from the history,
the live tail with no gap and no duplicate, filters, --until, and every bad request field."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.unit.core_sim import node
from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.manager import store as store_module
from warren.manager.controlapi import ControlService
from warren.manager.events import EventHub
from warren.manager.eventstream import EventFeed
from warren.manager.inmemory import InMemoryRaft
from warren.manager.server import ApiError
from warren.manager.store import Store, open_environment
from warren.model import NodeStatus


class Rig:
    def __init__(self, path: Path) -> None:
        self.store = Store(open_environment(path))
        self.raft = InMemoryRaft(self.store)
        self.hub = EventHub(asyncio.get_running_loop())
        self.store.watch(self.hub.publish)
        self.control = ControlService(self.store, self.raft, events=EventFeed(self.store, self.hub))

    async def run(self, command: commands.Command) -> None:
        result = await self.raft.propose_async(command)
        assert result.ok, result

    def stream(self, **fields: object) -> AsyncIterator[cpb.Event]:
        filters = [cpb.EventFilter(key=k, value=v) for k, v in fields.pop("filters", [])]  # type: ignore[attr-defined]
        return self.control.StreamEvents(cpb.StreamEventsRequest(filters=filters, **fields), None)  # type: ignore[arg-type]


async def _take(stream: AsyncIterator[cpb.Event], count: int) -> list[cpb.Event]:
    got: list[cpb.Event] = []
    async for event in stream:
        got.append(event)
        if len(got) == count:
            break
    return got


def test_replay_then_follow_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        await rig.run(commands.RegisterNode(node("n1", status=NodeStatus.UNKNOWN)))  # join at 0.0
        await rig.run(commands.SetNodeStatus("n1", NodeStatus.READY, "", at=10.0))
        everything = rig.stream(since=0.0 + 1e-9)  # from the history: only what is at 1e-9 or later
        live = rig.stream()  # from now on
        first = await _take(everything, 1)
        assert [(e.id, e.action, e.time) for e in first] == [("2.0", "ready", 10.0)]

        async def later() -> None:
            for i in range(40):
                status = NodeStatus.DOWN if i % 2 == 0 else NodeStatus.READY
                await rig.run(commands.SetNodeStatus("n1", status, "", at=11.0 + i))

        following = asyncio.create_task(_take(live, 40))
        await asyncio.sleep(0)  # its first step subscribes and reads where "now" is
        writer = asyncio.create_task(later())
        rest = await _take(everything, 40)
        tail = await following
        await writer
        assert [e.id for e in rest] == [f"{i}.0" for i in range(3, 43)]
        assert [e.id for e in tail] == [e.id for e in rest]

        resumed = await _take(rig.stream(after="20.0"), 3)  # a client resuming after the last id it saw
        assert [e.id for e in resumed] == ["21.0", "22.0", "23.0"]
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_since_selects_from_the_history_and_never_drops_live_events(tmp_path: Path) -> None:
    """`warren events` sends its own clock as `since`: a client whose clock runs ahead of the
    managers' (events at 11.0 here, the client at 1000.0) still gets every event committed after
    it connected. Found by the --watch work (#16)."""

    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        await rig.run(commands.RegisterNode(node("n1", status=NodeStatus.UNKNOWN)))
        await rig.run(commands.SetNodeStatus("n1", NodeStatus.READY, "", at=10.0))
        ahead = rig.stream(since=1000.0)
        following = asyncio.create_task(_take(ahead, 1))
        await asyncio.sleep(0)  # subscribed: what commits now is live
        await rig.run(commands.SetNodeStatus("n1", NodeStatus.DOWN, "", at=11.0))
        got = await asyncio.wait_for(following, 10)
        assert [(e.action, e.time) for e in got] == [("down", 11.0)]
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_filters_and_until(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        await rig.run(commands.RegisterNode(node("n1")))
        await rig.run(commands.RegisterNode(node("n2")))
        await rig.run(commands.SetNodeStatus("n2", NodeStatus.DOWN, "missed", at=20.0))
        await rig.run(commands.SetNodeStatus("n1", NodeStatus.DOWN, "missed", at=30.0))
        stream = rig.stream(since=1.0, until=25.0, filters=[("node", "host-n2"), ("event", "down")])
        got = [(e.actor_name, e.action, e.attributes["message"]) async for e in stream]  # ends at --until
        assert got == [("host-n2", "down", "missed")]
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_resume_older_than_the_history_is_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "HISTORY_MIN_EVENTS", 2)
    monkeypatch.setattr(store_module, "HISTORY_MIN_AGE", 0.0)

    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        await rig.run(commands.RegisterNode(node("n1", status=NodeStatus.UNKNOWN)))
        for i in range(5):
            status = NodeStatus.DOWN if i % 2 == 0 else NodeStatus.READY
            await rig.run(commands.SetNodeStatus("n1", status, "", at=10.0 + i))
        assert rig.store.events_pruned == (4, 0)
        with pytest.raises(ApiError) as caught:
            await _take(rig.stream(after="2.0"), 1)
        assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
        assert "older than this manager's history" in caught.value.message
        assert [e.id for e in await _take(rig.stream(after="4.0"), 2)] == ["5.0", "6.0"]  # just kept: fine
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"after": "x"}, "invalid event id"),
        ({"after": "1.2.3"}, "invalid event id"),
        ({"since": -1.0}, "since must be a Unix time"),
        ({"since": math.nan}, "since must be a Unix time"),
        ({"until": math.inf}, "until must be a Unix time"),
        ({"until": 1e12}, "until must be a Unix time"),
        ({"after": "3.0", "since": 5.0}, "not both"),
        ({"since": 10.0, "until": 5.0}, "until is before since"),
        ({"filters": [("colour", "red")]}, "unknown event filter"),
        ({"filters": [("type", "container")]}, "unknown event type"),
        ({"filters": [("event", "boom")]}, "unknown event"),
        ({"filters": [("service", "")]}, "needs a value"),
        ({"filters": [("type", "task")] * 65}, "at most 64 filters"),
    ],
)
def test_bad_requests_are_invalid_argument(tmp_path: Path, fields: dict[str, object], message: str) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        with pytest.raises(ApiError) as caught:
            await _take(rig.stream(**fields), 1)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.message
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_each_new_leader_announces_itself_once_per_term(tmp_path: Path) -> None:
    from warren.manager.hearing import Heartbeats
    from warren.manager.orchestrator import Orchestrator
    from warren.model import ClusterInfo

    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        cluster = ClusterInfo("c1", 1.0, "", "", "w" * 26, "m" * 26)
        await rig.run(commands.InitCluster(cluster, node("m1")))
        orchestrator = Orchestrator(rig.store, rig.raft, rig.hub, Heartbeats(), "m1")

        def announcements() -> list[tuple[str, str]]:
            history = rig.store.events_after(None)
            return [(e.actor_id, e.attributes["term"]) for e in history if e.action == "leader"]

        await orchestrator.pass_once()
        await orchestrator.pass_once()
        assert announcements() == [("m1", "1")]  # once per term, not per pass
        rig.raft.leader = "127.0.0.2:4243"  # another manager leads: this one says nothing
        await orchestrator.pass_once()
        rig.raft.leader, rig.raft.term = rig.raft.self_addr, 2  # elected again, in a new term
        await orchestrator.pass_once()
        assert announcements() == [("m1", "1"), ("m1", "2")]
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
