"""This manager's own stalls do not count against nodes (ADR 69), on a fake clock: a heartbeat
that a stall held up moves the node's deadline by the stall; a node silent while this manager
listened is still marked down. And the report of a mass silence: one warning, one event."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from tests.unit.core_sim import Sim, node
from warren import commands, events
from warren.manager import metrics
from warren.manager.hearing import TICK, Heartbeats, SilenceReport, StallClock
from warren.model import NodeStatus
from warren.reconciler import DownCheck, ReconcileConfig, down_check

TIMEOUT = 15.0  # 3 periods of 5 s


class FakeClock:
    """A monotonic and a wall clock that move together, by hand."""

    def __init__(self) -> None:
        self.mono = 50.0
        self.wall = 1000.0

    def advance(self, seconds: float, stall: StallClock | None = None) -> None:
        """Time passes; with `stall`, the loop runs its watcher every tick meanwhile."""
        if stall is None:
            self.mono += seconds
            self.wall += seconds
            return
        for _ in range(round(seconds / TICK)):
            self.advance(TICK)
            stall.catch_up()


def rig() -> tuple[FakeClock, StallClock, Heartbeats]:
    clock = FakeClock()
    stalls = StallClock(clock=lambda: clock.mono)
    stalls.start()
    return clock, stalls, Heartbeats(stalls, wall=lambda: clock.wall)


def overdue(heartbeats: Heartbeats, wall_now: float) -> list[str]:
    sim = Sim(ReconcileConfig(heartbeat_period=TIMEOUT / 3))
    for node_id in heartbeats.last_seen:
        sim.add_node(node(node_id))
    return [n for n, _ in down_check(sim.state, wall_now, heartbeats.seen(), sim.config, heartbeats.failover()).overdue]


def test_a_loop_that_keeps_ticking_counts_no_stall() -> None:
    clock, stalls, _ = rig()
    clock.advance(30, stalls)
    assert stalls.stalled == 0.0


def test_a_stall_is_counted_once_whoever_looks_first() -> None:
    clock, stalls, _ = rig()
    clock.advance(20)  # nothing ran
    assert stalls.catch_up() == pytest.approx(20 - TICK)
    assert stalls.catch_up() == 0.0
    assert stalls.stalled == pytest.approx(20 - TICK)


def test_no_stall_is_counted_before_the_watcher_starts() -> None:
    """Without the watcher's ticks, an idle loop would look stalled."""
    clock = FakeClock()
    stalls = StallClock(clock=lambda: clock.mono)
    clock.advance(20)
    assert stalls.catch_up() == 0.0 and stalls.stalled == 0.0


def test_a_stall_of_this_manager_moves_every_node_deadline() -> None:
    clock, stalls, heartbeats = rig()
    for n in ("n1", "n2"):
        heartbeats.beat(n)
    clock.advance(4, stalls)
    heartbeats.beat("n2")
    clock.advance(20)  # this manager stalls for 20 s: heartbeats queue up unheard
    # The queued heartbeat of n2 is handled first, before the watcher's next tick.
    heartbeats.beat("n2")
    seen = heartbeats.seen()
    assert seen["n2"] == clock.wall  # heard now: no credit
    assert seen["n1"] == pytest.approx(1000.0 + 20 - TICK)  # silent 4 s that this manager heard
    assert overdue(heartbeats, clock.wall) == []

    # n1 stays silent while this manager listens: down once its listened-to silence passes 15 s.
    clock.advance(10, stalls)
    heartbeats.beat("n2")
    assert overdue(heartbeats, clock.wall) == []
    clock.advance(2, stalls)
    heartbeats.beat("n2")
    assert overdue(heartbeats, clock.wall) == ["n1"]


def test_a_stall_caught_up_by_the_pass_itself_counts() -> None:
    """The pass that runs right after the stall, before any heartbeat or tick, sees it."""
    clock, _, heartbeats = rig()
    heartbeats.beat("n1")
    clock.advance(40)
    assert overdue(heartbeats, clock.wall) == []


def test_without_compensation_the_stall_marks_the_node_down() -> None:
    """What happened before ADR 69, kept as the reference: the raw last heartbeat."""
    clock, _, heartbeats = rig()
    heartbeats.beat("n1")
    clock.advance(40)
    sim = Sim(ReconcileConfig(heartbeat_period=TIMEOUT / 3))
    sim.add_node(node("n1"))
    raw = down_check(sim.state, clock.wall, heartbeats.last_seen, sim.config)
    assert [n for n, _ in raw.overdue] == ["n1"]


