"""Health rules (Docker's), on the pure tracker and on the monitor loop with a fake clock."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from warren.agent.health import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    HealthReport,
    HealthTracker,
    ProbeResult,
    _probe_tcp,
    _summary,
    monitor,
)
from warren.model import HealthCheck

OK = ProbeResult(True, "exit 0")
BAD = ProbeResult(False, "exit 127: /bin/sh: 1: nosuchcmd: not found")


def tracker(retries: int = 3, start_period: float = 0.0) -> HealthTracker:
    return HealthTracker(HealthCheck(interval=1.0, retries=retries, start_period=start_period), started_at=100.0)


def feed(t: HealthTracker, *events: tuple[ProbeResult, float]) -> list[str]:
    out = []
    for result, at in events:
        t.observe(result, at)
        out.append(t.status)
    return out


def test_starts_starting_and_waits_for_a_first_check() -> None:
    t = tracker()
    assert t.status == STARTING
    assert t.report() == HealthReport(STARTING, "waiting for the first health check", 0)


def test_one_success_makes_it_healthy() -> None:
    t = tracker()
    assert t.observe(OK, 101.0) is True
    assert t.status == HEALTHY
    assert t.observe(OK, 102.0) is False  # no change, no report


def test_retries_consecutive_failures_make_it_unhealthy_with_a_clear_message() -> None:
    t = tracker(retries=3)
    assert feed(t, (BAD, 101), (BAD, 102)) == [STARTING, STARTING]
    assert t.message == "health check failed 2 of 3 times: exit 127: /bin/sh: 1: nosuchcmd: not found"
    assert t.observe(BAD, 103) is True
    assert t.status == UNHEALTHY
    assert t.message == "health check failed 3 times: exit 127: /bin/sh: 1: nosuchcmd: not found"


def test_a_success_resets_the_streak() -> None:
    t = tracker(retries=3)
    assert feed(t, (OK, 101), (BAD, 102), (BAD, 103), (OK, 104), (BAD, 105), (BAD, 106)) == [HEALTHY] * 6
    assert t.failing_streak == 2
    assert t.observe(BAD, 107) is True and t.status == UNHEALTHY


def test_recovery_from_unhealthy_takes_one_success() -> None:
    t = tracker(retries=1)
    feed(t, (BAD, 101))
    assert t.status == UNHEALTHY and t.message.startswith("health check failed once: ")
    assert t.observe(OK, 102) is True
    assert t.status == HEALTHY and t.failing_streak == 0 and t.message == "exit 0"


def test_failures_during_the_start_period_do_not_count() -> None:
    t = tracker(retries=2, start_period=10.0)
    assert feed(t, (BAD, 101), (BAD, 105), (BAD, 109.9)) == [STARTING] * 3
    assert t.failing_streak == 0
    assert t.message.startswith("health check failed during the start period: exit 127")
    # The period is over: failures count from here.
    assert feed(t, (BAD, 110), (BAD, 111)) == [STARTING, UNHEALTHY]


def test_a_success_ends_the_start_period() -> None:
    t = tracker(retries=1, start_period=60.0)
    feed(t, (OK, 101))
    assert t.observe(BAD, 102) is True  # well inside start_period, but it counts now
    assert t.status == UNHEALTHY


def test_unhealthy_stays_unhealthy_while_failing() -> None:
    t = tracker(retries=2)
    assert feed(t, (BAD, 101), (BAD, 102), (BAD, 103)) == [STARTING, UNHEALTHY, UNHEALTHY]
    assert t.message.startswith("health check failed 3 times:")


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=40), st.integers(1, 5), st.floats(0, 30))
def test_status_follows_the_streak(events: list[tuple[bool, float]], retries: int, start_period: float) -> None:
    """Invariants over any history: unhealthy iff the counted streak reached `retries`;
    healthy/unhealthy only after some result; never back to starting."""
    t = tracker(retries=retries, start_period=start_period)
    at, left_starting = 100.0, False
    for ok, gap in events:
        at += gap
        t.observe(OK if ok else BAD, at)
        assert (t.status == UNHEALTHY) == (t.failing_streak >= retries)
        if ok:
            assert t.status == HEALTHY and t.failing_streak == 0
        assert not (left_starting and t.status == STARTING)
        left_starting = t.status != STARTING


# -- monitor -------------------------------------------------------------------------------------
class FakeTime:
    """A clock that only moves when the monitor sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def run_monitor(check: HealthCheck, results: list[ProbeResult]) -> tuple[list[HealthReport], list[float]]:
    """Run `monitor` over scripted probe results; returns the reports and the probe times."""
    fake, reports, probed = FakeTime(), [], []
    pending = list(results)

    async def probe() -> ProbeResult:
        if not pending:  # the script is over: wait to be cancelled, whatever the loop's pace
            await asyncio.Event().wait()
        probed.append(fake.now)
        return pending.pop(0)

    async def main() -> None:
        task = asyncio.create_task(monitor(check, probe, reports.append, clock=fake.clock, sleep=fake.sleep))
        while pending:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())
    return reports, probed


