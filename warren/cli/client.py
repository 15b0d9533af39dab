"""The CLI's connection to the managers: mTLS channels, failover, and gRPC errors as exit codes.

Imports grpc, so only command handlers that talk to a manager import this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.clientconfig import ConfigError, Context, load_context, save_context

if not os.environ.get("WARREN_DEBUG"):
    # grpc's C core logs handshake and connection failures on stderr; we report them ourselves.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc

from warren import tls
from warren.api.leader import leader_from_details
from warren.api.metadata import CONSISTENT_KEY, MANAGERS_KEY
from warren.api.pages import all_pages
from warren.api.v1 import control_pb2_grpc

_CODE_TO_EXIT = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.USAGE,
    grpc.StatusCode.OUT_OF_RANGE: Exit.USAGE,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Exit.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.CONFLICT,
    grpc.StatusCode.ABORTED: Exit.CONFLICT,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: Exit.CREDENTIALS,
    grpc.StatusCode.PERMISSION_DENIED: Exit.CREDENTIALS,
}

# Calls that change nothing may be retried on the next manager even after a deadline, when the
# first manager may have received them; others fail over only on UNAVAILABLE (not sent).
_READ_ONLY = frozenset(
    {"GetClusterInfo", "ListNodes", "GetNode", "ListServices", "GetService", "ListTasks"}
    | {"ListSecrets", "GetSecret", "ListConfigs", "GetConfig"}
)


class Client:
    """Calls the Control API on the first manager that answers, in the context's order."""

    def __init__(
        self,
        ctx: Context,
        timeout: float = 10.0,
        managers: list[str] | None = None,
        consistent: bool = False,
        config: Path | None = None,
    ) -> None:
        self.context = ctx
        self._config = config
        self.timeout = timeout
        self.managers = list(managers or ctx.managers)
        # Only a context's own list follows the cluster's managers; --manager is the operator's.
        self._follow_membership = not managers
        self._metadata = ((CONSISTENT_KEY, "1"),) if consistent else ()
        try:
            ca, cert, key = ctx.ca.read_bytes(), ctx.cert.read_bytes(), ctx.key.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read credentials of context {ctx.name!r}: {exc}", Exit.CREDENTIALS) from None
        try:
            self._creds = tls.channel_credentials(ca, cert, key)
        except (ValueError, grpc.RpcError) as exc:
            raise CliError(f"unusable credentials in context {ctx.name!r}: {exc}", Exit.CREDENTIALS) from None
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, control_pb2_grpc.ControlStub] = {}
        self._current = 0  # index of the manager that answered last

    @property
    def address(self) -> str:
        """The manager that answered last (the first one before any call)."""
        return self.managers[self._current]

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Invoke Control.<method>; returns the response or raises CliError with an exit code."""
        failures: list[tuple[str, grpc.RpcError]] = []
        n = len(self.managers)
        order = [self.managers[(self._current + i) % n] for i in range(n)]
        while order:
            addr = order.pop(0)
            stub = self._stub(addr)
            try:
                response, call = getattr(stub, method).with_call(
                    request, timeout=timeout or self.timeout, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                code = exc.code()
                retry = code == grpc.StatusCode.UNAVAILABLE or (
                    code == grpc.StatusCode.DEADLINE_EXCEEDED and method in _READ_ONLY
                )
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and not retry:
                    raise CliError(
                        f"no answer from the manager at {addr} in time: the {method} call may still take "
                        "effect; check before retrying",
                        Exit.UNAVAILABLE,
                    ) from None
                if not retry:
                    raise rpc_error(exc, addr) from None
                failures.append((addr, exc))
                hint = _leader_hint(exc)
                if hint and hint not in (a for a, _ in failures):
                    order = [hint, *(a for a in order if a != hint)]
                continue
            self._current = self.managers.index(addr) if addr in self.managers else 0
            self._learn_managers(call)
            return response
        tls_failures = [f for f in failures if _is_tls_failure(f[1])]
        if tls_failures and len(tls_failures) == len(failures):
            raise rpc_error(tls_failures[0][1], tls_failures[0][0])
        raise _unreachable(failures)

    def list_all(self, method: str, request: Any, field: str) -> list[Any]:
        """Every item of a paged list (ADR 51): the `field` of each page, to the last page."""
        return all_pages(lambda page: self.call(method, page), request, field)

    def stream(self, method: str, request: Any) -> Generator[Any, None, None]:
        """Iterate a server-streaming Control.<method> with no deadline. Before the first
        message, an unreachable manager fails over to the next, and a follower's "the leader is
        at ADDR" sends us there; after it, an error ends the stream (CliError). Closing the
        iterator cancels the call."""
        return self._failover_stream(method, lambda: request)

    def bidi(self, method: str, requests: Callable[[], Iterator[Any]]) -> Generator[Any, None, None]:
        """A bidirectional Control.<method>, with `stream`'s failover: each attempt sends a fresh
        `requests()` (so the first request goes again); after the first reply, an error ends it."""
        return self._failover_stream(method, requests)

    def _failover_stream(self, method: str, request: Callable[[], Any]) -> Generator[Any, None, None]:
        """`stream` and `bidi`: `request()` is what each attempt sends (a message, or an iterator)."""
        n = len(self.managers)
        order = [self.managers[(self._current + i) % n] for i in range(n)]
        failures: list[tuple[str, grpc.RpcError]] = []
        while order:
            addr = order.pop(0)
            call = getattr(self._stub(addr), method)(request())
            received = False
            try:
                for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as exc:
                if received or exc.code() != grpc.StatusCode.UNAVAILABLE or _is_tls_failure(exc):
                    raise _stream_error(exc, addr, received) from None
                failures.append((addr, exc))
                hint = _leader_hint(exc)
                if hint and hint not in (a for a, _ in failures):
                    order = [hint, *(a for a in order if a != hint)]
            finally:
                call.cancel()
        raise _unreachable(failures)

    def _learn_managers(self, call: Any) -> None:
        """Follow membership: keep the context's manager list as the managers report it."""
        if not self._follow_membership:
            return
        reported = dict(call.trailing_metadata() or ()).get(MANAGERS_KEY, "")
        managers = [m for m in reported.split(",") if m]
        if not managers or set(managers) == set(self.context.managers):
            return
        try:
            save_context(replace(self.context, managers=managers), make_current=False, path=self._config)
        except (OSError, ConfigError):
            return  # a read-only config: the next call learns them again
        self.context = replace(self.context, managers=managers)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stub(self, addr: str) -> control_pb2_grpc.ControlStub:
        stub = self._stubs.get(addr)
        if stub is None:
            channel = grpc.secure_channel(addr, self._creds, options=tls.channel_options())
            self._channels[addr] = channel
            stub = self._stubs[addr] = control_pb2_grpc.ControlStub(channel)
        return stub


