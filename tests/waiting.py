"""Polling helpers for every test: wait until a condition is true, or check that it stays true.

A test never sleeps a fixed time and then asserts. On a loaded machine such a test either passes
without having tested anything or flaps. `wait_for` polls until the condition holds (and returns
its truthy value); `holds` polls for a whole period and fails at the first sample where the
condition is false. The `async_` variants do the same inside an event loop, so that the code
under test keeps running between samples.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout`.
    Samples are `interval` apart, or as far apart as the last one took (see `_pause`)."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")
        time.sleep(_pause(interval, started))


def holds(predicate: Callable[[], object], seconds: float, interval: float = 0.1, message: str = "condition") -> None:
    """Fail at the first sample where `predicate` is falsy; sample it for `seconds` (ends with a sample)."""
    deadline = time.monotonic() + seconds
    while True:
        started = time.monotonic()
        last = predicate()
        if not last:
            raise AssertionError(f"{message} stopped holding (last: {last!r})")
        if time.monotonic() >= deadline:
            return
        time.sleep(_pause(interval, started))


def _pause(interval: float, sample_started: float) -> float:
    """The wait before the next sample: `interval`, or as long as the sample took if longer. A
    sample that runs a CLI process takes 0.3-1 s of CPU: polled back to back, it would take a
    core from the tests running beside it (ADR 41); this way it takes at most half of one."""
    return max(interval, time.monotonic() - sample_started)


async def async_wait_for(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = "condition"
) -> T:
    """`wait_for` inside an event loop: the loop runs the code under test between samples."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")
        await asyncio.sleep(interval)


async def async_holds(
    predicate: Callable[[], object], seconds: float, interval: float = 0.01, message: str = "condition"
) -> None:
    """`holds` inside an event loop: the loop runs the code under test between samples."""
    deadline = time.monotonic() + seconds
    while True:
        last = predicate()
        if not last:
            raise AssertionError(f"{message} stopped holding (last: {last!r})")
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)
