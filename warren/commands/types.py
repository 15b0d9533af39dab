"""The replicated state machine's commands and the result of applying one (see the package)."""

from __future__ import annotations

import msgspec

from warren.model import (
    AdminCert,
    Availability,
    ClusterInfo,
    Config,
    Network,
    Node,
    NodeRole,
    NodeStatus,
    RegistryLogin,
    Secret,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateStatus,
    Volume,
)
from warren.state import Change

# How long a removed node's id stays revoked. It must outlive every certificate that can name
# the node: Warren issues node certificates for at most 365 days (the first manager's) with
# notBefore backdated 5 minutes, and never issues one for a revoked id (ADR 13).
REVOCATION_RETENTION = 400 * 24 * 3600.0


class Result(msgspec.Struct, frozen=True):
    """Outcome of one command. code is a gRPC-style name ("not_found", "already_exists",
    "failed_precondition", "invalid_argument") when ok is False."""

    ok: bool = True
    code: str = ""
    message: str = ""
    id: str = ""
    index: int = 0  # the Raft index it was applied at; set by the Raft adapter, not by apply


OK = Result()


def error(code: str, message: str) -> Result:
    return Result(ok=False, code=code, message=message)


class InitCluster(msgspec.Struct, frozen=True, tag="cluster.init"):
    cluster: ClusterInfo
    manager: Node
    admin: AdminCert | None = None  # the admin certificate `cluster init` wrote (ADR 24)


class IssueAdminCert(msgspec.Struct, frozen=True, tag="admin.issue"):
    """Record an admin certificate just signed (ADR 24): a new one, or the renewal of `cert.id`."""

    cert: AdminCert


class RevokeAdminCert(msgspec.Struct, frozen=True, tag="admin.revoke"):
    """Refuse the admin certificate `id` from now on, on every manager (ADR 24)."""

    id: str
    at: float


class StartCARotation(msgspec.Struct, frozen=True, tag="ca.rotate"):
    """A new root signs from now on; the current one stays trusted until every node holds a
    certificate from the new one (ADR 24). The key is as the adapter stores it."""

    ca_cert_pem: str
    ca_key_pem: str
    at: float


class RecordNodeCertificate(msgspec.Struct, frozen=True, tag="node.certificate"):
    """Which CA issued the certificate a node's agent calls with (or its manager serves)."""

    node_id: str
    ca: str
    manager: bool = False


class FinishCARotation(msgspec.Struct, frozen=True, tag="ca.rotate_done"):
    """Stop trusting the previous root: refused while a node still depends on it, and refused
    unless it names the rotation under way, so that a late or repeated finish of an earlier
    rotation cannot end the next one while nodes still hold certificates from its old root."""

    ca: str  # the key id of the current root, which the adapter computed
    # The ca_rotation_started_at of the rotation this finishes, read with `ca`. 0 in commands
    # encoded before it existed, which are applied as they were then (unchecked).
    started_at: float = 0.0


class RotateJoinToken(msgspec.Struct, frozen=True, tag="cluster.rotate_token"):
    role: str
    secret: str


class UpdateClusterSettings(msgspec.Struct, frozen=True, tag="cluster.update"):
    """Cluster-wide settings an operator may change after init; None keeps a value."""

    wg_key_rotation_period: float | None = None
    auto_rebalance: bool | None = None  # ADR 36
    max_starts_per_pass: int | None = None  # ADR 53; 0 = the default
    max_stops_per_pass: int | None = None
    heartbeat_period: float | None = None  # ADR 52


class RegisterNode(msgspec.Struct, frozen=True, tag="node.register"):
    """Adds a node, or refreshes what a known node reports about itself (resources, address,
    platform); operator-set availability and labels are kept."""

    node: Node


class UpdateNode(msgspec.Struct, frozen=True, tag="node.update"):
    node_id: str
    at: float
    availability: Availability | None = None
    labels_add: dict[str, str] = {}
    labels_rm: tuple[str, ...] = ()
    role: NodeRole | None = None  # the Raft membership change is the adapter's (ADR 15)
    desired_role: NodeRole | None = None  # promotion requested (ADR 15)


class PromoteNode(msgspec.Struct, frozen=True, tag="node.promote"):
    """A promoted worker's manager joined Raft: it is a manager now, at these addresses."""

    node_id: str
    addr: str
    raft_addr: str
    join_addr: str
    at: float


class RotateNodeKeys(msgspec.Struct, frozen=True, tag="node.rotate_key"):
    """Ask these nodes for a new WireGuard key pair (ADR 18): their wanted key epoch goes one
    above the published one. A node whose rotation is already under way is left as it is."""

    node_ids: tuple[str, ...]


class PublishNodeKey(msgspec.Struct, frozen=True, tag="node.publish_key"):
    """A node's agent made the key pair of a rotation: its public key becomes the node's, and
    every node's mesh switches to it (ADR 18)."""

    node_id: str
    public_key: str
    epoch: int
    at: float


class SetNodeStatus(msgspec.Struct, frozen=True, tag="node.status"):
    node_id: str
    status: NodeStatus
    message: str
    at: float


