"""Whether this manager could hear (ADR 69): its own stalls, which must not count against nodes,
and the report of a mass silence the down check held back; and when each node was last heard
(`Heartbeats`).

A heartbeat is recorded when its handler runs on the event loop. While the loop does not run
(the process is stopped, starved of CPU on a loaded machine, or blocked), heartbeats queue up and
are recorded late: the nodes kept beating, this manager was deaf. `StallClock` adds up those
stalls, and `Heartbeats.seen()` moves each node's last heartbeat later by the
stalls since it, so a node's silence counts only the time this manager was listening.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from warren import commands
from warren.manager import metrics
from warren.manager.routingreports import RoutingReports
from warren.reconciler import DownCheck, liveness

log = logging.getLogger(__name__)

TICK = 0.1  # how often the watcher looks at the loop's lateness
SLACK = 0.05  # lateness below this is scheduling noise, not a stall
WARN_AFTER = 1.0  # a stall this long is worth a log line


class StallClock:
    """The seconds this manager's event loop did not run, added up while `watch()` runs (0
    before: without the watcher's ticks, an idle loop would look stalled). Called only on the
    event loop. A stall is seen at the watcher's next tick, or by `catch_up()` wherever it is
    called first: a heartbeat or a pass that runs right after a stall, before the watcher's
    tick, still sees it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._watching = False
        self.stalled = 0.0

    def start(self) -> None:
        """Count stalls from now on (the watcher ticks from now)."""
        self._last = self._clock()
        self._watching = True

    def catch_up(self) -> float:
        """Count a stall since the last look, if there was one; its length (0.0 if none)."""
        if not self._watching:
            return 0.0
        now = self._clock()
        late = now - self._last - TICK
        self._last = now
        if late <= SLACK:
            return 0.0
        self.stalled += late
        metrics.MANAGER_STALLS.observe(late)
        if late >= WARN_AFTER:
            log.warning(
                "this manager's event loop did not run for %.1fs (a loaded machine or a stopped process?): "
                "node heartbeat deadlines are moved by as much",
                late,
            )
        return late

    async def watch(self) -> None:
        self.start()
        try:
            while True:
                await asyncio.sleep(TICK)
                self.catch_up()
        finally:
            self._watching = False


class SilenceReport:
    """Says when the down check holds a mass silence back (ADR 69): the gauge at every pass; one
    warning and one cluster event when a silence starts, and one of each when it has been over
    for a node timeout (so a count that wavers around the threshold says it once)."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._reported = False
        self._quiet_since: float | None = None

    def clear(self) -> None:
        """Not the leader: this manager holds nothing back. A silence it reported ends with its
        term (the next leader's `cluster leader` event says so): a new term starts afresh."""
        metrics.NODES_PRESUMED_UNREACHABLE.set(0)
        self._reported = False
        self._quiet_since = None

    def update(self, check: DownCheck, now: float, node_timeout: float) -> commands.Command | None:
        """The event to commit, if the report changes."""
        held = check.held_nodes
        metrics.NODES_PRESUMED_UNREACHABLE.set(len(held))
        if held:
            self._quiet_since = None
            if self._reported:
                return None
            self._reported = True
            log.warning(
                "%d of %d nodes went silent at once: not marking %d overdue node(s) down, as this manager "
                "more likely stopped hearing them; if they did fail, drain them (ADR 69)",
                check.silent,
                check.counted,
                len(held),
            )
            return commands.RecordNodesSilence(self._node_id, check.silent, check.counted, True, now)
        if not self._reported:
            return None
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since < node_timeout:
            return None
        self._reported = False
        self._quiet_since = None
        log.info("the nodes are heard again: the down check marks silent nodes down as usual")
        return commands.RecordNodesSilence(self._node_id, check.silent, check.counted, False, now)


class Heartbeats:
    """Last time each node was heard from (wall clock, like the reconciler's `now`), with this
    manager's stall total then (ADR 69), and what its load balancer may route to (ADR 33)."""

    def __init__(self, stalls: StallClock | None = None, wall: Callable[[], float] = time.time) -> None:
        self.stalls = stalls or StallClock()
        self._wall = wall
        self.last_seen: dict[str, float] = {}
        self._stalled_at: dict[str, float] = {}
        self._awaited: set[str] = set()
        self._arrival = (0.0, 0.0)  # when an awaited node was last first heard, and the stall total then
        self.routes = RoutingReports()

    def beat(self, node_id: str) -> None:
        self.stalls.catch_up()  # a heartbeat a stall held up is heard after that stall
        now = self._wall()
        self.last_seen[node_id] = now
        self._stalled_at[node_id] = self.stalls.stalled
        if node_id in self._awaited:
            self._awaited.discard(node_id)
            self._arrival = (now, self.stalls.stalled)

    def reset(self, node_ids: list[str]) -> None:
        """On becoming leader, count every node's silence from now, and await them all: a node
        not heard since gets longer to find us (ADR 83). What their load balancers
        hold is unknown until they report it (a stop waits at most the bound)."""
        self.stalls.catch_up()
        now = self._wall()
        self.last_seen = dict.fromkeys(node_ids, now)
        self._stalled_at = dict.fromkeys(node_ids, self.stalls.stalled)
        self._awaited = set(node_ids)
        self._arrival = (now, self.stalls.stalled)
        self.routes = RoutingReports()

    def failover(self) -> liveness.Failover:
        """The nodes not heard since the last `reset` (this leader took over), and when the
        latest other was first heard, moved later by this manager's stalls since, as `seen()`."""
        self.stalls.catch_up()
        at, stalled_at = self._arrival
        return liveness.Failover(frozenset(self._awaited), at + self.stalls.stalled - stalled_at)

    def seen(self) -> dict[str, float]:
        """When each node was last heard, moved later by every stall of this manager since:
        a node's silence counts only the time this manager could hear it (ADR 69)."""
        self.stalls.catch_up()
        total, stalled_at = self.stalls.stalled, self._stalled_at
        return {node: at + total - stalled_at.get(node, total) for node, at in self.last_seen.items()}
