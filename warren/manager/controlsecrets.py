"""The Control API's secret and config methods (ADR 38).

Mixed into ControlService, whose `_store`, `_propose` and `_keyring` they use. A secret's value
is sealed here, before it is proposed, so the Raft log, the snapshots and LMDB never hold it
plain; no reply carries it. A config is stored as given, and `GetConfig` returns its value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import grpc

from warren import commands
from warren.api import convert
from warren.api.v1 import control_pb2 as cpb
from warren.commands.secrets import users
from warren.ids import new_id
from warren.manager.secretkeys import KeyRing, SecretKeyError
from warren.manager.server import ApiError, check_result, invalid, resolve_ref
from warren.model import ClusterInfo, Config, Secret
from warren.state import ClusterState
from warren.text import shown
from warren.validate import ValidationError, check_labels, check_object_name, check_value_size

if TYPE_CHECKING:
    from warren.manager.ports import StateReader

T = TypeVar("T")


def _check_create(kind: str, name: str, data: bytes, labels: dict[str, str]) -> None:
    try:
        check_object_name(kind, name)
        check_value_size(kind, len(data))
        check_labels(f"{kind} label", labels)
    except ValidationError as exc:
        raise invalid(str(exc)) from None


def _cluster(state: ClusterState) -> ClusterInfo:
    if state.cluster is None:
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
    return state.cluster


class SecretsControl:
    """Secrets and configs, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _keyring: KeyRing

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

    # -- secrets -------------------------------------------------------------------------------
    async def CreateSecret(self, request: cpb.CreateSecretRequest, context: object) -> cpb.Secret:
        labels = dict(request.labels)
        _check_create("secret", request.name, request.data, labels)
        with self._store.read() as state:
            if state.secret_by_name(request.name) is not None:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"secret name {shown(request.name)} is already in use")
        cluster = await self._keyed_cluster()
        now = time.time()
        secret_id = new_id()
        sealed = self._keys(lambda: self._keyring.seal(cluster, secret_id, request.data))
        secret = Secret(secret_id, request.name, sealed, len(request.data), labels, now, now)
        await self._propose(commands.CreateSecret(secret, cluster.dek_wrapped))
        return convert.secret_to_pb(secret)

    async def _keyed_cluster(self) -> ClusterInfo:
        """The cluster, with its data key: made by the first value sealed (a secret or a
        registry login, ADR 43); the first proposal wins, so read it back."""
        with self._store.read() as state:
            cluster = _cluster(state)
        if not cluster.dek_wrapped:
            kek, dek = self._keys(self._keyring.new_key_pair)
            await self._propose(commands.SetSecretKeys(kek, dek))
            with self._store.read() as state:
                cluster = _cluster(state)
        return cluster

    @staticmethod
    def _keys(make: Callable[[], T]) -> T:
        try:
            return make()
        except SecretKeyError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"the cluster's secret keys: {exc}") from None

    async def ListSecrets(self, request: cpb.ListSecretsRequest, context: object) -> cpb.ListSecretsResponse:
        with self._store.read() as state:
            secrets = sorted(state.secrets.values(), key=lambda s: s.name)
            return cpb.ListSecretsResponse(
                secrets=[convert.secret_to_pb(s, users(state, "secret", s.name)) for s in secrets]
            )

    async def GetSecret(self, request: cpb.GetSecretRequest, context: object) -> cpb.Secret:
        with self._store.read() as state:
            secret = resolve_ref("secret", state.secrets, state.secret_by_name, request.secret)
            return convert.secret_to_pb(secret, users(state, "secret", secret.name))

    async def RemoveSecret(self, request: cpb.RemoveSecretRequest, context: object) -> cpb.Secret:
        with self._store.read() as state:
            secret = resolve_ref("secret", state.secrets, state.secret_by_name, request.secret)
            # The handler judges "in use" on the state as read first: a refusal costs no entry.
            check_result(commands.apply(state, commands.RemoveSecret(secret.id))[0])
        await self._propose(commands.RemoveSecret(secret.id, at=time.time()))
        return convert.secret_to_pb(secret)

    # -- configs -------------------------------------------------------------------------------
    async def CreateConfig(self, request: cpb.CreateConfigRequest, context: object) -> cpb.Config:
        labels = dict(request.labels)
        _check_create("config", request.name, request.data, labels)
        with self._store.read() as state:
            if state.config_by_name(request.name) is not None:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"config name {shown(request.name)} is already in use")
        now = time.time()
        config = Config(new_id(), request.name, bytes(request.data), labels, now, now)
        await self._propose(commands.CreateConfig(config))
        return convert.config_to_pb(config)

    async def ListConfigs(self, request: cpb.ListConfigsRequest, context: object) -> cpb.ListConfigsResponse:
        with self._store.read() as state:
            configs = sorted(state.configs.values(), key=lambda c: c.name)
            return cpb.ListConfigsResponse(
                configs=[convert.config_to_pb(c, users(state, "config", c.name)) for c in configs]
            )

    async def GetConfig(self, request: cpb.GetConfigRequest, context: object) -> cpb.Config:
        with self._store.read() as state:
            config = resolve_ref("config", state.configs, state.config_by_name, request.config)
            return convert.config_to_pb(config, users(state, "config", config.name), with_data=True)

    async def RemoveConfig(self, request: cpb.RemoveConfigRequest, context: object) -> cpb.Config:
        with self._store.read() as state:
            config = resolve_ref("config", state.configs, state.config_by_name, request.config)
            check_result(commands.apply(state, commands.RemoveConfig(config.id))[0])
        await self._propose(commands.RemoveConfig(config.id, at=time.time()))
        return convert.config_to_pb(config)