class RemoveNode(msgspec.Struct, frozen=True, tag="node.remove"):
    """Removes a node and revokes its id, so its certificate is refused from then on; its live
    tasks become orphaned so the reconciler replaces them."""

    node_id: str
    at: float


class CreateService(msgspec.Struct, frozen=True, tag="service.create"):
    service: Service
    # `--with-registry-auth`: the service's own logins, committed with it so that its first
    # tasks already pull with them (ADR 43); passwords sealed.
    logins: tuple[RegistryLogin, ...] = ()


class UpdateService(msgspec.Struct, frozen=True, tag="service.update"):
    """Replaces the spec. expected_version guards against lost updates (0 = don't check)."""

    service_id: str
    spec: ServiceSpec
    at: float
    expected_version: int = 0


class RollbackService(msgspec.Struct, frozen=True, tag="service.rollback"):
    """Return to an earlier spec (ADR 33) as a new version: `to_version` from the history, or
    the version before the current one (0). The replica count stays as it is unless
    `restore_replicas`. expected_version guards against lost updates (0 = don't check)."""

    service_id: str
    at: float
    to_version: int = 0
    restore_replicas: bool = False
    expected_version: int = 0


class PromoteService(msgspec.Struct, frozen=True, tag="service.promote"):
    """End a canary's wait (ADR 35): the rest of the tasks roll under the update settings.
    expected_version: the version whose canaries are promoted (0 = don't check)."""

    service_id: str
    at: float
    expected_version: int = 0


class RebalanceService(msgspec.Struct, frozen=True, tag="service.rebalance"):
    """Even out a replicated service's spread over its eligible nodes (ADR 36): the reconciler
    moves the fewest tasks, under the update settings. expected_version: 0 = don't check."""

    service_id: str
    at: float
    expected_version: int = 0


class ScaleService(msgspec.Struct, frozen=True, tag="service.scale"):
    service_id: str
    replicas: int
    at: float


class RemoveService(msgspec.Struct, frozen=True, tag="service.remove"):
    """Deletes the service. Tasks no node holds yet are deleted; the others are asked to shut
    down and are deleted by the reconciler once they stop."""

    service_id: str
    at: float


class SetRegistryLogin(msgspec.Struct, frozen=True, tag="registry.login"):
    """Store (or replace) a registry login (ADR 43); its password arrives sealed."""

    login: RegistryLogin


class RemoveRegistryLogin(msgspec.Struct, frozen=True, tag="registry.logout"):
    id: str


class TaskUpdate(msgspec.Struct, frozen=True):
    """A partial update of one task. Fields left as None are unchanged. A state change that
    would move the task backwards makes the whole update stale, so it is skipped."""

    id: str
    at: float
    state: TaskState | None = None
    desired_state: TaskState | None = None
    node_id: str | None = None
    message: str | None = None
    error: str | None = None
    exit_code: int | None = None
    runtime_id: str | None = None
    health: str | None = None
    draining_since: float | None = None  # the reconciler took it out of the load balancing (ADR 33)
    # Adopted into this version of its service: it already runs that version's spec (ADR 33)
    spec_version: int | None = None


class RolloutChange(msgspec.Struct, frozen=True):
    """A service's rollout moved on (ADR 33), decided for its version `version`: stale once the
    service has another. With `revert`, the failure action rolls it back to the version before."""

    service_id: str
    version: int
    status: UpdateStatus
    revert: bool = False


class ApplyPlan(msgspec.Struct, frozen=True, tag="plan.apply"):
    """One scheduling/reconciliation pass, committed as a single entry."""

    created: tuple[Task, ...] = ()
    updated: tuple[TaskUpdate, ...] = ()
    deleted: tuple[str, ...] = ()
    node_status: tuple[SetNodeStatus, ...] = ()
    rollouts: tuple[RolloutChange, ...] = ()
    # Local volumes bound to the node their first task was placed on (ADR 40): created, or a
    # created one given its node; skipped if the volume lives on a node already.
    volumes: tuple[Volume, ...] = ()


class CreateVolume(msgspec.Struct, frozen=True, tag="volume.create"):
    """A named volume (ADR 40), on `volume.node_id` or, if "", on its first task's node."""

    volume: Volume


class RemoveVolume(msgspec.Struct, frozen=True, tag="volume.remove"):
    """Deletes the volume; refused while a service mounts it or a task holds it. The agent of
    its node deletes the data once its volume list no longer names it."""

    volume_id: str
    at: float


class CreateNetwork(msgspec.Struct, frozen=True, tag="network.create"):
    """A network (#14, ADR 47): a set of services allowed to reach each other, and a DNS scope."""

    network: Network


class RemoveNetwork(msgspec.Struct, frozen=True, tag="network.remove"):
    """Deletes the network; refused while a service names it or a live task is on it."""

    network_id: str
    at: float


class ReportTaskStatus(msgspec.Struct, frozen=True, tag="task.report"):
    """Status reported by the agent of `node_id`; it may only touch its own tasks."""

    node_id: str
    updates: tuple[TaskUpdate, ...]


