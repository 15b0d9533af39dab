"""The leader's log broker: joins operators' ServiceLogs calls to the agents holding the logs.

Like SwarmKit's log broker, simplified (ADR 14). Everything lives in the leader's memory, on
its event loop:

- A ServiceLogs call opens a `LogStream`: one subscription, sent to every node that holds a task
  of the service (dead tasks in the history included), each node getting only its own task ids.
- Each agent keeps a `LogSubscriptions` stream open per session (`NodeListener`). It receives
  every open subscription that involves its node when it connects, then new ones, updates
  (the same id with more tasks, when a follow sees new tasks) and closes.
- Agents answer with `PublishLogs` batches. The broker checks each message against the
  subscription (only this node's tasks of it), stamps service, slot and node from its own state,
  and queues it for the caller. The queue is bounded: a publisher waits for room (backpressure
  on the agent), up to PUBLISH_WAIT, after which the batch is dropped and the caller told.
- Without follow, the stream ends once every node said `done`. A node that is down, removed, or
  silent for `node_timeout` is given up on, with a note to the caller, rather than hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from warren.aio import wait_within
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.ids import new_id
from warren.manager.events import EventHub
from warren.manager.server import ApiError
from warren.model import NodeStatus, Task
from warren.state import ClusterState, Delete, Put
from warren.text import shown
from warren.validate import MAX_LOG_BATCH, MAX_LOG_BATCH_BYTES, MAX_LOG_LINE

log = logging.getLogger(__name__)

NODE_TIMEOUT = 5.0  # a node silent this long (no publish at all) is given up on
TICK = 0.25  # how often a stream looks at timeouts and leadership when nothing arrives
QUEUE_BATCHES = 16  # published batches waiting for a slow caller, per stream (each at most 1 MiB)
PUBLISH_WAIT = 5.0  # how long a publisher may wait for room before its batch is dropped
MAX_STREAMS = 256  # ServiceLogs calls open at once on this leader
LISTENER_QUEUE = 1024  # subscription messages waiting for one agent; beyond, its stream restarts
STREAMS = ("", "stdout", "stderr")


class ReadState(Protocol):
    """What the broker needs from the store."""

    def read(self) -> contextlib.AbstractContextManager[ClusterState]: ...


@dataclass(frozen=True)
class _TaskRef:
    service_name: str
    slot: int
    node_id: str


@dataclass
class _NodeProgress:
    """How one node is doing on one subscription."""

    last_seen: float  # monotonic: when it joined the subscription, then its last publish
    answered: bool = False  # published at least once
    publishing: int = 0  # batches waiting for room in the queue (our backpressure, not silence)
    late: bool = False  # joined a follow after it started: all lines of its (new) tasks
    done: bool = False  # said done, or was given up on
    noted: bool = False  # the caller was told about it already


@dataclass
class _Item:
    node_id: str
    messages: list[pb.LogMessage] = field(default_factory=list)
    done: bool = False


class LogStream:
    """One ServiceLogs call: a subscription and the merged messages for its caller."""

    def __init__(
        self, broker: LogBroker, service_id: str, follow: bool, tail: int, since: float, clock: Callable[[], float]
    ) -> None:
        self.id = new_id()
        self.service_id = service_id
        self.follow = follow
        self.tail = tail
        self.since = since
        self.tasks: dict[str, _TaskRef] = {}
        self.nodes: dict[str, _NodeProgress] = {}
        self.closed = False
        self.ended = ""  # why the stream ended early ("the service was removed")
        self._broker = broker
        self._clock = clock
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(broker.queue_batches)
        self._notes: list[pb.LogMessage] = []
        self._dropped: dict[str, int] = {}
        self._watch: asyncio.Task[None] | None = None
        self._started = False  # the first tasks were taken in: nodes added later are late

    # -- the caller's side ---------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[list[pb.LogMessage]]:
        """Published batches and notes, merged, until every node is done (no follow), the
        caller leaves, or this manager stops leading (UNAVAILABLE)."""
        while not self.closed:
            try:
                item: _Item | None = await wait_within(self._queue.get(), TICK)
            except TimeoutError:
                item = None
            if not self._broker.is_leader():
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "this manager is no longer the leader; retry")
            if item is not None:
                if item.messages:
                    yield item.messages
                progress = self.nodes.get(item.node_id)
                if item.done and progress is not None:
                    progress.done = True
            self._check_timeouts()
            if self.ended:
                self._notes.append(pb.LogMessage(note=self.ended))
            if self._notes:
                notes, self._notes = self._notes, []
                yield notes
            if self.ended:
                return
            if not self.follow and self._queue.empty() and all(p.done for p in self.nodes.values()):
                return

    def close(self) -> None:
        """The caller left (or the stream ended): forget the subscription and tell the nodes."""
        if self.closed:
            return
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
        while not self._queue.empty():  # frees the memory, and wakes publishers waiting for room
            self._queue.get_nowait()
        self._broker._forget(self)

    # -- the broker's side ---------------------------------------------------------------------
    def subscription(self, node_id: str, close: bool = False) -> dpb.LogSubscription:
        """What `node_id` is asked to serve."""
        if close:
            return dpb.LogSubscription(id=self.id, close=True)
        task_ids = sorted(t for t, ref in self.tasks.items() if ref.node_id == node_id)
        progress = self.nodes.get(node_id)
        tail = -1 if progress is not None and progress.late else self.tail
        return dpb.LogSubscription(id=self.id, task_ids=task_ids, follow=self.follow, tail=tail, since=self.since)

    def add_tasks(self, tasks: Iterable[Task], state: ClusterState) -> set[str]:
        """Take in the tasks not known yet (those placed on a node); returns the nodes affected."""
        touched: set[str] = set()
        for task in tasks:
            if task.id in self.tasks or not task.node_id:
                continue
            self.tasks[task.id] = _TaskRef(task.service_name, task.slot, task.node_id)
            touched.add(task.node_id)
        for node_id in touched:
            if node_id not in self.nodes:
                self.nodes[node_id] = _NodeProgress(last_seen=self._clock(), late=self._started)
                self._note_if_unreachable(node_id, state)
        return touched

    def _note_if_unreachable(self, node_id: str, state: ClusterState) -> None:
        node = state.nodes.get(node_id)
        if node is None:
            why = "was removed from the cluster"
        elif node.status == NodeStatus.DOWN:
            why = "is down"
        else:
            return
        count = sum(1 for ref in self.tasks.values() if ref.node_id == node_id)
        name = node.hostname if node is not None else node_id[:12]
        self._give_up(node_id, f"node {name} {why}: the logs of its {count} task(s) are not available")

    def _give_up(self, node_id: str, note: str) -> None:
        progress = self.nodes[node_id]
        progress.noted = True
        if not self.follow:
            progress.done = True
        self._notes.append(pb.LogMessage(node_id=node_id, note=note))

    def _check_timeouts(self) -> None:
        now = self._clock()
        timeout = self._broker.node_timeout
        for node_id, progress in self.nodes.items():
            if progress.noted or progress.done or progress.publishing:
                continue
            if progress.answered and self.follow:
                continue  # a follower that answered may stay quiet for as long as its tasks do
            if now - progress.last_seen >= timeout:
                count = sum(1 for ref in self.tasks.values() if ref.node_id == node_id)
                name = self._broker.hostname(node_id)
                if progress.answered:
                    why = f"stopped answering for {timeout:g}s: the logs of its {count} task(s) may be incomplete"
                else:
                    later = "; they will show if it answers later" if self.follow else ""
                    why = f"did not answer within {timeout:g}s: the logs of its {count} task(s) are missing{later}"
                self._give_up(node_id, f"node {name} {why}")
        for node_id, count in self._dropped.items():
            name = self._broker.hostname(node_id)
            self._notes.append(
                pb.LogMessage(node_id=node_id, note=f"{count} line(s) from node {name} dropped: the reader is too slow")
            )
        self._dropped.clear()

    async def accept(self, node_id: str, messages: list[pb.LogMessage], done: bool) -> None:
        """Queue one node's batch for the caller, waiting up to the broker's publish_wait for room."""
        progress = self.nodes[node_id]
        progress.answered = True
        progress.last_seen = self._clock()
        if not messages and not done:
            return  # "still here": nothing for the caller
        progress.publishing += 1
        try:
            await wait_within(self._queue.put(_Item(node_id, messages, done)), self._broker.publish_wait)
        except TimeoutError:
            if messages and not self.closed:
                self._dropped[node_id] = self._dropped.get(node_id, 0) + len(messages)
            if done:
                progress.done = True
        finally:
            progress.publishing -= 1
            progress.last_seen = self._clock()

    def start_watching(self, hub: EventHub, store: ReadState) -> None:
        """Follow: send new tasks of the service to their nodes as they are placed."""
        self._watch = asyncio.create_task(self._follow_tasks(hub, store), name=f"logs-{self.id}")

    async def _follow_tasks(self, hub: EventHub, store: ReadState) -> None:
        try:
            await self._follow_changes(hub, store)
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave a follow hanging on a dead watcher
            log.exception("log stream %s: following the service's tasks failed", self.id)
            self.ended = "internal error while following the service's tasks"

    async def _follow_changes(self, hub: EventHub, store: ReadState) -> None:
        with hub.subscribe() as events:
            self._rescan(store)  # anything placed between the first read and the subscription
            while not self.closed:
                _index, changes = await events.get()
                if changes is None:
                    self._rescan(store)
                    continue
                placed = [
                    c.obj
                    for c in changes
                    if isinstance(c, Put)
                    and c.kind == "task"
                    and isinstance(c.obj, Task)
                    and c.obj.service_id == self.service_id
                ]
                if any(isinstance(c, Delete) and c.kind == "service" and c.id == self.service_id for c in changes):
                    self.ended = "the service was removed"
                    return
                if placed:
                    with store.read() as state:
                        touched = self.add_tasks(placed, state)
                    self._broker._send_to(self, touched)

    def _rescan(self, store: ReadState) -> None:
        with store.read() as state:
            if self.service_id not in state.services:
                self.ended = "the service was removed"
                return
            touched = self.add_tasks(state.service_tasks(self.service_id), state)
        self._broker._send_to(self, touched)


class NodeListener:
    """One agent's LogSubscriptions stream: the subscription messages waiting to go to it."""

    def __init__(self, broker: LogBroker, node_id: str) -> None:
        self.node_id = node_id
        self.queue: asyncio.Queue[dpb.LogSubscription] = asyncio.Queue()
        self.overflowed = False
        self._broker = broker

    def push(self, message: dpb.LogSubscription) -> None:
        if self.queue.qsize() >= LISTENER_QUEUE:
            self.overflowed = True  # the agent reconnects and receives every open subscription
            return
        self.queue.put_nowait(message)

    async def messages(self, alive: Callable[[], bool]) -> AsyncIterator[dpb.LogSubscription]:
        """Subscription messages while `alive()` (the agent's session) and this listener is the
        node's current one."""
        while alive() and not self.overflowed and self._broker._listeners.get(self.node_id) is self:
            try:
                message = await wait_within(self.queue.get(), 1.0)
            except TimeoutError:
                continue
            yield message

    def close(self) -> None:
        if self._broker._listeners.get(self.node_id) is self:
            del self._broker._listeners[self.node_id]


