"""The one place where protobuf messages and warren.model values are mapped to each other."""

from __future__ import annotations

import enum
from typing import TypeVar

from warren import model
from warren.api.v1 import types_pb2 as pb
from warren.text import shown


class ConversionError(ValueError):
    """A request field holds a value the model has no name for."""


_Enum = TypeVar("_Enum", bound=enum.Enum)


def _enum(enum_type: type[_Enum], value: str, field: str, default: _Enum) -> _Enum:
    if not value:
        return default
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum_type)
        raise ConversionError(f"{field} must be one of {allowed} (got {shown(value)})") from None


def task_state(name: str) -> model.TaskState:
    try:
        return model.TaskState[name.upper()]
    except KeyError:
        allowed = ", ".join(s.label for s in model.TaskState)
        raise ConversionError(f"unknown task state {shown(name)} (one of {allowed})") from None


# -- proto -> model ----------------------------------------------------------------------------
def resources_from_pb(msg: pb.Resources) -> model.Resources:
    return model.Resources(nano_cpus=msg.nano_cpus, memory_bytes=msg.memory_bytes)


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
    )
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


def service_to_pb(service: model.Service, desired: int = 0, running: int = 0, with_previous: bool = True) -> pb.Service:
    msg = pb.Service(
        id=service.id,
        spec=spec_to_pb(service.spec),
        version=service.version,
        created_at=service.created_at,
        updated_at=service.updated_at,
        desired_tasks=desired,
        running_tasks=running,
        vip=service.vip,
    )
    if with_previous and service.previous_spec is not None:
        msg.previous_spec.CopyFrom(spec_to_pb(service.previous_spec))
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
    )


def task_to_pb(task: model.Task, with_spec: bool = False) -> pb.Task:
    msg = pb.Task(
        id=task.id,
        service_id=task.service_id,
        service_name=task.service_name,
        slot=task.slot,
        node_id=task.node_id,
        desired_state=task.desired_state.label,
        state=task.state.label,
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
    )
    if with_spec:
        msg.spec.CopyFrom(spec_to_pb(task.spec))
    return msg