def test_monitor_probes_every_interval_and_reports_changes_only() -> None:
    check = HealthCheck(interval=5.0, retries=2, start_period=0.0)
    reports, probed = run_monitor(check, [OK, OK, BAD, BAD, BAD, OK])
    assert probed == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert [r.status for r in reports] == [STARTING, HEALTHY, UNHEALTHY, HEALTHY]
    assert reports[2].message == "health check failed 2 times: exit 127: /bin/sh: 1: nosuchcmd: not found"


def test_monitor_honours_the_start_period() -> None:
    check = HealthCheck(interval=5.0, retries=1, start_period=12.0)
    reports, _ = run_monitor(check, [BAD, BAD, BAD])  # at 5 and 10 ignored, at 15 counted
    assert [r.status for r in reports] == [STARTING, UNHEALTHY]


def test_monitor_accepts_an_async_callback_and_a_raising_probe() -> None:
    fake, reports = FakeTime(), []
    calls = 0

    async def probe() -> ProbeResult:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    async def on_change(report: HealthReport) -> None:
        reports.append(report)

    async def main() -> None:
        check = HealthCheck(kind="tcp", interval=1.0, retries=2)
        task = asyncio.create_task(monitor(check, probe, on_change, clock=fake.clock, sleep=fake.sleep))
        while calls < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())
    assert [r.status for r in reports] == [STARTING, UNHEALTHY]
    assert reports[-1].message == "health check failed 2 times: tcp probe error: RuntimeError('boom')"


# -- small pure helpers --------------------------------------------------------------------------
def test_summary_puts_output_on_one_line_and_keeps_the_end() -> None:
    assert _summary("  line one\n\nline two\n") == "line one | line two"
    long = "x" * 1000 + "THE END"
    assert _summary(long).endswith("THE END") and len(_summary(long)) == 300


def test_tcp_probe_rejects_a_malformed_target() -> None:
    assert _probe_tcp("nohostport", 1.0) == ProbeResult(
        False, "invalid tcp health check target 'nohostport': expected HOST:PORT"
    )


def test_checks_aimed_at_the_loopback_follow_a_task_into_its_own_network() -> None:
    from warren.agent.health import on_task_address
    from warren.model import HealthCheck

    http = HealthCheck(kind="http", target="http://127.0.0.1:8080/ready?x=1")
    assert on_task_address(http, "10.200.1.2").target == "http://10.200.1.2:8080/ready?x=1"
    local = HealthCheck(kind="http", target="http://localhost/")
    assert on_task_address(local, "10.200.1.2").target == "http://10.200.1.2/"
    tcp = HealthCheck(kind="tcp", target="[::1]:5432")
    assert on_task_address(tcp, "10.200.1.2").target == "10.200.1.2:5432"
    elsewhere = HealthCheck(kind="tcp", target="db.internal:5432")  # not the task's own loopback
    assert on_task_address(elsewhere, "10.200.1.2") == elsewhere
    command = HealthCheck(kind="cmd", target="true")  # runs inside the task already
    assert on_task_address(command, "10.200.1.2") == command
