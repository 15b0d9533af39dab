"""Backoff, in one place: how long to wait before each retry of something that failed.

The agent's session reconnecting to the managers, its log-subscription stream, its log
publishing and a task controller's runtime calls all retry with one `Backoff` (ADR 30). Pure:
the caller sleeps, and draws the jitter (`random.random` in production, a constant in tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def _middle() -> float:
    """The jitter draw that leaves every delay as it is."""
    return 0.5


class Backoff:
    """The waits between retries of one thing, and its count of failures since it last worked.

    By default the waits grow exponentially from `start` to `cap`; `Backoff.schedule` takes them
    from a table instead. Past the last wait, it repeats. Each wait is scaled by a factor in
    [1 - jitter, 1 + jitter], placed by `draw()` in [0, 1], so that peers do not retry in
    lockstep. With `retries` set, the caller gives up once it has failed more often than that.
    `cap` may be lowered at any time to shorten the waits (not raised past the table's end)."""

    def __init__(
        self,
        start: float = 0.2,
        cap: float = 5.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        retries: int | None = None,
        draw: Callable[[], float] = _middle,
    ) -> None:
        if start <= 0 or factor <= 1 or cap < start:
            raise ValueError(f"backoff needs 0 < start <= cap and factor > 1, got {start}, {cap}, {factor}")
        if not 0 <= jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
        delays = [start]
        while delays[-1] < cap:
            delays.append(min(cap, delays[-1] * factor))
        self.delays: tuple[float, ...] = tuple(delays)
        self.cap = cap
        self.jitter = jitter
        self.retries = retries
        self.draw = draw
        self.failures = 0

    @classmethod
    def schedule(cls, delays: Sequence[float], *, jitter: float = 0.0, draw: Callable[[], float] = _middle) -> Backoff:
        """Wait delays[0] after the first failure, delays[1] after the second, ...; give up after
        len(delays) retries. With no delays, never retry (and wait 1 s where the caller must)."""
        backoff = cls(jitter=jitter, retries=len(delays), draw=draw)
        backoff.delays, backoff.cap = tuple(delays) or (1.0,), math.inf
        return backoff

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row (1 for the first), before jitter."""
        return min(self.cap, self.delays[min(max(failures, 1), len(self.delays)) - 1])

    def next(self) -> float:
        """Count one more failure; the wait before trying again."""
        self.failures += 1
        return self.delay(self.failures) * (1 - self.jitter + 2 * self.jitter * self.draw())

    def reset(self) -> None:
        """It worked: the next failure starts from the shortest wait again."""
        self.failures = 0

    @property
    def exhausted(self) -> bool:
        """It failed more often than it may be retried: give up."""
        return self.retries is not None and self.failures > self.retries
