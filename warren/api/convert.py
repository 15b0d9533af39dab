"""The one place where protobuf messages and warren.model values are mapped to each other.

Both directions, for the control API, the dispatcher and the agent: specs, services, tasks,
nodes, admin certificates, secrets and configs, task reports and the overlay's mesh and endpoints. Pure: it builds
and reads messages, and imports no grpc.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from warren import model, validate
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.text import shown

if TYPE_CHECKING:  # the managers' side only: an agent imports this module, not the commands (~1 MiB)
    from warren import commands, events


class ConversionError(ValueError):
    """A request field holds a value the model has no name for."""


_Enum = TypeVar("_Enum", bound=enum.Enum)


def enum_member(enum_type: type[_Enum], value: str, field: str) -> _Enum:
    """The member of `enum_type` named by `value`; ConversionError, saying which are, if none is."""
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum_type)
        raise ConversionError(f"{field} must be one of {allowed} (got {shown(value)})") from None


def _enum(enum_type: type[_Enum], value: str, field: str, default: _Enum) -> _Enum:
    return enum_member(enum_type, value, field) if value else default


def task_state(name: str) -> model.TaskState:
    try:
        return model.TaskState[name.upper()]
    except KeyError:
        allowed = ", ".join(s.label for s in model.TaskState)
        raise ConversionError(f"unknown task state {shown(name)} (one of {allowed})") from None


# -- proto -> model ----------------------------------------------------------------------------
def resources_from_pb(msg: pb.Resources) -> model.Resources:
    return model.Resources(nano_cpus=msg.nano_cpus, memory_bytes=msg.memory_bytes)


def update_config_from_pb(msg: pb.UpdateConfig, flag: str) -> model.UpdateConfig:
    """Unset fields take the defaults (ADR 33); `flag` names the settings in errors."""
    default = model.UpdateConfig()
    return model.UpdateConfig(
        parallelism=msg.parallelism if msg.HasField("parallelism") else default.parallelism,
        delay=msg.delay if msg.HasField("delay") else default.delay,
        order=_enum(model.UpdateOrder, msg.order, f"--{flag}-order", default.order),
        failure_action=_enum(
            model.FailureAction, msg.failure_action, f"--{flag}-failure-action", default.failure_action
        ),
        monitor=msg.monitor if msg.HasField("monitor") else default.monitor,
        max_failure_ratio=msg.max_failure_ratio if msg.HasField("max_failure_ratio") else default.max_failure_ratio,
    )


def deploy_config_from_pb(msg: pb.DeployConfig) -> model.DeployConfig:
    """Unset fields are rolling's (ADR 35); a blue/green keep left unset is the default keep."""
    strategy = _enum(model.DeployStrategy, msg.strategy, "--deploy-strategy", model.DeployStrategy.ROLLING)
    keep = msg.blue_green_keep
    if strategy == model.DeployStrategy.BLUE_GREEN and not keep:
        keep = model.BLUE_GREEN_KEEP
    return model.DeployConfig(
        strategy=strategy,
        canary_replicas=msg.canary_replicas,
        canary_weight=msg.canary_weight if msg.HasField("canary_weight") else None,
        canary_auto_promote=msg.canary_auto_promote,
        blue_green_keep=keep,
    )


def container_options_from_pb(msg: pb.ContainerOptions) -> model.ContainerOptions:
    return model.ContainerOptions(
        user=msg.user,
        workdir=msg.workdir,
        hostname=msg.hostname,
        read_only=msg.read_only,
        init=msg.init,
        privileged=msg.privileged,
        cap_add=tuple(msg.cap_add),
        cap_drop=tuple(msg.cap_drop),
        devices=tuple(
            model.DeviceMapping(d.path_on_host, d.path_in_container, d.permissions or "rwm") for d in msg.devices
        ),
        sysctls=dict(msg.sysctls),
        ulimits=tuple(model.Ulimit(u.name, u.soft, u.hard) for u in msg.ulimits),
        labels=dict(msg.labels),
        dns=tuple(msg.dns),
        dns_search=tuple(msg.dns_search),
        dns_options=tuple(msg.dns_options),
        group_add=tuple(msg.group_add),
        no_healthcheck=msg.no_healthcheck,
    )


