"""The reconciler: compare desired state with the observed state and return one ApplyPlan.

Pure and deterministic (Nomad's `Compute() -> plan` shape): the caller passes the state, the
time, the heartbeats and an id generator, and commits the plan as one Raft entry. Applying the
plan and reconciling again gives an empty plan unless something external changed or a restart
delay expired.

Replicated services keep `replicas` filled slots. The budget of slots is spent in this order:
slots with a live task, then slots whose newest task died on its own (they are restarted
according to the dead task's restart policy, or stay dead and keep their slot when the policy
says no), then brand-new slots. Tasks that the reconciler stopped on purpose (scale down, drain,
update) never hold a slot: their replacement, if any, is created in the same pass.

Global services keep one task per eligible node, created directly ASSIGNED to that node.

Routing leads every stop (ADR 33): a task the load balancers route to is not stopped at once but
marked draining (still desired running, out of the endpoints); its stop is sent once no ready
node may still route to it (`routes`, what the dispatcher heard from the agents) and its
`stop_drain` passed, or after the bound of 3 heartbeat periods, saying which nodes did not confirm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping

import msgspec

from warren import rebalance, rollout
from warren.commands import ApplyPlan, RolloutChange, SetNodeStatus, TaskUpdate
from warren.constraints import Constraint, ConstraintError, parse_constraints
from warren.model import (
    Availability,
    ClusterInfo,
    Node,
    NodeStatus,
    Resources,
    Service,
    ServiceMode,
    Task,
    TaskState,
    UpdateOrder,
    can_transition,
    is_ready,
    is_routed,
    is_stopping,
)
from warren.restart import next_attempt
from warren.scheduler import address_capacity, fits, live_by_node, node_is_schedulable, reserved_by_node, schedule
from warren.state import ClusterState

RUNNING = TaskState.RUNNING
SHUTDOWN = TaskState.SHUTDOWN
ASSIGNED = TaskState.ASSIGNED

_PLAN_FIELDS = ("state", "desired_state", "node_id", "message", "draining_since")
DRAINING = "draining: "  # the message of a task out of the load balancing, before "why"


class ReconcileConfig(msgspec.Struct, frozen=True):
    """Knobs of one pass. A node is DOWN after 3 missed heartbeat periods; the caps bound how
    many tasks one pass may start or stop, so a huge change is spread over several passes."""

    heartbeat_period: float = 5.0
    task_history_limit: int = 5
    max_starts_per_pass: int = 1000
    max_stops_per_pass: int = 1000

    @property
    def node_timeout(self) -> float:
        return 3 * self.heartbeat_period

    @classmethod
    def from_cluster(cls, cluster: ClusterInfo | None, **overrides: int | float) -> ReconcileConfig:
        """The config implied by the replicated cluster settings, with optional overrides."""
        base = cls() if cluster is None else cls(cluster.heartbeat_period, cluster.task_history_limit)
        return msgspec.structs.replace(base, **overrides)


def is_empty(plan: ApplyPlan) -> bool:
    """True when committing the plan would change nothing (the caller can skip the Raft write)."""
    return not (plan.created or plan.updated or plan.deleted or plan.node_status or plan.rollouts)


def reconcile(
    state: ClusterState,
    now: float,
    heartbeats: Mapping[str, float],
    config: ReconcileConfig,
    new_id: Callable[[], str],
    routes: Mapping[str, Collection[str]] | None = None,
) -> ApplyPlan:
    """One reconciliation pass over the whole cluster. Reads only its arguments. `routes` maps
    a node to the task addresses its load balancer may route to; a node missing is unknown."""
    return _Pass(state, now, config, new_id, routes or {}).run(heartbeats)


def is_live(task: Task) -> bool:
    """Meant to run, not ended, not draining: such a task fills its slot (or its node, for global)."""
    return task.state < TaskState.COMPLETE and not is_stopping(task)


def died_on_its_own(task: Task, replicated: bool) -> bool:
    """A dead task the restart policy applies to: it ended while meant to run, or its node was
    lost. Losing the node is not a failure of a global task: the node gets a task when it is back."""
    if task.state < TaskState.COMPLETE or task.draining_since:
        return False
    return task.desired_state <= RUNNING or (replicated and task.state == TaskState.ORPHANED)


def restart_attempt(dead: Task, service: Service, now: float) -> int | None:
    """The attempt number of the task replacing `dead`, or None when it may not (yet) be replaced."""
    if dead.spec_version != service.version:
        return 0  # a new spec is a fresh start, even for slots the old policy gave up on
    if dead.state == TaskState.ORPHANED:
        # Its node was lost: not a failure of the task, so no backoff and no attempt used
        # (as Nomad reschedules lost allocations at once, whatever the restart policy).
        return dead.attempt
    policy = dead.spec.restart
    ran_for = dead.updated_at - dead.started_at if dead.started_at > 0 else 0.0
    attempt = next_attempt(policy, dead.state, dead.attempt, ran_for)
    if attempt is None or now < dead.updated_at + policy.delay:
        return None
    return attempt


def _move_rank(task: Task, slot_ids: Collection[str], version: int) -> int:
    """A rebalance's move (ADR 36) holds its slot ahead of the task it replaces (2), unless the
    service changed before it was ready (0): the old task then keeps the slot, and the update
    replaces it start-first. Other tasks: 1."""
    if task.relocates not in slot_ids:
        return 1
    return 2 if task.spec_version == version or is_ready(task) else 0


def _newest_first(task: Task) -> tuple[float, int, str]:
    """Sort key for "newer": creation time, then slot (tasks created in one pass share a time)."""
    return (task.created_at, task.slot, task.id)


class _Pass:
    """The working set of one pass: an overlay of changed and created tasks over the state."""

    def __init__(
        self,
        state: ClusterState,
        now: float,
        config: ReconcileConfig,
        new_id: Callable[[], str],
        routes: Mapping[str, Collection[str]],
    ) -> None:
        self.state = state
        self.routes = routes
        self.draining: list[Task] = []  # tasks out of the load balancing, waiting for their stop
        self.now = now
        self.config = config
        self.new_id = new_id
        self.nodes: dict[str, Node] = {}
        # One overlay for changed and created tasks (a single lookup on the hot path).
        self.overlay: dict[str, Task] = {}
        self.created: list[str] = []
        self.to_place: list[str] = []
        self.deleted: set[str] = set()
        self.node_status: list[SetNodeStatus] = []
        self.rollouts: list[RolloutChange] = []
        self.standby_for: dict[str, Task] = {}  # a start-first task's id -> the task it replaces
        self.reserved: dict[str, Resources] = {}
        self.live: dict[str, int] = {}  # tasks not ended per node: each holds an overlay address
        self.starts = 0
        self.stops = 0
        self._parsed: dict[tuple[str, ...], tuple[Constraint, ...] | None] = {}
        self._eligible: rebalance.Eligible | None = None
        self._displaced: dict[tuple[str, tuple[str, ...]], str] = {}

    # -- the pass ------------------------------------------------------------------------------
    def run(self, heartbeats: Mapping[str, float]) -> ApplyPlan:
        self._check_nodes(heartbeats)
        self._orphan_tasks()
        current = {**self.state.tasks, **self.overlay} if self.overlay else self.state.tasks
        self.reserved = reserved_by_node(current.values())
        self.live = live_by_node(current.values())
        for service in sorted(self.state.services.values(), key=lambda s: s.id):
            tasks = [self._settle(current[t]) for t in sorted(self.state.tasks_by_service.get(service.id, ()))]
            self.draining.extend(t for t in tasks if t.draining_since and t.desired_state <= RUNNING)
            if service.spec.mode == ServiceMode.GLOBAL:
                self._global(service, tasks)
            else:
                self._replicated(service, tasks)
        self._removed_services()
        self._stop_drained()
        self._place()
        return self._plan()

    # -- overlay -------------------------------------------------------------------------------
    def task(self, task_id: str) -> Task:
        found = self.overlay.get(task_id)
        return found if found is not None else self.state.tasks[task_id]

    def update(self, task: Task, **fields: object) -> Task:
        """Record a change; fields equal to the current value are dropped, and so are moves the
        FSM would reject (state backwards, desired state lowered)."""
        changes = {k: v for k, v in fields.items() if getattr(task, k) != v}
        new_state = changes.get("state")
        if isinstance(new_state, TaskState) and not can_transition(task.state, new_state):
            del changes["state"]
        desired = changes.get("desired_state")
        if isinstance(desired, TaskState) and desired < task.desired_state:
            del changes["desired_state"]
        if not changes:
            return task
        new = msgspec.structs.replace(task, updated_at=self.now, **changes)
        self.overlay[task.id] = new
        return new

    def can_start(self) -> bool:
        return self.starts < self.config.max_starts_per_pass

    def _disruptive(self, task: Task) -> bool:
        return task.state >= ASSIGNED

    def can_stop(self, task: Task) -> bool:
        return not self._disruptive(task) or self.stops < self.config.max_stops_per_pass

    def shutdown(self, task: Task, why: str) -> bool:
        """Ask a task to stop; one no node holds yet is stopped right away, one the load
        balancers route to first drains (ADR 33, `_stop_drained`). False when capped."""
        if not self.can_stop(task):
            return False
        if self._disruptive(task):
            self.stops += 1
        if is_routed(task):
            self.update(task, draining_since=self.now, message=f"{DRAINING}{why}")
            return True
        fields: dict[str, object] = {"desired_state": SHUTDOWN, "message": f"shutdown: {why}"}
        if task.state < ASSIGNED:
            fields["state"] = SHUTDOWN
        self.update(task, **fields)
        return True

    def create(self, service: Service, slot: int, attempt: int, node_id: str = "", relocates: str = "") -> Task:
        """A new task of the current spec; PENDING for the scheduler unless its node is given."""
        task = Task(
            id=self.new_id(),
            service_id=service.id,
            service_name=service.spec.name,
            slot=slot,
            spec=service.spec,
            spec_version=service.version,
            desired_state=RUNNING,
            state=ASSIGNED if node_id else TaskState.PENDING,
            node_id=node_id,
            attempt=attempt,
            created_at=self.now,
            updated_at=self.now,
            relocates=relocates,
        )
        self.starts += 1
        self.overlay[task.id] = task
        self.created.append(task.id)
        if node_id:
            self.reserved[node_id] = self.reserved.get(node_id, Resources()) + service.spec.reservations
            self.live[node_id] = self.live.get(node_id, 0) + 1
        else:
            self.to_place.append(task.id)
        return task

    def address_left(self, node: Node) -> bool:
        """Room for one more task in the node's overlay subnet (always, off the overlay)."""
        capacity = address_capacity(node)
        return capacity is None or self.live.get(node.id, 0) < capacity

    def constraints(self, texts: tuple[str, ...]) -> tuple[Constraint, ...] | None:
        """Parsed constraints, or None if invalid (the API rejects those; never evict on them)."""
        if texts not in self._parsed:
            try:
                self._parsed[texts] = parse_constraints(texts)
            except ConstraintError:
                self._parsed[texts] = None
        return self._parsed[texts]

    def _settle(self, task: Task) -> Task:
        """A task told to stop before any node got it has nothing to wait for: it is shut down."""
        if task.state < ASSIGNED and task.desired_state > RUNNING:
            return self.update(task, state=SHUTDOWN)
        return task

    # -- nodes ---------------------------------------------------------------------------------
    def _check_nodes(self, heartbeats: Mapping[str, float]) -> None:
        timeout = self.config.node_timeout
        for node in sorted(self.state.nodes.values(), key=lambda n: n.id):
            if node.status == NodeStatus.READY:
                age = self.now - heartbeats.get(node.id, self.now)
                if age > timeout:
                    message = f"heartbeat missed for {int(age)}s"
                    self.node_status.append(SetNodeStatus(node.id, NodeStatus.DOWN, message, self.now))
                    node = msgspec.structs.replace(node, status=NodeStatus.DOWN, status_message=message)
            self.nodes[node.id] = node

    def _orphan_tasks(self) -> None:
        """Tasks on a lost node will never report again: mark them ORPHANED so they get replaced."""
        for node_id in sorted(self.state.tasks_by_node):
            node = self.nodes.get(node_id)
            if node is not None and node.status != NodeStatus.DOWN:
                continue
            message = "node removed" if node is None else "node down"
            for task_id in sorted(self.state.tasks_by_node[node_id]):
                task = self.task(task_id)
                if task.state < TaskState.COMPLETE:
                    desired = max(task.desired_state, SHUTDOWN)
                    self.update(task, state=TaskState.ORPHANED, desired_state=desired, message=message)

    def _displaced_by(self, task: Task, constraint_texts: tuple[str, ...]) -> str:
        """Why a live task may no longer stay on its node ('' when it may); memoised per pass."""
        key = (task.node_id, constraint_texts)
        why = self._displaced.get(key)
        if why is None:
            why = self._displaced[key] = self._check_placement(task.node_id, constraint_texts)
        return why

    def _check_placement(self, node_id: str, constraint_texts: tuple[str, ...]) -> str:
        node = self.nodes.get(node_id) if node_id else None
        if node is None:
            return ""
        if node.availability == Availability.DRAIN:
            return "node drained"
        for c in self.constraints(constraint_texts) or ():
            if not c.matches(node):
                return f"node no longer satisfies {c}"
        return ""

    # -- replicated ----------------------------------------------------------------------------
    def _replicated(self, service: Service, tasks: list[Task]) -> None:
        first_created = len(self.created)
        version = service.version
        replicas = max(service.spec.replicas, 0)
        by_slot: defaultdict[int, list[Task]] = defaultdict(list)
        for t in tasks:
            by_slot[t.slot].append(t)

        live: dict[int, Task] = {}
        # Start-first (ADR 33): a slot's older task keeps serving while its new one gets ready.
        standby: dict[int, Task] = {}
        for slot in sorted(by_slot):
            slot_live = [t for t in by_slot[slot] if is_live(t)]
            if not slot_live:
                continue
            if slot < 1:
                for t in slot_live:
                    self.shutdown(t, "not a replicated slot")
                continue
            ids = {t.id for t in slot_live}
            slot_live.sort(
                key=lambda t: (t.spec_version == version, _move_rank(t, ids, version), t.state, t.created_at, t.id),
                reverse=True,
            )
            keeper, rest = slot_live[0], slot_live[1:]
            older = [t for t in rest if t.spec_version != keeper.spec_version or t.id == keeper.relocates]
            if keeper.spec_version == version and not is_ready(keeper) and older:
                standby[slot] = older[0]
                rest.remove(older[0])
            for extra in rest:
                if extra.id == keeper.relocates:
                    self.shutdown(extra, "moved to another node by a rebalance")
                elif extra.relocates == keeper.id:
                    self.shutdown(extra, "rebalance move dropped: the service changed")
                else:
                    self.shutdown(extra, "replaced by service update" if extra in older else "duplicate task in slot")
            live[slot] = keeper

        if len(live) > replicas:
            # Not yet running first, then outdated, then newest (see _newest_first).
            victims = sorted(live.values(), key=_newest_first, reverse=True)
            victims.sort(key=lambda t: (t.state >= RUNNING, t.spec_version == version))
            for t in victims[: len(live) - replicas]:
                if self.shutdown(t, "scaled down"):
                    del live[t.slot]
                    if t.slot in standby and self.shutdown(standby[t.slot], "scaled down"):
                        del standby[t.slot]

        for slot, t in sorted(standby.items()):
            why = self._displaced_by(t, t.spec.constraints)
            if why and self.shutdown(t, why):
                del standby[slot]
        for slot, t in sorted(live.items()):
            why = self._displaced_by(t, t.spec.constraints)
            if why and self.can_start() and self.can_stop(t):
                self.shutdown(t, why)
                live[slot] = self.create(service, slot, t.attempt)

        self._rolling_update_replicated(service, live, standby, tasks)
        self._fill_slots(service, live, by_slot, replicas)
        self._rebalance(service, live, standby, tasks)
        for slot, serving in standby.items():  # the new task may have been replaced in this pass
            if slot in live:
                self.standby_for[live[slot].id] = serving
        for kept in live.values():
            t = self.task(kept.id)
            if t.state < ASSIGNED and not t.node_id and t.id in self.state.tasks:
                self.to_place.append(t.id)
        for task_id in self.created[first_created:]:
            by_slot[self.overlay[task_id].slot].append(self.overlay[task_id])
        self._trim_history(by_slot.values())

    def _rolling_update_replicated(
        self, service: Service, live: dict[int, Task], standby: dict[int, Task], tasks: list[Task]
    ) -> None:
        """Replace outdated tasks (ADR 33): unplaced ones at once, placed ones as the rollout's
        lanes free up, stop-first or start-first; and move the rollout's status on."""
        version = service.version
        outdated = sorted((t for t in live.values() if t.spec_version != version), key=lambda t: t.slot)
        for t in outdated:
            if t.state < ASSIGNED and self.can_start():
                self.shutdown(t, "replaced by service update")
                live[t.slot] = self.create(service, t.slot, 0)
        placed = [t for t in outdated if not is_stopping(self.task(t.id))]
        new_tasks = [self.task(t.id) for t in tasks if t.spec_version == version]
        new_tasks += [t for t in live.values() if t.spec_version == version and t.id not in self.state.tasks]
        step = rollout.step(service, new_tasks, len(placed), max(service.spec.replicas, 0), self.now)
        if step.status is not None:
            self.rollouts.append(RolloutChange(service.id, version, step.status, step.revert))
        if step.revert:
            return
        stop_first = rollout.settings(service).order == UpdateOrder.STOP_FIRST
        placed.sort(key=lambda t: (t.state >= RUNNING, t.slot))  # what serves nothing yet first
        for t in placed[: step.start]:
            if not self.can_start() or (stop_first and not self.can_stop(t)):
                return
            if stop_first:
                self.shutdown(t, "replaced by service update")
            live[t.slot] = self.create(service, t.slot, 0)
            if not stop_first:
                standby[t.slot] = t

    def _rebalance(self, service: Service, live: dict[int, Task], standby: dict[int, Task], tasks: list[Task]) -> None:
        """Start the moves of a rebalance (ADR 36): a new task of the slot on its target node;
        the old one serves until it is ready (start-first), like an update's."""
        cluster = self.state.cluster
        automatic = cluster is not None and cluster.auto_rebalance
        if not automatic and not rebalance.under_way(service):
            return
        if self._eligible is None:
            self._eligible = rebalance.Eligible(self.nodes.values())
        need = service.spec.reservations

        def room_of(node: Node) -> int | None:
            return rebalance.room(node, self.reserved.get(node.id, Resources()), self.live.get(node.id, 0), need)

        holders = [self.task(t.id) for t in live.values()]
        eligible = self._eligible.nodes(service.spec.constraints)
        settle = self.config.node_timeout
        step = rebalance.step(service, holders, tasks, eligible, room_of, self.now, automatic, settle)
        if step.status is not None:
            self.rollouts.append(RolloutChange(service.id, service.version, step.status))
        for move in step.moves:
            if not self.can_start():
                return
            old = standby[move.slot] = live[move.slot]
            live[move.slot] = self.create(service, move.slot, old.attempt, move.to_node, relocates=old.id)

    def _fill_slots(
        self, service: Service, live: dict[int, Task], by_slot: Mapping[int, list[Task]], replicas: int
    ) -> None:
        budget = replicas - len(live)
        if budget <= 0:
            return
        held = set(live)
        for slot in sorted(by_slot):
            if budget <= 0:
                break
            if slot < 1 or slot in held:
                continue
            newest = max((self.task(t.id) for t in by_slot[slot]), key=_newest_first)
            if not died_on_its_own(newest, replicated=True):
                continue  # stopped on purpose: the slot number is free
            budget -= 1
            held.add(slot)
            attempt = restart_attempt(newest, service, self.now)
            if attempt is not None and self.can_start():
                live[slot] = self.create(service, slot, attempt)
        busy = held | {s for s, ts in by_slot.items() if any(self.task(t.id).state < TaskState.COMPLETE for t in ts)}
        slot = 1
        while budget > 0 and self.can_start():
            while slot in busy:
                slot += 1
            live[slot] = self.create(service, slot, 0)
            busy.add(slot)
            budget -= 1

    # -- global --------------------------------------------------------------------------------
    def _global(self, service: Service, tasks: list[Task]) -> None:
        first_created = len(self.created)
        spec = service.spec
        by_node: defaultdict[str, list[Task]] = defaultdict(list)
        for t in tasks:
            by_node[t.node_id].append(t)

        live: dict[str, Task] = {}
        for node_id in sorted(by_node):
            node_live = [t for t in by_node[node_id] if is_live(t)]
            if not node_live:
                continue
            if not node_id:
                for t in node_live:
                    self.shutdown(t, "global task without a node")
                continue
            why = self._displaced_by(node_live[0], spec.constraints)
            node_live.sort(key=lambda t: (t.slot == 0, t.spec_version == service.version, t.state, t.created_at, t.id))
            keeper = node_live.pop()
            # Start-first (ADR 33): the node's older task keeps serving while the new one gets ready.
            older = [t for t in node_live if t.slot == 0 and t.spec_version != keeper.spec_version]
            keep_older = not why and keeper.spec_version == service.version and not is_ready(keeper) and older
            for t in node_live:
                if keep_older and t is older[-1]:
                    continue
                self.shutdown(t, "replaced by service update" if t in older else "duplicate task on node")
            if why:
                self.shutdown(keeper, why)
            elif keeper.slot != 0:
                self.shutdown(keeper, "not a global task")
            else:
                live[node_id] = keeper

        # Fill first: a node about to get a fresh task counts as an update in flight.
        self._fill_nodes(service, live, by_node)
        self._rolling_update_global(service, live, by_node, tasks)
        for task_id in self.created[first_created:]:
            by_node[self.overlay[task_id].node_id].append(self.overlay[task_id])
        self._trim_history(by_node.values())

    def _fill_nodes(self, service: Service, live: dict[str, Task], by_node: Mapping[str, list[Task]]) -> None:
        """Start a task on every eligible node without one, unless its restart policy says no."""
        spec = service.spec
        eligible = self.constraints(spec.constraints)
        if eligible is None:
            return
        for node_id, node in sorted(self.nodes.items()):
            if node_id in live or not node_is_schedulable(node) or not all(c.matches(node) for c in eligible):
                continue
            if not fits(node, self.reserved.get(node_id, Resources()), spec.reservations):
                continue
            if not self.address_left(node):
                continue  # its overlay subnet is full
            attempt = 0
            history = by_node.get(node_id)
            if history:
                newest = max((self.task(t.id) for t in history), key=_newest_first)
                if died_on_its_own(newest, replicated=False):
                    found = restart_attempt(newest, service, self.now)
                    if found is None:
                        continue
                    attempt = found
            if not self.can_start():
                return
            live[node_id] = self.create(service, 0, attempt, node_id=node_id)

    def _rolling_update_global(
        self, service: Service, live: dict[str, Task], by_node: Mapping[str, list[Task]], tasks: list[Task]
    ) -> None:
        """Outdated tasks replaced on their node as the rollout's lanes free up (ADR 33):
        start-first when both fit on the node (the old one stops once the new one is ready),
        otherwise stop-first, and the fill step starts the new task once the old one has ended."""
        version = service.version
        new_tasks = [self.task(t.id) for t in tasks if t.spec_version == version]
        new_tasks += [t for t in live.values() if t.spec_version == version and t.id not in self.state.tasks]
        outdated = [t for _, t in sorted(live.items()) if t.spec_version != version]
        # A stop-first replacement still stopping holds a lane: its node has no live task yet.
        stopping = 0
        for node_id, node_tasks in by_node.items():
            node = self.nodes.get(node_id)
            if node is None or node.status != NodeStatus.READY or node_id in live:
                continue  # an agent that is not connected would never report the stop
            if any(self.task(t.id).state < TaskState.COMPLETE for t in node_tasks):
                stopping += 1
        step = rollout.step(service, new_tasks, len(outdated) + stopping, len(live) + stopping, self.now)
        if step.status is not None:
            self.rollouts.append(RolloutChange(service.id, version, step.status, step.revert))
        if step.revert:
            return
        budget = step.start - stopping
        stop_first = rollout.settings(service).order == UpdateOrder.STOP_FIRST
        for t in outdated:
            if budget <= 0:
                return
            node = self.nodes[t.node_id]
            reserved = self.reserved.get(t.node_id, Resources())
            if not node_is_schedulable(node) or not self.can_stop(t):
                continue
            both_fit = fits(node, reserved, service.spec.reservations) and self.address_left(node)
            if both_fit and not stop_first:
                if not self.can_start():
                    return
                live[t.node_id] = self.create(service, 0, 0, node_id=t.node_id)  # `t` serves meanwhile
                budget -= 1
            elif fits(node, reserved - t.spec.reservations, service.spec.reservations):
                self.shutdown(t, "replaced by service update")
                del live[t.node_id]
                budget -= 1

    # -- removed services, placement, history -------------------------------------------------
    def _removed_services(self) -> None:
        """Tasks of a removed service are deleted once they stopped (or their node is gone)."""
        for service_id in sorted(self.state.tasks_by_service):
            if service_id in self.state.services:
                continue
            for task_id in sorted(self.state.tasks_by_service[service_id]):
                task = self.task(task_id)
                if task.state >= TaskState.COMPLETE or task.state < ASSIGNED:
                    self.deleted.add(task_id)
                elif task.draining_since:
                    self.draining.append(task)
                elif task.desired_state <= RUNNING:
                    self.shutdown(task, "service removed")

    def _stop_drained(self) -> None:
        """Send the stop to draining tasks once no ready node on the overlay may still route to
        them (or the bound passed) and their `stop_drain` passed (ADR 33). After a failover the
        routes are unknown until the agents report: the bound keeps that from blocking."""
        routers = [n.id for n in self.nodes.values() if n.status == NodeStatus.READY and n.overlay]
        bound = self.config.node_timeout
        for found in self.draining:
            task = self.task(found.id)
            if task.desired_state > RUNNING:
                continue
            if task.state.terminal:  # it ended while draining: nothing to wait for
                self.update(task, desired_state=SHUTDOWN)
                continue
            address = task.overlay_address
            waiting = sorted(n for n in routers if address in self.routes.get(n, (address,)))
            drained_for = self.now - task.draining_since
            if (waiting and drained_for < bound) or drained_for < task.spec.stop_drain:
                continue
            why = task.message.removeprefix(DRAINING) if task.message.startswith(DRAINING) else "drained"
            if waiting:
                names = ", ".join(n[:12] for n in waiting)
                unconfirmed = f"not confirmed out of the load balancing of node(s) {names} within {bound:g}s"
                why += f" ({unconfirmed})"
                self._note_in_rollout(task, f"{task.service_name}.{task.slot} stopped {unconfirmed}")
            self.update(task, desired_state=SHUTDOWN, message=f"shutdown: {why}")

    def _note_in_rollout(self, task: Task, note: str) -> None:
        """Say in the rollout's status under way that a stop did not wait for every node; unless
        the rollout itself moved on in this pass (its own message then says why)."""
        service = self.state.services.get(task.service_id)
        status = service.update_status if service is not None else None
        if service is None or status is None or not status.state.active or status.to_version != service.version:
            return
        if note in status.message or any(r.service_id == service.id for r in self.rollouts):
            return
        message = f"{status.message}; {note}" if status.message else note
        noted = msgspec.structs.replace(status, message=message)
        self.rollouts.append(RolloutChange(service.id, service.version, noted))

    def _place(self) -> None:
        if not self.to_place:
            return
        current = [self.task(t) for t in self.state.tasks]
        current += [t for t in map(self.task, self.created) if t.node_id]
        pending = [self.task(t) for t in self.to_place]
        result = schedule(self.nodes.values(), current, pending)
        for task_id, node_id in result.assignments.items():
            self.update(self.task(task_id), state=ASSIGNED, node_id=node_id, message="")
        for task_id, reason in result.unplaced.items():
            self.update(self.task(task_id), message=reason)
            standby = self.standby_for.get(task_id)
            if standby is not None and self.task(task_id).relocates == standby.id:
                # A rebalance's move with no room after all: dropped, the old task stays (ADR 36).
                self.shutdown(self.task(task_id), f"rebalance: {reason}")
            elif standby is not None:  # no room beside it: stop-first for this one (ADR 33)
                self.shutdown(
                    standby, "replaced by service update (stopped first: no room to start the new task beside it)"
                )

    def _trim_history(self, groups: Iterable[list[Task]]) -> None:
        """Keep the newest `task_history_limit` ended tasks per slot (per node for global). The
        newest task of a slot is always kept: it carries the restart policy's attempt count."""
        limit = max(self.config.task_history_limit, 0)
        for group in groups:
            if len(group) <= 1:
                continue
            group = sorted((self.task(t.id) for t in group), key=_newest_first, reverse=True)
            kept = 1 if group[0].state >= TaskState.COMPLETE else 0
            for t in group[1:]:
                if t.state >= TaskState.COMPLETE:
                    if kept < limit:
                        kept += 1
                    else:
                        self.deleted.add(t.id)

    def _plan(self) -> ApplyPlan:
        updates = []
        for task_id in sorted(self.overlay):
            old = self.state.tasks.get(task_id)
            if old is None or task_id in self.deleted:
                continue
            new = self.overlay[task_id]
            fields = {f: getattr(new, f) for f in _PLAN_FIELDS if getattr(new, f) != getattr(old, f)}
            if fields:
                updates.append(TaskUpdate(id=task_id, at=self.now, **fields))
        return ApplyPlan(
            created=tuple(self.overlay[t] for t in self.created),
            updated=tuple(updates),
            deleted=tuple(sorted(self.deleted)),
            node_status=tuple(self.node_status),
            rollouts=tuple(self.rollouts),
        )
