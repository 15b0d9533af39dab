"""The write path's per-request costs (ADR 58): what a CreateService pays besides its Raft entry,
and the fsyncs an entry pays. Real LMDB, real gRPC handler objects; counted, not timed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest

from warren.api import convert
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
    real = convert.spec_to_pb

    def counting(spec: ServiceSpec) -> Any:
        converted.append(spec)
        return real(spec)

    monkeypatch.setattr(convert, "spec_to_pb", counting)
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

    async def continuation(_details: object) -> grpc.RpcMethodHandler:
        return handler

    class Details:
        method = "/warren.api.v1.Control/GetService"

    async def twice() -> tuple[Any, Any, Any]:
        first = await guard.intercept_service(continuation, Details())  # type: ignore[arg-type]
        second = await guard.intercept_service(continuation, Details())  # type: ignore[arg-type]

        async def unknown(_details: object) -> None:
            return None

        return first, second, await guard.intercept_service(unknown, Details())  # type: ignore[arg-type]

    first, second, unknown = asyncio.run(twice())
    assert first is second and first.unary_unary is not behaviour
    assert unknown is None  # an unknown method is not cached, nor served
