"""Service specs between protobuf and warren.model, both directions: the spec and its parts
(resources, update and deploy settings, container options, mounts, secret and config references).
The control API, the dispatcher, the agent and the stacks all convert specs here. Pure: it builds
and reads messages, and imports no grpc.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple, TypeVar

from warren import model, validate
from warren.api.names import ConversionError, enum_member
from warren.api.v1 import types_pb2 as pb
from warren.text import shown

_Enum = TypeVar("_Enum", bound=enum.Enum)


def _enum(enum_type: type[_Enum], value: str, field: str, default: _Enum) -> _Enum:
    return enum_member(enum_type, value, field) if value else default


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


class _UnsetParts(NamedTuple):
    """What each of a spec's message-typed parts converts to when the message leaves it unset,
    converted once: most specs set few of them, and a create converts its spec on the event loop
    (#15). The model's structs are frozen, so every spec can share these."""

    resources: model.Resources
    restart: model.RestartPolicy
    update: model.UpdateConfig
    rollback: model.UpdateConfig
    deploy: model.DeployConfig
    container: model.ContainerOptions


_UNSET = _UnsetParts(
    resources=resources_from_pb(pb.Resources()),
    restart=model.RestartPolicy(),
    update=update_config_from_pb(pb.UpdateConfig(), "update"),
    rollback=update_config_from_pb(pb.UpdateConfig(), "rollback"),
    deploy=deploy_config_from_pb(pb.DeployConfig()),
    container=container_options_from_pb(pb.ContainerOptions()),
)


def spec_from_pb(msg: pb.ServiceSpec) -> model.ServiceSpec:
    unset = _UNSET
    restart = unset.restart
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
        reservations=resources_from_pb(msg.reservations) if msg.HasField("reservations") else unset.resources,
        limits=resources_from_pb(msg.limits) if msg.HasField("limits") else unset.resources,
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
        update=update_config_from_pb(msg.update, "update") if msg.HasField("update") else unset.update,
        rollback=update_config_from_pb(msg.rollback, "rollback") if msg.HasField("rollback") else unset.rollback,
        force_update=msg.force_update,
        deploy=deploy_config_from_pb(msg.deploy) if msg.HasField("deploy") else unset.deploy,
        mounts=tuple(mount_from_pb(m) for m in msg.mounts),
        secrets=file_refs_from_pb(msg.secrets, "secret"),
        configs=file_refs_from_pb(msg.configs, "config"),
        container=container_options_from_pb(msg.container) if msg.HasField("container") else unset.container,
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


def resources_to_pb(res: model.Resources) -> pb.Resources:
    return pb.Resources(nano_cpus=res.nano_cpus, memory_bytes=res.memory_bytes)


def restart_policy_to_pb(restart: model.RestartPolicy) -> pb.RestartPolicy:
    return pb.RestartPolicy(
        condition=restart.condition.value,
        delay=restart.delay,
        max_attempts=restart.max_attempts,
        window=restart.window,
    )


def spec_to_pb(spec: model.ServiceSpec) -> pb.ServiceSpec:
    unset = _UNSET  # the parts most specs leave as they are: their messages are built once
    msg = pb.ServiceSpec(
        name=spec.name,
        image=spec.image,
        command=spec.command,
        args=spec.args,
        env=spec.env,
        mode=spec.mode.value,
        replicas=spec.replicas,
        constraints=spec.constraints,
        reservations=_UNSET_PB.resources
        if spec.reservations == unset.resources
        else resources_to_pb(spec.reservations),
        limits=_UNSET_PB.resources if spec.limits == unset.resources else resources_to_pb(spec.limits),
        restart=_UNSET_PB.restart if spec.restart == unset.restart else restart_policy_to_pb(spec.restart),
        ports=[
            pb.PortConfig(target=p.target, published=p.published, protocol=p.protocol, mode=p.mode) for p in spec.ports
        ],
        labels=spec.labels,
        stop_grace_period=spec.stop_grace_period,
        stop_signal=spec.stop_signal,
        stop_drain=spec.stop_drain,
        update=_UNSET_PB.update if spec.update == unset.update else update_config_to_pb(spec.update),
        rollback=_UNSET_PB.rollback if spec.rollback == unset.rollback else update_config_to_pb(spec.rollback),
        force_update=spec.force_update,
        deploy=_UNSET_PB.deploy if spec.deploy == unset.deploy else deploy_config_to_pb(spec.deploy),
        mounts=[mount_to_pb(m) for m in spec.mounts],
        secrets=[file_ref_to_pb(r) for r in spec.secrets],
        configs=[file_ref_to_pb(r) for r in spec.configs],
        networks=[pb.NetworkAttachment(network=a.network, aliases=list(a.aliases)) for a in spec.networks],
    )
    if spec.container != unset.container:
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


class _UnsetMessages(NamedTuple):
    """The messages of `_UNSET`'s parts, built once for spec_to_pb: a message given to a
    constructor is copied into it, so every spec's message may start from these."""

    resources: pb.Resources
    restart: pb.RestartPolicy
    update: pb.UpdateConfig
    rollback: pb.UpdateConfig
    deploy: pb.DeployConfig


_UNSET_PB = _UnsetMessages(
    resources=resources_to_pb(_UNSET.resources),
    restart=restart_policy_to_pb(_UNSET.restart),
    update=update_config_to_pb(_UNSET.update),
    rollback=update_config_to_pb(_UNSET.rollback),
    deploy=deploy_config_to_pb(_UNSET.deploy),
)