def test_after_a_leader_change_a_node_not_heard_yet_gets_two_timeouts_and_a_node_heard_one() -> None:
    """ADR 83: every node's silence counts from the takeover, and a node the new leader has not
    heard from yet gets twice the timeout to find it; once heard, the usual timeout again."""
    clock, stalls, heartbeats = rig()
    heartbeats.beat("n1")
    clock.advance(30, stalls)
    heartbeats.reset(["n1", "n2", "n3"])
    assert heartbeats.failover().awaited == {"n1", "n2", "n3"}
    clock.advance(5, stalls)
    heartbeats.beat("n1")  # n1 found the new leader; n2 and n3 did not
    assert heartbeats.failover().awaited == {"n2", "n3"}
    clock.advance(16, stalls)  # 21 s after the takeover, 16 s after n1's beat
    assert overdue(heartbeats, clock.wall) == ["n1"]
    clock.advance(9, stalls)  # 30 s: two timeouts, and no node arrived for 25 s
    assert overdue(heartbeats, clock.wall) == ["n1"]
    clock.advance(1, stalls)  # 31 s: n2 and n3 never came
    assert overdue(heartbeats, clock.wall) == ["n1", "n2", "n3"]
    heartbeats.reset(["n1", "n2", "n3"])  # another takeover awaits every node again
    assert heartbeats.failover().awaited == {"n1", "n2", "n3"}


def test_a_node_not_heard_yet_waits_while_others_still_find_the_new_leader_at_most_five_timeouts() -> None:
    """A new leader taking in 1,000 sessions took minutes (#15): an awaited node is not marked
    down while other awaited nodes still arrive, until a timeout after the last one, and at the
    latest after five timeouts."""
    clock, stalls, heartbeats = rig()
    late = [f"n{i:02d}" for i in range(16)]
    heartbeats.reset(["slow", "dead", *late])
    for node_id in late[:8]:  # one node finds the leader every 5 s, for 40 s
        clock.advance(5, stalls)
        heartbeats.beat(node_id)
        assert "slow" not in overdue(heartbeats, clock.wall), f"{clock.wall}: down while nodes still arrive"
    clock.advance(10, stalls)  # 50 s: the last arrival was 10 s ago
    assert not {"slow", "dead"} & set(overdue(heartbeats, clock.wall))
    heartbeats.beat("slow")
    clock.advance(15, stalls)  # 65 s: 15 s since the last arrival, not more
    assert "dead" not in overdue(heartbeats, clock.wall)
    clock.advance(1, stalls)
    assert "dead" in overdue(heartbeats, clock.wall)

    clock, stalls, heartbeats = rig()
    heartbeats.reset(["dead", *late])
    for node_id in late:  # arrivals every 6 s, for 96 s
        clock.advance(6, stalls)
        heartbeats.beat(node_id)
        assert ("dead" in overdue(heartbeats, clock.wall)) == (clock.wall - 1000 > 5 * TIMEOUT)


# -- the report of a mass silence ------------------------------------------------------------------


def held(count: int, of: int) -> DownCheck:
    return DownCheck(tuple((f"n{i}", 16.0) for i in range(count)), frozenset(), count, of, True)


def test_a_mass_silence_is_reported_once_and_its_end_after_a_timeout(caplog: pytest.LogCaptureFixture) -> None:
    report = SilenceReport("m1")
    caplog.set_level(logging.INFO, logger="warren.manager.hearing")
    first = report.update(held(6, 10), 100.0, TIMEOUT)
    assert first == commands.RecordNodesSilence("m1", 6, 10, True, 100.0)
    assert metrics.NODES_PRESUMED_UNREACHABLE._value.get() == 6
    assert report.update(held(7, 10), 101.0, TIMEOUT) is None
    assert metrics.NODES_PRESUMED_UNREACHABLE._value.get() == 7
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "6 of 10 nodes went silent at once" in warnings[0]

    quiet = DownCheck((), frozenset(), 1, 10, False)
    assert report.update(quiet, 102.0, TIMEOUT) is None  # over, but not for a timeout yet
    assert metrics.NODES_PRESUMED_UNREACHABLE._value.get() == 0
    assert report.update(held(6, 10), 110.0, TIMEOUT) is None  # back: the same silence
    assert report.update(quiet, 111.0, TIMEOUT) is None
    assert report.update(quiet, 111.0 + TIMEOUT, TIMEOUT) == commands.RecordNodesSilence(
        "m1", 1, 10, False, 111.0 + TIMEOUT
    )
    assert report.update(quiet, 200.0, TIMEOUT) is None
    report.clear()
    assert metrics.NODES_PRESUMED_UNREACHABLE._value.get() == 0


