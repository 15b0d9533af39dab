"""Replicated state-machine commands, their versioned codec, and the pure `apply`.

The FSM contract (HashiCorp raft's Apply): `apply(state, command)` is deterministic, reads no
clock (every timestamp travels inside the command) and never raises; a command that cannot be
applied returns an error Result and no changes. Commands are tagged msgpack, never pickle.

One module per concept: `types` (the commands and Result), `codec`, `dispatch` (`apply`), and
the handlers by area: `cluster` (init, admin certificates, CA rotation, tokens, settings),
`nodes`, `node_keys` (WireGuard key rotation), `services`, `tasks` (plans and status reports),
`overlay` (address allocation). Callers use the names re-exported here.
"""

from __future__ import annotations

from warren.commands.codec import (
    CODEC_VERSION,
    MAX_COMMAND_BYTES,
    CodecError,
    Envelope,
    decode,
    decode_result,
    decode_results,
    encode,
    encode_result,
    oversize_message,
    split_plan,
)
from warren.commands.dispatch import apply
from warren.commands.node_keys import MAX_KEY_EPOCH, keys_due_for_rotation
from warren.commands.overlay import overlay_layout
from warren.commands.types import (
    OK,
    REVOCATION_RETENTION,
    ApplyPlan,
    Batch,
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
    RotateJoinToken,
    RotateNodeKeys,
    ScaleService,
    SetNodeStatus,
    StartCARotation,
    TaskUpdate,
    UpdateClusterSettings,
    UpdateNode,
    UpdateService,
    error,
)

__all__ = [
    "CODEC_VERSION",
    "MAX_COMMAND_BYTES",
    "MAX_KEY_EPOCH",
    "OK",
    "REVOCATION_RETENTION",
    "ApplyPlan",
    "Batch",
    "Changes",
    "CodecError",
    "Command",
    "CreateService",
    "Envelope",
    "FinishCARotation",
    "InitCluster",
    "IssueAdminCert",
    "Noop",
    "PromoteNode",
    "PublishNodeKey",
    "RecordNodeCertificate",
    "RegisterNode",
    "RemoveNode",
    "RemoveService",
    "ReportTaskStatus",
    "Result",
    "RevokeAdminCert",
    "RotateJoinToken",
    "RotateNodeKeys",
    "ScaleService",
    "SetNodeStatus",
    "StartCARotation",
    "TaskUpdate",
    "UpdateClusterSettings",
    "UpdateNode",
    "UpdateService",
    "apply",
    "decode",
    "decode_result",
    "decode_results",
    "encode",
    "encode_result",
    "error",
    "keys_due_for_rotation",
    "overlay_layout",
    "oversize_message",
    "split_plan",
]
