"""The Dispatcher's streams that brokers feed: log subscriptions and published logs (ADR 14),
and execs (ADR 59), each for as long as the node's session lasts on this leader.

A mixin of `DispatcherService` (warren.manager.dispatcher), which holds the sessions and says
which node a session belongs to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.execbroker import ExecBroker
from warren.manager.logbroker import LogBroker
from warren.manager.ports import Proposer
from warren.manager.server import ApiError


class BrokeredStreams:
    """What the brokers push to a node, and what its agent sends back through them."""

    _logs: LogBroker | None
    _execs: ExecBroker | None
    _raft: Proposer
    _sessions: dict[str, str]  # session id -> node id

    def _require_leader(self) -> None:
        raise NotImplementedError

    def _node_of(self, session_id: str) -> str:
        raise NotImplementedError

    # -- logs (ADR 14) ---------------------------------------------------------------------------
    def _log_broker(self) -> LogBroker:
        if self._logs is None:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve logs")
        return self._logs

    async def _pushed(self, session_id: str, listen: Callable[[str], Any]) -> AsyncIterator:
        """What a broker pushes to the session's node (`listen(node_id)`: its listener), for as
        long as the session lasts on this leader: log subscriptions (ADR 14), execs (ADR 59)."""
        self._require_leader()
        listener = listen(self._node_of(session_id))

        def alive() -> bool:
            return self._raft.is_leader and session_id in self._sessions

        try:
            async for message in listener.messages(alive):
                yield message
        finally:
            listener.close()

    async def LogSubscriptions(self, request: dpb.LogSubscriptionsRequest, context: object) -> AsyncIterator:
        """Push this node's log subscriptions for as long as its session lasts."""
        async for message in self._pushed(request.session_id, lambda node: self._log_broker().listen(node)):
            yield message

    async def PublishLogs(self, request: dpb.PublishLogsRequest, context: object) -> dpb.PublishLogsResponse:
        """One batch of log lines; the broker checks them against the caller's node."""
        self._require_leader()
        node_id = self._node_of(request.session_id)
        stop = await self._log_broker().publish(node_id, request)
        return dpb.PublishLogsResponse(stop=stop)

    # -- exec (#16, ADR 59) --------------------------------------------------------------------
    def _exec_broker(self) -> ExecBroker:
        if self._execs is None:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve exec")
        return self._execs

    async def ExecSessions(self, request: dpb.ExecSessionsRequest, context: object) -> AsyncIterator:
        """Push the execs for this node for as long as its session lasts."""
        async for message in self._pushed(request.session_id, lambda node: self._exec_broker().listen(node)):
            yield message

    async def ExecAttach(self, requests: AsyncIterator[dpb.ExecFromAgent], context: object) -> AsyncIterator:
        """An agent's stream for one exec: its first message names the session and the exec."""
        self._require_leader()
        first = await anext(aiter(requests), None)
        if first is None:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "the first message must name the session and the exec")
        node_id = self._node_of(first.session_id)
        channel = self._exec_broker().attach(node_id, first.exec_id)
        async for message in self._exec_broker().serve_agent(channel, aiter(requests)):
            yield message