def test_the_silence_commands_are_cluster_events_and_change_nothing() -> None:
    sim = Sim()
    sim.add_node(node("m1"))
    for command, action in [
        (commands.RecordNodesSilence("m1", 6, 10, True, 11.0), "nodes_unreachable"),
        (commands.RecordNodesSilence("m1", 0, 10, False, 12.0), "nodes_reachable"),
    ]:
        result, changes = commands.apply(sim.state, command)
        assert result.ok and changes == []
        decoded = commands.decode(commands.encode(command))
        assert decoded == command
        (event,) = events.derive(sim.state, decoded, [], 12, 0, events.command_time(decoded))
        assert (event.type, event.action, event.actor_name) == ("cluster", action, "host-m1")
        assert event.attributes == {"silent": str(command.silent), "of": "10"}
        assert action in events.ACTIONS["cluster"]
    assert sim.state.nodes["m1"].status == NodeStatus.READY


def test_the_leader_holds_a_mass_silence_back_and_reports_it(tmp_path: Path) -> None:
    """The orchestrator on the in-memory Raft: every node silent past the timeout, none marked
    down, the gauge and one `nodes_unreachable` event; heard again, the gauge drops at once and
    `nodes_reachable` follows a node timeout later."""
    from tests.unit.test_event_stream import Rig
    from warren.manager.orchestrator import Orchestrator
    from warren.model import ClusterInfo

    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        period = 0.1  # the node timeout is 0.3 s
        await rig.run(commands.InitCluster(ClusterInfo("c1", 1.0, "", "", "w" * 26, "m" * 26, period), node("m1")))
        for i in range(5):
            await rig.run(commands.RegisterNode(node(f"n{i}")))
        lag = 100.0  # every heartbeat this manager records looks 100 s old
        heartbeats = Heartbeats(wall=lambda: time.time() - lag)
        orchestrator = Orchestrator(rig.store, rig.raft, rig.hub, heartbeats, "m1")

        def actions() -> list[str]:
            return [e.action for e in rig.store.events_after(None) if e.action.startswith("nodes_")]

        await orchestrator.pass_once()
        await orchestrator.pass_once()
        with rig.store.read() as state:
            assert {n.status for n in state.nodes.values()} == {NodeStatus.READY}
        assert actions() == ["nodes_unreachable"]
        assert metrics.NODES_PRESUMED_UNREACHABLE._value.get() == 6

        lag = 0.0
        for node_id in ("m1", *(f"n{i}" for i in range(5))):
            heartbeats.beat(node_id)
        await orchestrator.pass_once()
        assert metrics.NODES_PRESUMED_UNREACHABLE._value.get() == 0
        assert actions() == ["nodes_unreachable"]  # not over for a node timeout yet
        deadline = time.monotonic() + 10
        while actions() != ["nodes_unreachable", "nodes_reachable"]:
            assert time.monotonic() < deadline, actions()
            for node_id in ("m1", *(f"n{i}" for i in range(5))):
                heartbeats.beat(node_id)
            await asyncio.sleep(0.05)
            await orchestrator.pass_once()
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_new_leader_marks_a_node_it_never_heard_down_after_two_timeouts(tmp_path: Path) -> None:
    """The orchestrator on the in-memory Raft, taking over (ADR 83): a node silent since the
    takeover stays READY past one node timeout and goes down after two; a node heard after the
    takeover goes down after one."""
    from tests.unit.test_event_stream import Rig
    from warren.manager.orchestrator import Orchestrator
    from warren.model import ClusterInfo

    async def scenario() -> None:
        rig = Rig(tmp_path / "db")
        period = 0.1  # the node timeout is 0.3 s, 0.6 s for an awaited node
        await rig.run(commands.InitCluster(ClusterInfo("c1", 1.0, "", "", "w" * 26, "m" * 26, period), node("m1")))
        for i in range(4):
            await rig.run(commands.RegisterNode(node(f"n{i}")))
        lag = 0.45  # the takeover looks 0.45 s old: past one timeout, within two
        heartbeats = Heartbeats(wall=lambda: time.time() - lag)
        orchestrator = Orchestrator(rig.store, rig.raft, rig.hub, heartbeats, "m1")

        def status() -> dict[str, NodeStatus]:
            with rig.store.read() as state:
                return {n.id: n.status.value for n in state.nodes.values()}

        taken_over = time.time() - lag
        await orchestrator.pass_once()  # the takeover: every node awaited from now
        lag = 0.0
        for node_id in ("m1", "n0", "n1"):
            heartbeats.beat(node_id)
        lag = 0.45
        heartbeats.beat("n2")  # heard after the takeover, 0.45 s ago: one timeout is its due
        lag = 0.0
        await orchestrator.pass_once()
        assert status() == {"m1": "ready", "n0": "ready", "n1": "ready", "n2": "down", "n3": "ready"}
        deadline = time.monotonic() + 10
        while status()["n3"] != "down":
            assert time.monotonic() < deadline, status()
            for node_id in ("m1", "n0", "n1"):
                heartbeats.beat(node_id)
            await asyncio.sleep(0.02)
            await orchestrator.pass_once()
        assert time.time() - taken_over > 2 * 3 * period
        rig.store.env.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
