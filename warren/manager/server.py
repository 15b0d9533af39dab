"""The managers' gRPC server: mTLS, per-method role authorization, error mapping and metrics.

Servicers raise ApiError (or let a ProposalError through); the guard turns both into a proper
status code with a message a person can act on, and records the request in the metrics.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from warren import commands, tls
from warren.api.leader import not_leader_message
from warren.api.metadata import CONSISTENT_KEY, MANAGERS_KEY
from warren.api.v1 import ca_pb2_grpc, control_pb2_grpc, dispatcher_pb2_grpc, managers_pb2_grpc
from warren.manager import metrics, paging
from warren.manager.dispatchwire import add_dispatcher_to_server
from warren.manager.ports import ProposalError, Proposer, StateReader
from warren.pki import Identity
from warren.text import shown

log = logging.getLogger(__name__)

# Who may call what. Anything not listed is refused.
_ROLES_BY_SERVICE = {
    "warren.api.v1.Control": frozenset({"admin"}),
    "warren.api.v1.Dispatcher": frozenset({"worker", "manager"}),
    "warren.api.v1.NodeCertificates": frozenset({"worker", "manager"}),
    "warren.api.v1.Managers": frozenset({"manager"}),
    "grpc.health.v1.Health": frozenset({"admin", "worker", "manager"}),
}

caller: contextvars.ContextVar[Identity] = contextvars.ContextVar("caller")

_RESULT_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unknown": grpc.StatusCode.UNKNOWN,
    "internal": grpc.StatusCode.INTERNAL,
}


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    """The INVALID_ARGUMENT every Control method answers bad input with."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _Named(Protocol):
    @property
    def id(self) -> str: ...


Named = TypeVar("Named", bound=_Named)


T = TypeVar("T")


def page_reply(
    kind: str,
    items: Iterable[T],
    key: Callable[[T], paging.Key],
    key_types: tuple[type, ...],
    request: paging.PagedRequest,
    add: Callable[[T], object],
    out: paging.Repeated,
    *,
    sorted_index: bool = False,
) -> str:
    """One page of a list in the order of `key`, as `request` (page_size, page_token) asks, put
    into the reply's field `out` by `add`; the next page's token. With `sorted_index`, `items`
    is a sequence the state keeps sorted by `key`: the page is a bisect and a slice (ADR 70)."""
    size, token = request.page_size, request.page_token
    try:
        if sorted_index:
            ordered = cast(Sequence[T], items)
            return paging.page_sorted(kind, ordered, key, key_types, add, out, size, token)
        return paging.page(kind, items, key, key_types, add, out, size, token)
    except paging.PageTokenError as exc:
        raise invalid(str(exc)) from None


def resolve_ref(kind: str, objects: dict[str, Named], by_name: Callable[[str], Named | None], ref: str) -> Named:
    """An object by name, id, or unique id prefix: the one lookup of every `inspect`/`rm` argument."""
    if not ref:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"a {kind} name or id is required")
    found = by_name(ref) or objects.get(ref)
    if found is not None:
        return found
    matches = [o for o in objects.values() if o.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{kind} id prefix {shown(ref)} is ambiguous ({len(matches)} {kind}s)"
        )
    raise ApiError(grpc.StatusCode.NOT_FOUND, f"{kind} {shown(ref)} not found")


def check_result(result: commands.Result) -> commands.Result:
    """Raise the ApiError matching a failed command result."""
    if not result.ok:
        raise ApiError(_RESULT_CODES.get(result.code, grpc.StatusCode.INTERNAL), result.message)
    return result


def not_leader(store: StateReader, raft: Proposer, why: str = "") -> ApiError:
    """UNAVAILABLE naming the leader's API address, for what only the leader serves."""
    leader = raft.status().leader
    with store.read() as state:
        addr = next((n.addr for n in state.nodes.values() if leader and n.raft_addr == leader), "")
    return ApiError(grpc.StatusCode.UNAVAILABLE, not_leader_message(addr, why))


# An error's message travels in the reply's trailing metadata, which clients bound (8 KiB by
# default): past it the reply itself is lost. Messages quote input cut short (warren.text.shown);
# this is the backstop for any that would not.
MAX_MESSAGE = 1024
MALFORMED = "malformed request: the message is not a valid {} protobuf"


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ApiError):
        return exc.code, _short(exc.message)
    if isinstance(exc, ProposalError):
        return _RESULT_CODES.get(exc.code, grpc.StatusCode.UNKNOWN), _short(exc.message)
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, _short(f"internal error: {type(exc).__name__}: {exc}")