def connect(args: Any) -> Client:
    """A Client for the global flags --config, --context, --manager and --timeout."""
    try:
        ctx = load_context(args.context, args.config)
    except ConfigError as exc:
        raise CliError(str(exc), Exit.CREDENTIALS) from None
    return Client(
        ctx,
        timeout=args.rpc_timeout,
        managers=args.manager or None,
        consistent=getattr(args, "consistent_reads", False),
        config=Path(args.config) if args.config else None,
    )


def rpc_error(exc: grpc.RpcError, addr: str) -> CliError:
    """One line and an exit code for a failed call."""
    code = exc.code()
    details = (exc.details() or "").strip()
    if _is_tls_failure(exc):
        return CliError(
            f"TLS handshake with {addr} failed: it did not present a certificate from this cluster's CA "
            "(is it a manager of this cluster?)",
            Exit.CREDENTIALS,
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _unreachable([(addr, exc)])
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CliError(f"the manager refused our certificate: {details or 'unauthenticated'}", Exit.CREDENTIALS)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CliError(f"permission denied: {details or 'this certificate may not do that'}", Exit.CREDENTIALS)
    return CliError(details or code.name.lower().replace("_", " "), _CODE_TO_EXIT.get(code, Exit.FAILURE))


def _leader_hint(exc: grpc.RpcError) -> str | None:
    """The leader's address from a follower's "not the leader; the leader is at ADDR"."""
    return leader_from_details(exc.details() or "")


def _stream_error(exc: grpc.RpcError, addr: str, received: bool) -> CliError:
    """A stream that failed; once messages came, say that it was cut rather than unreachable."""
    if received and exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = (exc.details() or "").strip()
        return CliError(f"the stream from the manager at {addr} ended: {details or 'unavailable'}", Exit.UNAVAILABLE)
    return rpc_error(exc, addr)


def _unreachable(failures: list[tuple[str, grpc.RpcError]]) -> CliError:
    if not failures:
        return CliError("no manager address configured", Exit.UNAVAILABLE)
    addr, last = failures[-1]
    details = (last.details() or "").strip()
    if last.code() == grpc.StatusCode.UNAVAILABLE and details and not _is_transport_error(details):
        # The manager answered, but cannot serve yet (e.g. "the cluster is still initialising").
        return CliError(f"manager at {addr}: {details}", Exit.UNAVAILABLE)
    addrs = ", ".join(a for a, _ in failures)
    return CliError(f"cannot reach a manager at {addrs}: {_reason(last)}", Exit.UNAVAILABLE)


_REASONS = (
    ("connection refused", "connection refused"),
    ("dns resolution failed", "cannot resolve the host name"),
    ("hostname lookup", "cannot resolve the host name"),
    ("name or service not known", "cannot resolve the host name"),
    ("domain name not found", "cannot resolve the host name"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network is unreachable"),
    ("timed out", "timed out"),
    ("deadline exceeded", "timed out"),
    ("connection reset", "connection reset"),
    ("socket closed", "the connection was closed (did the manager refuse our certificate?)"),
)


def _reason(exc: grpc.RpcError) -> str:
    """A short cause from grpc's long UNAVAILABLE details."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    details = (exc.details() or "").strip()
    low = details.lower()
    for needle, reason in _REASONS:
        if needle in low:
            return reason
    return details.removeprefix("failed to connect to all addresses; last error: ") or "unavailable"


def _is_transport_error(details: str) -> bool:
    low = details.lower()
    return low.startswith("failed to connect") or any(needle in low for needle, _ in _REASONS)


def _is_tls_failure(exc: grpc.RpcError) -> bool:
    """The server's certificate failed verification (a refused client cert looks like a closed socket)."""
    low = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and ("handshake failed" in low or "certificate_verify" in low)
