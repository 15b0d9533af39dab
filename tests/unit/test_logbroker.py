"""The leader's log broker with scripted agents: fan-out by node, checks on published batches,
the end of a history stream, nodes that are down or silent, closes, follows that pick up new
tasks, lost leadership and a slow reader."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.waiting import async_holds, async_wait_for
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.manager import logbroker
from warren.manager.events import EventHub
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.logbroker import LogBroker, LogStream
from warren.manager.server import ApiError
from warren.model import Node, NodeStatus, Service, ServiceSpec, Task, TaskState
from warren.state import Delete, Put
from warren.validate import MAX_LOG_BATCH


def _task(task_id: str, node_id: str, slot: int, state: TaskState = TaskState.RUNNING) -> Task:
    spec = ServiceSpec(name="web", image="x")
    return Task(
        id=task_id, service_id="svc", service_name="web", slot=slot, spec=spec, spec_version=1,
        state=state, node_id=node_id,
    )  # fmt: skip


def _cluster(*extra: Task, down: tuple[str, ...] = ()) -> InMemoryState:
    store = InMemoryState()
    changes: list = [Put("service", Service(id="svc", spec=ServiceSpec(name="web", image="x")))]
    for node_id in ("n1", "n2", "n3"):
        status = NodeStatus.DOWN if node_id in down else NodeStatus.READY
        changes.append(Put("node", Node(id=node_id, hostname=f"host-{node_id}", status=status)))
    changes += [
        Put("task", _task("t1", "n1", 1)),
        Put("task", _task("t2", "n2", 2)),
        Put("task", _task("t0", "n1", 1, TaskState.FAILED)),  # history: its log may still exist
        Put("task", _task("tp", "", 3, TaskState.PENDING)),  # on no node: nothing to ask
    ]
    changes += [Put("task", t) for t in extra]
    store.state.apply(changes)
    return store


def _msg(task_id: str, data: bytes, **fields: object) -> pb.LogMessage:
    fields.setdefault("timestamp", 1_700_000_000.0)
    return pb.LogMessage(task_id=task_id, data=data, **fields)  # type: ignore[arg-type]


def _publish(sub_id: str, *messages: pb.LogMessage, done: bool = False) -> dpb.PublishLogsRequest:
    return dpb.PublishLogsRequest(session_id="s", subscription_id=sub_id, messages=messages, done=done)


async def _drain(stream: LogStream) -> list[pb.LogMessage]:
    return [m async for batch in stream.batches() for m in batch]


def _pending(listener: logbroker.NodeListener) -> list[dpb.LogSubscription]:
    out = []
    while not listener.queue.empty():
        out.append(listener.queue.get_nowait())
    return out


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_history_fans_out_by_node_and_ends_when_every_node_is_done() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster())
        n1 = broker.listen("n1")
        stream = broker.open("svc", follow=False, tail=10, since=0.0)
        [sub1] = _pending(n1)
        assert (list(sub1.task_ids), sub1.tail, sub1.follow) == (["t0", "t1"], 10, False)
        n2 = broker.listen("n2")  # a node that connects later gets the open subscription
        [sub2] = _pending(n2)
        assert (sub2.id, list(sub2.task_ids)) == (sub1.id, ["t2"])
        reader = asyncio.create_task(_drain(stream))
        assert not await broker.publish("n1", _publish(sub1.id, _msg("t1", b"hello", slot=99, node_id="n2")))
        assert not await broker.publish("n2", _publish(sub1.id, _msg("t2", b"world"), done=True))
        await async_holds(lambda: not reader.done(), 0.3, message="the stream open: n1 has not said done")
        await broker.publish("n1", _publish(sub1.id, done=True))
        got = await reader
        # The manager's own records, not the agent's claims, say which service, slot and node.
        assert [(m.task_id, m.data, m.service_name, m.slot, m.node_id) for m in got] == [
            ("t1", b"hello", "web", 1, "n1"),
            ("t2", b"world", "web", 2, "n2"),
        ]
        stream.close()
        assert [m.close for m in _pending(n1)] == [True]
        assert await broker.publish("n1", _publish(sub1.id))  # gone: stop

    run(scenario())


def test_published_batches_are_checked_against_the_callers_node() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster())
        stream = broker.open("svc", follow=True, tail=-1, since=0.0)
        with pytest.raises(ApiError) as err:
            await broker.publish("n3", _publish(stream.id, _msg("t1", b"x")))  # not sent to n3
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ApiError) as err:
            await broker.publish("n1", _publish(stream.id, _msg("t2", b"x")))  # n2's task
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ApiError) as err:
            await broker.publish("n1", _publish(stream.id, *[_msg("t1", b"x")] * (MAX_LOG_BATCH + 1)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ApiError) as err:
            await broker.publish("n1", _publish(stream.id, _msg("t1", b"x" * 20_000)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ApiError) as err:
            await broker.publish("n1", _publish(stream.id, _msg("t1", b"x", note="fake")))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        await broker.publish("n1", _publish(stream.id, _msg("t1", b"x", timestamp=float("nan"))))
        await broker.publish("n1", _publish(stream.id, _msg("t1", b"y", timestamp=4e9)))  # the future
        got = []
        async for batch in stream.batches():
            got += batch
            if len(got) == 2:
                break
        assert [m.data for m in got] == [b"x", b"y"]
        assert all(0 < m.timestamp < 4e9 for m in got)  # a bad or future time becomes the manager's now
        stream.close()
        assert await broker.publish("n1", _publish("no-such-subscription"))

    run(scenario())


def test_down_and_silent_nodes_are_given_up_on_with_a_note() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster(_task("t3", "n3", 3), down=("n2",)), node_timeout=0.5)
        stream = broker.open("svc", follow=False, tail=-1, since=0.0)
        reader = asyncio.create_task(_drain(stream))
        await broker.publish("n1", _publish(stream.id, _msg("t1", b"a"), done=True))
        got = await reader  # n2 is down (at once), n3 never answers (after the timeout)
        notes = [m.note for m in got if m.note]
        assert notes[0] == "node host-n2 is down: the logs of its 1 task(s) are not available"
        assert notes[1] == "node host-n3 did not answer within 0.5s: the logs of its 1 task(s) are missing"
        assert [m.data for m in got if not m.note] == [b"a"]

    run(scenario())


def test_a_node_that_stops_answering_midway_is_given_up_on() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster(), node_timeout=0.3)
        stream = broker.open("svc", follow=False, tail=-1, since=0.0)
        reader = asyncio.create_task(_drain(stream))
        await broker.publish("n1", _publish(stream.id, _msg("t1", b"a")))  # then nothing
        await broker.publish("n2", _publish(stream.id, done=True))
        got = await reader
        assert [m.note for m in got if m.note] == [
            "node host-n1 stopped answering for 0.3s: the logs of its 2 task(s) may be incomplete"
        ]

    run(scenario())


def test_follow_sends_new_tasks_and_ends_when_the_service_is_removed() -> None:
    async def scenario() -> None:
        store = _cluster()
        hub = EventHub(asyncio.get_running_loop())
        broker = LogBroker(store, hub, node_timeout=0.2)
        n1, n3 = broker.listen("n1"), broker.listen("n3")
        stream = broker.open("svc", follow=True, tail=0, since=0.0)
        reader = asyncio.create_task(_drain(stream))
        await broker.publish("n1", _publish(stream.id))  # n1 answers; n2 does not
        await async_wait_for(lambda: stream.nodes["n2"].noted, message="n2 given up on")
        [first] = _pending(n1)
        assert first.tail == 0 and not _pending(n3)
        new = _task("t9", "n3", 4)
        store.state.apply([Put("task", new)])
        hub.publish(5, [Put("task", new)])
        await async_wait_for(lambda: not n3.queue.empty(), message="a subscription for n3")
        [sub] = _pending(n3)
        # A node that joins the follow later gets all the lines of its new task, not the tail.
        assert (sub.id, list(sub.task_ids), sub.follow, sub.tail) == (stream.id, ["t9"], True, -1)
        await broker.publish("n3", _publish(stream.id, _msg("t9", b"new task")))
        store.state.apply([Delete("service", "svc")])
        hub.publish(6, [Delete("service", "svc")])
        got = await reader
        assert [m.data for m in got if m.data] == [b"new task"]
        assert [m.note for m in got if m.note] == [
            "node host-n2 did not answer within 0.2s: the logs of its 1 task(s) are missing; "
            "they will show if it answers later",
            "the service was removed",
        ]
        stream.close()

    run(scenario())


def test_lost_leadership_ends_the_stream_unavailable() -> None:
    async def scenario() -> None:
        leading = [True]
        broker = LogBroker(_cluster(), is_leader=lambda: leading[0])
        stream = broker.open("svc", follow=True, tail=-1, since=0.0)
        reader = asyncio.create_task(_drain(stream))
        await async_holds(lambda: not reader.done(), 0.1, message="the stream open while leading")
        leading[0] = False
        with pytest.raises(ApiError) as err:
            await reader
        assert err.value.code == grpc.StatusCode.UNAVAILABLE

    run(scenario())


def test_a_slow_reader_gets_backpressure_then_a_note() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster(), queue_batches=2, publish_wait=0.1)
        stream = broker.open("svc", follow=True, tail=-1, since=0.0)
        for i in range(2):
            await broker.publish("n1", _publish(stream.id, _msg("t1", b"%d" % i)))
        await broker.publish("n1", _publish(stream.id, _msg("t1", b"lost"), _msg("t1", b"lost")))  # waits, dropped
        got = []
        async for batch in stream.batches():
            got += [m.data or m.note.encode() for m in batch]
            if len(got) == 3:
                break
        assert sorted(got) == [b"0", b"1", b"2 line(s) from node host-n1 dropped: the reader is too slow"]
        stream.close()

    run(scenario())


def test_bad_requests_and_the_stream_limit() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster(), max_streams=1)
        for kwargs in ({"tail": -2, "since": 0.0}, {"tail": 1, "since": float("inf")}, {"tail": 1, "since": -1.0}):
            with pytest.raises(ApiError) as err:
                broker.open("svc", follow=False, **kwargs)  # type: ignore[arg-type]
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ApiError) as err:
            broker.open("nope", follow=False, tail=1, since=0.0)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        first = broker.open("svc", follow=True, tail=1, since=0.0)
        with pytest.raises(ApiError) as err:
            broker.open("svc", follow=True, tail=1, since=0.0)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.close()
        broker.open("svc", follow=True, tail=1, since=0.0).close()  # room again

    run(scenario())


def test_a_newer_listener_replaces_the_old_one() -> None:
    async def scenario() -> None:
        broker = LogBroker(_cluster())
        old = broker.listen("n1")
        new = broker.listen("n1")
        assert [m async for m in old.messages(lambda: True)] == []  # ends: it was replaced
        old.close()  # does not remove the newer one
        stream = broker.open("svc", follow=True, tail=1, since=0.0)
        assert [s.id for s in _pending(new)] == [stream.id]
        stream.close()

    run(scenario())


# -- the Control API method ------------------------------------------------------------------------
class FakeContext:
    def __init__(self) -> None:
        self.callbacks: list = []

    def add_done_callback(self, callback) -> None:  # type: ignore[no-untyped-def]
        self.callbacks.append(callback)


def test_service_logs_on_a_follower_names_the_leader() -> None:
    from warren.api.v1 import control_pb2 as cpb
    from warren.manager.controlapi import ControlService

    async def scenario() -> None:
        store = _cluster()
        store.state.apply([Put("node", Node(id="m2", hostname="m2", addr="10.0.0.2:4242", raft_addr="10.0.0.2:4243"))])
        follower = InMemoryRaft(store, "10.0.0.1:4243", leader="10.0.0.2:4243", peers={"10.0.0.2:4243": True})
        control = ControlService(store, follower, logs=LogBroker(store))
        with pytest.raises(ApiError) as err:
            [m async for m in control.ServiceLogs(cpb.ServiceLogsRequest(service="web"), FakeContext())]  # type: ignore[arg-type]
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the leader is at 10.0.0.2:4242" in err.value.message
        with pytest.raises(ApiError) as err:
            [m async for m in control.ServiceLogs(cpb.ServiceLogsRequest(service="nope"), FakeContext())]  # type: ignore[arg-type]
        assert err.value.code == grpc.StatusCode.NOT_FOUND

    run(scenario())


def test_service_logs_closes_the_subscription_when_the_caller_leaves() -> None:
    from warren.api.v1 import control_pb2 as cpb
    from warren.manager.controlapi import ControlService

    async def scenario() -> None:
        store = _cluster()
        broker = LogBroker(store)
        n1 = broker.listen("n1")
        control = ControlService(store, InMemoryRaft(store), logs=broker)
        context = FakeContext()
        calls = control.ServiceLogs(cpb.ServiceLogsRequest(service="web", follow=True, tail=-1), context)  # type: ignore[arg-type]
        first = asyncio.ensure_future(calls.__anext__())
        await async_wait_for(lambda: not n1.queue.empty(), message="a subscription for n1")
        [sub] = _pending(n1)
        await broker.publish("n1", _publish(sub.id, _msg("t1", b"hi")))
        assert [m.data for m in (await first).messages] == [b"hi"]
        for callback in context.callbacks:  # grpc calls these when the call ends (caller gone)
            callback(context)
        assert [m.close for m in _pending(n1)] == [True]
        assert await broker.publish("n1", _publish(sub.id))  # stop
        await calls.aclose()

    run(scenario())
