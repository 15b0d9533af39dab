"""The Control API's backup (ADR 56): the replicated state at one Raft index, streamed in chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import grpc

from warren.api.v1 import control_pb2 as cpb
from warren.manager import autolock, backup
from warren.manager.ports import Consensus, StateReader
from warren.manager.server import ApiError
from warren.manager.store import Snapshot


@runtime_checkable
class _Dumpable(Protocol):
    def dump(self) -> Snapshot: ...


class BackupControl:
    """BackupCluster, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _raft: Consensus
    _raft_secret: str

    async def BackupCluster(self, request: cpb.BackupClusterRequest, context: object) -> AsyncIterator[cpb.BackupChunk]:
        store = self._store
        if not isinstance(store, _Dumpable) or not self._raft_secret:  # the in-memory store of unit tests
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "this manager cannot take backups")
        blob, index = await asyncio.to_thread(self._take, store)
        for start in range(0, len(blob), backup.CHUNK_BYTES):
            yield cpb.BackupChunk(data=blob[start : start + backup.CHUNK_BYTES], raft_index=index, total_size=len(blob))

    def _take(self, store: _Dumpable) -> tuple[bytes, int]:
        state = store.dump()  # consistent: the state at exactly its applied index
        if state.cluster is None:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "this manager holds no cluster state yet")
        # Locked, the unlock key is the keys' root and the Raft secret only opens this cluster's Raft
        # port: a backup does not carry it, and a restore makes a new one (ADR 56).
        secret = "" if autolock.is_locked(state.cluster) else self._raft_secret
        taken = backup.Backup(
            state.cluster.id, state.applied_index, self._raft.status().term, time.time(), secret, state
        )
        return backup.encode(taken), state.applied_index
