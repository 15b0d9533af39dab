"""WireGuard key rotation (ADR 18): its commands' handlers and the query of keys due for one."""

from __future__ import annotations

import msgspec

from warren.commands.types import OK, Changes, PublishNodeKey, Result, RotateNodeKeys, error
from warren.state import ClusterState, Put

# WireGuard key epochs (ADR 18) count rotations: far below what the state's encoding holds, so
# that no value a node reports can make a later rotation overflow it.
MAX_KEY_EPOCH = 2**31 - 1


def key_conflict(state: ClusterState, node_id: str, public_key: str) -> Result | None:
    """An error if another node already has `public_key`: the mesh needs one key per node."""
    other = next((n for n in state.nodes.values() if n.id != node_id and n.wg_public_key == public_key), None)
    if other is None or not public_key:
        return None
    return error(
        "already_exists",
        f"this node's WireGuard public key is already node {other.hostname}'s ({other.id[:12]}): "
        "was its data directory copied from another node?",
    )


def rotate_node_keys(state: ClusterState, cmd: RotateNodeKeys) -> tuple[Result, Changes]:
    changes: Changes = []
    for node_id in cmd.node_ids:
        node = state.nodes.get(node_id)
        if node is None:
            return error("not_found", f"node {node_id} not found"), []
        if not node.overlay or not node.wg_public_key:
            return error(
                "failed_precondition",
                f"node {node.hostname} ({node.id[:12]}) is not on the overlay: its agent runs without --wireguard",
            ), []
        if node.wg_key_desired_epoch > node.wg_key_epoch:
            continue  # under way already: one new key, not two
        if node.wg_key_epoch >= MAX_KEY_EPOCH:
            return error("failed_precondition", f"node {node.hostname} has rotated its key too often"), []
        changes.append(Put("node", msgspec.structs.replace(node, wg_key_desired_epoch=node.wg_key_epoch + 1)))
    return OK, changes


def publish_node_key(state: ClusterState, cmd: PublishNodeKey) -> tuple[Result, Changes]:
    node = state.nodes.get(cmd.node_id)
    if node is None:
        return error("not_found", f"node {cmd.node_id} not found"), []
    if cmd.epoch <= node.wg_key_epoch:
        return OK, []  # published already (a repeated heartbeat), or older than what is
    if cmd.epoch > node.wg_key_desired_epoch:
        return error("invalid_argument", f"no key rotation to epoch {cmd.epoch} was asked of node {node.id}"), []
    if any(n.wg_public_key == cmd.public_key for n in state.nodes.values()):
        return error("already_exists", "that WireGuard public key is already in use"), []
    node = msgspec.structs.replace(
        node, wg_public_key=cmd.public_key, wg_key_epoch=cmd.epoch, wg_key_published_at=cmd.at, updated_at=cmd.at
    )
    return OK, [Put("node", node)]


def keys_due_for_rotation(state: ClusterState, now: float) -> tuple[str, ...]:
    """Nodes on the overlay whose key is older than the cluster's rotation period and not being
    rotated already: the leader asks them for a new one (ADR 18). Pure: `now` is passed in."""
    period = state.cluster.wg_key_rotation_period if state.cluster else 0.0
    if period <= 0:
        return ()
    return tuple(
        sorted(
            n.id
            for n in state.nodes.values()
            if n.overlay
            and n.wg_public_key
            and n.wg_key_desired_epoch <= n.wg_key_epoch
            and now - n.wg_key_published_at >= period
        )
    )
