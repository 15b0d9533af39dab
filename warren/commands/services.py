"""Handlers of service commands: create, update, scale, remove."""

from __future__ import annotations

import ipaddress

import msgspec

from warren import mounts, revisions, strategy
from warren.commands.overlay import overlay_layout
from warren.commands.secrets import missing_refs
from warren.commands.types import (
    Changes,
    CreateService,
    PromoteService,
    RemoveService,
    Result,
    RollbackService,
    RolloutChange,
    ScaleService,
    UpdateService,
    error,
)
from warren.model import RolloutState, Service, ServiceSpec, SpecRevision, TaskState, UpdateStatus, is_routed
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
    if (missing := missing_refs(state, cmd.service.spec)) is not None:
        return missing, []
    if cmd.service.id in state.services:
        return error("already_exists", f"service id {cmd.service.id} is already in use"), []
    service = cmd.service
    if state.cluster is not None:
        try:
            layout = overlay_layout(state.cluster)
        except (ipam.IpamError, ValueError) as exc:
            return error("internal", f"the overlay address plan is unusable: {exc}"), []
        # From the state's index of held VIPs: a create must not visit every service (ADR 51).
        vip = state.lowest_free_vip(*ipam.vip_bounds(layout))
        if vip is None:
            exhausted = f"the VIP range {layout.vips} is exhausted ({len(state.vip_owners)} services hold one)"
            return error("resource_exhausted", f"cannot create service {name}: {exhausted}"), []
        service = msgspec.structs.replace(service, vip=str(ipaddress.IPv4Address(vip)))
    first = SpecRevision(service.version, None, service.created_at, revisions.summary(None, service.spec))
    service = msgspec.structs.replace(service, history=(first,))
    logins: Changes = [Put("registry", login) for login in cmd.logins if login.service_id == service.id]
    return Result(id=service.id), [Put("service", service), *logins]


def update_service(state: ClusterState, cmd: UpdateService) -> tuple[Result, Changes]:
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    if cmd.expected_version and cmd.expected_version != service.version:
        return _stale(service, cmd.expected_version), []
    if cmd.spec.name != service.spec.name:
        return error("invalid_argument", "a service cannot be renamed"), []
    if (taken := _ports_taken(state, cmd.spec, service.id)) is not None:
        return taken, []
    if (missing := missing_refs(state, cmd.spec)) is not None:
        return missing, []
    if cmd.spec == service.spec:
        return Result(id=service.id), []
    if msgspec.structs.replace(cmd.spec, replicas=service.spec.replicas) == service.spec:
        return Result(id=service.id), [Put("service", _scaled(service, cmd.spec.replicas, cmd.at))]
    version = service.version + 1
    status = UpdateStatus(RolloutState.UPDATING, cmd.at, service.version, version, message=_superseded(service))
    revision = SpecRevision(version, None, cmd.at, revisions.summary(service.spec, cmd.spec))
    updated = msgspec.structs.replace(
        service,
        spec=cmd.spec,
        previous_spec=None,
        version=version,
        updated_at=cmd.at,
        update_status=status,
        history=revisions.advance(_history(service), service.spec, revision),
    )
    return Result(id=service.id), [Put("service", updated)]


def rollback_service(state: ClusterState, cmd: RollbackService) -> tuple[Result, Changes]:
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    name = service.spec.name
    if cmd.expected_version and cmd.expected_version != service.version:
        return _stale(service, cmd.expected_version), []
    history = _history(service)
    if cmd.to_version:
        revision = revisions.find(history, cmd.to_version)
        if revision is None:
            kept = ", ".join(str(r.version) for r in history)
            return error("invalid_argument", f"service {name} has no version {cmd.to_version} (it keeps: {kept})"), []
        if revision.version == service.version:
            return error("invalid_argument", f"service {name} runs version {service.version} already"), []
    else:
        found = revisions.previous(history, service.version)
        if found is None:
            # Bad input, as the issue lists it (exit 2), not a conflict: retrying never helps.
            return error("invalid_argument", f"service {name} has no earlier version to roll back to"), []
        revision = found
    target = _target(service, revision, cmd.restore_replicas)
    if target == service.spec:
        return error(
            "failed_precondition", f"version {revision.version} of service {name} is the spec it runs already"
        ), []
    if (taken := _ports_taken(state, target, service.id)) is not None:
        return taken, []
    try:
        mounts.check_volume_scale(target, target.replicas)
    except mounts.MountError as exc:  # an older spec's volume, at today's replica count (ADR 40)
        return error("failed_precondition", f"cannot roll back to version {revision.version}: {exc}"), []
    if (missing := missing_refs(state, target)) is not None:
        return missing, []
    version = service.version + 1
    message = f"rollback to version {revision.version} requested"
    status = UpdateStatus(RolloutState.ROLLBACK_STARTED, cmd.at, service.version, version, message=message)
    return Result(id=service.id), [Put("service", _rolled_back(service, revision, target, status))]


def promote_service(state: ClusterState, cmd: PromoteService) -> tuple[Result, Changes]:
    """End the wait of a canary (ADR 35); with none waiting, a clear refusal (bad input: exit 2)."""
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    if cmd.expected_version and cmd.expected_version != service.version:
        return _stale(service, cmd.expected_version), []
    promoted = strategy.promote(service, cmd.at)
    if isinstance(promoted, str):
        return error("invalid_argument", promoted), []
    return Result(id=service.id), [Put("service", msgspec.structs.replace(service, update_status=promoted))]


