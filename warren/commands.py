"""Replicated state-machine commands, their versioned codec, and the pure `apply`.

The FSM contract (HashiCorp raft's Apply): `apply(state, command)` is deterministic, reads no
clock (every timestamp travels inside the command) and never raises; a command that cannot be
applied returns an error Result and no changes. Commands are tagged msgpack, never pickle.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import msgspec

from warren import carotation
from warren.model import (
    AdminCert,
    Availability,
    ClusterInfo,
    Node,
    NodeRole,
    NodeStatus,
    Resources,
    RevokedNode,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    can_transition,
)
from warren.network import ipam
from warren.scheduler import fits, reserved_by_node
from warren.state import Change, ClusterState, Delete, Put
from warren.text import shown
from warren.validate import ValidationError, check_ports_free

CODEC_VERSION = 1

# How long a removed node's id stays revoked. It must outlive every certificate that can name
# the node: Warren issues node certificates for at most 365 days (the first manager's) with
# notBefore backdated 5 minutes, and never issues one for a revoked id (ADR 13).
REVOCATION_RETENTION = 400 * 24 * 3600.0
# WireGuard key epochs (ADR 18) count rotations: far below what the state's encoding holds, so
# that no value a node reports can make a later rotation overflow it.
MAX_KEY_EPOCH = 2**31 - 1
# The largest encoded command the Raft adapter proposes. Every manager applies each entry on the
# one thread that applies the log, and ships it to every follower: a bigger one stalls all writes.
MAX_COMMAND_BYTES = 1 << 20


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


class UpdateService(msgspec.Struct, frozen=True, tag="service.update"):
    """Replaces the spec. expected_version guards against lost updates (0 = don't check)."""

    service_id: str
    spec: ServiceSpec
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


class ApplyPlan(msgspec.Struct, frozen=True, tag="plan.apply"):
    """One scheduling/reconciliation pass, committed as a single entry."""

    created: tuple[Task, ...] = ()
    updated: tuple[TaskUpdate, ...] = ()
    deleted: tuple[str, ...] = ()
    node_status: tuple[SetNodeStatus, ...] = ()


class ReportTaskStatus(msgspec.Struct, frozen=True, tag="task.report"):
    """Status reported by the agent of `node_id`; it may only touch its own tasks."""

    node_id: str
    updates: tuple[TaskUpdate, ...]


class Noop(msgspec.Struct, frozen=True, tag="noop"):
    """Written to confirm leadership (a linearizable read barrier)."""


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
    | ScaleService
    | RemoveService
    | ApplyPlan
    | ReportTaskStatus
    | Noop
)


class Batch(msgspec.Struct, frozen=True, tag="batch"):
    """Commands proposed together as one Raft entry (group commit). They are applied in order,
    each seeing the effects of those before it, and each has its own result."""

    commands: tuple[Command, ...]


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    version: int
    command: Command | Batch


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_result_decoder = msgspec.msgpack.Decoder(Result)
_results_decoder = msgspec.msgpack.Decoder(list[Result])


class CodecError(ValueError):
    """The bytes are not a command this version understands."""


def encode(command: Command | Batch) -> bytes:
    return _encoder.encode(Envelope(CODEC_VERSION, command))


def oversize_message(command: Command | Batch, size: int | None = None) -> str | None:
    """Why `command` is too big to propose, or None if it is not (MAX_COMMAND_BYTES encoded).
    `size` is its encoded size, when the caller has it already."""
    size = len(encode(command)) if size is None else size
    if size <= MAX_COMMAND_BYTES:
        return None
    return (
        f"the {type(command).__name__} request is too large: {size} bytes encoded, "
        f"at most {MAX_COMMAND_BYTES} (fewer or shorter labels, env entries or arguments)"
    )


