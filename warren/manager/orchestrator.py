"""The leader's control loop: run the pure reconciler on a snapshot and commit its plan.

A pass runs after every commit that may need one (debounced, and no sooner after the last pass
than that pass took) and at least once a second, so time-driven work (missed heartbeats, restart
delays) happens without any event. A pass is incremental (ADR 53): it visits the services the
commits since the last pass touched, and those the last pass left unsettled. A full pass runs
after a leader change, a resynchronise event, a failed pass, and every FULL_PASS_PERIOD (longer
after a long full pass: FULL_PASS_SPACING).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping

from warren import commands, logsetup, reconciler
from warren.aio import wait_within
from warren.ids import new_id
from warren.manager import metrics
from warren.manager.events import Event, EventHub
from warren.manager.hearing import Heartbeats, SilenceReport
from warren.manager.ports import ProposalError, Proposer, StateReader
from warren.reconciler import liveness
from warren.state import ClusterState

log = logging.getLogger(__name__)

IDLE_PERIOD = 1.0
# A pass waits this long after the commit that woke it, so that a burst of commits lands in one
# pass: SwarmKit's scheduler waits 50 ms too. At 5 ms, a stream of writes ran ~90 passes a second
# on the leader, each visiting the ~20 services created since the last; at 50 ms, ~17 (ADR 92).
DEBOUNCE = 0.05
# A pass over a large cluster takes a while, and under a stream of writes another would start
# at once, every time: the next pass waits at least as long as the last one took (up to this),
# so that passes take at most about half of the manager's time and the writes the rest (ADR 51).
MAX_PASS_GAP = 0.5
FULL_PASS_PERIOD = 10.0  # the safety net of incremental passes (ADR 53)
# ... and at least this many times as long as the last full pass took, so that the safety net
# takes at most ~5 % of the leader (ADR 74): at 110,000 tasks a full pass takes 1-2 s of the
# leader's CPU, which one every 10 s made a tenth to a fifth of it.
FULL_PASS_SPACING = 20.0
FULL_PASS_MAX_GAP = 60.0  # ... but never more: one slow pass (a collection, a big plan) must not stop the net


class HeartbeatPeriod:
    """The heartbeat period the down check counts with (ADR 52). Agents learn a new period at
    their next heartbeat, up to one old period after `cluster update --heartbeat-period`: for
    two old periods after the period is lowered, the old one still counts, so that no node is
    marked down for beating at the old pace."""

    def __init__(self) -> None:
        self._period = 0.0
        self._old = 0.0
        self._old_until = 0.0

    def effective(self, period: float, now: float) -> float:
        if period != self._period:
            if 0 < period < self._period:
                self._old, self._old_until = self._period, now + 2 * self._period
            self._period = period
        return max(period, self._old) if now < self._old_until else period


class Orchestrator:
    def __init__(
        self,
        store: StateReader,
        raft: Proposer,
        hub: EventHub,
        heartbeats: Heartbeats,
        local_node_id: str,
        beat_for_local_node: bool = False,
    ) -> None:
        """`beat_for_local_node`: count this manager's own node alive while this process runs.
        Only for `cluster init --manager-only`, where no agent heartbeats for it (the node is
        drained, so nothing runs there); otherwise the embedded agent heartbeats like any other."""
        self._store = store
        self._raft = raft
        self._hub = hub
        self._heartbeats = heartbeats
        self._local_node_id = local_node_id
        self._beat_for_local_node = beat_for_local_node
        self._was_leader = False
        self._last_applied = -1
        self._announced_term = -1
        self._last_pass = 0.0  # seconds the last pass took
        # Incremental passes (ADR 53) read the orchestrator's own copy of the state, brought up to
        # date with the commits since its index (ADR 92): a copy of the whole state per pass was
        # O(state) on the event loop, under the store's lock. None: the next pass copies it again
        # and is a full one. The services the last pass left unsettled are visited again.
        self._mirror: ClusterState | None = None
        self._mirror_index = -1
        self._pending: list[Event] = []  # commits noted since the last pass
        self._unsettled: frozenset[str] = frozenset()
        self._last_full = 0.0
        self._full_took = 0.0  # seconds the last full pass's reconcile took
        self._period = HeartbeatPeriod()
        self._silence = SilenceReport(local_node_id)

    async def run(self) -> None:
        # This manager's own stalls move node deadlines (ADR 69): measured while it runs.
        watcher = asyncio.create_task(self._heartbeats.stalls.watch(), name="stall-watch")
        try:
            await self._run()
        finally:
            watcher.cancel()

    async def _run(self) -> None:
        with self._hub.subscribe() as events:
            while True:
                with contextlib.suppress(TimeoutError):
                    self.note(await wait_within(events.get(), IDLE_PERIOD))
                    # Let a burst of commits land in one pass; after a long pass, wait as long.
                    await asyncio.sleep(max(DEBOUNCE, min(self._last_pass, MAX_PASS_GAP)))
                while not events.empty():
                    self.note(events.get_nowait())
                started = time.perf_counter()
                try:
                    await self.pass_once(incremental=True)
                except ProposalError as exc:
                    log.warning("scheduling pass not committed: %s", exc.message)
                except Exception:
                    self._mirror = None  # start again from a copy and a full pass
                    log.exception("scheduling pass failed")
                self._last_pass = time.perf_counter() - started

    @property
    def unsettled(self) -> frozenset[str]:
        """The services the next incremental pass visits even if no commit touches them."""
        return self._unsettled

    def note(self, event: Event) -> None:
        """Remember a commit's changes for the next incremental pass."""
        if event[1] is None:  # resynchronise: changes were dropped, copy the state again
            self._mirror, self._pending = None, []
        elif self._mirror is not None:
            self._pending.append(event)

    def _view(self, incremental: bool) -> tuple[ClusterState, reconciler.Visit | None]:
        """The state this pass reads, and what it visits (None: every service). A full pass, due
        every FULL_PASS_PERIOD or so, copies the live state again: the safety net, for the
        copy too. An incremental pass applies the commits noted since the copy's index (a
        notice may come after the copy that already holds its commit: it is skipped)."""
        pending, self._pending = self._pending, []
        now = time.monotonic()
        spacing = min(max(FULL_PASS_PERIOD, FULL_PASS_SPACING * self._full_took), FULL_PASS_MAX_GAP)
        mirror = self._mirror
        if not incremental or mirror is None or now - self._last_full >= spacing:
            self._last_full = now
            self._mirror_index, self._mirror = self._store.snapshot()
            return self._mirror, None
        news = [(index, changes) for index, changes in pending if index > self._mirror_index and changes]
        visit = reconciler.touched_by([c for _, changes in news for c in changes], mirror)
        for index, changes in news:
            mirror.apply(changes)
            self._mirror_index = index
        return mirror, visit

    async def _announce_leadership(self) -> None:
        """Commit this term's "leader" event (ADR 45), once; a failure is retried next pass."""
        status = self._raft.status()
        logsetup.bind(term=status.term)  # every line of this pass and later ones, until re-bound
        if status.term == self._announced_term:
            return
        announce = commands.AnnounceLeader(self._local_node_id, status.self_addr, status.term, time.time())
        try:
            await self._raft.propose_async(announce, timeout=10.0)
        except ProposalError as exc:
            log.warning("leadership announcement not committed: %s", exc.message)
            return
        self._announced_term = status.term

    async def pass_once(self, incremental: bool = False) -> None:
        """One pass; an incremental one needs every commit's changes through `note`."""
        if not self._raft.is_leader:
            self._silence.clear()
            self._was_leader = False
            self._mirror, self._pending = None, []  # a new term starts from a copy and a full pass
            return
        if not self._was_leader:
            with self._store.read() as state:
                self._heartbeats.reset(list(state.nodes))
            self._was_leader = True
        if self._beat_for_local_node:
            self._heartbeats.beat(self._local_node_id)
        snapshot, visit = self._view(incremental)
        if snapshot.cluster is None:
            return
        await self._announce_leadership()
        due = commands.keys_due_for_rotation(snapshot, time.time())
        if due:  # WireGuard keys older than the cluster's rotation period (ADR 18)
            log.info("rotating the WireGuard key of %d node(s)", len(due))
            try:
                await self._raft.propose_async(commands.RotateNodeKeys(due), timeout=10.0)
            except ProposalError as exc:  # the next pass asks again; scheduling goes on
                log.warning("WireGuard key rotation not committed: %s", exc.message)
        now = time.time()
        config = reconciler.ReconcileConfig.from_cluster(
            snapshot.cluster,
            len(snapshot.nodes),
            heartbeat_period=self._period.effective(
                liveness.heartbeat_period(snapshot.cluster.heartbeat_period, len(snapshot.nodes)), now
            ),
        )
        heard = self._heartbeats.seen()  # after `now`: a stall in between only moves them later
        started = time.perf_counter()
        (plan, self._unsettled), check = await asyncio.to_thread(
            _reconcile,
            snapshot,
            now,
            heard,
            config,
            self._heartbeats.routes.snapshot(snapshot.revoked),
            visit,
            self._unsettled,
            self._heartbeats.failover(),
        )
        took = time.perf_counter() - started
        metrics.SCHEDULING_PASS.observe(took)
        if visit is None:
            self._full_took = took
        silence = self._silence.update(check, now, config.node_timeout)
        if silence is not None:
            try:
                await self._raft.propose_async(silence, timeout=10.0)
            except ProposalError as exc:  # only the event is lost; the guard holds all the same
                log.warning("the silence event was not committed: %s", exc.message)
        if reconciler.is_empty(plan):
            return
        metrics.SCHEDULING_CHANGES.labels("created").inc(len(plan.created))
        metrics.SCHEDULING_CHANGES.labels("updated").inc(len(plan.updated))
        metrics.SCHEDULING_CHANGES.labels("deleted").inc(len(plan.deleted))
        # Each part within the size of one command; measuring a big plan means encoding it, which
        # is not work for the event loop.
        for part in await asyncio.to_thread(commands.split_plan, plan):
            await self._raft.propose_async(part, timeout=10.0)


def _reconcile(
    snapshot: ClusterState,
    now: float,
    heard: dict[str, float],
    config: reconciler.ReconcileConfig,
    routes: Mapping[str, Collection[str]],
    visit: reconciler.Visit | None,
    unsettled: frozenset[str],
    failover: reconciler.Failover,
) -> tuple[tuple[commands.ApplyPlan, frozenset[str]], reconciler.DownCheck]:
    """One pass, and its down check to report (both off the event loop)."""
    found = reconciler.reconcile_pass(snapshot, now, heard, config, new_id, routes, visit, unsettled, failover)
    return found, reconciler.down_check(snapshot, now, heard, config, failover)
