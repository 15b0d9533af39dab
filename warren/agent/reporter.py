"""Sending the task status queue to the leader, for one session (ADR 79): batches on the
session's StatusReports stream, each answered once the managers committed it (CallStream), or
as UpdateTaskStatus calls to a manager without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import grpc

from warren import nodereports
from warren.agent.callstream import CallStream
from warren.agent.status import StatusQueue
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.model import TaskState

log = logging.getLogger(__name__)

ReportChannel = CallStream[dpb.UpdateTaskStatusRequest, dpb.UpdateTaskStatusResponse]

COALESCE = 0.05  # seconds to gather status reports into one batch
MAX_BATCH = nodereports.MAX_STATUS_BATCH  # reports per batch; the rest wait for the next one
REPORT_TIMEOUT = 15.0  # a batch sent as a call
# A batch on the stream: its answer comes in turn, and until it does, newer reports coalesce in
# the queue. The session's heartbeats say whether the manager still works; this bound only
# replaces a stream that stopped answering while they went on.
STREAM_REPORT_TIMEOUT = 60.0
REPORT_RETRY = 1.0  # after a batch that was not answered in time: the manager is busy
# A busy manager, not a broken session: the batch goes again later on this session. Ending the
# session would cost the manager a new one and the whole set, and at 1,000 nodes the failures fed
# themselves (#15). A call past its deadline ends CANCELLED when the manager's timer fires
# before the agent's (the deadline travels with the call). UNKNOWN is a proposal whose outcome
# the manager did not learn in time.
_RETRIED = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})


def report_channel(stub: dispatcher_pb2_grpc.DispatcherAsyncStub) -> ReportChannel:
    """A session's batches: on its StatusReports stream, or as UpdateTaskStatus calls."""
    return CallStream("status report", stub.StatusReports, stub.UpdateTaskStatus)


async def send_reports(
    channel: ReportChannel,
    session_id: str,
    queue: StatusQueue,
    answered: Callable[[Iterable[str]], None],
) -> None:
    """Send queued reports in batches, COALESCE seconds after the first one arrives, until
    cancelled or a failure that ends the session; `answered` gets the task ids of each batch
    the managers took that reached RUNNING or beyond."""
    channel.open()
    try:
        while True:
            await queue.wait()
            await asyncio.sleep(COALESCE)
            batch = queue.take()
            if len(batch) > MAX_BATCH:
                queue.requeue(batch[MAX_BATCH:])
                batch = batch[:MAX_BATCH]
            request = dpb.UpdateTaskStatusRequest(
                session_id=session_id, updates=[convert.report_to_pb(r) for r in batch]
            )
            try:
                await channel.ask(request, STREAM_REPORT_TIMEOUT, REPORT_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("the manager refused %d status report(s): %s", len(batch), exc.details())
                    continue
                queue.requeue(batch)
                if exc.code() not in _RETRIED:
                    raise
                log.warning("%d status report(s) not taken (%s); resending", len(batch), exc.code().name)
                await asyncio.sleep(REPORT_RETRY)
                continue
            except TimeoutError:
                queue.requeue(batch)
                log.warning("%d status report(s) not answered in time; resending", len(batch))
                await asyncio.sleep(REPORT_RETRY)
                continue
            except BaseException:
                queue.requeue(batch)
                raise
            log.debug("reported %d task status(es)", len(batch))
            answered(r.task_id for r in batch if r.state >= TaskState.RUNNING)
    finally:
        channel.close()
