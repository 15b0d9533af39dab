"""The locked start-up (ADR 44): a manager whose Raft secret and TLS key are sealed can start
neither Raft nor its TLS listener. It opens its own LMDB copy of the state, then waits for the
unlock key: from `--unlock-key-file`, or from `warren cluster unlock --data-dir DIR` over a unix
socket in its data directory (mode 0600, in a 0700 directory: only whoever can already read the
data directory reaches it). There `UnlockCluster` and `GetClusterInfo` answer, and every other
Control call gets FAILED_PRECONDITION "this manager is locked: run warren cluster unlock".
Once a key opens the files, the socket closes and the normal start-up goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from warren.api.v1 import control_pb2 as cpb
from warren.manager import autolock, lockedfiles
from warren.model import ClusterInfo

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
_CONTROL = "/warren.api.v1.Control/"
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, with the final NUL


@dataclass(frozen=True)
class OpenedKeys:
    raft_secret: str
    kek: bytes
    tls_key_pem: bytes


def socket_path(data: Path) -> Path:
    return data / SOCKET_NAME


def open_files(data: Path, cluster: ClusterInfo | None, unlock_key: str) -> OpenedKeys:
    """The files opened by the KEK that `unlock_key` unwraps from this manager's own copy of the
    state. Raises UnlockKeyError with a one-line reason (a wrong key says which key it needs)."""
    autolock.parse_unlock_key(unlock_key)
    if cluster is None or not autolock.is_locked(cluster):
        raise autolock.UnlockKeyError(
            "this manager's files are sealed but its state says autolock is off (it stopped while "
            "autolock was being turned off): it cannot open them; re-add it as a new manager"
        )
    try:
        kek = autolock.unlocked_kek(cluster, unlock_key)
    except autolock.UnlockKeyError as exc:
        raise autolock.UnlockKeyError(f"{exc} ({autolock.ROTATION_HINT})") from None
    opened = lockedfiles.open_all(data, kek)
    return OpenedKeys(opened.raft_secret, kek, opened.tls_key_pem)


def _locked_info(cluster: ClusterInfo | None) -> cpb.ClusterInfo:
    return cpb.ClusterInfo(id=cluster.id if cluster else "", autolock=True, locked=True)


class _LockedControl(grpc.GenericRpcHandler):
    """Every Control method: the two a locked manager answers, the rest refused."""

    def __init__(self, data: Path, cluster: ClusterInfo | None, unlocked: asyncio.Future[OpenedKeys]) -> None:
        self._data = data
        self._cluster = cluster
        self._unlocked = unlocked

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(_CONTROL):
            return None
        name = method[len(_CONTROL) :]
        if name == "GetClusterInfo":
            return grpc.unary_unary_rpc_method_handler(
                self._info,
                request_deserializer=cpb.GetClusterInfoRequest.FromString,
                response_serializer=cpb.ClusterInfo.SerializeToString,
            )
        if name == "UnlockCluster":
            return grpc.unary_unary_rpc_method_handler(
                self._unlock,
                request_deserializer=cpb.UnlockClusterRequest.FromString,
                response_serializer=cpb.UnlockClusterResponse.SerializeToString,
            )
        # Raw bytes in, no message out: whatever the method, the answer is the status.
        return grpc.unary_unary_rpc_method_handler(_refuse)

    async def _info(self, request: cpb.GetClusterInfoRequest, context: grpc.aio.ServicerContext) -> cpb.ClusterInfo:
        return _locked_info(self._cluster)

    async def _unlock(
        self, request: cpb.UnlockClusterRequest, context: grpc.aio.ServicerContext
    ) -> cpb.UnlockClusterResponse:
        if self._unlocked.done():
            return cpb.UnlockClusterResponse()  # a second unlock racing the first: already open
        try:
            keys = await asyncio.to_thread(open_files, self._data, self._cluster, request.unlock_key)
        except autolock.UnlockKeyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not self._unlocked.done():
            self._unlocked.set_result(keys)
        return cpb.UnlockClusterResponse()


async def _refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, autolock.MANAGER_LOCKED)
    return b""  # not reached: abort raises


async def wait_for_unlock(data: Path, cluster: ClusterInfo | None, stop: asyncio.Event) -> OpenedKeys | None:
    """Serve the locked Control API on the unix socket until a key opens the files (returned),
    or `stop` is set (None). Raises OSError if the socket cannot be made."""
    path = socket_path(data)
    if len(str(path)) > _MAX_SOCKET_PATH:
        raise OSError(f"the data directory's path is too long for the unlock socket {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a manager that was killed while locked
    unlocked: asyncio.Future[OpenedKeys] = asyncio.get_running_loop().create_future()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_LockedControl(data, cluster, unlocked),))
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {path}")
    await server.start()
    try:
        path.chmod(0o600)  # the directory is 0700 already: this is belt and braces
        print(
            f"This manager is locked (autolock): run `warren cluster unlock --data-dir {data}` "
            "(or start it with --unlock-key-file). Until then it serves only that, on "
            f"{path}.",
            flush=True,
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((unlocked, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        await server.stop(1.0)  # lets the UnlockCluster answer go out
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not unlocked.done():
        unlocked.cancel()
        return None
    log.info("unlocked: starting Raft and serving")
    return unlocked.result()
