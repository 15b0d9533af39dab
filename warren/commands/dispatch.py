"""`apply`: the pure effect of one command on the state, dispatched to its handler."""

from __future__ import annotations

from collections.abc import Callable

from warren.commands.cluster import (
    finish_ca_rotation,
    init_cluster,
    issue_admin_cert,
    record_node_certificate,
    revoke_admin_cert,
    rotate_token,
    start_ca_rotation,
    update_cluster_settings,
)
from warren.commands.node_keys import publish_node_key, rotate_node_keys
from warren.commands.nodes import promote_node, register_node, remove_node, set_node_status, update_node
from warren.commands.services import (
    create_service,
    remove_service,
    rollback_service,
    scale_service,
    update_service,
)
from warren.commands.tasks import apply_plan, report_task_status
from warren.commands.types import (
    OK,
    ApplyPlan,
    Changes,
    Command,
    CreateService,
    FinishCARotation,
    InitCluster,
    IssueAdminCert,
    Noop,
    PromoteNode,
    PublishNodeKey,
    RecordNodeCertificate,
    RegisterNode,
    RemoveNode,
    RemoveService,
    ReportTaskStatus,
    Result,
    RevokeAdminCert,
    RollbackService,
    RotateJoinToken,
    RotateNodeKeys,
    ScaleService,
    SetNodeStatus,
    StartCARotation,
    UpdateClusterSettings,
    UpdateNode,
    UpdateService,
    error,
)
from warren.state import ClusterState


def apply(state: ClusterState, command: Command) -> tuple[Result, Changes]:
    """Compute the effect of `command` on `state` without changing it. Never raises."""
    handler = _HANDLERS.get(type(command))
    if handler is None:
        return error("invalid_argument", f"unknown command {type(command).__name__}"), []
    try:
        return handler(state, command)
    except Exception as exc:  # a bug must not wedge the log: report it as a failed command
        return error("internal", f"{type(command).__name__} failed: {exc!r}"), []


def noop(state: ClusterState, cmd: Noop) -> tuple[Result, Changes]:
    return OK, []


_HANDLERS: dict[type, Callable[[ClusterState, object], tuple[Result, Changes]]] = {
    InitCluster: init_cluster,  # type: ignore[dict-item]
    IssueAdminCert: issue_admin_cert,  # type: ignore[dict-item]
    RevokeAdminCert: revoke_admin_cert,  # type: ignore[dict-item]
    StartCARotation: start_ca_rotation,  # type: ignore[dict-item]
    RecordNodeCertificate: record_node_certificate,  # type: ignore[dict-item]
    FinishCARotation: finish_ca_rotation,  # type: ignore[dict-item]
    RotateJoinToken: rotate_token,  # type: ignore[dict-item]
    UpdateClusterSettings: update_cluster_settings,  # type: ignore[dict-item]
    RotateNodeKeys: rotate_node_keys,  # type: ignore[dict-item]
    PublishNodeKey: publish_node_key,  # type: ignore[dict-item]
    RegisterNode: register_node,  # type: ignore[dict-item]
    UpdateNode: update_node,  # type: ignore[dict-item]
    PromoteNode: promote_node,  # type: ignore[dict-item]
    SetNodeStatus: set_node_status,  # type: ignore[dict-item]
    RemoveNode: remove_node,  # type: ignore[dict-item]
    CreateService: create_service,  # type: ignore[dict-item]
    UpdateService: update_service,  # type: ignore[dict-item]
    RollbackService: rollback_service,  # type: ignore[dict-item]
    ScaleService: scale_service,  # type: ignore[dict-item]
    RemoveService: remove_service,  # type: ignore[dict-item]
    ApplyPlan: apply_plan,  # type: ignore[dict-item]
    ReportTaskStatus: report_task_status,  # type: ignore[dict-item]
    Noop: noop,  # type: ignore[dict-item]
}
