"""Handlers of stack commands (#14, ADR 49): a whole stack deployed or removed in one entry.

A stack is what carries its `STACK_LABEL`: services, secrets, configs, volumes and networks. The
deploy is computed as the commands an operator would have given one by one (CreateService,
UpdateService, RemoveService, CreateSecret...), each applied by its own handler to a working
copy of the state, so every rule of those handlers holds; the first refusal refuses the whole
stack and nothing is written. A manager failover therefore never leaves half a stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from warren import mounts
from warren.commands.networks import create_network
from warren.commands.secrets import create_config, create_secret
from warren.commands.services import create_service, remove_service, update_service
from warren.commands.types import (
    ApplyStack,
    Changes,
    CreateConfig,
    CreateNetwork,
    CreateSecret,
    CreateService,
    CreateVolume,
    RemoveService,
    RemoveStack,
    RemoveVolume,
    Result,
    UpdateService,
    error,
)
from warren.commands.volumes import create_volume, remove_volume
from warren.model import Config, Network, Secret, Service
from warren.stack.spec import STACK_LABEL
from warren.state import ClusterState, Delete, Put
from warren.text import shown

T = TypeVar("T")
Handler = Callable[[ClusterState, Any], tuple[Result, Changes]]


def in_stack(labels: dict[str, str], stack: str) -> bool:
    return labels.get(STACK_LABEL) == stack


class _Work:
    """A working copy of the state that sub-commands are applied to in order; the changes they
    add up to are the stack command's, or nothing once one is refused."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state.copy()
        self.changes: Changes = []
        self.refused: Result | None = None

    def run(self, handler: Handler, command: object, what: str = "") -> bool:
        if self.refused is not None:
            return False
        result, changes = handler(self.state, command)
        if not result.ok:
            message = f"{what}: {result.message}" if what else result.message
            self.refused = error(result.code, message)
            return False
        self.state.apply(changes)
        self.changes.extend(changes)
        return True

    def put(self, kind: str, obj: Network | Service) -> None:
        change = Put("network", obj) if kind == "network" else Put("service", obj)
        self.state.apply([change])
        self.changes.append(change)

    def delete(self, kind: str, obj_id: str) -> None:
        change = Delete("network", obj_id) if kind == "network" else Delete("service", obj_id)
        self.state.apply([change])
        self.changes.append(change)


def _owner_clash(kind: str, name: str, labels: dict[str, str], stack: str) -> Result:
    owner = labels.get(STACK_LABEL)
    whose = f"stack {shown(owner)}" if owner else "no stack (it was created on its own)"
    return error("already_exists", f"{kind} {shown(name)} exists and belongs to {whose}, not to stack {shown(stack)}")


def _check_externals(state: ClusterState, cmd: ApplyStack) -> Result | None:
    finders: tuple[tuple[str, tuple[str, ...], Callable[[str], object | None]], ...] = (
        ("secret", cmd.external_secrets, state.secret_by_name),
        ("config", cmd.external_configs, state.config_by_name),
        ("network", cmd.external_networks, state.network_by_name),
        ("volume", cmd.external_volumes, state.volume_by_name),
    )
    for kind, names, find in finders:
        for name in names:
            if find(name) is None:
                return error("not_found", f"external {kind} {shown(name)} of stack {shown(cmd.stack)} does not exist")
    return None


def apply_stack(state: ClusterState, cmd: ApplyStack) -> tuple[Result, Changes]:
    """Create what is new, update what changed, leave what is equal, and remove (with `prune`)
    what the stack owns and no longer declares. The result's message names the orphans."""
    if not cmd.stack:
        return error("invalid_argument", "a stack name is required"), []
    if (missing := _check_externals(state, cmd)) is not None:
        return missing, []
    work = _Work(state)
    _networks(work, state, cmd)
    _volumes(work, state, cmd)
    _objects(work, state, cmd)
    _services(work, state, cmd)
    orphans = _remove_undeclared(work, state, cmd) if work.refused is None else []
    if work.refused is not None:
        return work.refused, []
    message = f"orphaned (not in the stack file; --prune removes them): {', '.join(orphans)}" if orphans else ""
    return Result(message=message), work.changes