def split_plan(plan: ApplyPlan, max_bytes: int = MAX_COMMAND_BYTES) -> list[ApplyPlan]:
    """`plan` as consecutive plans that each encode to at most `max_bytes` (one if it does): a
    pass over a big service must not become a command too large to propose. Stops (updates
    and deletions) go before starts, so that a start finds the slot its predecessor freed; a
    start that still finds it taken is skipped at apply time and redone by the next pass."""
    if len(encode(plan)) <= max_bytes:
        return [plan]
    budget = max_bytes - len(encode(ApplyPlan()))
    parts: list[ApplyPlan] = []
    fields: dict[str, list[Any]] = {"node_status": [], "deleted": [], "updated": [], "created": []}
    used = 0

    def flush() -> None:
        nonlocal used
        if any(fields.values()):
            parts.append(ApplyPlan(**{name: tuple(items) for name, items in fields.items()}))
            for items in fields.values():
                items.clear()
        used = 0

    for name in ("node_status", "deleted", "updated", "created"):
        for item in getattr(plan, name):
            size = len(_encoder.encode(item)) + 8  # the item plus its array header share
            if used + size > budget:
                flush()
            fields[name].append(item)
            used += size
    flush()
    return parts


def decode(blob: bytes) -> Command | Batch:
    try:
        envelope = _decoder.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"undecodable command: {exc}") from exc
    if envelope.version > CODEC_VERSION:
        raise CodecError(f"command codec version {envelope.version} is newer than {CODEC_VERSION}")
    return envelope.command


def encode_result(result: Result | list[Result]) -> bytes:
    return _encoder.encode(result)


def decode_results(blob: bytes) -> list[Result]:
    """The results of a Batch, in its order."""
    return _results_decoder.decode(blob)


def decode_result(blob: bytes) -> Result:
    return _result_decoder.decode(blob)


# -- apply -------------------------------------------------------------------------------------

Changes = list[Change]


def apply(state: ClusterState, command: Command) -> tuple[Result, Changes]:
    """Compute the effect of `command` on `state` without changing it. Never raises."""
    handler = _HANDLERS.get(type(command))
    if handler is None:
        return error("invalid_argument", f"unknown command {type(command).__name__}"), []
    try:
        return handler(state, command)
    except Exception as exc:  # a bug must not wedge the log: report it as a failed command
        return error("internal", f"{type(command).__name__} failed: {exc!r}"), []


def overlay_layout(cluster: ClusterInfo) -> ipam.Layout:
    """The cluster's overlay address plan; raises ipam.IpamError if it is not a valid one."""
    return ipam.make_layout(
        cluster.overlay_range or ipam.DEFAULT_OVERLAY,
        cluster.node_subnet_prefixlen or ipam.DEFAULT_NODE_PREFIXLEN,
        cluster.vip_range or ipam.DEFAULT_VIP_RANGE,
    )


def _with_overlay_subnet(state: ClusterState, cluster: ClusterInfo, node: Node) -> Node | Result:
    """`node` with a subnet of the overlay (the lowest free one), or the error why it has none."""
    if node.overlay_subnet:
        return node
    try:
        layout = overlay_layout(cluster)
        current = {
            n.id: ipaddress.IPv4Network(n.overlay_subnet)
            for n in state.nodes.values()
            if n.overlay_subnet and n.id != node.id
        }
        subnet = ipam.allocate_node_subnet(layout, current, node.id)[node.id]
    except ipam.ExhaustedError as exc:
        return error("resource_exhausted", f"cannot add node {node.hostname}: {exc}")
    except (ipam.IpamError, ValueError) as exc:
        return error("internal", f"the overlay address plan is unusable: {exc}")
    return msgspec.structs.replace(node, overlay_subnet=str(subnet))


def _init_cluster(state: ClusterState, cmd: InitCluster) -> tuple[Result, Changes]:
    if state.cluster is not None:
        return error("already_exists", f"cluster {state.cluster.id} is already initialised"), []
    try:
        overlay_layout(cmd.cluster)
    except ipam.IpamError as exc:
        return error("invalid_argument", str(exc)), []
    manager = _with_overlay_subnet(state, cmd.cluster, cmd.manager)
    if isinstance(manager, Result):
        return manager, []
    changes: Changes = [Put("cluster", cmd.cluster), Put("node", manager)]
    if cmd.admin is not None:
        changes.append(Put("admin", cmd.admin))
    return Result(id=cmd.cluster.id), changes


def _issue_admin_cert(state: ClusterState, cmd: IssueAdminCert) -> tuple[Result, Changes]:
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


def _revoke_admin_cert(state: ClusterState, cmd: RevokeAdminCert) -> tuple[Result, Changes]:
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


