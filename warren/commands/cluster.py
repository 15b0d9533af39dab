"""Handlers of cluster-wide commands: init, admin certificates, CA rotation, join tokens, settings."""

from __future__ import annotations

import msgspec

from warren import carotation
from warren.commands.overlay import overlay_layout, with_overlay_subnet
from warren.commands.types import (
    OK,
    REVOCATION_RETENTION,
    Changes,
    FinishCARotation,
    InitCluster,
    IssueAdminCert,
    RecordNodeCertificate,
    Result,
    RevokeAdminCert,
    RotateJoinToken,
    StartCARotation,
    UpdateClusterSettings,
    error,
)
from warren.model import RevokedNode
from warren.network import ipam
from warren.state import ClusterState, Delete, Put
from warren.text import shown
from warren.validate import ValidationError, check_heartbeat_period


def init_cluster(state: ClusterState, cmd: InitCluster) -> tuple[Result, Changes]:
    if state.cluster is not None:
        return error("already_exists", f"cluster {state.cluster.id} is already initialised"), []
    try:
        overlay_layout(cmd.cluster)
    except ipam.IpamError as exc:
        return error("invalid_argument", str(exc)), []
    manager = with_overlay_subnet(state, cmd.cluster, cmd.manager)
    if isinstance(manager, Result):
        return manager, []
    changes: Changes = [Put("cluster", cmd.cluster), Put("node", manager)]
    if cmd.admin is not None:
        changes.append(Put("admin", cmd.admin))
    return Result(id=cmd.cluster.id), changes


def issue_admin_cert(state: ClusterState, cmd: IssueAdminCert) -> tuple[Result, Changes]:
    cert = cmd.cert
    if state.is_revoked(cert.id) or cert.id in state.nodes:
        return error("failed_precondition", f"id {cert.id} is not available for an admin certificate"), []
    old = state.admin_certs.get(cert.id)
    if old is not None and (old.revoked_at or old.name != cert.name):
        return error("failed_precondition", f"admin certificate {old.name} was revoked"), []
    same_name = state.admin_cert_by_name(cert.name)
    if same_name is not None and same_name.id != cert.id:
        return error("already_exists", f"an admin certificate named {cert.name} already exists"), []
    if old is not None:  # a renewal keeps when it was first created
        cert = msgspec.structs.replace(cert, created_at=old.created_at)
    return Result(id=cert.id), [Put("admin", cert)]


def revoke_admin_cert(state: ClusterState, cmd: RevokeAdminCert) -> tuple[Result, Changes]:
    cert = state.admin_certs.get(cmd.id)
    if cert is None:
        return error("not_found", f"admin certificate {cmd.id} not found"), []
    if cert.revoked_at:
        return error("failed_precondition", f"admin certificate {cert.name} is already revoked"), []
    changes: Changes = [
        Put("admin", msgspec.structs.replace(cert, revoked_at=cmd.at)),
        Put("revoked", RevokedNode(cert.id, cmd.at)),
    ]
    # Like node revocations, the entry can go once no certificate naming it can be valid.
    expired = [a for a in state.admin_certs.values() if a.revoked_at and a.not_after < cmd.at - REVOCATION_RETENTION]
    changes += [Delete("admin", a.id) for a in expired]
    return Result(id=cert.id), changes


def start_ca_rotation(state: ClusterState, cmd: StartCARotation) -> tuple[Result, Changes]:
    cluster = state.cluster
    if cluster is None:
        return error("failed_precondition", "cluster is not initialised"), []
    if cluster.ca_previous_cert_pem:
        return error("failed_precondition", "a CA rotation is already under way: see `warren cluster ca`"), []
    if not cmd.ca_cert_pem or not cmd.ca_key_pem:
        return error("invalid_argument", "the new CA certificate and key are required"), []
    rotated = msgspec.structs.replace(
        cluster,
        ca_cert_pem=cmd.ca_cert_pem,
        ca_key_pem=cmd.ca_key_pem,
        ca_previous_cert_pem=cluster.ca_cert_pem,
        ca_rotation_started_at=cmd.at,
    )
    return OK, [Put("cluster", rotated)]


def record_node_certificate(state: ClusterState, cmd: RecordNodeCertificate) -> tuple[Result, Changes]:
    node = state.nodes.get(cmd.node_id)
    if node is None:
        return error("not_found", f"node {cmd.node_id} not found"), []
    if cmd.manager:
        updated = msgspec.structs.replace(node, manager_cert_ca=cmd.ca)
    else:
        updated = msgspec.structs.replace(node, agent_cert_ca=cmd.ca)
    return Result(id=node.id), [Put("node", updated)] if updated != node else []


def finish_ca_rotation(state: ClusterState, cmd: FinishCARotation) -> tuple[Result, Changes]:
    cluster = state.cluster
    if cluster is None or not cluster.ca_previous_cert_pem:
        return error("failed_precondition", "no CA rotation is under way"), []
    if cmd.started_at and cmd.started_at != cluster.ca_rotation_started_at:
        return error("failed_precondition", "this finishes an earlier CA rotation, not the one under way"), []
    left = carotation.pending(state, cmd.ca)
    if left:
        return error("failed_precondition", f"{len(left)} node(s) still depend on the previous CA"), []
    return OK, [Put("cluster", msgspec.structs.replace(cluster, ca_previous_cert_pem="", ca_rotation_started_at=0.0))]


def rotate_token(state: ClusterState, cmd: RotateJoinToken) -> tuple[Result, Changes]:
    if state.cluster is None:
        return error("failed_precondition", "cluster is not initialised"), []
    if cmd.role == "worker":
        cluster = msgspec.structs.replace(state.cluster, worker_token_secret=cmd.secret)
    elif cmd.role == "manager":
        cluster = msgspec.structs.replace(state.cluster, manager_token_secret=cmd.secret)
    else:
        return error("invalid_argument", f"unknown role {shown(cmd.role)}"), []
    return OK, [Put("cluster", cluster)]


MAX_PER_PASS = 100_000  # a pass's cap (ADR 53); one pass's plan must still fit a few commands


def update_cluster_settings(state: ClusterState, cmd: UpdateClusterSettings) -> tuple[Result, Changes]:
    if state.cluster is None:
        return error("failed_precondition", "cluster is not initialised"), []
    cluster = state.cluster
    if cmd.wg_key_rotation_period is not None:
        if not 0 <= cmd.wg_key_rotation_period < float("inf"):
            return error("invalid_argument", "the key rotation period must be 0 (off) or positive"), []
        cluster = msgspec.structs.replace(cluster, wg_key_rotation_period=cmd.wg_key_rotation_period)
    if cmd.auto_rebalance is not None:
        cluster = msgspec.structs.replace(cluster, auto_rebalance=cmd.auto_rebalance)
    for cap in ("max_starts_per_pass", "max_stops_per_pass"):  # ADR 53
        value = getattr(cmd, cap)
        if value is None:
            continue
        if not 0 <= value <= MAX_PER_PASS:
            return error("invalid_argument", f"{cap.replace('_', ' ')} must be 0 (the default) to {MAX_PER_PASS}"), []
        cluster = msgspec.structs.replace(cluster, **{cap: value})
    if cmd.heartbeat_period is not None:
        try:
            check_heartbeat_period(cmd.heartbeat_period)
        except ValidationError as exc:
            return error("invalid_argument", str(exc)), []
        cluster = msgspec.structs.replace(cluster, heartbeat_period=cmd.heartbeat_period)
    return OK, [Put("cluster", cluster)] if cluster != state.cluster else []