class _Malformed:
    """Stands for a request whose bytes did not parse: the handler answers INVALID_ARGUMENT.
    Left to grpc, a deserializer that raises is logged with a traceback and answered UNKNOWN."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning a _Malformed instead of raising."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            kind = getattr(deserializer, "__qualname__", "").partition(".")[0] or "request"
            return _Malformed(kind)

    return decode


def refuse_malformed(request: Any) -> None:
    """Raise INVALID_ARGUMENT if `request` did not parse."""
    if isinstance(request, _Malformed):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED.format(request.kind))


class MalformedRequestGuard(grpc.aio.ServerInterceptor):
    """For a server without the _Guard (the join listener): unparsable requests get
    INVALID_ARGUMENT. Unary-unary methods only, the only kind such a server has."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not handler.unary_unary:
            return handler
        behavior = handler.unary_unary

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED.format(request.kind))
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


REMOVED_NODE = "this node was removed from the cluster"
REVOKED_ADMIN = "this admin certificate was revoked"
UNTRUSTED_ROOT = "this certificate was issued by a CA the cluster no longer trusts (the CA was rotated); get a new one"


_SERVED_WHILE_LOCKED = frozenset({"GetClusterInfo", "UnlockCluster"})
# The bidirectional methods the guard serves (ADR 59): the caller is authorized once, when the
# stream opens (its certificate cannot change within one HTTP/2 stream), and every request is
# parsed before the method sees it. Any other client-streaming method is refused.
_BIDI_METHODS = frozenset(
    {
        "/warren.api.v1.Control/Exec",
        "/warren.api.v1.Dispatcher/ExecAttach",
        "/warren.api.v1.Dispatcher/StatusReports",
        "/warren.api.v1.Dispatcher/Heartbeats",
    }
)


