"""Handlers of node commands: register, update, promote, status, remove."""

from __future__ import annotations

import msgspec

from warren.commands.node_keys import MAX_KEY_EPOCH, key_conflict
from warren.commands.overlay import with_overlay_subnet
from warren.commands.types import (
    REVOCATION_RETENTION,
    Changes,
    PromoteNode,
    RegisterNode,
    RemoveNode,
    Result,
    SetNodeStatus,
    UpdateNode,
    error,
)
from warren.model import NodeRole, RevokedNode, TaskState
from warren.state import ClusterState, Delete, Put


def register_node(state: ClusterState, cmd: RegisterNode) -> tuple[Result, Changes]:
    if state.is_revoked(cmd.node.id):
        return error("permission_denied", "this node was removed from the cluster"), []
    if not 0 <= cmd.node.wg_key_epoch <= MAX_KEY_EPOCH:
        return error("invalid_argument", f"a WireGuard key epoch is at most {MAX_KEY_EPOCH}"), []
    conflict = key_conflict(state, cmd.node.id, cmd.node.wg_public_key)
    if conflict is not None:
        return conflict, []
    old = state.nodes.get(cmd.node.id)
    if old is None:
        new = msgspec.structs.replace(
            cmd.node,
            wg_key_desired_epoch=cmd.node.wg_key_epoch,
            wg_key_published_at=cmd.node.updated_at if cmd.node.wg_public_key else 0.0,
        )
        if state.cluster is None:
            return Result(id=new.id), [Put("node", new)]
        node = with_overlay_subnet(state, state.cluster, msgspec.structs.replace(new, overlay_subnet=""))
        if isinstance(node, Result):
            return node, []
        return Result(id=node.id), [Put("node", node)]
    node = msgspec.structs.replace(
        old,
        hostname=cmd.node.hostname,
        resources=cmd.node.resources,
        # A manager's addr is its API address, which its clients and agents dial; the agent
        # embedded in a manager must not replace it with the agent's own address.
        addr=old.addr if old.role == NodeRole.MANAGER else cmd.node.addr,
        join_addr=cmd.node.join_addr or old.join_addr,
        os=cmd.node.os,
        arch=cmd.node.arch,
        status=cmd.node.status,
        wg_endpoint=cmd.node.wg_endpoint or old.wg_endpoint,
        overlay=cmd.node.overlay,
        agent_cert_ca=cmd.node.agent_cert_ca or old.agent_cert_ca,
        metrics_addr=cmd.node.metrics_addr or old.metrics_addr,
        manager_metrics_addr=cmd.node.manager_metrics_addr or old.manager_metrics_addr,
        updated_at=cmd.node.updated_at,
    )
    # An agent restarted in the middle of a rotation still describes its previous key (ADR 18):
    # only a key of the published epoch or a newer one replaces the published key, and never
    # one of an epoch nobody asked for.
    wanted = max(old.wg_key_desired_epoch, old.wg_key_epoch)
    if cmd.node.wg_public_key and old.wg_key_epoch <= cmd.node.wg_key_epoch <= wanted:
        if cmd.node.wg_public_key != old.wg_public_key:
            node = msgspec.structs.replace(node, wg_key_published_at=cmd.node.updated_at)
        node = msgspec.structs.replace(
            node,
            wg_public_key=cmd.node.wg_public_key,
            wg_key_epoch=cmd.node.wg_key_epoch,
            wg_key_desired_epoch=max(old.wg_key_desired_epoch, cmd.node.wg_key_epoch),
        )
    if state.cluster is not None:  # a node from before the overlay: give it a subnet now
        with_subnet = with_overlay_subnet(state, state.cluster, node)
        if isinstance(with_subnet, Result):
            return with_subnet, []
        node = with_subnet
    return Result(id=node.id), [Put("node", node)]


def update_node(state: ClusterState, cmd: UpdateNode) -> tuple[Result, Changes]:
    node = state.nodes.get(cmd.node_id)
    if node is None:
        return error("not_found", f"node {cmd.node_id} not found"), []
    removed = frozenset(cmd.labels_rm)  # a set: this runs on the thread that applies the log
    labels = {k: v for k, v in node.labels.items() if k not in removed}
    labels.update(cmd.labels_add)
    role = cmd.role or node.role
    desired = cmd.desired_role or node.desired_role
    node = msgspec.structs.replace(
        node,
        availability=cmd.availability or node.availability,
        labels=labels,
        role=role,
        desired_role=None if desired == role else desired,
        updated_at=cmd.at,
    )
    return Result(id=node.id), [Put("node", node)]


def promote_node(state: ClusterState, cmd: PromoteNode) -> tuple[Result, Changes]:
    node = state.nodes.get(cmd.node_id)
    if node is None:
        return error("not_found", f"node {cmd.node_id} not found"), []
    if node.role != NodeRole.MANAGER and node.desired_role != NodeRole.MANAGER:
        return error("failed_precondition", f"node {node.hostname} was not promoted"), []
    promoted = msgspec.structs.replace(
        node,
        role=NodeRole.MANAGER,
        desired_role=None,
        addr=cmd.addr,
        raft_addr=cmd.raft_addr,
        join_addr=cmd.join_addr,
        updated_at=cmd.at,
    )
    return Result(id=node.id), [Put("node", promoted)]


def node_status_change(state: ClusterState, cmd: SetNodeStatus) -> Changes:
    node = state.nodes.get(cmd.node_id)
    if node is None or (node.status == cmd.status and node.status_message == cmd.message):
        return []
    return [
        Put("node", msgspec.structs.replace(node, status=cmd.status, status_message=cmd.message, updated_at=cmd.at))
    ]


def set_node_status(state: ClusterState, cmd: SetNodeStatus) -> tuple[Result, Changes]:
    if cmd.node_id not in state.nodes:
        return error("not_found", f"node {cmd.node_id} not found"), []
    return Result(id=cmd.node_id), node_status_change(state, cmd)


def remove_node(state: ClusterState, cmd: RemoveNode) -> tuple[Result, Changes]:
    if cmd.node_id not in state.nodes:
        return error("not_found", f"node {cmd.node_id} not found"), []
    changes: Changes = [Delete("node", cmd.node_id), Put("revoked", RevokedNode(cmd.node_id, cmd.at))]
    changes += [Delete("revoked", old.id) for old in state.revoked.values() if old.at < cmd.at - REVOCATION_RETENTION]
    for task in state.node_tasks(cmd.node_id):
        if not task.state.terminal:
            changes.append(
                Put(
                    "task",
                    msgspec.structs.replace(
                        task,
                        state=TaskState.ORPHANED,
                        desired_state=max(task.desired_state, TaskState.SHUTDOWN),
                        message="node removed",
                        updated_at=cmd.at,
                    ),
                )
            )
    return Result(id=cmd.node_id), changes