def container_options_to_pb(options: model.ContainerOptions) -> pb.ContainerOptions:
    return pb.ContainerOptions(
        user=options.user,
        workdir=options.workdir,
        hostname=options.hostname,
        read_only=options.read_only,
        init=options.init,
        privileged=options.privileged,
        cap_add=options.cap_add,
        cap_drop=options.cap_drop,
        devices=[
            pb.DeviceMapping(
                path_on_host=d.path_on_host, path_in_container=d.path_in_container, permissions=d.permissions
            )
            for d in options.devices
        ],
        sysctls=options.sysctls,
        ulimits=[pb.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in options.ulimits],
        labels=options.labels,
        dns=options.dns,
        dns_search=options.dns_search,
        dns_options=options.dns_options,
        group_add=options.group_add,
        no_healthcheck=options.no_healthcheck,
    )


def spec_from_pb(msg: pb.ServiceSpec) -> model.ServiceSpec:
    restart = model.RestartPolicy()
    if msg.HasField("restart"):
        restart = model.RestartPolicy(
            condition=_enum(model.RestartCondition, msg.restart.condition, "restart condition", restart.condition),
            delay=msg.restart.delay,
            max_attempts=msg.restart.max_attempts,
            window=msg.restart.window,
        )
    health = None
    if msg.HasField("health"):
        h = msg.health
        health = model.HealthCheck(
            kind=h.kind or "cmd",
            command=tuple(h.command),
            target=h.target,
            interval=h.interval or 30.0,
            timeout=h.timeout or 30.0,
            retries=h.retries or 3,
            start_period=h.start_period,
        )
    return model.ServiceSpec(
        name=msg.name,
        image=msg.image,
        command=tuple(msg.command),
        args=tuple(msg.args),
        env=dict(msg.env),
        mode=_enum(model.ServiceMode, msg.mode, "mode", model.ServiceMode.REPLICATED),
        replicas=msg.replicas if msg.mode != "global" else 0,
        constraints=tuple(msg.constraints),
        reservations=resources_from_pb(msg.reservations),
        limits=resources_from_pb(msg.limits),
        restart=restart,
        health=health,
        ports=tuple(
            model.PortConfig(
                target=p.target, published=p.published, protocol=p.protocol or "tcp", mode=p.mode or "ingress"
            )
            for p in msg.ports
        ),
        labels=dict(msg.labels),
        stop_grace_period=msg.stop_grace_period if msg.HasField("stop_grace_period") else 10.0,
        stop_signal=msg.stop_signal,
        stop_drain=msg.stop_drain,
        update=update_config_from_pb(msg.update, "update"),
        rollback=update_config_from_pb(msg.rollback, "rollback"),
        force_update=msg.force_update,
        deploy=deploy_config_from_pb(msg.deploy),
        mounts=tuple(mount_from_pb(m) for m in msg.mounts),
        secrets=file_refs_from_pb(msg.secrets, "secret"),
        configs=file_refs_from_pb(msg.configs, "config"),
        container=container_options_from_pb(msg.container),
        networks=tuple(model.NetworkAttachment(a.network, tuple(a.aliases)) for a in msg.networks),
    )


def mount_from_pb(msg: pb.Mount) -> model.Mount:
    if not msg.type:
        raise ConversionError(f"the mount at {shown(msg.target)} needs a type (volume, bind or tmpfs)")
    return model.Mount(
        type=_enum(model.MountType, msg.type, "mount type", model.MountType.VOLUME),
        target=msg.target,
        source=msg.source,
        readonly=msg.readonly,
        volume_options=dict(msg.volume_options),
        tmpfs_size=msg.tmpfs_size,
        tmpfs_mode=msg.tmpfs_mode,
    )


def mount_to_pb(mount: model.Mount) -> pb.Mount:
    return pb.Mount(
        type=mount.type.value,
        source=mount.source,
        target=mount.target,
        readonly=mount.readonly,
        volume_options=mount.volume_options,
        tmpfs_size=mount.tmpfs_size,
        tmpfs_mode=mount.tmpfs_mode,
    )


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


def default_target(kind: str, source: str, target: str) -> str:
    """Docker's defaults: a secret at /run/secrets/NAME (a relative target under that
    directory), a config at /NAME."""
    if target.startswith("/"):
        return target
    if kind == "secret":
        return f"{validate.SECRETS_DIR}/{target or source}"
    return f"/{target or source}"


def file_refs_from_pb(msgs: Iterable[pb.FileRef], kind: str) -> tuple[model.FileRef, ...]:
    return tuple(
        model.FileRef(
            source=m.source,
            target=default_target(kind, m.source, m.target),
            uid=m.uid,
            gid=m.gid,
            mode=m.mode if m.HasField("mode") else 0o444,
        )
        for m in msgs
    )