class _Guard:
    """Authorizes every call of the API server and turns errors into status codes. It wraps each
    method's handler where the handlers are registered (`Registration`), not as an interceptor:
    grpc.aio runs an interceptor as a coroutine per call, before the call's own (ADR 86)."""

    def __init__(
        self,
        cluster_id: Callable[[], str],
        revoked: Callable[[str], bool],
        read_barrier: Callable[[], Awaitable[Any]] | None = None,
        managers: Callable[[], list[str]] | None = None,
        trusted_roots: Callable[[], frozenset[str]] | None = None,
        locked: Callable[[], str] | None = None,
    ) -> None:
        self._locked = locked  # why this manager serves no Control call but these (ADR 44), or ""
        self._cluster_id = cluster_id
        self._revoked = revoked
        self._trusted_roots = trusted_roots
        self._read_barrier = read_barrier
        self._managers = managers
        # The guarded handler of each method, built once: grpc asks for it on every call (ADR 58).
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def guarded(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` of `method`, guarded; built once per method."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        service = method.split("/")[1] if method.count("/") == 2 else ""
        roles = _ROLES_BY_SERVICE.get(service, frozenset())
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, roles, handler.unary_unary),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, roles, handler.unary_stream),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and method in _BIDI_METHODS:
            return grpc.stream_stream_rpc_method_handler(
                self._bidi(method, roles, handler.stream_stream),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        # Only the listed bidirectional methods are served; refuse rather than serve one unauthorized.
        return grpc.unary_unary_rpc_method_handler(self._refuse_streaming)

    @staticmethod
    async def _refuse_streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "streaming requests are not served")

    def _authorize(self, context: grpc.aio.ServicerContext, roles: frozenset[str]) -> Identity:
        identity = tls.peer_identity(context)
        if identity is None:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        if identity.cluster_id != self._cluster_id():
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "this certificate belongs to another cluster")
        if self._revoked(identity.node_id):
            message = REVOKED_ADMIN if identity.role == "admin" else REMOVED_NODE
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, message)
        # A connection opened before a CA rotation ended keeps its verified certificate: refuse
        # it here once its root is no longer trusted (ADR 24).
        if self._trusted_roots is not None and identity.issuer_key_id not in self._trusted_roots():
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, UNTRUSTED_ROOT)
        if identity.role not in roles:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a {identity.role} certificate may not call this method (allowed: {', '.join(sorted(roles))})",
            )
        return identity

    def _refuse_if_locked(self, method: str) -> None:
        if self._locked is not None and method.rsplit("/", 1)[-1] not in _SERVED_WHILE_LOCKED:
            reason = self._locked()
            if reason:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, reason)

    async def _before_control(self, context: grpc.aio.ServicerContext) -> None:
        if self._managers is not None:
            context.set_trailing_metadata(((MANAGERS_KEY, ",".join(self._managers())),))
        metadata = dict(context.invocation_metadata() or ())
        if self._read_barrier is not None and metadata.get(CONSISTENT_KEY) == "1":
            await self._read_barrier()

    def _unary(self, method: str, roles: frozenset[str], behavior: Callable[..., Awaitable[Any]]) -> Callable:
        control = method.startswith("/warren.api.v1.Control/")

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                caller.set(self._authorize(context, roles))
                refuse_malformed(request)
                if control:
                    self._refuse_if_locked(method)
                    await self._before_control(context)
                return await behavior(request, context)
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code, message = _status_of(exc)
                await context.abort(code, message)
            finally:
                metrics.observe_request(method, code.name, time.perf_counter() - started)

        return guarded

    def _stream(self, method: str, roles: frozenset[str], behavior: Callable[..., AsyncIterator[Any]]) -> Callable:
        def checked(request: Any) -> Any:
            refuse_malformed(request)
            return request

        return self._guarded_stream(method, roles, behavior, checked)

    def _bidi(self, method: str, roles: frozenset[str], behavior: Callable[..., AsyncIterator[Any]]) -> Callable:
        async def each_checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                refuse_malformed(request)
                yield request

        return self._guarded_stream(method, roles, behavior, each_checked)

    def _guarded_stream(
        self,
        method: str,
        roles: frozenset[str],
        behavior: Callable[..., AsyncIterator[Any]],
        checked: Callable[[Any], Any],
    ) -> Callable:
        """A streaming method's guard: authorize, check what arrives (`checked`: the request, or
        each message of a bidirectional stream as it comes), refuse while locked, time it."""
        control = method.startswith("/warren.api.v1.Control/")

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                caller.set(self._authorize(context, roles))
                request = checked(request)
                if control:
                    self._refuse_if_locked(method)
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code, message = _status_of(exc)
                await context.abort(code, message)
            finally:
                metrics.observe_request(method, code.name, time.perf_counter() - started)

        return guarded


def build_server(
    listen_addr: str,
    credentials: tls.Credentials,
    cluster_id: Callable[[], str],
    revoked: Callable[[str], bool],
    control: control_pb2_grpc.ControlServicer,
    dispatcher: dispatcher_pb2_grpc.DispatcherServicer,
    certificates: ca_pb2_grpc.NodeCertificatesServicer,
    managers: managers_pb2_grpc.ManagersServicer,
    read_barrier: Callable[[], Awaitable[Any]] | None = None,
    manager_addrs: Callable[[], list[str]] | None = None,
    certs_dir: Path | None = None,
    trusted_roots: Callable[[], frozenset[str]] | None = None,
    trust_bundle: Callable[[], bytes] | None = None,
    locked: Callable[[], str] | None = None,
    open_key: Callable[[bytes], bytes] | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The mTLS API server. `revoked(node_id)` says whether a node was removed (its certificate
    is then refused on every method); `read_barrier` serves calls asking for consistent reads;
    `manager_addrs` lists the managers' API addresses for clients to follow. With `certs_dir`,
    the certificate is re-read from there when it changes (renewal). `trusted_roots` gives the
    key ids of the roots whose certificates are accepted (two during a CA rotation), and
    `trust_bundle` their PEM, which the TLS handshake verifies clients against."""
    guard = _Guard(cluster_id, revoked, read_barrier, manager_addrs, trusted_roots, locked)
    server = grpc.aio.server(options=tls.server_options())
    generic = generic_only(server, guard)  # every service's handlers are guarded
    control_pb2_grpc.add_ControlServicer_to_server(control, generic)
    add_dispatcher_to_server(dispatcher, generic)  # a session's messages are Assignments (ADR 57)
    ca_pb2_grpc.add_NodeCertificatesServicer_to_server(certificates, generic)
    managers_pb2_grpc.add_ManagersServicer_to_server(managers, generic)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, generic)
    if certs_dir is None:
        creds = tls.server_credentials(*credentials)
    else:
        creds = tls.reloading_server_credentials(certs_dir, trust_bundle, open_key)
    bound = server.add_secure_port(listen_addr, creds)
    if bound == 0:
        raise OSError(f"cannot listen on {listen_addr}")
    return server, health_servicer


class _GuardedHandlers(grpc.GenericRpcHandler):
    """A service's generic handler whose method handlers all come guarded."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: _Guard) -> None:
        self._inner = inner
        self._guard = guard

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else self._guard.guarded(details.method, handler)


class Registration:
    """What the generated add_*_to_server functions are given instead of the server (ADR 86).

    Handlers are registered as generic ones only: grpc.aio keeps one pending request per
    registered method and waits on all of them with asyncio.wait at every call it accepts, which
    with the API's 70 methods was 8 % of the leader's event loop under writes; a generic handler
    is found by a dict lookup per service. With `guard`, each handler comes wrapped by it."""

    def __init__(self, server: grpc.aio.Server, guard: _Guard | None = None) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        guard = self._guard
        self._server.add_generic_rpc_handlers(
            handlers if guard is None else tuple(_GuardedHandlers(h, guard) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Dropped: the same handlers came through add_generic_rpc_handlers."""


def generic_only(server: grpc.aio.Server, guard: _Guard | None = None) -> grpc.aio.Server:
    """`server` as the generated add_*_to_server functions should see it (see Registration)."""
    return cast(grpc.aio.Server, Registration(server, guard))


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