def _networks(work: _Work, state: ClusterState, cmd: ApplyStack) -> None:
    for network in cmd.networks:
        current = state.network_by_name(network.name)
        labels = {**network.labels, STACK_LABEL: cmd.stack}
        if current is None:  # checked as `network create` checks it (name, subnet clashes)
            created = msgspec.structs.replace(network, labels=labels, created_at=cmd.at, updated_at=cmd.at)
            work.run(create_network, CreateNetwork(created), f"network {shown(network.name)}")
        elif not in_stack(current.labels, cmd.stack):
            work.refused = work.refused or _owner_clash("network", network.name, current.labels, cmd.stack)
        elif (current.subnet, current.internal, current.attachable) != (
            network.subnet,
            network.internal,
            network.attachable,
        ):
            # Tasks hold addresses and rules from it: as Docker, a network is not changed in place.
            work.refused = work.refused or error(
                "failed_precondition",
                f"network {shown(network.name)} of stack {shown(cmd.stack)} changed; networks cannot be changed "
                "in place: remove the stack, or give the network another name",
            )


def _volumes(work: _Work, state: ClusterState, cmd: ApplyStack) -> None:
    for volume in cmd.volumes:
        current = state.volume_by_name(volume.name)
        labels = {**volume.labels, STACK_LABEL: cmd.stack}
        if current is None:
            new = msgspec.structs.replace(volume, labels=labels, created_at=cmd.at, updated_at=cmd.at)
            work.run(create_volume, CreateVolume(new), f"volume {volume.name}")
        elif not in_stack(current.labels, cmd.stack):
            work.refused = work.refused or _owner_clash("volume", volume.name, current.labels, cmd.stack)


def _objects(work: _Work, state: ClusterState, cmd: ApplyStack) -> None:
    for secret in cmd.secrets:
        found_secret = state.secret_by_name(secret.name)
        if found_secret is None:
            labelled = msgspec.structs.replace(secret, labels={**secret.labels, STACK_LABEL: cmd.stack})
            work.run(create_secret, CreateSecret(labelled, cmd.dek_wrapped), f"secret {secret.name}")
        elif not in_stack(found_secret.labels, cmd.stack):
            work.refused = work.refused or _owner_clash("secret", secret.name, found_secret.labels, cmd.stack)
        # An existing secret of the stack is kept: the control API refused a changed value
        # (sealed values cannot be compared here), as secrets are immutable (ADR 49).
    for config in cmd.configs:
        found_config = state.config_by_name(config.name)
        if found_config is None:
            labelled_config = msgspec.structs.replace(config, labels={**config.labels, STACK_LABEL: cmd.stack})
            work.run(create_config, CreateConfig(labelled_config), f"config {config.name}")
        elif not in_stack(found_config.labels, cmd.stack):
            work.refused = work.refused or _owner_clash("config", config.name, found_config.labels, cmd.stack)
        elif found_config.data != config.data:
            work.refused = work.refused or changed_object("config", config.name, cmd.stack)


def changed_object(kind: str, name: str, stack: str) -> Result:
    return error(
        "failed_precondition",
        f"{kind} {shown(name)} of stack {shown(stack)} has another value than the one deployed; {kind}s are "
        f"immutable: give the new value a new name (e.g. {name}_v2) and deploy again",
    )


def _services(work: _Work, state: ClusterState, cmd: ApplyStack) -> None:
    for wanted in cmd.services:
        name = wanted.spec.name
        spec = msgspec.structs.replace(wanted.spec, labels={**wanted.spec.labels, STACK_LABEL: cmd.stack})
        current = state.service_by_name(name)
        if current is None:
            new = msgspec.structs.replace(wanted, spec=spec, created_at=cmd.at, updated_at=cmd.at)
            work.run(create_service, CreateService(new), f"service {name}")
            continue
        if not in_stack(current.spec.labels, cmd.stack):
            work.refused = work.refused or _owner_clash("service", name, current.spec.labels, cmd.stack)
            continue
        if current.spec.mode != spec.mode:
            work.refused = work.refused or error(
                "failed_precondition", f"service {shown(name)}: its mode cannot change; remove the stack first"
            )
            continue
        # The same path as `service update`: a new version under its update settings, or nothing.
        work.run(update_service, UpdateService(current.id, spec, cmd.at), f"service {name}")
        updated = work.state.services.get(current.id)
        if updated is not None and updated.depends_on != wanted.depends_on:
            work.put("service", msgspec.structs.replace(updated, depends_on=wanted.depends_on))


