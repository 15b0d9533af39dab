"""Endpoints on the agent's session, against scripted dispatchers over real gRPC with mutual
TLS: the next heartbeat names the endpoints the load balancer applied, at once (ADR 33); deltas
are applied, and one onto another index reopens the session (ADR 65)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env
from tests.unit.scripted_dispatcher import INCREMENTAL, ScriptedDispatcher, description, run, serve, stop_agent
from tests.waiting import async_wait_for as until
from warren.agent.cache import AgentCache
from warren.agent.session import ManagerList, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.api.v1 import dispatcher_pb2 as dpb


def test_the_heartbeat_reports_the_endpoints_applied_at_once(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ADR 33: each endpoints push carries its Raft index; once the load balancer applied it, the
    next heartbeat goes at once (not a period later) and names that index."""
    certs, server_creds = creds

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([], period=30.0)
        server, addr = await serve(dispatcher, server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), cache, queue)
        await worker.start()
        applied = {"index": 0}
        changed = asyncio.Event()
        given: list[tuple[int, tuple[str, ...]]] = []

        def load_balance(services, vip_range: str, index: int) -> None:  # type: ignore[no-untyped-def]
            given.append((index, tuple(e.vip for e in services)))
            applied["index"] = index  # as the overlay does once nftables holds them
            changed.set()

        session = Session(
            certs,
            ManagerList([addr]),
            description,
            worker,
            queue,
            on_services=load_balance,
            services_applied=lambda: applied["index"],
            routing_changed=changed,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(session.run(stop))
        try:
            await until(lambda: dispatcher.heartbeats >= 1, message="a first heartbeat")
            assert dispatcher.beats[0].services_applied == 0
            started = time.monotonic()
            endpoint = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.200.0.2"])
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL,
                    applies_to=1,
                    version=2,
                    services=[endpoint],
                    services_changed=True,
                    services_index=42,
                )
            )
            await until(lambda: dispatcher.heartbeats >= 2, message="a heartbeat right after the push")
            assert time.monotonic() - started < 10  # the period is 30 s
            assert given == [(42, ("10.201.0.2",))]
            assert dispatcher.beats[1].services_applied == 42
        finally:
            await stop_agent(stop, runner, worker, cache, server)

    run(scenario())


def test_the_agent_takes_endpoint_deltas_and_reopens_on_one_it_cannot_apply(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ADR 65: the agent announces deltas; one onto the index it holds updates the whole set it
    hands the load balancer; one onto another index is a gap: the session reopens (to get a
    whole list in its COMPLETE message) and the load balancer never sees it."""
    certs, server_creds = creds

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([], period=30.0)
        server, addr = await serve(dispatcher, server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), cache, queue)
        await worker.start()
        given: list[tuple[int, tuple[tuple[str, tuple[str, ...]], ...]]] = []

        def load_balance(services, vip_range: str, index: int) -> None:  # type: ignore[no-untyped-def]
            given.append((index, tuple((e.name, e.backends) for e in services)))

        session = Session(certs, ManagerList([addr]), description, worker, queue, on_services=load_balance)
        stop = asyncio.Event()
        runner = asyncio.create_task(session.run(stop))

        def endpoint(name: str, *backends: str) -> dpb.ServiceEndpoint:
            return dpb.ServiceEndpoint(name=name, vip="10.201.0.2", backends=list(backends))

        try:
            await until(lambda: dispatcher.sessions, message="a session")
            assert dispatcher.sessions[0].endpoint_deltas
            whole = [endpoint("a", "10.224.0.2"), endpoint("b", "10.224.0.3")]
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL, applies_to=1, version=2, services=whole, services_changed=True, services_index=10
                )
            )
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL,
                    applies_to=2,
                    version=3,
                    services=[endpoint("c", "10.224.0.5"), endpoint("a", "10.224.0.4")],
                    services_removed=["b"],
                    services_delta=True,
                    services_base=10,
                    services_index=12,
                )
            )
            await until(lambda: len(given) == 2, message="the whole list, then the delta applied")
            assert given == [
                (10, (("a", ("10.224.0.2",)), ("b", ("10.224.0.3",)))),
                (12, (("a", ("10.224.0.4",)), ("c", ("10.224.0.5",)))),
            ]
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL,
                    applies_to=3,
                    version=4,
                    services=[endpoint("d")],
                    services_delta=True,
                    services_base=11,
                    services_index=13,
                )
            )
            await until(lambda: len(dispatcher.sessions) == 2, message="the session reopened")
            assert dispatcher.sessions[1].endpoint_deltas
            assert len(given) == 2  # the delta it could not apply went nowhere
        finally:
            await stop_agent(stop, runner, worker, cache, server)

    run(scenario())
