"""Handlers of service commands: create, update, scale, remove."""

from __future__ import annotations

import ipaddress

import msgspec

from warren.commands.overlay import overlay_layout
from warren.commands.types import (
    Changes,
    CreateService,
    RemoveService,
    Result,
    ScaleService,
    UpdateService,
    error,
)
from warren.model import ServiceSpec, TaskState
from warren.network import ipam
from warren.state import ClusterState, Delete, Put
from warren.text import shown
from warren.validate import ValidationError, check_ports_free


def _ports_taken(state: ClusterState, spec: ServiceSpec, service_id: str) -> Result | None:
    """Checked again here, not only by the API: two concurrent creates both pass the API's check."""
    try:
        check_ports_free(state, spec, service_id)
    except ValidationError as exc:
        return error("already_exists", str(exc))
    return None


def create_service(state: ClusterState, cmd: CreateService) -> tuple[Result, Changes]:
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


def update_service(state: ClusterState, cmd: UpdateService) -> tuple[Result, Changes]:
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


def scale_service(state: ClusterState, cmd: ScaleService) -> tuple[Result, Changes]:
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


def remove_service(state: ClusterState, cmd: RemoveService) -> tuple[Result, Changes]:
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