def _owned(items: Iterable[T], labels: Callable[[T], dict[str, str]], stack: str) -> list[T]:
    return [item for item in items if in_stack(labels(item), stack)]


def _remove_undeclared(work: _Work, state: ClusterState, cmd: ApplyStack) -> list[str]:
    """The stack's objects the command no longer declares: removed with `prune`, else named."""
    declared_services = {s.spec.name for s in cmd.services}
    services = _owned(state.services.values(), lambda s: s.spec.labels, cmd.stack)
    undeclared = sorted((s for s in services if s.spec.name not in declared_services), key=lambda s: s.spec.name)
    if not cmd.prune:
        return [s.spec.name for s in undeclared]
    _remove_owned(work, state, cmd.stack, cmd.at, undeclared, declared=cmd)
    return []


def _remove_owned(
    work: _Work, state: ClusterState, stack: str, at: float, services: list[Service], declared: ApplyStack | None
) -> None:
    """Remove these services of the stack, then its secrets, configs and networks that are not
    declared (all, for a removal) and that no remaining service uses. Volumes hold data: the
    stack's are removed only when no task holds them any more (as Docker, `stack rm` would keep
    them; Warren removes the ones it can and names the others)."""
    for service in services:
        work.run(remove_service, RemoveService(service.id, at), f"service {service.spec.name}")
    removed = {s.id for s in services}
    keep_secrets = {s.name for s in declared.secrets} | set(declared.external_secrets) if declared else set()
    keep_configs = {c.name for c in declared.configs} | set(declared.external_configs) if declared else set()
    keep_networks = {n.name for n in declared.networks} if declared else set()
    keep_volumes = {v.name for v in declared.volumes} if declared else set()
    remaining = [s.spec for s in work.state.services.values() if s.id not in removed]
    for secret in _owned(state.secrets.values(), lambda s: s.labels, stack):
        used = any(r.source == secret.name for spec in remaining for r in spec.secrets)
        if secret.name not in keep_secrets and not used:
            # Tasks of the removed services may still be stopping: their agents hold the value
            # already, and a stopping task is never sent its files again.
            _drop(work, "secret", secret)
    for config in _owned(state.configs.values(), lambda c: c.labels, stack):
        used = any(r.source == config.name for spec in remaining for r in spec.configs)
        if config.name not in keep_configs and not used:
            _drop(work, "config", config)
    for network in _owned(state.networks.values(), lambda n: n.labels, stack):
        used = any(a.network == network.name for spec in remaining for a in spec.networks)
        if network.name not in keep_networks and not used:
            work.delete("network", network.id)
    for volume in _owned(state.volumes.values(), lambda v: v.labels, stack):
        if volume.name not in keep_volumes and not mounts.users(work.state, volume.name):
            work.run(remove_volume, RemoveVolume(volume.id, at), f"volume {volume.name}")


def _drop(work: _Work, kind: str, obj: Secret | Config) -> None:
    """Delete a secret or config whose services go in the same command (RemoveSecret would
    refuse it while their tasks stop)."""
    change = Delete("secret", obj.id) if kind == "secret" else Delete("config", obj.id)
    work.state.apply([change])
    work.changes.append(change)


def remove_stack(state: ClusterState, cmd: RemoveStack) -> tuple[Result, Changes]:
    """Remove everything the stack created; what it declared external was not created by it and
    carries no label, so it stays."""
    services = sorted(_owned(state.services.values(), lambda s: s.spec.labels, cmd.stack), key=lambda s: s.spec.name)
    owned = bool(services) or any(
        in_stack(labels, cmd.stack)
        for labels in itertools.chain(
            (s.labels for s in state.secrets.values()),
            (c.labels for c in state.configs.values()),
            (n.labels for n in state.networks.values()),
            (v.labels for v in state.volumes.values()),
        )
    )
    if not owned:
        return error("not_found", f"stack {shown(cmd.stack)} not found"), []
    work = _Work(state)
    _remove_owned(work, state, cmd.stack, cmd.at, services, declared=None)
    if work.refused is not None:
        return work.refused, []
    return Result(), work.changes
