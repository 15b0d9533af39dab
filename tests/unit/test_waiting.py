"""The polling helpers every test waits with: they return what they waited for, fail with the
message they were given, and `holds` fails at the first sample that breaks the condition."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.waiting import async_holds, async_wait_for, holds, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: [n] if (n := next(counter)) >= 3 else [], timeout=5, interval=0.001) == [3]


def test_wait_for_fails_with_the_message_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the thing \(last: 0\)"):
        wait_for(lambda: 0, timeout=0.05, interval=0.01, message="the thing")
    assert time.monotonic() - started >= 0.05


def test_wait_for_samples_once_even_with_no_time_left() -> None:
    assert wait_for(lambda: "now", timeout=0) == "now"


def test_holds_samples_for_the_whole_period() -> None:
    samples: list[float] = []
    started = time.monotonic()
    holds(lambda: samples.append(time.monotonic()) is None, 0.05, interval=0.01)
    assert samples[-1] - started >= 0.05 and len(samples) >= 2


def test_holds_fails_at_the_first_false_sample() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError, match="the count stopped holding"):
        holds(lambda: next(counter) < 3, 10.0, interval=0.001, message="the count")
    assert next(counter) == 4  # stopped at the fourth sample, long before the period ended


def test_the_async_forms_let_the_loop_run_between_samples() -> None:
    async def scenario() -> None:
        flag = asyncio.Event()
        asyncio.get_running_loop().call_later(0.02, flag.set)
        assert await async_wait_for(flag.is_set, timeout=5) is True
        await async_holds(flag.is_set, 0.02)
        asyncio.get_running_loop().call_later(0.02, flag.clear)
        with pytest.raises(AssertionError, match="the flag stopped holding"):
            await async_holds(flag.is_set, 5.0, message="the flag")
        with pytest.raises(AssertionError, match=r"timed out after 0\.02s waiting for nothing"):
            await async_wait_for(lambda: None, timeout=0.02, message="nothing")

    asyncio.run(scenario())
