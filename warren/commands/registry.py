"""Handlers of registry logins (ADR 43): store one, remove one. The password arrives sealed."""

from __future__ import annotations

import msgspec

from warren.commands.types import Changes, RemoveRegistryLogin, Result, SetRegistryLogin, error
from warren.model import registry_login_id
from warren.state import ClusterState, Delete, Put
from warren.text import shown


def set_registry_login(state: ClusterState, cmd: SetRegistryLogin) -> tuple[Result, Changes]:
    """A new login, or a new user or password for a known one (its creation time is kept)."""
    login = cmd.login
    if login.id != registry_login_id(login.host, login.service_id) or not login.sealed_password:
        return error("invalid_argument", f"malformed registry login {shown(login.id)}"), []
    if login.service_id and login.service_id not in state.services:
        return error("not_found", f"service {login.service_id} not found"), []
    previous = state.registry_logins.get(login.id)
    if previous is not None:
        login = msgspec.structs.replace(login, created_at=previous.created_at)
    return Result(id=login.id), [Put("registry", login)]


def remove_registry_login(state: ClusterState, cmd: RemoveRegistryLogin) -> tuple[Result, Changes]:
    if cmd.id not in state.registry_logins:
        return error("not_found", f"not logged in to registry {shown(cmd.id)}"), []
    return Result(id=cmd.id), [Delete("registry", cmd.id)]