def _start_ca_rotation(state: ClusterState, cmd: StartCARotation) -> tuple[Result, Changes]:
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


def _record_node_certificate(state: ClusterState, cmd: RecordNodeCertificate) -> tuple[Result, Changes]:
    node = state.nodes.get(cmd.node_id)
    if node is None:
        return error("not_found", f"node {cmd.node_id} not found"), []
    if cmd.manager:
        updated = msgspec.structs.replace(node, manager_cert_ca=cmd.ca)
    else:
        updated = msgspec.structs.replace(node, agent_cert_ca=cmd.ca)
    return Result(id=node.id), [Put("node", updated)] if updated != node else []


def _finish_ca_rotation(state: ClusterState, cmd: FinishCARotation) -> tuple[Result, Changes]:
    cluster = state.cluster
    if cluster is None or not cluster.ca_previous_cert_pem:
        return error("failed_precondition", "no CA rotation is under way"), []
    if cmd.started_at and cmd.started_at != cluster.ca_rotation_started_at:
        return error("failed_precondition", "this finishes an earlier CA rotation, not the one under way"), []
    left = carotation.pending(state, cmd.ca)
    if left:
        return error("failed_precondition", f"{len(left)} node(s) still depend on the previous CA"), []
    return OK, [Put("cluster", msgspec.structs.replace(cluster, ca_previous_cert_pem="", ca_rotation_started_at=0.0))]


def _rotate_token(state: ClusterState, cmd: RotateJoinToken) -> tuple[Result, Changes]:
    if state.cluster is None:
        return error("failed_precondition", "cluster is not initialised"), []
    if cmd.role == "worker":
        cluster = msgspec.structs.replace(state.cluster, worker_token_secret=cmd.secret)
    elif cmd.role == "manager":
        cluster = msgspec.structs.replace(state.cluster, manager_token_secret=cmd.secret)
    else:
        return error("invalid_argument", f"unknown role {shown(cmd.role)}"), []
    return OK, [Put("cluster", cluster)]


def _key_conflict(state: ClusterState, node_id: str, public_key: str) -> Result | None:
    """An error if another node already has `public_key`: the mesh needs one key per node."""
    other = next((n for n in state.nodes.values() if n.id != node_id and n.wg_public_key == public_key), None)
    if other is None or not public_key:
        return None
    return error(
        "already_exists",
        f"this node's WireGuard public key is already node {other.hostname}'s ({other.id[:12]}): "
        "was its data directory copied from another node?",
    )


def _register_node(state: ClusterState, cmd: RegisterNode) -> tuple[Result, Changes]:
    if state.is_revoked(cmd.node.id):
        return error("permission_denied", "this node was removed from the cluster"), []
    if not 0 <= cmd.node.wg_key_epoch <= MAX_KEY_EPOCH:
        return error("invalid_argument", f"a WireGuard key epoch is at most {MAX_KEY_EPOCH}"), []
    conflict = _key_conflict(state, cmd.node.id, cmd.node.wg_public_key)
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
        node = _with_overlay_subnet(state, state.cluster, msgspec.structs.replace(new, overlay_subnet=""))
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
        with_subnet = _with_overlay_subnet(state, state.cluster, node)
        if isinstance(with_subnet, Result):
            return with_subnet, []
        node = with_subnet
    return Result(id=node.id), [Put("node", node)]


def _update_cluster_settings(state: ClusterState, cmd: UpdateClusterSettings) -> tuple[Result, Changes]:
    if state.cluster is None:
        return error("failed_precondition", "cluster is not initialised"), []
    cluster = state.cluster
    if cmd.wg_key_rotation_period is not None:
        if not 0 <= cmd.wg_key_rotation_period < float("inf"):
            return error("invalid_argument", "the key rotation period must be 0 (off) or positive"), []
        cluster = msgspec.structs.replace(cluster, wg_key_rotation_period=cmd.wg_key_rotation_period)
    return OK, [Put("cluster", cluster)] if cluster != state.cluster else []


def _rotate_node_keys(state: ClusterState, cmd: RotateNodeKeys) -> tuple[Result, Changes]:
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