class LogBroker:
    """Open log streams and the agents listening for subscriptions. Only the event loop calls it."""

    def __init__(
        self,
        store: ReadState,
        hub: EventHub | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        node_timeout: float = NODE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        queue_batches: int = QUEUE_BATCHES,
        publish_wait: float = PUBLISH_WAIT,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self._store = store
        self._hub = hub
        self.is_leader = is_leader
        self.node_timeout = node_timeout
        self.queue_batches = queue_batches
        self.publish_wait = publish_wait
        self.max_streams = max_streams
        self._clock = clock
        self._streams: dict[str, LogStream] = {}
        self._listeners: dict[str, NodeListener] = {}

    # -- operators -----------------------------------------------------------------------------
    def open(self, service_id: str, follow: bool, tail: int, since: float) -> LogStream:
        """Start a stream for a service's logs and send its subscription to the nodes."""
        if tail < -1:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"tail must be -1 (all) or at least 0 (got {tail})")
        if not math.isfinite(since) or since < 0:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"since must be a Unix time or 0 (got {since})")
        if len(self._streams) >= self.max_streams:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many log streams open ({self.max_streams}); retry later"
            )
        stream = LogStream(self, service_id, follow, tail, since, self._clock)
        with self._store.read() as state:
            if service_id not in state.services:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"service {service_id} not found")
            touched = stream.add_tasks(state.service_tasks(service_id), state)
        stream._started = True
        self._streams[stream.id] = stream
        log.info(
            "log stream %s opened: service %s, %d task(s) on %d node(s)%s",
            stream.id,
            service_id,
            len(stream.tasks),
            len(stream.nodes),
            ", following" if follow else "",
        )
        self._send_to(stream, touched)
        if follow and self._hub is not None:
            stream.start_watching(self._hub, self._store)
        return stream

    def hostname(self, node_id: str) -> str:
        with self._store.read() as state:
            node = state.nodes.get(node_id)
        return node.hostname if node is not None else node_id[:12]

    def _send_to(self, stream: LogStream, node_ids: Iterable[str]) -> None:
        for node_id in node_ids:
            listener = self._listeners.get(node_id)
            if listener is not None:
                listener.push(stream.subscription(node_id))

    def _forget(self, stream: LogStream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        log.info("log stream %s closed", stream.id)
        for node_id in stream.nodes:
            listener = self._listeners.get(node_id)
            if listener is not None:
                listener.push(stream.subscription(node_id, close=True))

    # -- agents --------------------------------------------------------------------------------
    def listen(self, node_id: str) -> NodeListener:
        """A node's agent opened its LogSubscriptions stream: it replaces any earlier one, and
        gets every open subscription that involves the node."""
        listener = NodeListener(self, node_id)
        self._listeners[node_id] = listener
        for stream in self._streams.values():
            if node_id in stream.nodes:
                listener.push(stream.subscription(node_id))
        return listener

    async def publish(self, node_id: str, request: dpb.PublishLogsRequest) -> bool:
        """Take one batch from `node_id` (from its certificate); True tells it to stop."""
        stream = self._streams.get(request.subscription_id)
        if stream is None or stream.closed:
            return True
        if node_id not in stream.nodes:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "this log subscription was not sent to this node")
        messages = self._checked(stream, node_id, request.messages)
        await stream.accept(node_id, messages, request.done)
        return stream.closed

    def _checked(self, stream: LogStream, node_id: str, messages: Iterable[pb.LogMessage]) -> list[pb.LogMessage]:
        """The batch as the caller sees it; refuses anything not of this node's tasks."""
        messages = list(messages)
        if len(messages) > MAX_LOG_BATCH:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_LOG_BATCH} log messages per batch")
        if sum(len(m.data) for m in messages) > MAX_LOG_BATCH_BYTES:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_LOG_BATCH_BYTES} bytes of logs per batch")
        now = time.time()
        out = []
        for m in messages:
            ref = stream.tasks.get(m.task_id)
            if ref is None or ref.node_id != node_id:
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"task {shown(m.task_id)} is not a task of this node in this log subscription",
                )
            if len(m.data) > MAX_LOG_LINE:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"a log line is at most {MAX_LOG_LINE} bytes")
            if m.stream not in STREAMS or m.note:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "stream must be stdout, stderr or empty; no note")
            timestamp = m.timestamp if math.isfinite(m.timestamp) and 0 < m.timestamp <= now else now
            out.append(
                pb.LogMessage(
                    task_id=m.task_id,
                    service_name=ref.service_name,
                    slot=ref.slot,
                    node_id=node_id,
                    timestamp=timestamp,
                    data=m.data,
                    stream=m.stream,
                )
            )
        return out
