"""The agent's half of exec (ADR 59): run an operator's command in a running task and relay its
stdio over the agent's own connection to the leader.

`ExecAgent.serve` keeps an `ExecSessions` stream open for the session. Each exec pushed on it is
answered by a new `ExecAttach` stream whose first message names it. The command runs through
the runtime port (`Runtime.exec_process`); its output is read without blocking and sent in
messages of at most CHUNK bytes, its input written as it comes. The command is killed when the
stream ends (the caller or the leader went away), and the exec ends with "task_ended" when its
task stops running meanwhile. At most MAX_EXECS run at once on a node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from warren.agent.pushed import follow_pushed
from warren.agent.runtime import ExecFailure, ExecProcess, Runtime
from warren.api.v1 import dispatcher_pb2 as dpb

log = logging.getLogger(__name__)

MAX_EXECS = 8  # on one node at once (the leader holds the same bound per node)
CHUNK = 32 * 1024  # output bytes per message (the leader takes at most 64 KiB)
TASK_POLL = 0.5  # seconds between looks at whether the task still runs
DRAIN = 1.0  # after the command exits, how long its output may still take to arrive
EXIT_CODES = {"not_found": 127, "cannot_execute": 126}


class ExecAgent:
    """Serves the execs pushed to this node. Only the event loop calls it."""

    def __init__(self, runtime: Runtime, locate: Callable[[str], str | None], max_execs: int = MAX_EXECS) -> None:
        self.runtime = runtime
        self.locate = locate  # task id -> its running container's runtime id, or None
        self.max_execs = max_execs
        self._running: dict[str, asyncio.Task[None]] = {}
        # Each exec holds a thread while its command runs (the wait), plus short calls.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_execs * 2 + 2, thread_name_prefix="warren-exec")

    def close(self) -> None:
        for job in self._running.values():
            job.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def serve(self, stub: Any, session_id: str) -> None:
        """Serve execs for one session. Never returns: the session cancels it. A failed stream
        is reopened; a manager without exec is left alone."""
        try:
            await follow_pushed(
                lambda: stub.ExecSessions(dpb.ExecSessionsRequest(session_id=session_id)),
                lambda message: self._start(stub, session_id, message),
                "exec",
            )
        finally:
            for job in list(self._running.values()):  # the session ended: so do its execs
                job.cancel()

    def _start(self, stub: Any, session_id: str, message: dpb.ExecOpen) -> None:
        if not message.exec_id or message.exec_id in self._running or not message.command:
            log.warning("ignoring a malformed exec message")
            return
        job = asyncio.create_task(self._serve_exec(stub, session_id, message), name=f"exec-{message.exec_id}")
        self._running[message.exec_id] = job
        job.add_done_callback(lambda _job: self._running.pop(message.exec_id, None))

    async def _serve_exec(self, stub: Any, session_id: str, message: dpb.ExecOpen) -> None:
        call = stub.ExecAttach()
        try:
            await call.write(dpb.ExecFromAgent(session_id=session_id, exec_id=message.exec_id))
            if len(self._running) > self.max_execs:
                await _fail(call, "too_many", f"too many execs on this node ({self.max_execs}); retry later", 1)
                return
            runtime_id = self.locate(message.task_id)
            if runtime_id is None:
                await _fail(call, "not_running", f"task {message.task_id[:12]} is not running on this node", 1)
                return
            argv = list(message.command)
            try:
                proc: ExecProcess = await self._call(
                    self.runtime.exec_process, runtime_id, argv, message.tty, message.stdin, message.rows, message.cols
                )
            except ExecFailure as exc:
                await _fail(call, exc.kind, exc.message, EXIT_CODES.get(exc.kind, 1))
                return
            log.info("exec %s: running %r in task %s", message.exec_id, argv[:8], message.task_id)
            try:
                await self._relay(call, message, proc)
            finally:
                with contextlib.suppress(Exception):
                    await self._call(_finish, proc)
        except grpc.aio.AioRpcError as exc:
            log.info("exec %s ended: %s %s", message.exec_id, exc.code().name, exc.details())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("exec %s failed", message.exec_id)
        finally:
            call.cancel()

    async def _relay(self, call: Any, message: dpb.ExecOpen, proc: ExecProcess) -> None:
        await call.write(dpb.ExecFromAgent(started=True))
        send = asyncio.Lock()  # one writer at a time on the stream

        async def forward(fd: int, stderr: bool) -> None:
            async for data in read_fd(fd):
                async with send:
                    if stderr:
                        await call.write(dpb.ExecFromAgent(stderr=data))
                    else:
                        await call.write(dpb.ExecFromAgent(stdout=data))

        readers = [asyncio.create_task(forward(proc.stdout, False))]
        if proc.stderr is not None:
            readers.append(asyncio.create_task(forward(proc.stderr, True)))
        exited = asyncio.ensure_future(self._call(proc.wait, None))
        inputs = asyncio.create_task(self._take_input(call, proc))
        ended = asyncio.create_task(self._watch_task(message.task_id))
        try:
            await asyncio.wait({exited, inputs, ended}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                code = exited.result()
                await asyncio.wait(readers, timeout=DRAIN)  # what it wrote last
                async with send:
                    await call.write(dpb.ExecFromAgent(exited=True, exit_code=code))
                await _close_stream(call, inputs)
                return
            if ended.done():
                await self._call(proc.kill)
                await asyncio.wait(readers, timeout=DRAIN)
                why = f"task {message.task_id[:12]} stopped running: the exec was ended"
                async with send:
                    await call.write(dpb.ExecFromAgent(exited=True, exit_code=137, failure="task_ended", error=why))
                await _close_stream(call, inputs)
                return
            # The stream ended (the caller or the leader went away): the command must not outlive it.
            log.info("exec %s: the caller went away, killing the command", message.exec_id)
            await self._call(proc.kill)
        finally:
            for job in (*readers, inputs, ended):
                job.cancel()
                if job.done() and not job.cancelled() and job.exception() is not None:
                    log.debug("exec %s: %s", message.exec_id, job.exception())  # a broken stream, seen
            if not exited.done():
                await self._call(proc.kill)

    async def _take_input(self, call: Any, proc: ExecProcess) -> None:
        """The caller's stdin and window sizes, until the stream ends."""
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            if message.rows and message.cols:
                await self._call(proc.resize, message.rows, message.cols)
            if message.stdin and proc.stdin is not None:
                with contextlib.suppress(OSError):  # the command closed its stdin: drop the rest
                    await write_fd(proc.stdin, message.stdin)
            if message.stdin_eof:
                await self._call(proc.close_stdin)

    async def _watch_task(self, task_id: str) -> None:
        while self.locate(task_id) is not None:
            await asyncio.sleep(TASK_POLL)