def file_ref_to_pb(ref: model.FileRef) -> pb.FileRef:
    return pb.FileRef(source=ref.source, target=ref.target, uid=ref.uid, gid=ref.gid, mode=ref.mode)


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


def task_state_or(name: str, default: model.TaskState) -> model.TaskState:
    """The state `name` names, or `default` when it is empty or unknown."""
    try:
        return task_state(name) if name else default
    except ConversionError:
        return default


def task_from_pb(msg: pb.Task, spec: model.ServiceSpec | None = None) -> model.Task:
    """A Task as the dispatcher sent it, with `spec` or else the one in the message. Unknown state
    names degrade to safe defaults instead of failing the whole message: desired SHUTDOWN stops
    rather than runs."""
    return model.Task(
        id=msg.id,
        service_id=msg.service_id,
        service_name=msg.service_name,
        slot=msg.slot,
        spec=spec if spec is not None else spec_from_pb(msg.spec),
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
        resources=resources_from_pb(desc.resources),
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
        message=validate.report_text(status.message),
        error=validate.report_text(status.error),
        exit_code=status.exit_code if status.has_exit_code else None,
        runtime_id=status.runtime_id or None,
        health=status.health or None,
    )


# -- model -> proto ----------------------------------------------------------------------------
def resources_to_pb(res: model.Resources) -> pb.Resources:
    return pb.Resources(nano_cpus=res.nano_cpus, memory_bytes=res.memory_bytes)


def spec_to_pb(spec: model.ServiceSpec) -> pb.ServiceSpec:
    msg = pb.ServiceSpec(
        name=spec.name,
        image=spec.image,
        command=spec.command,
        args=spec.args,
        env=spec.env,
        mode=spec.mode.value,
        replicas=spec.replicas,
        constraints=spec.constraints,
        reservations=resources_to_pb(spec.reservations),
        limits=resources_to_pb(spec.limits),
        restart=pb.RestartPolicy(
            condition=spec.restart.condition.value,
            delay=spec.restart.delay,
            max_attempts=spec.restart.max_attempts,
            window=spec.restart.window,
        ),
        ports=[
            pb.PortConfig(target=p.target, published=p.published, protocol=p.protocol, mode=p.mode) for p in spec.ports
        ],
        labels=spec.labels,
        stop_grace_period=spec.stop_grace_period,
        stop_signal=spec.stop_signal,
        stop_drain=spec.stop_drain,
        update=update_config_to_pb(spec.update),
        rollback=update_config_to_pb(spec.rollback),
        force_update=spec.force_update,
        deploy=deploy_config_to_pb(spec.deploy),
        mounts=[mount_to_pb(m) for m in spec.mounts],
        secrets=[file_ref_to_pb(r) for r in spec.secrets],
        configs=[file_ref_to_pb(r) for r in spec.configs],
        networks=[pb.NetworkAttachment(network=a.network, aliases=list(a.aliases)) for a in spec.networks],
    )
    if spec.container != model.ContainerOptions():
        msg.container.CopyFrom(container_options_to_pb(spec.container))
    if spec.health is not None:
        h = spec.health
        msg.health.CopyFrom(
            pb.HealthCheck(
                kind=h.kind,
                command=h.command,
                target=h.target,
                interval=h.interval,
                timeout=h.timeout,
                retries=h.retries,
                start_period=h.start_period,
            )
        )
    return msg


def update_config_to_pb(config: model.UpdateConfig) -> pb.UpdateConfig:
    return pb.UpdateConfig(
        parallelism=config.parallelism,
        delay=config.delay,
        order=config.order.value,
        failure_action=config.failure_action.value,
        monitor=config.monitor,
        max_failure_ratio=config.max_failure_ratio,
    )


def deploy_config_to_pb(config: model.DeployConfig) -> pb.DeployConfig:
    msg = pb.DeployConfig(
        strategy=config.strategy.value,
        canary_replicas=config.canary_replicas,
        canary_auto_promote=config.canary_auto_promote,
        blue_green_keep=config.blue_green_keep,
    )
    if config.canary_weight is not None:
        msg.canary_weight = config.canary_weight
    return msg


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
    current = spec if spec is not None else spec_to_pb(service.spec)
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
                found = converted[id(s)] = spec_to_pb(s)
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
        resources=resources_to_pb(node.resources),
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
        msg.spec.CopyFrom(spec_to_pb(task.spec))
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
        message=validate.report_text(report.message),
        error=validate.report_text(report.error),
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
