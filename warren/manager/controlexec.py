"""The Control API's exec (ADR 59): checks the start, audits it, and hands it to the broker."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.manager.execbroker import ExecBroker, check_start, exec_task
from warren.manager.ports import Consensus, StateReader
from warren.manager.server import ApiError, caller, not_leader
from warren.text import shown

log = logging.getLogger(__name__)


class ExecControl:
    """Exec, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _raft: Consensus
    _execs: ExecBroker | None

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

    async def Exec(self, requests: AsyncIterator[cpb.ExecRequest], context: object) -> AsyncIterator[cpb.ExecResponse]:
        """Run a command in a running task, relayed by the leader's broker to the task's agent."""
        if self._execs is None:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve exec")
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("start"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "the first request must start the exec")
        why = check_start(first.start)
        if why is not None:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, why)
        if not self._raft.is_leader:
            raise not_leader(self._store, self._raft, "it serves exec")
        identity = caller.get(None)
        admin = identity.node_id if identity is not None else ""
        with self._store.read() as state:
            task = exec_task(state, first.start)
            node = state.nodes.get(task.node_id)
            cert = state.admin_certs.get(admin)
        command = tuple(first.start.command)
        # The audit record first: an exec that cannot be recorded does not run.
        await self._propose(commands.RecordExec(task.id, admin, command, first.start.tty, time.time()))
        channel = self._execs.open(task, first.start)
        log.info(
            "exec %s: admin %s runs %s in task %s on node %s%s",
            channel.id,
            f"{admin} ({cert.name})" if cert is not None else admin or "?",
            shown(shlex.join(command)),
            task.id,
            node.hostname if node is not None else task.node_id,
            " (tty)" if first.start.tty else "",
        )
        async for reply in self._execs.relay(channel, aiter(requests)):
            yield reply