def _finish(proc: ExecProcess) -> None:
    proc.kill()
    proc.wait(5.0)
    proc.close()


async def _fail(call: Any, failure: str, error: str, code: int) -> None:
    await call.write(dpb.ExecFromAgent(exited=True, exit_code=code, failure=failure, error=error[:1024]))
    await _close_stream(call)


async def _close_stream(call: Any, reader: asyncio.Task[None] | None = None) -> None:
    """Half-close, then let the leader end the stream: cancelling it at once could lose the last
    message on its way. `reader` is the task reading the stream, if any (cancelling a read
    cancels the whole call, so only one reads, and is waited for)."""
    await call.done_writing()
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
        async with asyncio.timeout(5.0):
            if reader is not None:
                await asyncio.wait({reader})
                return
            while await call.read() is not grpc.aio.EOF:
                pass


async def _ready(fd: int, writer: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writer else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writer else loop.remove_reader)(fd)


async def read_fd(fd: int, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """What a pipe or terminal yields, until its end (a terminal ends with EIO once closed)."""
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, chunk)
        except BlockingIOError:
            await _ready(fd, writer=False)
            continue
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADF):
                return
            raise
        if not data:
            return
        yield data


async def write_fd(fd: int, data: bytes) -> None:
    """Write all of `data` to a pipe or terminal, waiting for room without blocking the loop."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _ready(fd, writer=True)