def apply_rollouts(state: ClusterState, rollouts: tuple[RolloutChange, ...]) -> Changes:
    """A plan's rollout changes (ADR 33), each only for the version it was decided for."""
    changes: Changes = []
    for change in rollouts:
        service = state.services.get(change.service_id)
        if service is None or service.version != change.version:
            continue
        if not change.revert:
            changes.append(Put("service", msgspec.structs.replace(service, update_status=change.status)))
            continue
        earlier = revisions.previous(_history(service), service.version)
        target = _target(service, earlier, restore_replicas=False) if earlier is not None else None
        missing = missing_refs(state, target) if target is not None else None
        if earlier is None or target is None or _ports_taken(state, target, service.id) is not None or missing:
            why = "no earlier version" if target is None else missing.message if missing else "its ports are taken"
            paused = msgspec.structs.replace(
                change.status,
                state=RolloutState.PAUSED,
                completed_at=change.status.started_at,
                message=f"paused: cannot roll back ({why}); {change.status.message}",
                to_version=service.version,
            )
            changes.append(Put("service", msgspec.structs.replace(service, update_status=paused)))
            continue
        changes.append(Put("service", _rolled_back(service, earlier, target, change.status)))
    return changes


def _stale(service: Service, expected: int) -> Result:
    """Another change landed first: say what it was (the history's summaries), so that the
    operator knows what a retry would overwrite."""
    since = [f"version {r.version}: {r.summary}" for r in service.history if r.version > expected]
    changed = "; ".join(since[-3:]) if since else f"it is at version {service.version}"
    return error(
        "failed_precondition",
        f"service {service.spec.name} changed since version {expected} ({changed}); check and retry",
    )


def _history(service: Service) -> tuple[SpecRevision, ...]:
    """The service's history; for one created before histories, its current spec alone."""
    return service.history or (SpecRevision(service.version, None, service.updated_at, ""),)


def _superseded(service: Service) -> str:
    """What a new update says of the rollout it replaces, if one was under way (as in Swarm)."""
    status = service.update_status
    if status is None or status.state in (RolloutState.COMPLETED, RolloutState.ROLLBACK_COMPLETED):
        return ""
    state = status.state.value.replace("_", " ")
    if status.state in (RolloutState.REBALANCING, RolloutState.REBALANCE_PAUSED):  # ADR 36
        return f"replaces the rebalance of version {status.to_version}, which was {state}"
    what = "rollback" if status.state.rolling_back else "update"
    return f"replaces the {what} to version {status.to_version}, which was {state}"


def _target(service: Service, revision: SpecRevision, restore_replicas: bool) -> ServiceSpec:
    """The spec a rollback to `revision` runs: a rollback restores the spec, not the scale."""
    spec = revision.spec or service.spec
    return spec if restore_replicas else msgspec.structs.replace(spec, replicas=service.spec.replicas)


def _rolled_back(service: Service, revision: SpecRevision, spec: ServiceSpec, status: UpdateStatus) -> Service:
    """A rollback is a new version (versions only go up: agents cache specs by version)."""
    version = service.version + 1
    summary = f"rollback to version {revision.version}: {revisions.summary(service.spec, spec)}"
    return msgspec.structs.replace(
        service,
        spec=spec,
        previous_spec=None,
        version=version,
        updated_at=status.started_at,
        update_status=msgspec.structs.replace(status, to_version=version),
        history=revisions.advance(
            _history(service), service.spec, SpecRevision(version, None, status.started_at, summary)
        ),
    )


def _scaled(service: Service, replicas: int, at: float) -> Service:
    """Scaling changes no task's spec, so it makes no version (no task is replaced)."""
    spec = msgspec.structs.replace(service.spec, replicas=replicas)
    return msgspec.structs.replace(service, spec=spec, updated_at=at)


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
    try:
        mounts.check_volume_scale(service.spec, cmd.replicas)
    except mounts.MountError as exc:
        return error("failed_precondition", str(exc)), []
    return Result(id=service.id), [Put("service", _scaled(service, cmd.replicas, cmd.at))]


def remove_service(state: ClusterState, cmd: RemoveService) -> tuple[Result, Changes]:
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    changes: Changes = [Delete("service", service.id)]
    changes += [
        Delete("registry", login.id) for login in state.registry_logins.values() if login.service_id == service.id
    ]
    for task in state.service_tasks(service.id):
        if task.state.terminal or task.state < TaskState.ASSIGNED:
            changes.append(Delete("task", task.id))
        elif is_routed(task):  # first out of the load balancing; the reconciler stops it (ADR 33)
            drain = msgspec.structs.replace(
                task, draining_since=cmd.at, message="draining: service removed", updated_at=cmd.at
            )
            changes.append(Put("task", drain))
        elif task.desired_state < TaskState.SHUTDOWN and not task.draining_since:
            changes.append(
                Put("task", msgspec.structs.replace(task, desired_state=TaskState.SHUTDOWN, updated_at=cmd.at))
            )
    return Result(id=service.id), changes
