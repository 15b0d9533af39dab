"""Protobuf messages and warren.model values mapped to each other, both directions, for the
control API, the dispatcher and the agent: services, tasks, nodes, admin certificates, secrets and
configs, volumes and networks, task reports and the overlay's mesh and endpoints. A service's spec
converts in `specconvert`, and an enumeration's name in `names`. Pure: it builds and reads
messages, and imports no grpc.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from warren import model, nodereports
from warren.api import specconvert
from warren.api.names import task_state, task_state_or
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb

if TYPE_CHECKING:  # the managers' side only: an agent imports this module, not the commands (~1 MiB)
    from warren import commands, events


def volume_to_pb(volume: model.Volume, hostname: str = "", used_by: Iterable[str] = ()) -> pb.Volume:
    return pb.Volume(
        id=volume.id,
        name=volume.name,
        driver=volume.driver,
        options=volume.options,
        labels=volume.labels,
        node_id=volume.node_id,
        node_hostname=hostname,
        created_at=volume.created_at,
        updated_at=volume.updated_at,
        used_by=list(used_by),
    )


def network_to_pb(network: model.Network, used_by: Iterable[str] = (), builtin: bool = False) -> pb.Network:
    """A network (#14, ADR 47), with the services on it when read."""
    return pb.Network(
        id=network.id,
        name=network.name,
        subnet=network.subnet,
        internal=network.internal,
        attachable=network.attachable,
        labels=network.labels,
        created_at=network.created_at,
        updated_at=network.updated_at,
        used_by=list(used_by),
        builtin=builtin,
    )


def secret_to_pb(secret: model.Secret, services: Iterable[str] = ()) -> cpb.Secret:
    """Metadata only: the value never leaves the managers this way."""
    return cpb.Secret(
        id=secret.id,
        name=secret.name,
        size=secret.size,
        labels=secret.labels,
        created_at=secret.created_at,
        updated_at=secret.updated_at,
        services=list(services),
    )


def config_to_pb(config: model.Config, services: Iterable[str] = (), with_data: bool = False) -> cpb.Config:
    return cpb.Config(
        id=config.id,
        name=config.name,
        size=len(config.data),
        labels=config.labels,
        created_at=config.created_at,
        updated_at=config.updated_at,
        services=list(services),
        data=config.data if with_data else b"",
    )


def task_from_pb(msg: pb.Task, spec: model.ServiceSpec | None = None) -> model.Task:
    """A Task as the dispatcher sent it, with `spec` or else the one in the message. Unknown state
    names degrade to safe defaults instead of failing the whole message: desired SHUTDOWN stops
    rather than runs."""
    return model.Task(
        id=msg.id,
        service_id=msg.service_id,
        service_name=msg.service_name,
        slot=msg.slot,
        spec=spec if spec is not None else specconvert.spec_from_pb(msg.spec),
        spec_version=msg.spec_version,
        desired_state=task_state_or(msg.desired_state, model.TaskState.SHUTDOWN),
        state=task_state_or(msg.state, model.TaskState.ASSIGNED),
        node_id=msg.node_id,
        message=msg.message,
        error=msg.error,
        exit_code=msg.exit_code if msg.has_exit_code else None,
        runtime_id=msg.runtime_id,
        health=msg.health,
        attempt=msg.attempt,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
        started_at=msg.started_at,
        overlay_address=msg.overlay_address,
        ready_at=msg.ready_at,
        relocates=msg.relocates,
    )


def node_from_description(
    desc: dpb.NodeDescription,
    *,
    node_id: str,
    role: model.NodeRole,
    status: model.NodeStatus,
    agent_cert_ca: str,
    at: float,
) -> model.Node:
    """The node an agent describes at the start of a session; what the description cannot say
    (its id, role and CA, from its certificate; its status; the time) the dispatcher passes."""
    return model.Node(
        id=node_id,
        hostname=desc.hostname,
        role=role,
        status=status,
        labels=dict(desc.labels),
        resources=specconvert.resources_from_pb(desc.resources),
        addr=desc.addr,
        os=desc.os,
        arch=desc.arch,
        wg_public_key=desc.wg_public_key,
        wg_endpoint=desc.wg_endpoint,
        overlay=desc.overlay,
        wg_key_epoch=desc.wg_key_epoch,
        metrics_addr=desc.metrics_addr,
        agent_cert_ca=agent_cert_ca,
        created_at=at,
        updated_at=at,
    )


def task_update_from_pb(status: dpb.TaskStatus, at: float) -> commands.TaskUpdate:
    """An agent's report of one task as an update of it, at `at` (the report's time once the
    dispatcher has checked it); raises ConversionError for an unknown state name. Free text is
    cleaned, not refused: one long or odd message must not cost the batch its other reports."""
    from warren import commands

    return commands.TaskUpdate(
        id=status.task_id,
        at=at,
        state=task_state(status.state),
        message=nodereports.report_text(status.message),
        error=nodereports.report_text(status.error),
        exit_code=status.exit_code if status.has_exit_code else None,
        runtime_id=status.runtime_id or None,
        health=status.health or None,
    )


# -- model -> proto ----------------------------------------------------------------------------


def update_status_to_pb(status: model.UpdateStatus) -> pb.UpdateStatus:
    return pb.UpdateStatus(
        state=status.state.value,
        started_at=status.started_at,
        completed_at=status.completed_at,
        from_version=status.from_version,
        to_version=status.to_version,
        message=status.message,
        promoted_at=status.promoted_at,
    )


def service_to_pb(
    service: model.Service,
    desired: int = 0,
    running: int = 0,
    with_previous: bool = True,
    spec: pb.ServiceSpec | None = None,  # the spec converted already (a list's cache, ADR 51)
    into: RepeatedCompositeFieldContainer[pb.Service] | None = None,  # a list's reply, filled in place
) -> pb.Service:
    current = spec if spec is not None else specconvert.spec_to_pb(service.spec)
    msg = (pb.Service if into is None else into.add)(
        id=service.id,
        spec=current,
        version=service.version,
        created_at=service.created_at,
        updated_at=service.updated_at,
        desired_tasks=desired,
        running_tasks=running,
        vip=service.vip,
    )
    if service.update_status is not None:
        msg.update_status.CopyFrom(update_status_to_pb(service.update_status))
    if with_previous:  # a single service's read: the spec before and the history too
        # Each spec object once: a revision usually holds the current spec (a create's history
        # is that one spec), which the reply then converted twice (ADR 58).
        converted = {id(service.spec): current}

        def spec_pb(s: model.ServiceSpec) -> pb.ServiceSpec:
            found = converted.get(id(s))
            if found is None:
                found = converted[id(s)] = specconvert.spec_to_pb(s)
            return found

        before = next((r.spec for r in reversed(service.history) if r.spec is not None), service.previous_spec)
        if before is not None:
            msg.previous_spec.CopyFrom(spec_pb(before))
        msg.history.extend(
            pb.SpecRevision(version=r.version, spec=spec_pb(r.spec or service.spec), at=r.at, summary=r.summary)
            for r in service.history
        )
    msg.depends_on.extend(  # a stack's depends_on (#14)
        pb.ServiceDependency(service=d.service, condition=d.condition, required=d.required) for d in service.depends_on
    )
    return msg


def node_to_pb(node: model.Node, leader: bool = False) -> pb.Node:
    return pb.Node(
        id=node.id,
        hostname=node.hostname,
        role=node.role.value,
        availability=node.availability.value,
        status=node.status.value,
        status_message=node.status_message,
        labels=node.labels,
        resources=specconvert.resources_to_pb(node.resources),
        addr=node.addr,
        os=node.os,
        arch=node.arch,
        created_at=node.created_at,
        updated_at=node.updated_at,
        leader=leader,
        join_addr=node.join_addr,
        desired_role=node.desired_role.value if node.desired_role else "",
        overlay_subnet=node.overlay_subnet,
        wg_public_key=node.wg_public_key,
        wg_endpoint=node.wg_endpoint,
        overlay=node.overlay,
        wg_key_epoch=node.wg_key_epoch,
        wg_key_desired_epoch=node.wg_key_desired_epoch,
        wg_key_published_at=node.wg_key_published_at,
        metrics_addr=node.metrics_addr,
        manager_metrics_addr=node.manager_metrics_addr,
    )


# A state's label, looked up: the enum's name property costs more than the rest of a field, and a
# list of 10,000 tasks asks for 20,000 of them (#15).
_STATE_LABELS = {state: state.label for state in model.TaskState}


def task_to_pb(
    task: model.Task, with_spec: bool = False, into: RepeatedCompositeFieldContainer[pb.Task] | None = None
) -> pb.Task:
    """`task` as protobuf; appended to `into` if given (a list's reply, filled in place: a
    message built apart is copied again when it goes into the reply)."""
    msg = (pb.Task if into is None else into.add)(
        id=task.id,
        service_id=task.service_id,
        service_name=task.service_name,
        slot=task.slot,
        node_id=task.node_id,
        desired_state=_STATE_LABELS[task.desired_state],
        state=_STATE_LABELS[task.state],
        message=task.message,
        error=task.error,
        has_exit_code=task.exit_code is not None,
        exit_code=task.exit_code or 0,
        runtime_id=task.runtime_id,
        health=task.health,
        spec_version=task.spec_version,
        attempt=task.attempt,
        created_at=task.created_at,
        updated_at=task.updated_at,
        started_at=task.started_at,
        overlay_address=task.overlay_address,
        ready_at=task.ready_at,
        relocates=task.relocates,
        image=task.spec.image,
    )
    if with_spec:
        msg.spec.CopyFrom(specconvert.spec_to_pb(task.spec))
    return msg


class TaskReport(Protocol):
    """What an agent observed of one task (warren.agent.status.Report has this shape)."""

    @property
    def task_id(self) -> str: ...
    @property
    def state(self) -> model.TaskState: ...
    @property
    def timestamp(self) -> float: ...
    @property
    def message(self) -> str: ...
    @property
    def error(self) -> str: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def runtime_id(self) -> str: ...
    @property
    def health(self) -> str: ...


def report_to_pb(report: TaskReport) -> dpb.TaskStatus:
    return dpb.TaskStatus(
        task_id=report.task_id,
        state=report.state.label,
        message=nodereports.report_text(report.message),
        error=nodereports.report_text(report.error),
        has_exit_code=report.exit_code is not None,
        exit_code=report.exit_code or 0,
        runtime_id=report.runtime_id,
        health=report.health,
        timestamp=report.timestamp,
    )


def admin_cert_to_pb(cert: model.AdminCert, ca_label: str) -> cpb.AdminCertificate:
    """`ca_label` says which root issued it ("current", "previous" or "old"): the caller knows
    the cluster's roots."""
    return cpb.AdminCertificate(
        id=cert.id,
        name=cert.name,
        created_at=cert.created_at,
        not_after=cert.not_after,
        revoked=bool(cert.revoked_at),
        revoked_at=cert.revoked_at,
        ca=ca_label,
    )


def mesh_node_to_pb(node: model.Node) -> dpb.MeshNode:
    return dpb.MeshNode(
        node_id=node.id, public_key=node.wg_public_key, endpoint=node.wg_endpoint, subnet=node.overlay_subnet
    )


def endpoint_to_pb(
    service: model.Service,
    backends: Iterable[str],
    canary: Iterable[str] = (),
    canary_weight: int = 0,
    networks: Iterable[str] = (),
    members: Iterable[str] = (),
    internal: bool = False,
) -> dpb.ServiceEndpoint:
    """A service's VIP, the addresses of its tasks that take connections, and its published ports
    (host-mode ones too, ADR 46); with a canary, which of them take `canary_weight` percent (ADR 35);
    its networks, every live task's address and its aliases (#14, ADR 47)."""
    return dpb.ServiceEndpoint(
        networks=list(networks),
        members=sorted(members),
        aliases=[
            dpb.NetworkAlias(network=a.network, alias=alias) for a in service.spec.networks for alias in a.aliases
        ],
        internal=internal,
        canary=sorted(canary),
        canary_weight=canary_weight,
        name=service.spec.name,
        vip=service.vip,
        backends=sorted(backends),
        ports=[
            dpb.EndpointPort(
                protocol=p.protocol, published=p.published, target=p.target, mode="host" if p.mode == "host" else ""
            )
            for p in service.spec.ports
            if p.published
        ],
    )


def event_to_pb(event: events.Event) -> cpb.Event:
    """An event of the stream (ADR 45)."""
    return cpb.Event(
        id=event.id,
        time=event.time,
        type=event.type,
        action=event.action,
        actor_id=event.actor_id,
        actor_name=event.actor_name,
        attributes=event.attributes,
    )
