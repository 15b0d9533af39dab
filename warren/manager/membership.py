"""Manager membership (ADR 15): adding a manager to Raft, and each manager's Raft status.

Both sides live here: `ManagersService` is served on every manager's mTLS API port to manager
certificates, and `request_membership` is what a joining manager calls once `cluster join`
has traded a manager token for its certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from warren import commands, tls
from warren.api.leader import leader_from_details
from warren.api.v1 import managers_pb2 as mpb
from warren.api.v1 import managers_pb2_grpc
from warren.manager.ports import Consensus, ProposalError, StateReader
from warren.manager.server import ApiError, caller, check_result, not_leader
from warren.model import Availability, Node, NodeRole, NodeStatus, Resources
from warren.text import shown
from warren.validate import NAME_RE, ValidationError, check_hostport

log = logging.getLogger(__name__)

# Long enough for a 1 -> 2 change, whose commit needs the joiner itself: it starts its Raft
# node only after our answer, so we answer once the change is in the log, not committed.
_APPEND_WAIT = 1.0


def _check_hostport(field: str, value: str) -> None:
    try:
        check_hostport(field, value)
    except ValidationError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


class ManagersService(managers_pb2_grpc.ManagersServicer):
    def __init__(self, store: StateReader, raft: Consensus, raft_secret: str, node_id: str) -> None:
        self._store = store
        self._raft = raft
        self._secret = raft_secret
        self._node_id = node_id
        self._adding = asyncio.Lock()  # one membership change at a time

    async def AddManager(self, request: mpb.AddManagerRequest, context: object) -> mpb.AddManagerResponse:
        identity = caller.get()
        _check_hostport("raft_addr", request.raft_addr)
        _check_hostport("api_addr", request.api_addr)
        if request.join_addr:
            _check_hostport("join_addr", request.join_addr)
        if not NAME_RE.fullmatch(request.hostname):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid hostname {shown(request.hostname)}")
        async with self._adding:
            if not self._raft.is_leader:
                raise not_leader(self._store, self._raft)
            with self._store.read() as state:
                cluster = state.cluster
                if cluster is None:
                    raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
                for other in state.nodes.values():
                    if other.id != identity.node_id and request.raft_addr in (other.raft_addr, other.addr):
                        raise ApiError(
                            grpc.StatusCode.ALREADY_EXISTS,
                            f"{request.raft_addr} is already used by node {other.hostname} ({other.id})",
                        )
                node = state.nodes.get(identity.node_id)
            promoted = node is not None and node.role != NodeRole.MANAGER and node.desired_role == NodeRole.MANAGER
            if node is not None and node.role != NodeRole.MANAGER and not promoted:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"node {identity.node_id} is not a manager (demoted?)"
                )
            if node is None:
                command: commands.Command = commands.RegisterNode(self._node(identity.node_id, request))
                check_result(await self._raft.propose_async(command))
            elif promoted or (node.raft_addr, node.addr) != (request.raft_addr, request.api_addr):
                command = commands.PromoteNode(
                    identity.node_id, request.api_addr, request.raft_addr, request.join_addr, time.time()
                )
                check_result(await self._raft.propose_async(command))
            await self._add_to_raft(request.raft_addr)
            status = self._raft.status()
            managers = manager_addrs(self._store)
        log.info("added manager %s (Raft %s) to the cluster", identity.node_id, request.raft_addr)
        return mpb.AddManagerResponse(
            cluster_id=cluster.id,
            raft_secret=self._secret,
            raft_peers=[m for m in status.members if m != request.raft_addr],
            managers=managers,
        )

    async def _add_to_raft(self, raft_addr: str) -> None:
        status = self._raft.status()
        if raft_addr in status.members:
            return  # a retried join: it is a member already
        total = len(status.members) + 1
        if (status.reachable + 1) * 2 <= total:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"adding a manager now would lose quorum: only {status.reachable} of {total - 1} managers are "
                "reachable; bring them back first",
            )
        change = asyncio.ensure_future(self._raft.change_membership("add", raft_addr, timeout=30.0))
        done, _ = await asyncio.wait({change}, timeout=_APPEND_WAIT)
        if done:
            try:
                change.result()
            except ProposalError as exc:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, f"cannot add the manager to Raft: {exc.message}") from None
        else:  # committed once the joiner runs; log the outcome then
            change.add_done_callback(_log_outcome(raft_addr))

    @staticmethod
    def _node(node_id: str, request: mpb.AddManagerRequest) -> Node:
        now = time.time()
        return Node(
            id=node_id,
            hostname=request.hostname,
            role=NodeRole.MANAGER,
            availability=Availability.ACTIVE if request.runs_tasks else Availability.DRAIN,
            status=NodeStatus.READY,
            resources=Resources(nano_cpus=request.nano_cpus, memory_bytes=request.memory_bytes),
            addr=request.api_addr,
            raft_addr=request.raft_addr,
            join_addr=request.join_addr,
            os=request.os,
            arch=request.arch,
            created_at=now,
            updated_at=now,
        )

    async def RaftStatus(self, request: mpb.RaftStatusRequest, context: object) -> mpb.RaftStatusResponse:
        status = self._raft.status()
        return mpb.RaftStatusResponse(
            node_id=self._node_id,
            raft_addr=status.self_addr,
            state=status.state,
            leader=status.leader,
            term=status.term,
            commit_index=status.commit_index,
            applied_index=status.applied_index,
            has_quorum=status.has_quorum,
            members=status.members,
            connected=status.connected,
        )


def manager_addrs(store: StateReader) -> list[str]:
    """Every manager's API address, as clients should know them."""
    with store.read() as state:
        return state.manager_addrs()


def _log_outcome(raft_addr: str) -> Callable[[asyncio.Future], None]:
    def done(change: asyncio.Future) -> None:
        if change.cancelled():
            return
        exc = change.exception()
        if exc is None:
            log.info("the Raft membership change adding %s committed", raft_addr)
        else:
            log.warning("adding %s to Raft did not commit: %s", raft_addr, exc)

    return done


# -- the joining manager's side -----------------------------------------------------------------
class MembershipError(Exception):
    """The cluster did not take this manager; str() says why, for the operator."""


async def request_membership(
    managers: list[str], credentials: tls.Credentials, request: mpb.AddManagerRequest, timeout: float = 30.0
) -> mpb.AddManagerResponse:
    """Ask the leader (found through any manager in `managers`) to add this manager to Raft.
    Retries unreachable managers and follows "the leader is at" hints until `timeout`."""
    creds = tls.channel_credentials(*credentials)
    order = list(managers)
    deadline = time.monotonic() + timeout
    last = "no manager address is known"
    attempt = 0
    while time.monotonic() < deadline:
        addr = order[attempt % len(order)]
        attempt += 1
        async with grpc.aio.secure_channel(addr, creds, options=tls.channel_options()) as channel:
            try:
                return await managers_pb2_grpc.ManagersStub(channel).AddManager(request, timeout=10.0)
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or exc.code().name
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise MembershipError(f"the manager at {addr} refused to add this manager: {details}") from None
                last = f"{addr}: {details}"
                hint = leader_from_details(details)
                if hint is not None:
                    if hint not in order:
                        order.append(hint)
                    attempt = order.index(hint)
                    continue
        await asyncio.sleep(0.5)
    raise MembershipError(f"no leader added this manager within {timeout:g}s (last answer: {last})")
