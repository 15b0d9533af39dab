"""The Control API's nodes: list, inspect, update (availability, labels, promotion and
demotion, ADR 15), remove, and WireGuard key rotation (ADR 18)."""

from __future__ import annotations

import asyncio
import enum
import time
from typing import TYPE_CHECKING, TypeVar

import grpc

from warren import commands
from warren.api import convert, names
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.manager.peerstatus import PeerStatus
from warren.manager.ports import Consensus, StateReader
from warren.manager.server import ApiError, invalid, not_leader, page_reply
from warren.model import Availability, Node, NodeRole, NodeStatus
from warren.state import ClusterState
from warren.text import shown
from warren.validate import MAX_ITEMS, RESERVED_PREFIX, ValidationError, check_label_key, check_labels

NOT_FOUND = grpc.StatusCode.NOT_FOUND
E = TypeVar("E", bound=enum.Enum)


# The order of the paged node list (ADR 51): unique, so a page token can name a place.
def _node_order(n: Node) -> tuple[str, str]:
    return (n.hostname, n.id)


def resolve_node(state: ClusterState, ref: str) -> Node:
    """A node by id, hostname, or unique id prefix."""
    if not ref:
        raise invalid("a node id or hostname is required")
    node = state.nodes.get(ref)
    if node is not None:
        return node
    by_name = [n for n in state.nodes.values() if n.hostname == ref]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise invalid(f"hostname {shown(ref)} is ambiguous ({len(by_name)} nodes); use the node id")
    matches = [n for n in state.nodes.values() if n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise invalid(f"node id prefix {shown(ref)} is ambiguous ({len(matches)} nodes)")
    raise ApiError(NOT_FOUND, f"node {shown(ref)} not found")


def _choice(kind: type[E], value: str, field: str) -> E | None:
    """`value` as a member of the enum `kind`, None if empty; INVALID_ARGUMENT otherwise."""
    if not value:
        return None
    try:
        return names.enum_member(kind, value, field)
    except names.ConversionError as exc:
        raise invalid(str(exc)) from None


def _check_node_labels(node: Node, add: dict[str, str], remove: tuple[str, ...]) -> None:
    """Labels an operator sets on a node are checked like a service's. A label the node already
    has can always be removed, even one stored before these checks existed."""
    try:
        check_labels("node label", add)
        reserved = next((key for key in remove if key.startswith(RESERVED_PREFIX)), None)
        if reserved is not None:
            raise ValidationError(f"node label keys starting with {RESERVED_PREFIX!r} are reserved ({shown(reserved)})")
        unknown = [key for key in remove if key not in node.labels]
        if len(unknown) > MAX_ITEMS:
            raise ValidationError(f"too many node labels to remove ({len(unknown)}, at most {MAX_ITEMS})")
        for key in unknown:
            check_label_key("node label", key)
    except ValidationError as exc:
        raise invalid(str(exc)) from None
    left = len(node.labels.keys() - frozenset(remove) | add.keys())
    if add and left > MAX_ITEMS:
        raise invalid(f"a node has at most {MAX_ITEMS} labels (this update would leave {left})")


class NodesControl:
    """Nodes, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _raft: Consensus
    _peers: PeerStatus
    _timeout: float

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

    async def ListNodes(self, request: cpb.ListNodesRequest, context: object) -> cpb.ListNodesResponse:
        leader = self._raft.status().leader
        with self._store.read() as state:
            nodes = [
                n
                for n in state.nodes.values()
                if (not request.role or n.role.value == request.role)
                and (not request.status or n.status.value == request.status)
            ]
        reply = cpb.ListNodesResponse()
        reply.next_page_token = page_reply(
            "nodes", nodes, _node_order, (str, str), request,
            lambda n: reply.nodes.append(convert.node_to_pb(n, leader=bool(leader) and n.raft_addr == leader)),
            reply.nodes,
        )  # fmt: skip
        return reply

    async def GetNode(self, request: cpb.GetNodeRequest, context: object) -> pb.Node:
        leader = self._raft.status().leader
        with self._store.read() as state:
            node = resolve_node(state, request.node)
        return convert.node_to_pb(node, leader=bool(leader) and node.raft_addr == leader)

    async def UpdateNode(self, request: cpb.UpdateNodeRequest, context: object) -> pb.Node:
        availability = _choice(Availability, request.availability, "availability")
        labels_add = dict(request.labels_add)
        labels_rm = tuple(dict.fromkeys(request.labels_rm))  # once each
        role = _choice(NodeRole, request.role, "role")
        with self._store.read() as state:
            node = resolve_node(state, request.node)
        _check_node_labels(node, labels_add, labels_rm)
        if role == NodeRole.WORKER:
            await self._demote(node)
        elif role == NodeRole.MANAGER and node.role != NodeRole.MANAGER:
            self._check_promotable(node)
            await self._propose(commands.UpdateNode(node.id, time.time(), desired_role=NodeRole.MANAGER))
        await self._propose(commands.UpdateNode(node.id, time.time(), availability, labels_add, labels_rm))
        with self._store.read() as state:
            return convert.node_to_pb(state.nodes[node.id])

    def _check_promotable(self, node: Node) -> None:
        """A worker can become a manager if its agent is connected (it starts the manager) and
        the cluster keeps quorum while the new member catches up."""
        if node.status != NodeStatus.READY:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {node.hostname} is {node.status.value}: its agent must be connected to start a manager",
            )
        status = self._raft.status()
        total = len(status.members) + 1
        if (status.reachable + 1) * 2 <= total:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"promoting {node.hostname} now would lose quorum: only {status.reachable} of "
                f"{total - 1} managers are reachable",
            )

    async def _demote(self, node: Node) -> None:
        """Make a manager a worker: its role in the state first (so that it learns it was
        demoted while it still receives the log), then its removal from Raft (ADR 15)."""
        status = self._raft.status()
        voter = bool(node.raft_addr) and node.raft_addr in status.members
        if node.role != NodeRole.MANAGER and not voter:
            return  # demoted already
        with self._store.read() as state:
            managers = sum(1 for n in state.nodes.values() if n.role == NodeRole.MANAGER)
        if node.role == NodeRole.MANAGER and managers <= 1:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"node {node.hostname} is the last manager")
        if voter:
            remaining = len(status.members) - 1
            target_up = node.raft_addr == status.self_addr or status.peers.get(node.raft_addr, False)
            reachable = status.reachable - (1 if target_up else 0)
            if reachable * 2 <= remaining:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"demoting {node.hostname} would lose quorum: {reachable} of the {remaining} remaining managers "
                    "are reachable",
                )
            if node.raft_addr == status.leader:
                if not self._raft.is_leader:
                    raise not_leader(self._store, self._raft, "it must hand over leadership before its demotion")
                await self._raft.transfer_leadership()
        if node.role == NodeRole.MANAGER:
            result = await self._propose(commands.UpdateNode(node.id, time.time(), role=NodeRole.WORKER))
            if voter:
                await self._until_applied(node, result.index)
        if voter:
            await self._raft.change_membership("remove", node.raft_addr, timeout=self._timeout)

    async def RemoveNode(self, request: cpb.RemoveNodeRequest, context: object) -> cpb.RemoveNodeResponse:
        with self._store.read() as state:
            admin = state.admin_certs.get(request.node) or state.admin_cert_by_name(request.node)
            if admin is not None and request.node not in state.nodes:
                raise ApiError(
                    NOT_FOUND,
                    f"{request.node} is the admin certificate {admin.name}, not a node: "
                    f"revoke it with `warren cluster admin-cert revoke {admin.name}`",
                )
            node = resolve_node(state, request.node)
        if node.role == NodeRole.MANAGER:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {node.hostname} is a manager; demote it before removing it",
            )
        if node.status == NodeStatus.READY and not request.force:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {node.hostname} is ready; drain and stop it first, or use --force",
            )
        await self._propose(commands.RemoveNode(node.id, time.time()))
        return cpb.RemoveNodeResponse(id=node.id)

    async def RotateNodeKey(self, request: cpb.RotateNodeKeyRequest, context: object) -> pb.Node:
        """Ask a node for a new WireGuard key (ADR 18); the answer shows the rotation under way
        (`wg_key_desired_epoch` above `wg_key_epoch`) until the node has published its new key."""
        with self._store.read() as state:
            node = resolve_node(state, request.node)
        await self._propose(commands.RotateNodeKeys((node.id,)))
        with self._store.read() as state:
            rotating = state.nodes.get(node.id)
        if rotating is None:  # removed meanwhile
            raise ApiError(NOT_FOUND, f"node {request.node} was removed")
        return convert.node_to_pb(rotating)

    async def _until_applied(self, node: Node, index: int, timeout: float = 5.0) -> None:
        """Wait until `node` has applied entry `index` (it stops receiving the log once removed
        from Raft, so it must see its demotion first). Gives up quietly if it does not answer:
        a manager that is down learns nothing either way."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            view = await self._peers.view(node, self._raft.status())
            if view.error or view.applied_index >= index:
                return
            await asyncio.sleep(0.05)
