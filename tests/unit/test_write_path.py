"""The write path's per-request costs (ADR 58): what a CreateService pays besides its Raft entry,
and the fsyncs an entry pays. Real LMDB, real gRPC handler objects; counted, not timed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest

from warren.api import convert, specconvert
from warren.manager.journal import LmdbJournal
from warren.manager.server import _Guard
from warren.manager.store import open_environment
from warren.model import Service, ServiceSpec, SpecRevision


class _CountingEnv:
    """A real LMDB environment that counts explicit syncs."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self.syncs = 0

    def sync(self, force: bool = False) -> None:
        self.syncs += 1
        self._env.sync(force)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


@pytest.mark.parametrize("metasync", [False, True])
def test_the_journal_makes_appends_and_votes_durable_whatever_the_environment_syncs(
    tmp_path: Path, metasync: bool
) -> None:
    env = _CountingEnv(open_environment(tmp_path / "db", metasync=metasync))
    journal = LmdbJournal(env, tmp_path)  # type: ignore[arg-type]
    journal.add(b"command", 1, 1)
    after_append = env.syncs
    journal.setCurrentTerm(2, "127.0.0.1:1")
    # Without meta syncs at commit, an append or a vote is durable only once synced; with them,
    # the commit was, and a sync more would only cost an fsync.
    assert (after_append, env.syncs) == ((1, 2) if not metasync else (0, 0))
    reopened = LmdbJournal(env, tmp_path)  # type: ignore[arg-type]
    assert (reopened[0], reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (
        (b"command", 1, 1),
        2,
        "127.0.0.1:1",
    )


def test_a_services_reply_converts_each_spec_object_once(monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[ServiceSpec] = []
    real = specconvert.spec_to_pb

    def counting(spec: ServiceSpec) -> Any:
        converted.append(spec)
        return real(spec)

    monkeypatch.setattr(specconvert, "spec_to_pb", counting)
    spec = ServiceSpec(name="web", image="busybox:latest")
    older = ServiceSpec(name="web", image="busybox:1.36")
    # A new service's history is its current spec alone (the revision's spec is None).
    created = Service(id="s1", spec=spec, history=(SpecRevision(1, None, 1.0, ""),))
    msg = convert.service_to_pb(created)
    assert len(converted) == 1
    assert msg.history[0].spec == msg.spec and msg.spec.image == "busybox:latest"

    converted.clear()
    updated = Service(
        id="s1", spec=spec, version=2, history=(SpecRevision(1, older, 1.0, ""), SpecRevision(2, None, 2.0, ""))
    )
    msg = convert.service_to_pb(updated)
    assert converted == [spec, older]  # the older one serves as previous_spec and revision 1
    assert msg.previous_spec.image == "busybox:1.36" and [r.spec.image for r in msg.history] == [
        "busybox:1.36",
        "busybox:latest",
    ]


def test_the_guard_builds_each_methods_handler_once() -> None:
    guard = _Guard(cluster_id=lambda: "c", revoked=lambda _: False)

    async def behaviour(request: object, context: object) -> object:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    first = guard.guarded("/warren.api.v1.Control/GetService", handler)
    second = guard.guarded("/warren.api.v1.Control/GetService", handler)
    assert first is second and first.unary_unary is not behaviour


def test_the_api_registers_its_handlers_as_generic_ones_and_still_serves_them() -> None:
    """grpc.aio waits on one pending request per registered method at every call, and runs an
    interceptor as a coroutine per call (ADR 86)."""
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc
    from warren.api.v1 import types_pb2 as tpb
    from warren.manager.server import generic_only

    class Recording:
        def __init__(self) -> None:
            self.generic: list[object] = []
            self.registered: list[str] = []

        def add_generic_rpc_handlers(self, handlers: tuple[object, ...]) -> None:
            self.generic.extend(handlers)

        def add_registered_method_handlers(self, service: str, _handlers: object) -> None:
            self.registered.append(service)

    recording = Recording()
    servicer = control_pb2_grpc.ControlServicer()
    control_pb2_grpc.add_ControlServicer_to_server(servicer, generic_only(recording))  # type: ignore[arg-type]
    assert (len(recording.generic), recording.registered) == (1, [])

    class Control(control_pb2_grpc.ControlServicer):
        async def GetService(self, request: Any, context: Any) -> Any:
            return tpb.Service(id=request.service)

    async def served(guard: _Guard | None) -> str:
        server = grpc.aio.server()
        control_pb2_grpc.add_ControlServicer_to_server(Control(), generic_only(server, guard))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = control_pb2_grpc.ControlStub(channel)
                try:
                    reply = await stub.GetService(cpb.GetServiceRequest(service="s1"), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    return str(exc.code().name)
                return str(reply.id)
        finally:
            await server.stop(None)

    assert asyncio.run(served(None)) == "s1"
    # With the guard, every handler comes guarded: a call without a client certificate is refused.
    assert asyncio.run(served(_Guard(cluster_id=lambda: "c", revoked=lambda _: False))) == "UNAUTHENTICATED"
