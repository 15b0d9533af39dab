"""The event hub's per-commit listeners (ADR 85): called once per commit, after the subscribers'
queues have it, and a failing one costs the subscribers nothing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from warren.manager.events import Event, EventHub
from warren.state import Delete


def test_a_listener_sees_each_commit_once_queued_and_a_failing_one_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        hub = EventHub(asyncio.get_running_loop())
        seen: list[tuple[int, int]] = []  # (index, what the subscriber's queue held then)
        with hub.subscribe() as queue:

            def listener(event: Event) -> None:
                seen.append((event[0], queue.qsize()))

            def failing(event: Event) -> None:
                raise RuntimeError("broken listener")

            hub.listen(failing)
            hub.listen(listener)
            hub.publish(7, [Delete("task", "t1")])
            hub.publish(8, None)
            assert (await queue.get())[0] == 7
            assert await queue.get() == (8, None)
        assert seen == [(7, 1), (8, 2)]

    with caplog.at_level(logging.ERROR, logger="warren.manager.events"):
        asyncio.run(scenario())
    assert caplog.text.count("a commit listener failed") == 2
