"""The leader's exec broker: joins an operator's Exec stream to the agent running the task (ADR 59).

The shape of the log broker (ADR 14): workers accept no connections, so the leader pushes each
exec to the task's node over the agent's `ExecSessions` stream (one per session), and the agent
answers by opening `ExecAttach`, a bidirectional stream of its own whose first message names the
exec. The broker pairs the two streams and relays between them through two bounded queues, so a
slow reader slows the writer down instead of growing the leader's memory.

Everything lives in the leader's memory, on its event loop. Limits: MAX_EXECS_PER_NODE open execs
per node, MAX_EXECS in all, MAX_CHUNK bytes per message either way, QUEUE messages buffered each
way per exec. When either side goes away, the other is ended: the agent kills the process when
its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from warren.aio import wait_within
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.ids import new_id
from warren.manager.server import ApiError, resolve_ref
from warren.model import Task, TaskState
from warren.state import ClusterState
from warren.text import shown

log = logging.getLogger(__name__)

MAX_EXECS_PER_NODE = 8  # open execs on one node (the agent holds the same bound)
MAX_EXECS = 64  # open execs on this leader
MAX_ARGS = 256
MAX_COMMAND_BYTES = 64 * 1024
MAX_CHUNK = 64 * 1024  # stdin bytes per request, output bytes per message
MAX_TERMINAL = 10_000  # rows or columns
QUEUE = 64  # messages buffered each way per exec: at most 4 MiB of stdin and 4 MiB of output
ATTACH_TIMEOUT = 10.0  # how long the task's agent has to answer an exec
FAILURES = frozenset({"not_running", "not_found", "cannot_execute", "too_many", "task_ended", "failed"})


# -- frames (pure) ---------------------------------------------------------------------------------
def check_start(start: cpb.ExecStart) -> str | None:
    """Why an exec's start cannot be served, or None."""
    if bool(start.task) == bool(start.service):
        return "name either a task or a service"
    if start.slot and not start.service:
        return "a slot goes with a service"
    if not start.command:
        return "a command is required"
    if len(start.command) > MAX_ARGS:
        return f"a command has at most {MAX_ARGS} arguments"
    if sum(len(a.encode()) for a in start.command) > MAX_COMMAND_BYTES:
        return f"a command is at most {MAX_COMMAND_BYTES} bytes"
    if not start.command[0] or any("\0" in a for a in start.command):
        return "the command must be a non-empty name, and no argument may hold a NUL byte"
    return check_size(start.rows, start.cols)


def check_size(rows: int, cols: int) -> str | None:
    if rows > MAX_TERMINAL or cols > MAX_TERMINAL:
        return f"a terminal has at most {MAX_TERMINAL} rows and columns"
    return None


def check_input(request: cpb.ExecRequest) -> str | None:
    """Why a request after the first cannot be taken, or None."""
    if request.HasField("start"):
        return "only the first request starts the exec"
    if len(request.stdin) > MAX_CHUNK:
        return f"at most {MAX_CHUNK} bytes of stdin per request"
    return check_size(request.rows, request.cols)


def check_output(message: dpb.ExecFromAgent) -> str | None:
    """Why an agent's message cannot be taken, or None."""
    if len(message.stdout) + len(message.stderr) > MAX_CHUNK:
        return f"at most {MAX_CHUNK} bytes of output per message"
    if message.failure and message.failure not in FAILURES:
        return f"unknown failure {shown(message.failure)}"
    if len(message.error) > 1024:
        return "an error is at most 1024 characters"
    return None


def exec_task(state: ClusterState, start: cpb.ExecStart) -> Task:
    """The task an exec runs in: by id or unique prefix, or a service's slot (its lowest running
    one by default). NOT_FOUND if there is none, FAILED_PRECONDITION if it is not running."""
    if start.task:
        task = resolve_ref("task", state.tasks, lambda _ref: None, start.task)
    else:
        service = resolve_ref("service", state.services, state.service_by_name, start.service)
        tasks = [t for t in state.service_tasks(service.id) if not start.slot or t.slot == start.slot]
        if not tasks:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"service {service.spec.name} has no task in slot {start.slot}")
        running = [t for t in tasks if _running(t)]
        # The running one; else the newest, so that the error names what the slot is doing.
        task = min(running, key=lambda t: (t.slot, t.node_id)) if running else max(tasks, key=lambda t: t.created_at)
    if not _running(task):
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION, f"task {task.id[:12]} is not running (state: {task.state.label})"
        )
    return task