def _publish_node_key(state: ClusterState, cmd: PublishNodeKey) -> tuple[Result, Changes]:
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


def _update_node(state: ClusterState, cmd: UpdateNode) -> tuple[Result, Changes]:
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


def _promote_node(state: ClusterState, cmd: PromoteNode) -> tuple[Result, Changes]:
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


def _node_status_change(state: ClusterState, cmd: SetNodeStatus) -> Changes:
    node = state.nodes.get(cmd.node_id)
    if node is None or (node.status == cmd.status and node.status_message == cmd.message):
        return []
    return [
        Put("node", msgspec.structs.replace(node, status=cmd.status, status_message=cmd.message, updated_at=cmd.at))
    ]


def _set_node_status(state: ClusterState, cmd: SetNodeStatus) -> tuple[Result, Changes]:
    if cmd.node_id not in state.nodes:
        return error("not_found", f"node {cmd.node_id} not found"), []
    return Result(id=cmd.node_id), _node_status_change(state, cmd)


def _remove_node(state: ClusterState, cmd: RemoveNode) -> tuple[Result, Changes]:
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


def _ports_taken(state: ClusterState, spec: ServiceSpec, service_id: str) -> Result | None:
    """Checked again here, not only by the API: two concurrent creates both pass the API's check."""
    try:
        check_ports_free(state, spec, service_id)
    except ValidationError as exc:
        return error("already_exists", str(exc))
    return None


def _create_service(state: ClusterState, cmd: CreateService) -> tuple[Result, Changes]:
    name = cmd.service.spec.name
    if state.service_by_name(name) is not None:
        return error("already_exists", f"service name {shown(name)} is already in use"), []
    if (taken := _ports_taken(state, cmd.service.spec, cmd.service.id)) is not None:
        return taken, []
    if cmd.service.id in state.services:
        return error("already_exists", f"service id {cmd.service.id} is already in use"), []
    service = cmd.service
    if state.cluster is not None:
        try:
            current = {s.id: ipaddress.IPv4Address(s.vip) for s in state.services.values() if s.vip}
            vip = ipam.allocate_vip(overlay_layout(state.cluster), current, service.id)[service.id]
        except ipam.ExhaustedError as exc:
            return error("resource_exhausted", f"cannot create service {name}: {exc}"), []
        except (ipam.IpamError, ValueError) as exc:
            return error("internal", f"the overlay address plan is unusable: {exc}"), []
        service = msgspec.structs.replace(service, vip=str(vip))
    return Result(id=service.id), [Put("service", service)]


def _update_service(state: ClusterState, cmd: UpdateService) -> tuple[Result, Changes]:
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    if cmd.expected_version and cmd.expected_version != service.version:
        return error(
            "failed_precondition",
            f"service {service.spec.name} changed meanwhile (version {service.version}, "
            f"expected {cmd.expected_version}); retry",
        ), []
    if cmd.spec.name != service.spec.name:
        return error("invalid_argument", "a service cannot be renamed"), []
    if (taken := _ports_taken(state, cmd.spec, service.id)) is not None:
        return taken, []
    if cmd.spec == service.spec:
        return Result(id=service.id), []
    updated = msgspec.structs.replace(
        service, spec=cmd.spec, previous_spec=service.spec, version=service.version + 1, updated_at=cmd.at
    )
    return Result(id=service.id), [Put("service", updated)]


def _scale_service(state: ClusterState, cmd: ScaleService) -> tuple[Result, Changes]:
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    if cmd.replicas < 0:
        return error("invalid_argument", "replicas must be 0 or more"), []
    if service.spec.mode.value != "replicated":
        return error(
            "failed_precondition", f"service {service.spec.name} is global; only replicated services scale"
        ), []
    if service.spec.replicas == cmd.replicas:
        return Result(id=service.id), []
    # Scaling changes no task's spec, so it does not bump the version (no task is replaced).
    spec = msgspec.structs.replace(service.spec, replicas=cmd.replicas)
    updated = msgspec.structs.replace(service, spec=spec, updated_at=cmd.at)
    return Result(id=service.id), [Put("service", updated)]


