"""The pure parts of exec (ADR 59): frame checks, the choice of the task, the leader's broker
bookkeeping (limits, attach, the relay both ways, clean-up), and the audit event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc
import msgspec
import pytest

from tests.unit.core_sim import Sim, node, pending_task, spec
from warren import commands, events
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.execbroker import (
    MAX_ARGS,
    MAX_CHUNK,
    ExecBroker,
    check_input,
    check_output,
    check_start,
    exec_task,
)
from warren.manager.server import ApiError
from warren.model import AdminCert, Task, TaskState
from warren.state import Put


def test_a_good_start_passes() -> None:
    assert check_start(cpb.ExecStart(task="t1", command=["sh"], tty=True, rows=24, cols=80)) is None
    assert check_start(cpb.ExecStart(service="web", slot=2, command=["true"])) is None


@pytest.mark.parametrize(
    ("start", "words"),
    [
        (cpb.ExecStart(command=["sh"]), "either a task or a service"),
        (cpb.ExecStart(task="t", service="s", command=["sh"]), "either a task or a service"),
        (cpb.ExecStart(task="t", slot=1, command=["sh"]), "a slot goes with a service"),
        (cpb.ExecStart(task="t"), "a command is required"),
        (cpb.ExecStart(task="t", command=["x"] * (MAX_ARGS + 1)), "at most 256 arguments"),
        (cpb.ExecStart(task="t", command=["x" * 70_000]), "at most 65536 bytes"),
        (cpb.ExecStart(task="t", command=[""]), "non-empty name"),
        (cpb.ExecStart(task="t", command=["echo", "a\0b"]), "NUL"),
        (cpb.ExecStart(task="t", command=["sh"], rows=10_001, cols=80), "at most 10000 rows"),
    ],
)
def test_a_bad_start_is_refused(start: cpb.ExecStart, words: str) -> None:
    why = check_start(start)
    assert why is not None and words in why


def test_input_and_output_frames_are_bounded() -> None:
    assert check_input(cpb.ExecRequest(stdin=b"x" * MAX_CHUNK, rows=40, cols=120)) is None
    assert "at most 65536 bytes of stdin" in (check_input(cpb.ExecRequest(stdin=b"x" * (MAX_CHUNK + 1))) or "")
    assert "only the first request" in (check_input(cpb.ExecRequest(start=cpb.ExecStart(task="t"))) or "")
    assert check_output(dpb.ExecFromAgent(stdout=b"x" * (MAX_CHUNK // 2), stderr=b"y" * (MAX_CHUNK // 2))) is None
    assert "output per message" in (check_output(dpb.ExecFromAgent(stdout=b"x" * (MAX_CHUNK + 1))) or "")
    assert "unknown failure" in (check_output(dpb.ExecFromAgent(exited=True, failure="boom")) or "")
    assert check_output(dpb.ExecFromAgent(exited=True, failure="task_ended", exit_code=137)) is None


def _sim() -> tuple[Sim, str]:
    sim = Sim()
    sim.add_node(node("n1"))
    sim.add_node(node("n2"))
    service_id = sim.create_service(spec("web", replicas=3))
    sim.converge()
    return sim, service_id


def test_the_task_is_found_by_prefix_or_slot_and_must_run() -> None:
    sim, service_id = _sim()
    tasks = sorted(sim.running(service_id), key=lambda t: t.slot)
    assert [t.slot for t in tasks] == [1, 2, 3]
    assert exec_task(sim.state, cpb.ExecStart(task=tasks[1].id[:10], command=["sh"])).id == tasks[1].id
    assert exec_task(sim.state, cpb.ExecStart(service="web", slot=3, command=["sh"])).id == tasks[2].id
    assert exec_task(sim.state, cpb.ExecStart(service="web", command=["sh"])).id == tasks[0].id  # the lowest slot
    with pytest.raises(ApiError) as missing:
        exec_task(sim.state, cpb.ExecStart(service="web", slot=9, command=["sh"]))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ApiError) as unknown:
        exec_task(sim.state, cpb.ExecStart(task="nosuchtask", command=["sh"]))
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    sim.report(tasks[0], TaskState.FAILED, exit_code=1)
    with pytest.raises(ApiError) as stopped:
        exec_task(sim.state, cpb.ExecStart(task=tasks[0].id, command=["sh"]))
    assert stopped.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "is not running (state: failed)" in stopped.value.message


def _task(task_id: str, node_id: str) -> Task:
    return msgspec.structs.replace(pending_task(task_id, "s", spec("web")), node_id=node_id)


START = cpb.ExecStart(task="t1", command=["cat"], stdin=True)


async def _items(items: Iterable[object], then: asyncio.Event | None = None) -> AsyncIterator:
    for item in items:
        yield item
    if then is not None:
        await then.wait()


def test_the_broker_limits_and_refuses_strangers() -> None:
    async def scenario() -> None:
        broker = ExecBroker(max_per_node=2, max_total=3)
        with pytest.raises(ApiError) as unreachable:
            broker.open(_task("t1", "n1"), START)
        assert unreachable.value.code == grpc.StatusCode.UNAVAILABLE
        listener = broker.listen("n1")
        broker.listen("n2")
        first = broker.open(_task("t1", "n1"), START)
        assert listener.queue.get_nowait() == dpb.ExecOpen(exec_id=first.id, task_id="t1", command=["cat"], stdin=True)
        broker.open(_task("t1", "n1"), START)
        with pytest.raises(ApiError) as per_node:
            broker.open(_task("t1", "n1"), START)
        assert per_node.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "on node n1" in per_node.value.message
        broker.open(_task("t2", "n2"), START)
        with pytest.raises(ApiError) as total:
            broker.open(_task("t3", "n2"), START)
        assert total.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(ApiError) as other_node:
            broker.attach("n2", first.id)
        assert other_node.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ApiError) as unknown:
            broker.attach("n1", "nosuchexec")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        broker.attach("n1", first.id)
        with pytest.raises(ApiError) as twice:
            broker.attach("n1", first.id)
        assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
        broker.close(first)
        assert broker.open_count() == 2
        assert first.to_agent.get_nowait() is None  # the agent's stream is told to end

    asyncio.run(scenario())


def test_the_relay_carries_both_ways_and_forgets_the_exec() -> None:
    async def scenario() -> None:
        broker = ExecBroker()
        broker.listen("n1")
        channel = broker.open(_task("t1", "n1"), START)
        caller_done = asyncio.Event()
        requests = _items([cpb.ExecRequest(stdin=b"hi\n"), cpb.ExecRequest(stdin_eof=True)], then=caller_done)
        replies: list[cpb.ExecResponse] = []

        async def caller() -> None:
            async for reply in broker.relay(channel, requests):
                replies.append(reply)

        caller_job = asyncio.create_task(caller())
        broker.attach("n1", channel.id)
        agent_sent = [dpb.ExecFromAgent(started=True), dpb.ExecFromAgent(stdout=b"hi\n"), None]
        received: list[dpb.ExecToAgent] = []

        async def agent_messages() -> AsyncIterator[dpb.ExecFromAgent]:
            for message in agent_sent:
                if message is None:  # answer once the caller's input came through
                    while len(received) < 2:
                        await asyncio.sleep(0.01)
                    yield dpb.ExecFromAgent(exited=True, exit_code=3)
                    return
                yield message

        async for message in broker.serve_agent(channel, agent_messages()):
            received.append(message)
        await asyncio.wait_for(caller_job, 5)
        assert [m.stdin for m in received] == [b"hi\n", b""] and received[1].stdin_eof
        assert replies[0].task_id == "t1" and replies[0].node_id == "n1"
        assert b"".join(r.stdout for r in replies) == b"hi\n"
        assert replies[-1].exited and replies[-1].exit_code == 3
        assert broker.open_count() == 0

    asyncio.run(scenario())


def test_an_agent_that_never_attaches_or_goes_away_ends_the_callers_stream() -> None:
    async def scenario() -> None:
        broker = ExecBroker(attach_timeout=0.1)
        broker.listen("n1")
        channel = broker.open(_task("t1", "n1"), START)
        with pytest.raises(ApiError) as silent:
            async for _ in broker.relay(channel, _items([])):
                pass
        assert silent.value.code == grpc.StatusCode.UNAVAILABLE and "did not answer" in silent.value.message
        assert broker.open_count() == 0

        channel = broker.open(_task("t1", "n1"), START)
        broker.attach("n1", channel.id)
        agent = broker.serve_agent(channel, _items([dpb.ExecFromAgent(started=True)]))  # then its stream ends
        agent_job = asyncio.create_task(anext(agent, None))
        with pytest.raises(ApiError) as lost:
            async for _ in broker.relay(channel, _items([], then=asyncio.Event())):
                pass
        assert lost.value.code == grpc.StatusCode.UNAVAILABLE and "lost" in lost.value.message
        assert await asyncio.wait_for(agent_job, 5) is None  # and the agent's side is ended too
        assert broker.open_count() == 0

    asyncio.run(scenario())


def test_a_not_running_answer_from_the_agent_is_failed_precondition() -> None:
    async def scenario() -> None:
        broker = ExecBroker()
        broker.listen("n1")
        channel = broker.open(_task("t1", "n1"), START)
        broker.attach("n1", channel.id)
        refusal = dpb.ExecFromAgent(exited=True, exit_code=1, failure="not_running", error="task t1 is not running")
        agent_job = asyncio.create_task(_drain(broker.serve_agent(channel, _items([refusal]))))
        with pytest.raises(ApiError) as refused:
            async for _ in broker.relay(channel, _items([], then=asyncio.Event())):
                pass
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        await asyncio.wait_for(agent_job, 5)

    asyncio.run(scenario())


async def _drain(iterator: AsyncIterator[object]) -> None:
    async for _ in iterator:
        pass


def test_an_exec_is_an_audit_event() -> None:
    sim, service_id = _sim()
    task = sorted(sim.running(service_id), key=lambda t: t.slot)[0]
    record = commands.RecordExec(task.id, "ops-alice", ("sh", "-c", "echo hi there"), tty=True, at=42.0)
    result, changes = commands.apply(sim.state, record)
    assert result.ok and changes == []  # changes nothing in the state
    (event,) = events.derive(sim.state, record, changes, 7, 0, events.command_time(record))
    assert (event.type, event.action, event.actor_id, event.actor_name) == ("task", "exec", task.id, "web.1")
    assert event.attributes["command"] == "sh -c 'echo hi there'"
    assert event.attributes["admin"] == "ops-alice" and event.attributes["tty"] == "true"
    assert event.attributes["node_id"] == task.node_id and event.time == 42.0
    assert "exec" in events.ACTIONS["task"]
    sim.state.apply([Put("admin", AdminCert(id="ops-alice", name="alice", created_at=1.0, not_after=9e9, ca="k"))])
    (named,) = events.derive(sim.state, record, [], 8, 0, 42.0)
    assert named.attributes["admin"] == "ops-alice" and named.attributes["admin_name"] == "alice"


def test_oversized_input_mid_stream_is_invalid_argument_and_ends_both_sides() -> None:
    async def scenario() -> None:
        broker = ExecBroker()
        broker.listen("n1")
        channel = broker.open(_task("t1", "n1"), START)
        broker.attach("n1", channel.id)
        agent_job = asyncio.create_task(_drain(broker.serve_agent(channel, _items([], then=asyncio.Event()))))
        requests = _items([cpb.ExecRequest(stdin=b"x" * (MAX_CHUNK + 1))], then=asyncio.Event())
        with pytest.raises(ApiError) as refused:
            async for _ in broker.relay(channel, requests):
                pass
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        await asyncio.wait_for(agent_job, 5)  # the agent's stream ended: it kills the command
        assert broker.open_count() == 0

    asyncio.run(scenario())