def _running(task: Task) -> bool:
    return task.state == TaskState.RUNNING and task.desired_state == TaskState.RUNNING and bool(task.node_id)


# -- the broker ------------------------------------------------------------------------------------
@dataclass
class ExecChannel:
    """One exec between its caller and its agent."""

    id: str
    node_id: str
    task_id: str
    to_agent: asyncio.Queue[dpb.ExecToAgent | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    to_client: asyncio.Queue[dpb.ExecFromAgent | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    attached: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def end_agent_side(self) -> None:
        """Tell the agent's stream to end (it kills the process), without waiting for room."""
        with contextlib.suppress(asyncio.QueueFull):
            self.to_agent.put_nowait(None)

    def end_client_side(self) -> None:
        while True:  # the caller needs the end, not the output it will never read
            try:
                self.to_client.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.to_client.get_nowait()


class ExecListener:
    """One agent's ExecSessions stream: the execs waiting to go to it."""

    def __init__(self, broker: ExecBroker, node_id: str) -> None:
        self.node_id = node_id
        self.queue: asyncio.Queue[dpb.ExecOpen] = asyncio.Queue(MAX_EXECS_PER_NODE * 2)
        self._broker = broker

    async def messages(self, alive: Callable[[], bool]) -> AsyncIterator[dpb.ExecOpen]:
        while alive() and self._broker._listeners.get(self.node_id) is self:
            try:
                yield await wait_within(self.queue.get(), 1.0)
            except TimeoutError:
                continue

    def close(self) -> None:
        if self._broker._listeners.get(self.node_id) is self:
            del self._broker._listeners[self.node_id]


class ExecBroker:
    """Open execs and the agents listening for them. Only the event loop calls it."""

    def __init__(
        self,
        is_leader: Callable[[], bool] = lambda: True,
        max_per_node: int = MAX_EXECS_PER_NODE,
        max_total: int = MAX_EXECS,
        attach_timeout: float = ATTACH_TIMEOUT,
    ) -> None:
        self.is_leader = is_leader
        self.max_per_node = max_per_node
        self.max_total = max_total
        self.attach_timeout = attach_timeout
        self._execs: dict[str, ExecChannel] = {}
        self._listeners: dict[str, ExecListener] = {}

    # -- agents ------------------------------------------------------------------------------------
    def listen(self, node_id: str) -> ExecListener:
        """A node's agent opened its ExecSessions stream; it replaces any earlier one."""
        listener = ExecListener(self, node_id)
        self._listeners[node_id] = listener
        return listener

    def attach(self, node_id: str, exec_id: str) -> ExecChannel:
        """The agent of `node_id` (from its certificate) opened the stream of `exec_id`."""
        channel = self._execs.get(exec_id)
        if channel is None or channel.closed:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"exec {shown(exec_id)} is not open")
        if channel.node_id != node_id:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "this exec was not sent to this node")
        if channel.attached.is_set():
            raise ApiError(grpc.StatusCode.ALREADY_EXISTS, "this exec is attached already")
        channel.attached.set()
        return channel

    # -- callers -----------------------------------------------------------------------------------
    def open(self, task: Task, start: cpb.ExecStart) -> ExecChannel:
        """Send an exec to the task's node. RESOURCE_EXHAUSTED past the limits, UNAVAILABLE if the
        node has no session with this leader."""
        if len(self._execs) >= self.max_total:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many execs open ({self.max_total}); retry later")
        if sum(1 for c in self._execs.values() if c.node_id == task.node_id) >= self.max_per_node:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many execs open on node {task.node_id[:12]} ({self.max_per_node}); retry later",
            )
        listener = self._listeners.get(task.node_id)
        if listener is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, f"node {task.node_id[:12]} is not connected to the leader")
        channel = ExecChannel(new_id(), task.node_id, task.id)
        message = dpb.ExecOpen(
            exec_id=channel.id,
            task_id=task.id,
            command=list(start.command),
            tty=start.tty,
            stdin=start.stdin,
            rows=start.rows,
            cols=start.cols,
        )
        try:
            listener.queue.put_nowait(message)
        except asyncio.QueueFull:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the node has too many execs waiting") from None
        self._execs[channel.id] = channel
        return channel

    def close(self, channel: ExecChannel) -> None:
        if channel.closed:
            return
        channel.closed = True
        self._execs.pop(channel.id, None)
        channel.end_agent_side()
        channel.end_client_side()

    def open_count(self) -> int:
        return len(self._execs)

    async def relay(
        self, channel: ExecChannel, requests: AsyncIterator[cpb.ExecRequest]
    ) -> AsyncIterator[cpb.ExecResponse]:
        """The caller's side: its requests go to the agent, the agent's output comes back."""
        try:
            await wait_within(channel.attached.wait(), self.attach_timeout)
        except BaseException as exc:  # a silent agent, or a caller that left before it answered
            self.close(channel)
            if isinstance(exc, TimeoutError):
                raise ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"node {channel.node_id[:12]} did not answer the exec within {self.attach_timeout:g}s",
                ) from None
            raise
        pump = asyncio.create_task(self._pump_input(channel, requests), name=f"exec-in-{channel.id}")
        try:
            first = True
            while True:
                message = await channel.to_client.get()
                if not self.is_leader():
                    raise ApiError(grpc.StatusCode.UNAVAILABLE, "this manager is no longer the leader; the exec ended")
                if message is None:
                    if channel.closed and pump.done() and pump.exception() is not None:
                        raise pump.exception()  # type: ignore[misc]
                    raise ApiError(grpc.StatusCode.UNAVAILABLE, "the connection to the task's node was lost")
                if message.failure == "not_running":
                    raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, message.error or "the task is not running")
                if message.failure == "too_many":
                    raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message.error or "too many execs on the node")
                reply = cpb.ExecResponse(
                    stdout=message.stdout,
                    stderr=message.stderr,
                    exited=message.exited,
                    exit_code=message.exit_code,
                    error=message.error,
                )
                if first:
                    reply.task_id, reply.node_id, first = channel.task_id, channel.node_id, False
                yield reply
                if message.exited:
                    return
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            self.close(channel)

    async def _pump_input(self, channel: ExecChannel, requests: AsyncIterator[cpb.ExecRequest]) -> None:
        try:
            async for request in requests:
                why = check_input(request)
                if why is not None:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, why)
                message = dpb.ExecToAgent(
                    stdin=request.stdin, stdin_eof=request.stdin_eof, rows=request.rows, cols=request.cols
                )
                await channel.to_agent.put(message)  # bounded: a slow agent slows the caller
        except ApiError:
            self.close(channel)
            raise
        # The caller half-closed: stdin stays as the requests left it; the output keeps coming.

    async def serve_agent(
        self, channel: ExecChannel, messages: AsyncIterator[dpb.ExecFromAgent]
    ) -> AsyncIterator[dpb.ExecToAgent]:
        """The agent's side: its messages go to the caller, the caller's input goes to it."""
        reader = asyncio.create_task(self._pump_output(channel, messages), name=f"exec-out-{channel.id}")
        try:
            while not channel.closed or not channel.to_agent.empty():
                item = await channel.to_agent.get()
                if item is None:
                    return
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.close(channel)

    async def _pump_output(self, channel: ExecChannel, messages: AsyncIterator[dpb.ExecFromAgent]) -> None:
        try:
            async for message in messages:
                why = check_output(message)
                if why is not None:
                    log.warning("exec %s: node %s sent a bad message: %s", channel.id, channel.node_id, why)
                    break
                await channel.to_client.put(message)
                if message.exited:
                    return
        except grpc.aio.AioRpcError:
            pass
        channel.end_client_side()  # the agent's stream ended before the command did