class SetSecretKeys(msgspec.Struct, frozen=True, tag="secret.keys"):
    """The cluster's key pair for secrets (ADR 38), as wrapped keys; kept only if none is set."""

    kek_wrapped: str
    dek_wrapped: str


class SetRootedKeys(msgspec.Struct, frozen=True, tag="cluster.rooted_keys"):
    """Autolock on, off or rotated (ADR 44): the KEK and the CA key under another root. Computed
    from `from_ca_key_pem`, so refused if the cluster's CA key changed meanwhile."""

    from_ca_key_pem: str
    kek_wrapped: str
    dek_wrapped: str
    ca_key_pem: str


class CreateSecret(msgspec.Struct, frozen=True, tag="secret.create"):
    """A secret, sealed with the data key whose wrapped form is `dek_wrapped` (refused if the
    cluster's is another: the value could not be opened)."""

    secret: Secret
    dek_wrapped: str


class RemoveSecret(msgspec.Struct, frozen=True, tag="secret.remove"):
    secret_id: str
    at: float = 0.0  # the time of its event (ADR 45); 0 in commands written before events


class CreateConfig(msgspec.Struct, frozen=True, tag="config.create"):
    config: Config


class RemoveConfig(msgspec.Struct, frozen=True, tag="config.remove"):
    config_id: str
    at: float = 0.0  # the time of its event (ADR 45); 0 in commands written before events


class ApplyStack(msgspec.Struct, frozen=True, tag="stack.apply"):
    """Deploy a stack (#14, ADR 49) in one entry: every object it declares created, updated or
    left as it is, and (with `prune`) the ones it owns and no longer declares removed; all or
    nothing. New objects carry the ids they get; secrets arrive sealed with `dek_wrapped`. The
    handler labels everything with the stack's name. External objects must exist."""

    stack: str
    at: float
    services: tuple[Service, ...] = ()
    secrets: tuple[Secret, ...] = ()
    dek_wrapped: str = ""
    configs: tuple[Config, ...] = ()
    volumes: tuple[Volume, ...] = ()
    networks: tuple[Network, ...] = ()
    external_secrets: tuple[str, ...] = ()
    external_configs: tuple[str, ...] = ()
    external_networks: tuple[str, ...] = ()
    external_volumes: tuple[str, ...] = ()
    prune: bool = False


class RemoveStack(msgspec.Struct, frozen=True, tag="stack.remove"):
    """Remove what the stack created (#14): its services, then its secrets, configs, networks
    and the volumes no task holds; external objects carry no label and stay."""

    stack: str
    at: float


class Noop(msgspec.Struct, frozen=True, tag="noop"):
    """Written to confirm leadership (a linearizable read barrier)."""


class AnnounceLeader(msgspec.Struct, frozen=True, tag="cluster.leader"):
    """A new leader says so, once per term (ADR 45): changes nothing, but every manager derives
    the same "leader" event from it at the same index."""

    node_id: str
    raft_addr: str
    term: int
    at: float


class RecordExec(msgspec.Struct, frozen=True, tag="task.exec"):
    """An admin ran a command in a task (#16, ADR 59): changes nothing, but every manager derives
    the same audit event ("task exec": who, which task, which command) from it."""

    task_id: str
    admin: str  # the admin certificate's id (its CN); the event adds its name when the state has one
    command: tuple[str, ...]
    tty: bool
    at: float


class RecordNodesSilence(msgspec.Struct, frozen=True, tag="cluster.silence"):
    """The leader's down check holds back a mass silence (`held`), or no longer does (ADR 69):
    changes nothing, but every manager derives the same "nodes_unreachable" or
    "nodes_reachable" event from it."""

    node_id: str  # the leader
    silent: int  # nodes that missed two heartbeats
    counted: int  # of the ready nodes the down check weighs
    held: bool
    at: float


Command = (
    InitCluster
    | IssueAdminCert
    | RevokeAdminCert
    | StartCARotation
    | RecordNodeCertificate
    | FinishCARotation
    | RotateJoinToken
    | UpdateClusterSettings
    | RegisterNode
    | UpdateNode
    | PromoteNode
    | RotateNodeKeys
    | PublishNodeKey
    | SetNodeStatus
    | RemoveNode
    | CreateService
    | UpdateService
    | RollbackService
    | PromoteService
    | RebalanceService
    | ScaleService
    | RemoveService
    | ApplyPlan
    | ReportTaskStatus
    | SetSecretKeys
    | SetRootedKeys
    | CreateSecret
    | RemoveSecret
    | CreateConfig
    | RemoveConfig
    | SetRegistryLogin
    | RemoveRegistryLogin
    | Noop
    | AnnounceLeader
    | RecordExec
    | RecordNodesSilence
    | CreateVolume
    | RemoveVolume
    | ApplyStack
    | RemoveStack
    | CreateNetwork
    | RemoveNetwork
)


class Batch(msgspec.Struct, frozen=True, tag="batch"):
    """Commands proposed together as one Raft entry (group commit). They are applied in order,
    each seeing the effects of those before it, and each has its own result."""

    commands: tuple[Command, ...]


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    version: int
    command: Command | Batch


# The changes a command makes to the state, in order.
Changes = list[Change]
