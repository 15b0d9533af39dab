"""How long the agent's session waits, against scripted dispatchers over real gRPC with mutual
TLS: a late heartbeat answer keeps the session, the first message and the first beat are awaited
as long as the period allows, and a reconnect waits a random part of the manager's spread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.unit.scripted_dispatcher import ScriptedDispatcher, run, running_session
from tests.waiting import async_wait_for as until
from warren.agent import session as session_module


def test_a_late_heartbeat_answer_keeps_the_session(creds, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """An overloaded manager answers heartbeats 1.5 periods late: the managers call a node down
    only after 3, so the session stays open (a new one would cost that manager a registration
    and the whole set: the reopen storm of #15's S2), the next beat leaves a period after the
    last one did, and the lateness is logged."""

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=2.0)
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: manager.heartbeats >= 1 and session.period == 2.0, message="the first beat answered")
            manager.beat_delay = 3.0  # beyond one period (the old limit), within two
            await until(lambda: manager.heartbeats >= 3, timeout=20, message="two late beats")
            gaps = [b - a for a, b in zip(manager.beat_times[1:], manager.beat_times[2:], strict=False)]
            assert len(manager.sessions) == 1, "the session was given up on a late answer"
            assert all(gap < 2.0 * 2 for gap in gaps), gaps  # due a period after the last one left
            assert "a heartbeat was answered after" in caplog.text

    with caplog.at_level("WARNING", logger="warren.agent.session"):
        run(scenario())


def test_a_lost_session_reconnects_after_a_wait_drawn_from_the_spread_the_manager_said(
    creds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """After a leader change every node's session ends at once: each agent waits a random part
    of the spread its heartbeat answers named before it reconnects (#15), at most half a period."""
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return high  # the longest wait the spread allows

    monkeypatch.setattr(session_module.random, "uniform", uniform)

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=4.0)
        manager.reconnect_spread = 1.2
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: session.reconnect_spread == 1.2, message="the spread learnt from a heartbeat")
            ended = time.monotonic()
            await manager.outbox.put(None)  # the manager ends the session
            await until(lambda: len(manager.sessions) == 2, timeout=10, message="a second session")
            assert manager.session_times[1] - ended >= 1.2
            assert draws == [(0.0, 1.2)]
            manager.reconnect_spread = 60.0  # more than half a period: the agent keeps to that
            await until(lambda: session.reconnect_spread == 2.0, timeout=10, message="the spread, capped")

    run(scenario())


def test_a_new_session_waits_for_its_first_message_as_long_as_for_a_heartbeat_answer(
    creds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """After a leader change at 1,000 nodes (a 20 s period), agents gave up on a busy new
    leader's first message at 15 s, and each retry made it later (ADR 83): a session's first
    message is awaited at least as long as a heartbeat's answer, two periods."""
    monkeypatch.setattr(session_module, "FIRST_MESSAGE_TIMEOUT", 0.5)

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=1.0)
        manager.period_in_complete = True
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: session.period == 1.0, message="the period learnt")
            manager.first_delay = 1.2  # past the least wait, within two periods
            await manager.outbox.put(None)  # the manager ends the session
            await until(lambda: len(manager.sessions) >= 2, timeout=10, message="a second session")
            await until(lambda: session.connected_to is not None, timeout=10, message="the second session open")
            assert len(manager.sessions) == 2, "the agent gave up on a first message within two periods"

    run(scenario())


def test_the_first_heartbeat_waits_for_its_answer_as_long_as_the_period_the_first_message_said(
    creds, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An agent assumed a 1 s period until a heartbeat answered, and gave up on the first
    answer after 2 s: on a leader busy with 1,000 new sessions, most first sessions ended so."""

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=2.0)
        manager.period_in_complete = True
        manager.reconnect_spread = 0.5
        manager.beat_delay = 2.5  # beyond 2 s (the old first limit), within two periods
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: session.connected_to is not None, message="a session")
            assert (session.period, session.reconnect_spread) == (2.0, 0.5)
            await until(lambda: manager.heartbeats >= 2, timeout=15, message="two heartbeats")
            assert len(manager.sessions) == 1, "the first late answer ended the session"

    run(scenario())