def _remove_service(state: ClusterState, cmd: RemoveService) -> tuple[Result, Changes]:
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    changes: Changes = [Delete("service", service.id)]
    for task in state.service_tasks(service.id):
        if task.state.terminal or task.state < TaskState.ASSIGNED:
            changes.append(Delete("task", task.id))
        elif task.desired_state < TaskState.SHUTDOWN:
            changes.append(
                Put("task", msgspec.structs.replace(task, desired_state=TaskState.SHUTDOWN, updated_at=cmd.at))
            )
    return Result(id=service.id), changes


def _task_update(task: Task, update: TaskUpdate) -> Task | None:
    """The task after `update`, or None when the update is stale or changes nothing."""
    if update.state is not None and update.state != task.state and not can_transition(task.state, update.state):
        return None
    if update.desired_state is not None and update.desired_state < task.desired_state:
        return None
    fields = {
        name: value
        for name in ("state", "desired_state", "node_id", "message", "error", "exit_code", "runtime_id", "health")
        if (value := getattr(update, name)) is not None and value != getattr(task, name)
    }
    if not fields:
        return None
    if fields.get("state") == TaskState.RUNNING:
        fields["started_at"] = update.at
    return msgspec.structs.replace(task, updated_at=update.at, **fields)


class _Addresses:
    """Task addresses of the nodes a plan places tasks on, allocated from each node's subnet
    (ADR 17), for nodes on the overlay only. A task gives its address back once it has ended:
    one this plan only asks to stop keeps running (and using it) until its agent stops it."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._pools: dict[str, ipam.AddressPool] = {}  # one per node: linear in the node's tasks
        self._full: dict[str, str] = {}  # node id -> why it has no address left, in this plan

    def assign(self, task: Task, node_id: str) -> Task | None:
        """`task` with an address on `node_id`; unchanged for a node off the overlay (its tasks
        use the node's network); None when the node's subnet has no address left (the plan was
        computed before it filled up: the scheduler never places a task there)."""
        node = self._state.nodes.get(node_id)
        if node is None or not node.overlay or not node.overlay_subnet:
            return task
        if node_id in self._full:
            return None
        try:
            pool = self._pools.get(node_id)
            if pool is None:
                current = {
                    t.id: ipaddress.IPv4Address(t.overlay_address)
                    for t in self._state.node_tasks(node_id)
                    if t.overlay_address and not t.state.terminal and t.id != task.id
                }
                pool = self._pools[node_id] = ipam.AddressPool(ipaddress.IPv4Network(node.overlay_subnet), current)
            address = pool.allocate(task.id)
        except (ipam.IpamError, ValueError) as exc:
            self._full[node_id] = f"no overlay address: {exc}"
            return None
        return msgspec.structs.replace(task, overlay_address=str(address))


class _Placement:
    """Re-checks placements of a plan at apply time. A plan is computed from a snapshot; if it
    commits late (a timed-out proposal applied after the next pass re-planned), its placements
    must not over-commit a node or fill a slot twice."""

    def __init__(self, state: ClusterState, stopping: set[str]) -> None:
        self._state = state
        self._stopping = stopping
        self._reserved: dict[str, Resources] | None = None
        self._slots: set[tuple[str, int]] | None = None

    def fits(self, task: Task, node_id: str) -> bool:
        node = self._state.nodes.get(node_id)
        if node is None:
            return False
        need = task.spec.reservations
        if need.nano_cpus == 0 and need.memory_bytes == 0:
            return True
        if self._reserved is None:
            self._reserved = reserved_by_node(self._state.tasks.values())
        used = self._reserved.get(node_id, Resources())
        if not fits(node, used, need):
            return False
        self._reserved[node_id] = used + need
        return True

    def claim_slot(self, task: Task) -> bool:
        """Replicated slots hold one live task; tasks this plan stops free theirs."""
        if task.slot < 1:
            return True
        if self._slots is None:
            self._slots = {
                (t.service_id, t.slot)
                for t in self._state.tasks.values()
                if t.slot >= 1
                and t.desired_state == TaskState.RUNNING
                and not t.state.terminal
                and t.id not in self._stopping
            }
        key = (task.service_id, task.slot)
        if key in self._slots:
            return False
        self._slots.add(key)
        return True


def _apply_plan(state: ClusterState, cmd: ApplyPlan) -> tuple[Result, Changes]:
    changes: Changes = []
    stopping = {
        u.id
        for u in cmd.updated
        if (u.desired_state is not None and u.desired_state > TaskState.RUNNING)
        or (u.state is not None and u.state.terminal)
    }
    placement = _Placement(state, stopping)
    addresses = _Addresses(state)
    for task in cmd.created:
        if task.service_id not in state.services or task.id in state.tasks:
            continue
        if not placement.claim_slot(task):
            continue
        if task.node_id and not placement.fits(task, task.node_id):
            # Stale placement: keep the task, unplaced, for the next pass to place.
            task = msgspec.structs.replace(task, node_id="", state=TaskState.PENDING)
        if task.node_id:
            placed = addresses.assign(task, task.node_id)
            if placed is None and task.slot < 1:
                continue  # a global task: the next pass creates it if the node has room again
            task = placed or msgspec.structs.replace(
                task, node_id="", state=TaskState.PENDING, message="pending: no free overlay address on its node"
            )
        changes.append(Put("task", task))
    for update in cmd.updated:
        current = state.tasks.get(update.id)
        if current is None:
            continue
        task = current
        # Assigning a node is only valid for a task that holds none yet (the scheduler's view
        # may be stale if the task was already placed or stopped meanwhile), and only where
        # the task still fits.
        moving_to = update.node_id if update.node_id is not None and update.node_id != task.node_id else None
        if moving_to is not None and (task.node_id or not placement.fits(task, moving_to)):
            continue
        new = _task_update(task, update)
        if new is not None and moving_to is not None:
            new = addresses.assign(new, moving_to)  # None: stays pending
        if new is not None:
            changes.append(Put("task", new))
    for task_id in cmd.deleted:
        if task_id in state.tasks:
            changes.append(Delete("task", task_id))
    for status in cmd.node_status:
        changes.extend(_node_status_change(state, status))
    return OK, changes


def _report_task_status(state: ClusterState, cmd: ReportTaskStatus) -> tuple[Result, Changes]:
    changes: Changes = []
    for update in cmd.updates:
        task = state.tasks.get(update.id)
        if task is None or task.node_id != cmd.node_id or update.node_id not in (None, cmd.node_id):
            continue
        new = _task_update(task, update)
        if new is not None:
            changes.append(Put("task", new))
    return OK, changes


def _noop(state: ClusterState, cmd: Noop) -> tuple[Result, Changes]:
    return OK, []


_HANDLERS: dict[type, Callable[[ClusterState, object], tuple[Result, Changes]]] = {
    InitCluster: _init_cluster,  # type: ignore[dict-item]
    IssueAdminCert: _issue_admin_cert,  # type: ignore[dict-item]
    RevokeAdminCert: _revoke_admin_cert,  # type: ignore[dict-item]
    StartCARotation: _start_ca_rotation,  # type: ignore[dict-item]
    RecordNodeCertificate: _record_node_certificate,  # type: ignore[dict-item]
    FinishCARotation: _finish_ca_rotation,  # type: ignore[dict-item]
    RotateJoinToken: _rotate_token,  # type: ignore[dict-item]
    UpdateClusterSettings: _update_cluster_settings,  # type: ignore[dict-item]
    RotateNodeKeys: _rotate_node_keys,  # type: ignore[dict-item]
    PublishNodeKey: _publish_node_key,  # type: ignore[dict-item]
    RegisterNode: _register_node,  # type: ignore[dict-item]
    UpdateNode: _update_node,  # type: ignore[dict-item]
    PromoteNode: _promote_node,  # type: ignore[dict-item]
    SetNodeStatus: _set_node_status,  # type: ignore[dict-item]
    RemoveNode: _remove_node,  # type: ignore[dict-item]
    CreateService: _create_service,  # type: ignore[dict-item]
    UpdateService: _update_service,  # type: ignore[dict-item]
    ScaleService: _scale_service,  # type: ignore[dict-item]
    RemoveService: _remove_service,  # type: ignore[dict-item]
    ApplyPlan: _apply_plan,  # type: ignore[dict-item]
    ReportTaskStatus: _report_task_status,  # type: ignore[dict-item]
    Noop: _noop,  # type: ignore[dict-item]
}
