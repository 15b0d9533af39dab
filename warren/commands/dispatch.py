"""`apply`: the pure effect of one command on the state, dispatched to its handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from warren.commands.networks import create_network, remove_network
from warren.commands.node_keys import publish_node_key, rotate_node_keys
from warren.commands.nodes import promote_node, register_node, remove_node, set_node_status, update_node
from warren.commands.rebalance import rebalance_service
from warren.commands.registry import remove_registry_login, set_registry_login
from warren.commands.secrets import (
    create_config,
    create_secret,
    remove_config,
    remove_secret,
    set_rooted_keys,
    set_secret_keys,
)
from warren.commands.services import (
    create_service,
    promote_service,
    remove_service,
    rollback_service,
    scale_service,
    update_service,
)
from warren.commands.stacks import apply_stack, remove_stack
from warren.commands.tasks import apply_plan, report_task_status
from warren.commands.types import (
    OK,
    AnnounceLeader,
    ApplyPlan,
    ApplyStack,
    Changes,
    Command,
    CreateConfig,
    CreateNetwork,
    CreateSecret,
    CreateService,
    CreateVolume,
    FinishCARotation,
    InitCluster,
    IssueAdminCert,
    Noop,
    PromoteNode,
    PromoteService,
    PublishNodeKey,
    RebalanceService,
    RecordExec,
    RecordNodeCertificate,
    RecordNodesSilence,
    RegisterNode,
    RemoveConfig,
    RemoveNetwork,
    RemoveNode,
    RemoveRegistryLogin,
    RemoveSecret,
    RemoveService,
    RemoveStack,
    RemoveVolume,
    ReportTaskStatus,
    Result,
    RevokeAdminCert,
    RollbackService,
    RotateJoinToken,
    RotateNodeKeys,
    ScaleService,
    SetNodeStatus,
    SetRegistryLogin,
    SetRootedKeys,
    SetSecretKeys,
    StartCARotation,
    UpdateClusterSettings,
    UpdateNode,
    UpdateService,
    error,
)
from warren.commands.volumes import create_volume, remove_volume
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


# Each handler takes its own command type; `apply` looks it up by that type.
_HANDLERS: dict[type, Callable[[ClusterState, Any], tuple[Result, Changes]]] = {
    InitCluster: init_cluster,
    IssueAdminCert: issue_admin_cert,
    RevokeAdminCert: revoke_admin_cert,
    StartCARotation: start_ca_rotation,
    RecordNodeCertificate: record_node_certificate,
    FinishCARotation: finish_ca_rotation,
    RotateJoinToken: rotate_token,
    UpdateClusterSettings: update_cluster_settings,
    RotateNodeKeys: rotate_node_keys,
    PublishNodeKey: publish_node_key,
    RegisterNode: register_node,
    UpdateNode: update_node,
    PromoteNode: promote_node,
    SetNodeStatus: set_node_status,
    RemoveNode: remove_node,
    CreateService: create_service,
    UpdateService: update_service,
    RollbackService: rollback_service,
    PromoteService: promote_service,
    RebalanceService: rebalance_service,
    ScaleService: scale_service,
    RemoveService: remove_service,
    ApplyPlan: apply_plan,
    ReportTaskStatus: report_task_status,
    SetSecretKeys: set_secret_keys,
    SetRootedKeys: set_rooted_keys,
    CreateSecret: create_secret,
    RemoveSecret: remove_secret,
    CreateConfig: create_config,
    RemoveConfig: remove_config,
    SetRegistryLogin: set_registry_login,
    RemoveRegistryLogin: remove_registry_login,
    Noop: noop,
    AnnounceLeader: noop,
    RecordExec: noop,
    RecordNodesSilence: noop,
    CreateVolume: create_volume,
    RemoveVolume: remove_volume,
    ApplyStack: apply_stack,
    RemoveStack: remove_stack,
    CreateNetwork: create_network,
    RemoveNetwork: remove_network,
}
