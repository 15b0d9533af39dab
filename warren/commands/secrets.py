"""Handlers of secret and config commands (ADR 38): create, remove, and the cluster's key pair.

A secret arrives sealed (the control API encrypts it before proposing), so nothing here sees
a plain value. Names are unique per kind; an object a service or a live task refers to cannot
be removed, so a name means one value for as long as any task may need it.
"""

from __future__ import annotations

import msgspec

from warren.commands.networks import missing_networks
from warren.commands.types import (
    Changes,
    CreateConfig,
    CreateSecret,
    RemoveConfig,
    RemoveSecret,
    Result,
    SetRootedKeys,
    SetSecretKeys,
    error,
)
from warren.model import FileRef, ServiceSpec
from warren.state import ClusterState, Delete, Put
from warren.text import shown


def _refs(spec: ServiceSpec, kind: str) -> tuple[FileRef, ...]:
    return spec.secrets if kind == "secret" else spec.configs


def users(state: ClusterState, kind: str, name: str) -> list[str]:
    """The services whose spec, or one of whose live tasks, uses the `kind` called `name`."""
    names = {s.spec.name for s in state.services.values() if any(r.source == name for r in _refs(s.spec, kind))}
    live = (t for t in state.tasks.values() if not t.state.terminal)
    names |= {t.service_name for t in live if any(r.source == name for r in _refs(t.spec, kind))}
    return sorted(names)


def missing_refs(state: ClusterState, spec: ServiceSpec) -> Result | None:
    """A service may only name secrets, configs and networks that exist (checked again at apply: one may
    be removed between the API's check and the commit)."""
    for ref in spec.secrets:
        if state.secret_by_name(ref.source) is None:
            return error("not_found", f"secret {shown(ref.source)} not found (service {spec.name})")
    for ref in spec.configs:
        if state.config_by_name(ref.source) is None:
            return error("not_found", f"config {shown(ref.source)} not found (service {spec.name})")
    return missing_networks(state, spec)  # and networks (#14)


def set_secret_keys(state: ClusterState, cmd: SetSecretKeys) -> tuple[Result, Changes]:
    """The first key pair proposed wins: two managers creating the first secret at once both
    propose one, and every sealed value must use the one that was kept."""
    cluster = state.cluster
    if cluster is None:
        return error("failed_precondition", "the cluster is not initialised"), []
    if cluster.dek_wrapped:
        return Result(), []
    if not cmd.kek_wrapped or not cmd.dek_wrapped:
        return error("invalid_argument", "both wrapped keys are required"), []
    updated = msgspec.structs.replace(cluster, kek_wrapped=cmd.kek_wrapped, dek_wrapped=cmd.dek_wrapped)
    return Result(), [Put("cluster", updated)]


def set_rooted_keys(state: ClusterState, cmd: SetRootedKeys) -> tuple[Result, Changes]:
    """Autolock's one state change (ADR 44). A CA rotation or a first key pair committed since
    the keys were computed would be lost: refused, the caller computes again."""
    cluster = state.cluster
    if cluster is None:
        return error("failed_precondition", "the cluster is not initialised"), []
    if not (cmd.kek_wrapped and cmd.dek_wrapped and cmd.ca_key_pem):
        return error("invalid_argument", "the wrapped KEK, DEK and CA key are all required"), []
    if cluster.ca_key_pem != cmd.from_ca_key_pem or cluster.dek_wrapped not in ("", cmd.dek_wrapped):
        return error("failed_precondition", "the cluster's keys changed meanwhile; retry"), []
    updated = msgspec.structs.replace(
        cluster, kek_wrapped=cmd.kek_wrapped, dek_wrapped=cmd.dek_wrapped, ca_key_pem=cmd.ca_key_pem
    )
    return Result(), [Put("cluster", updated)]


def create_secret(state: ClusterState, cmd: CreateSecret) -> tuple[Result, Changes]:
    secret = cmd.secret
    if state.cluster is None or state.cluster.dek_wrapped != cmd.dek_wrapped or not cmd.dek_wrapped:
        return error("failed_precondition", "the cluster's data key changed meanwhile; retry"), []
    if state.secret_by_name(secret.name) is not None:
        return error("already_exists", f"secret name {shown(secret.name)} is already in use"), []
    if secret.id in state.secrets:
        return error("already_exists", f"secret id {secret.id} is already in use"), []
    return Result(id=secret.id), [Put("secret", secret)]


def create_config(state: ClusterState, cmd: CreateConfig) -> tuple[Result, Changes]:
    config = cmd.config
    if state.config_by_name(config.name) is not None:
        return error("already_exists", f"config name {shown(config.name)} is already in use"), []
    if config.id in state.configs:
        return error("already_exists", f"config id {config.id} is already in use"), []
    return Result(id=config.id), [Put("config", config)]


def _in_use(state: ClusterState, kind: str, name: str) -> Result | None:
    using = users(state, kind, name)
    if not using:
        return None
    return error(
        "failed_precondition",
        f"{kind} {shown(name)} is in use by service {', '.join(using)}: remove it from the service first",
    )


def remove_secret(state: ClusterState, cmd: RemoveSecret) -> tuple[Result, Changes]:
    secret = state.secrets.get(cmd.secret_id)
    if secret is None:
        return error("not_found", f"secret {cmd.secret_id} not found"), []
    if (busy := _in_use(state, "secret", secret.name)) is not None:
        return busy, []
    return Result(id=secret.id), [Delete("secret", secret.id)]


def remove_config(state: ClusterState, cmd: RemoveConfig) -> tuple[Result, Changes]:
    config = state.configs.get(cmd.config_id)
    if config is None:
        return error("not_found", f"config {cmd.config_id} not found"), []
    if (busy := _in_use(state, "config", config.name)) is not None:
        return busy, []
    return Result(id=config.id), [Delete("config", config.id)]
