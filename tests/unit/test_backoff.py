"""One backoff (warren.backoff) for the session, the log stream, log publishing and the tasks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren.backoff import Backoff

starts = st.sampled_from([0.05, 0.1, 0.2, 0.5, 1.0])
caps = st.sampled_from([0.5, 1.0, 5.0, 30.0])


@given(start=starts, cap=caps, failures=st.integers(1, 40))
def test_exponential_waits_double_up_to_the_cap(start: float, cap: float, failures: int) -> None:
    if cap < start:
        return
    b = Backoff(start, cap)
    waits = [b.next() for _ in range(failures)]
    assert waits[0] == start
    for before, after in itertools.pairwise(waits):
        assert after == min(cap, before * 2)  # doubling is exact in binary floating point
    assert max(waits) <= cap


@given(
    start=starts,
    cap=caps,
    jitter=st.sampled_from([0.0, 0.1, 0.5]),
    draws=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
)
def test_jitter_stays_within_its_fraction(start: float, cap: float, jitter: float, draws: list[float]) -> None:
    if cap < start:
        return
    drawn = iter(draws)
    plain, jittered = Backoff(start, cap), Backoff(start, cap, jitter=jitter, draw=lambda: next(drawn))
    for _ in draws:
        base, wait = plain.next(), jittered.next()
        assert base * (1 - jitter) - 1e-12 <= wait <= base * (1 + jitter) + 1e-12


def test_jitter_follows_the_draw() -> None:
    draws = iter([0.0, 1.0, 0.5])
    b = Backoff(1.0, 8.0, jitter=0.1, draw=lambda: next(draws))
    assert [b.next() for _ in range(3)] == pytest.approx([0.9, 2.2, 4.0])


def test_reset_and_a_lowered_cap() -> None:
    b = Backoff(0.2, 5.0)
    assert [b.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    b.cap = 1.0  # the session caps its waits at the heartbeat period
    assert b.next() == 1.0
    b.reset()
    assert [b.next() for _ in range(4)] == [0.2, 0.4, 0.8, 1.0]
    assert not b.exhausted  # an exponential backoff never gives up


@given(delays=st.lists(st.sampled_from([0.01, 0.5, 1.0, 30.0]), max_size=6), failures=st.integers(1, 12))
def test_a_schedule_waits_as_listed_then_gives_up(delays: list[float], failures: int) -> None:
    b = Backoff.schedule(delays)
    waits = [b.next() for _ in range(failures)]
    for n, wait in enumerate(waits, start=1):
        expected = delays[min(n, len(delays)) - 1] if delays else 1.0
        assert wait == expected
    assert b.exhausted == (failures > len(delays))
    b.reset()
    assert not b.exhausted and b.failures == 0


@pytest.mark.parametrize(
    ("start", "cap", "factor", "jitter"), [(0, 5, 2, 0), (1, 0.5, 2, 0), (1, 5, 1, 0), (1, 5, 2, 1)]
)
def test_a_backoff_that_would_never_grow_or_end_is_refused(
    start: float, cap: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(start, cap, factor=factor, jitter=jitter)


def test_the_agent_backs_off_with_the_one_backoff() -> None:
    from warren.agent import controller, logs, session

    assert session.Backoff is logs.Backoff is controller.Backoff is Backoff
