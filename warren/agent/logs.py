"""The agent's half of log streaming (ADR 14): serve the managers' log subscriptions from the
task log files (warren.agent.logfiles: the files, their arrival-time index, reading them as
lines), stamping each running task's index every POLL seconds.

Subscriptions. `LogAgent.serve` keeps a LogSubscriptions stream open for the session. Each
subscription reads its tasks' logs (the last `tail` lines, or all), then, with follow, polls
for growth every POLL seconds, and publishes lines in batches (at most MAX_LOG_BATCH lines and
MAX_LOG_BATCH_BYTES; lines longer than MAX_LOG_LINE in pieces). A file's read position moves
only once its batch was accepted, so a subscription re-sent after a reconnect resumes where it
was instead of repeating its tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from warren.agent.logfiles import TaskLogReader, TimeIndex
from warren.agent.logrotation import Rotation, remove_task_logs, rotate_if_due
from warren.agent.pushed import follow_pushed
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.backoff import Backoff
from warren.validate import MAX_LOG_BATCH, MAX_LOG_BATCH_BYTES, MAX_LOG_LINE

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at a growing log (and between index stamps)
SWEEP_EVERY = 10.0  # seconds between clean-ups of indexes whose log is gone
FORGET_AFTER = 60.0  # a subscription not re-sent this long after its stream ended is dropped
MAX_SUBSCRIPTIONS = 256
MAX_TASKS = 10_000  # task ids in one subscription
PUBLISH_TIMEOUT = 15.0
PUBLISH_RETRIES = (0.2, 0.5, 1.0, 2.0)
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a file name, never a path


# -- serving subscriptions ---------------------------------------------------------------------------
class _Stop(Exception):
    """Stop serving this subscription (the manager said so, or refused it)."""


@dataclass
class _Served:
    """One subscription as this agent serves it; outlives a lost stream for FORGET_AFTER."""

    id: str
    follow: bool
    tail: int
    since: float
    readers: dict[str, TaskLogReader] = field(default_factory=dict)
    job: asyncio.Task[None] | None = None
    idle_since: float = 0.0  # monotonic time its stream went away; 0 while served
    turn: int = 0  # which reader goes first in the next batch (fairness)


def check_subscription(msg: dpb.LogSubscription) -> str | None:
    """Why a subscription message cannot be served, or None. Task ids become file names."""
    if not msg.id or len(msg.id) > 128:
        return "bad subscription id"
    if msg.close:
        return None
    if len(msg.task_ids) > MAX_TASKS:
        return f"more than {MAX_TASKS} tasks"
    bad = next((t for t in msg.task_ids if not TASK_ID_RE.fullmatch(t)), None)
    if bad is not None:
        return f"bad task id {bad[:64]!r}"
    if msg.tail < -1:
        return f"bad tail {msg.tail}"
    return None


class LogAgent:
    """Serves log subscriptions from `log_dir`, and stamps the output of running tasks."""

    def __init__(
        self,
        log_dir: Path,
        running: Callable[[], Iterable[str]] = tuple,
        clock: Callable[[], float] = time.time,
        poll: float = POLL,
        rotation: Rotation | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.rotation = rotation  # None: logs grow without bound
        self.running = running
        self.clock = clock
        self.poll = poll
        self._indexes: dict[str, TimeIndex] = {}
        self._subs: dict[str, _Served] = {}

    # -- timestamps ------------------------------------------------------------------------------
    def log_path(self, task_id: str) -> Path:
        return self.log_dir / f"{task_id}.log"

    def index(self, task_id: str) -> TimeIndex | None:
        index = self._indexes.get(task_id)
        if index is None:
            try:
                index = self._indexes[task_id] = TimeIndex(self.log_dir / f"{task_id}.idx")
            except OSError as exc:
                log.warning("task %s: cannot open its log index: %s", task_id, exc)
                return None
        return index

    def stamp(self) -> None:
        """Record the growth of every running task's log, and rotate those grown too big."""
        now = self.clock()
        for task_id in self.running():
            if not TASK_ID_RE.fullmatch(task_id):
                continue
            path = self.log_path(task_id)
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            index = self.index(task_id)
            if self.rotation is not None and size > self.rotation.max_size:
                try:
                    rotate_if_due(path, index, self.rotation, now)
                except OSError as exc:
                    log.warning("task %s: cannot rotate its log: %s", task_id, exc)
                else:
                    continue
            if index is not None:
                index.observe(size, now)

    def sweep(self) -> None:
        """Close indexes nobody needs, and delete those whose log is gone."""
        in_use = set(self.running()) | {t for s in self._subs.values() for t in s.readers}
        for task_id in list(self._indexes):
            if task_id not in in_use or not self.log_path(task_id).exists():
                self._indexes.pop(task_id).close()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.log_dir):
                if entry.name.endswith(".idx") and not self.log_path(entry.name[:-4]).exists():
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            for task_id in self._rotated_orphans():
                remove_task_logs(self.log_path(task_id))

    def _rotated_orphans(self) -> set[str]:
        """Tasks whose rotated copies outlived their live log (an agent stopped in the middle of
        removing a task's files, or one from before they went together)."""
        orphans = set()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.log_dir):
                stem, dot, number = entry.name.rpartition(".")
                if dot and number.isdigit() and stem.endswith((".log", ".idx")):
                    task_id = stem[:-4]
                    if not self.log_path(task_id).exists():
                        orphans.add(task_id)
        return orphans

    async def run_indexer(self) -> None:
        """Stamp running tasks' output every `poll` seconds, for as long as the agent runs."""
        last_sweep = time.monotonic()
        while True:
            try:
                self.stamp()
                if time.monotonic() - last_sweep >= SWEEP_EVERY:
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:
                log.exception("stamping task logs failed")
            await asyncio.sleep(self.poll)

    def close(self) -> None:
        for served in self._subs.values():
            if served.job is not None:
                served.job.cancel()
            for reader in served.readers.values():
                reader.close()
        self._subs.clear()
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()

    # -- subscriptions ---------------------------------------------------------------------------
    async def serve(self, stub: Any, session_id: str) -> None:
        """Serve log subscriptions for one session. Never returns: the session cancels it. A
        failed stream is reopened; a manager without log support is left alone."""

        def open_call() -> Any:
            self._prune()
            return stub.LogSubscriptions(dpb.LogSubscriptionsRequest(session_id=session_id))

        await follow_pushed(
            open_call, lambda msg: self._on_subscription(msg, stub, session_id), "logs", on_closed=self._pause_all
        )

    def _pause_all(self) -> None:
        """The stream went away: stop serving, but keep read positions for a while."""
        now = time.monotonic()
        for served in self._subs.values():
            if served.job is not None:
                served.job.cancel()
                served.job = None
            served.idle_since = served.idle_since or now

    def _on_subscription(self, msg: dpb.LogSubscription, stub: Any, session_id: str) -> None:
        why = check_subscription(msg)
        if why is not None:
            log.warning("ignoring log subscription %s: %s", msg.id[:64], why)
            return
        self._prune()
        served = self._subs.get(msg.id)
        if msg.close:
            if served is not None:
                self._drop(served)
            return
        if served is None:
            if len(self._subs) >= MAX_SUBSCRIPTIONS:
                log.warning("ignoring log subscription %s: %d already served", msg.id, MAX_SUBSCRIPTIONS)
                return
            served = self._subs[msg.id] = _Served(msg.id, msg.follow, msg.tail, msg.since)
            tail = msg.tail
        else:
            tail = -1  # tasks added to a subscription already served are new: all their lines
        for task_id in msg.task_ids:
            if task_id not in served.readers:
                served.readers[task_id] = TaskLogReader(
                    self.log_path(task_id),
                    functools.partial(self.index, task_id),
                    tail,
                    served.since,
                    served.follow,
                    self.clock,
                )
        served.idle_since = 0.0
        if served.job is None or served.job.done():
            served.job = asyncio.create_task(self._publish_loop(served, stub, session_id), name=f"logs-{msg.id}")

    def _prune(self) -> None:
        """Forget subscriptions whose stream went away long ago and that were not re-sent."""
        now = time.monotonic()
        for served in list(self._subs.values()):
            if served.job is None and served.idle_since and now - served.idle_since > FORGET_AFTER:
                self._drop(served)

    def _drop(self, served: _Served) -> None:
        if served.job is not None and served.job is not asyncio.current_task():
            served.job.cancel()
        self._subs.pop(served.id, None)
        for reader in served.readers.values():
            reader.close()

    def _collect(self, served: _Served) -> tuple[list[pb.LogMessage], list[tuple[TaskLogReader, int]]]:
        """The next batch: lines from each reader in turn, within the batch limits."""
        messages: list[pb.LogMessage] = []
        commits: list[tuple[TaskLogReader, int]] = []
        budget = MAX_LOG_BATCH_BYTES
        items = list(served.readers.items())
        served.turn = (served.turn + 1) % max(1, len(items))
        for task_id, reader in items[served.turn :] + items[: served.turn]:
            room = MAX_LOG_BATCH - len(messages)
            if room <= 0 or budget < MAX_LOG_LINE:
                break
            lines, offset = reader.read(room, budget)
            if offset != reader.offset:
                commits.append((reader, offset))
            for line in lines:
                messages.append(pb.LogMessage(task_id=task_id, timestamp=line.timestamp, data=line.data))
                budget -= len(line.data)
        return messages, commits

    async def _publish_loop(self, served: _Served, stub: Any, session_id: str) -> None:
        """Read and publish until done (no follow), told to stop, or cancelled. The first call
        goes out at once, even empty: it tells the manager that this node answers."""
        first = True
        try:
            while True:
                messages, commits = self._collect(served)
                ahead = dict(commits)
                done = not served.follow and all(r.finished_at(ahead.get(r, r.offset)) for r in served.readers.values())
                if messages or first or done:
                    await self._publish(stub, session_id, served.id, messages, done)
                    first = False
                for reader, offset in commits:
                    reader.commit(offset)
                if done:
                    break
                if not commits:
                    await asyncio.sleep(self.poll)
        except _Stop:
            pass
        except Exception:
            log.exception("serving log subscription %s failed", served.id)
        self._drop(served)

    async def _publish(
        self, stub: Any, session_id: str, sub_id: str, messages: list[pb.LogMessage], done: bool
    ) -> None:
        """One PublishLogs call, retried on transient failures; raises _Stop when to give up."""
        request = dpb.PublishLogsRequest(session_id=session_id, subscription_id=sub_id, messages=messages, done=done)
        backoff = Backoff.schedule(PUBLISH_RETRIES)
        while True:
            try:
                reply = await stub.PublishLogs(request, timeout=PUBLISH_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                transient = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                delay = backoff.next()
                if not transient or backoff.exhausted:
                    log.warning(
                        "publishing logs of subscription %s failed: %s %s", sub_id, exc.code().name, exc.details()
                    )
                    raise _Stop from None
                await asyncio.sleep(delay)
                continue
            if reply.stop:
                raise _Stop
            return
