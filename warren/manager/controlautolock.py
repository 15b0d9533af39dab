"""The Control API's autolock methods (ADR 44): turn it on or off, rotate the unlock key, unlock.

Mixed into ControlService, whose `_store`, `_propose`, `_keyring` and `_raft_secret` they use.
The unlock key is made here and returned once (on enabling and on a rotation): no manager keeps
it. Turning autolock off and rotating use the KEK this manager holds, so they need no key; a
wrong key given to `UnlockCluster` is refused before anything changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.manager import autolock, secretkeys
from warren.manager.secretkeys import KeyRing
from warren.manager.server import ApiError
from warren.model import ClusterInfo

if TYPE_CHECKING:
    from warren.manager.ports import StateReader


def _cluster(store: StateReader) -> ClusterInfo:
    with store.read() as state:
        if state.cluster is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
        return state.cluster


class AutolockControl:
    """Autolock, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _keyring: KeyRing
    _raft_secret: str

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

        async def _keyed_cluster(self) -> ClusterInfo: ...  # SecretsControl: the first key pair

    def _held_kek(self, cluster: ClusterInfo) -> bytes:
        try:
            return self._keyring.kek(cluster)
        except secretkeys.SecretKeyError:
            message = "this manager does not hold the cluster's keys: ask another manager"
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, message) from None

    async def _set_keys(self, cluster: ClusterInfo, keys: autolock.RootedKeys) -> None:
        await self._propose(
            commands.SetRootedKeys(cluster.ca_key_pem, keys.kek_wrapped, keys.dek_wrapped, keys.ca_key_pem)
        )

    async def UpdateAutolock(self, request: cpb.UpdateAutolockRequest, context: object) -> cpb.UnlockKeyResponse:
        cluster = _cluster(self._store)
        if request.enable == autolock.is_locked(cluster):
            return cpb.UnlockKeyResponse(autolock=request.enable)  # already so: no new key
        if not request.enable:
            keys = autolock.unlock_by_kek(cluster, self._raft_secret, self._held_kek(cluster))
            await self._set_keys(cluster, keys)
            return cpb.UnlockKeyResponse(autolock=False)
        # A cluster without secrets gets its key pair first, under the Raft root, in an entry of
        # its own: every manager opens the KEK as that entry applies (LockKeeper), before the
        # lock moves it under the unlock key, so no follower is left locked (ADR 44).
        cluster = await self._keyed_cluster()
        self._held_kek(cluster)  # keep it: after the lock the Raft secret no longer opens it
        unlock_key = autolock.new_unlock_key()
        try:
            keys = autolock.lock(cluster, self._raft_secret, unlock_key)
        except secretkeys.SecretKeyError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot turn autolock on: {exc}") from None
        await self._set_keys(cluster, keys)
        self._keyring.hold_kek(autolock.unlocked_kek(_cluster(self._store), unlock_key))
        return cpb.UnlockKeyResponse(autolock=True, unlock_key=unlock_key)

    async def GetUnlockKey(self, request: cpb.GetUnlockKeyRequest, context: object) -> cpb.UnlockKeyResponse:
        cluster = _cluster(self._store)
        if not autolock.is_locked(cluster):
            if request.rotate:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "autolock is off: there is no unlock key to rotate")
            return cpb.UnlockKeyResponse(autolock=False)
        if not request.rotate:
            return cpb.UnlockKeyResponse(autolock=True)  # never stored: it cannot be shown again
        unlock_key = autolock.new_unlock_key()
        await self._set_keys(cluster, autolock.rotate_by_kek(cluster, self._held_kek(cluster), unlock_key))
        return cpb.UnlockKeyResponse(autolock=True, unlock_key=unlock_key)

    async def UnlockCluster(self, request: cpb.UnlockClusterRequest, context: object) -> cpb.UnlockClusterResponse:
        """On a manager that runs unlocked, this checks the key and changes nothing; a locked
        manager answers it from its locked server (ADR 44)."""
        try:
            autolock.parse_unlock_key(request.unlock_key)
        except autolock.UnlockKeyError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        cluster = _cluster(self._store)
        if not autolock.is_locked(cluster):
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "autolock is off: there is nothing to unlock")
        try:
            kek = autolock.unlocked_kek(cluster, request.unlock_key)
        except autolock.UnlockKeyError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._keyring.hold_kek(kek)
        return cpb.UnlockClusterResponse()
