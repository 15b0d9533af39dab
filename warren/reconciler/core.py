"""The working set of one reconciliation pass (`Pass`): an overlay of changed and created tasks
over the state, the primitives every part of the pass uses (create, shutdown, place), and the
ApplyPlan it adds up to. Pure: no clock, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

import msgspec

from warren import mounts, rebalance, strategy
from warren.commands import ApplyPlan, RolloutChange, SetNodeStatus, TaskUpdate
from warren.constraints import Constraint, ConstraintError, parse_constraints
from warren.model import (
    Availability,
    Node,
    NodeStatus,
    Resources,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    Volume,
    can_transition,
    host_ports,
    is_routed,
    is_stopping,
)
from warren.reconciler import liveness
from warren.reconciler.config import ReconcileConfig
from warren.reconciler.dependencies import waiting_for
from warren.reconciler.liveness import DownCheck
from warren.reconciler.volumes import bind_late, volumes_bound
from warren.restart import next_attempt
from warren.scheduler import address_capacity, host_ports_by_node, live_by_node, reserved_by_node, schedule
from warren.state import ClusterState

RUNNING = TaskState.RUNNING
SHUTDOWN = TaskState.SHUTDOWN
ASSIGNED = TaskState.ASSIGNED

_PLAN_FIELDS = ("state", "desired_state", "node_id", "message", "draining_since", "spec_version")
DRAINING = "draining: "  # the message of a task out of the load balancing, before "why"


def is_empty(plan: ApplyPlan) -> bool:
    """True when committing the plan would change nothing (the caller can skip the Raft write)."""
    return not (plan.created or plan.updated or plan.deleted or plan.node_status or plan.rollouts or plan.volumes)


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


def newest_first(task: Task) -> tuple[float, int, str]:
    """Sort key for "newer": creation time, then slot (tasks created in one pass share a time)."""
    return (task.created_at, task.slot, task.id)


class Pass:
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
        self.heartbeats: Mapping[str, float] = {}  # node -> last heard from (`reconcile_pass`)
        self._placeable: list[Node] | None = None
        # One overlay for changed and created tasks (a single lookup on the hot path).
        self.overlay: dict[str, Task] = {}
        self.created: list[str] = []
        self.to_place: list[str] = []
        self.deleted: set[str] = set()
        self.node_status: list[SetNodeStatus] = []
        self.rollouts: list[RolloutChange] = []
        self.standby_for: dict[str, Task] = {}  # a start-first task's id -> the task it replaces
        # What each node holds (`start_accounting`), counted on first use: a pass that creates
        # nothing never walks every task (ADR 53).
        self._accounted: Iterable[Task] = ()
        self._reserved: dict[str, Resources] | None = None
        self._live: dict[str, int] = {}  # tasks not ended per node: each holds an overlay address
        self._host_ports: dict[str, set[tuple[int, str]]] = {}  # host-mode ports they hold (ADR 46)
        self.starts = 0
        self.stops = 0
        self._parsed: dict[tuple[str, ...], tuple[Constraint, ...] | None] = {}
        self._displaced: dict[tuple[str, tuple[str, ...]], str] = {}
        self._current: dict[tuple[str, int], bool] = {}
        self.eligible: rebalance.Eligible | None = None  # nodes per constraints, for rebalances (ADR 36)
        # Rebalances weighed after `place()`: their service had a slot this pass placed (ADR 36).
        self.rebalance_after_placing: list[Callable[[], None]] = []
        self.volume_homes = {v.name: v.node_id for v in state.volumes.values() if v.node_id}
        self.bound_volumes: dict[str, tuple[str, Task]] = {}  # name -> (node, a task mounting it), ADR 40
        self._waiting: dict[str, str] = {}

    def waiting(self, service: Service) -> str:
        """Why the service's new tasks wait for its dependencies ('' if they need not), ADR 49."""
        if not service.depends_on:
            return ""
        if service.id not in self._waiting:
            self._waiting[service.id] = waiting_for(self.state, service)
        return self._waiting[service.id]

    def current(self, task: Task, service: Service) -> bool:
        """The task runs the service's current spec (`strategy.current`), memoised per version."""
        if task.spec_version == service.version:
            return True
        key = (service.id, task.spec_version)
        found = self._current.get(key)
        if found is None:
            found = self._current[key] = strategy.current(task, service)
        return found

    def adopt(self, task: Task, service: Service) -> Task:
        """A live task that runs the current spec under an older version (`current`) joins the
        current version in place (ADR 33): nothing restarts, `service ps` shows the version it
        runs, and every count by version counts it. It has long been ready, so the rollout has
        nothing to wait for: created before the rollout started, it is not among its new tasks."""
        if task.spec_version == service.version or not self.current(task, service):
            return task
        return self.update(task, spec_version=service.version, spec=service.spec)

    def start_accounting(self, tasks: Iterable[Task]) -> None:
        """What each node holds before this pass creates anything (resources, overlay addresses),
        counted from `tasks` when first asked for."""
        self._accounted = tasks
        self._reserved = None

    def _account(self) -> None:
        current = list(self._accounted)
        self._reserved = reserved_by_node(current)
        self._live = live_by_node(current)
        self._host_ports = host_ports_by_node(current)

    @property
    def reserved(self) -> dict[str, Resources]:
        if self._reserved is None:
            self._account()
        return self._reserved  # type: ignore[return-value]

    @property
    def live(self) -> dict[str, int]:
        if self._reserved is None:
            self._account()
        return self._live

    @property
    def host_ports(self) -> dict[str, set[tuple[int, str]]]:
        if self._reserved is None:
            self._account()
        return self._host_ports

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
        if is_routed(task) or self._may_be_routed(task):
            self.update(task, draining_since=self.now, message=f"{DRAINING}{why}")
            return True
        fields: dict[str, object] = {"desired_state": SHUTDOWN, "message": f"shutdown: {why}"}
        if task.state < ASSIGNED:
            fields["state"] = SHUTDOWN
        self.update(task, **fields)
        return True

    def _may_be_routed(self, task: Task) -> bool:
        """A live task out of the endpoints (its health check just failed, say) that a node's
        load balancer may still hold: stopping it now would send that node's new connections to
        an address that is gone, where they hang until the client gives up (ADR 33)."""
        address = task.overlay_address
        if not address or task.state != TaskState.RUNNING or not self.routes:
            return False
        return any(address in routes for routes in self.routes.values())

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
            self.host_ports.setdefault(node_id, set()).update(host_ports(service.spec.ports))
        else:
            self.to_place.append(task.id)
        return task

    def address_left(self, node: Node) -> bool:
        """Room for one more task in the node's overlay subnet (always, off the overlay)."""
        capacity = address_capacity(node)
        return capacity is None or self.live.get(node.id, 0) < capacity

    def host_ports_free(self, node: Node, spec: ServiceSpec) -> bool:
        """None of the spec's host-mode ports is held by a live task on the node (ADR 46)."""
        return host_ports(spec.ports).isdisjoint(self.host_ports.get(node.id, ()))

    def constraints(self, texts: tuple[str, ...]) -> tuple[Constraint, ...] | None:
        """Parsed constraints, or None if invalid (the API rejects those; never evict on them)."""
        if texts not in self._parsed:
            try:
                self._parsed[texts] = parse_constraints(texts)
            except ConstraintError:
                self._parsed[texts] = None
        return self._parsed[texts]

    def settle(self, task: Task) -> Task:
        """A task told to stop before any node got it has nothing to wait for: it is shut down."""
        if task.state < ASSIGNED and task.desired_state > RUNNING:
            return self.update(task, state=SHUTDOWN)
        return task

    # -- nodes ---------------------------------------------------------------------------------
    def check_nodes(self, heartbeats: Mapping[str, float], failover: liveness.Failover = liveness.NO_FAILOVER) -> None:
        """Mark down the nodes silent past the timeout, unless most went silent at once
        (`liveness`, ADR 69): those stay up, but this pass places nothing on them. The nodes a
        new leader still awaits get longer (`failover`, ADR 83)."""
        check = self.down_check(heartbeats, failover)
        down = dict(check.down)
        held = set(check.held_nodes)
        for node in sorted(self.state.nodes.values(), key=lambda n: n.id):
            if node.id in down:
                message = f"heartbeat missed for {int(down[node.id])}s"
                self.node_status.append(SetNodeStatus(node.id, NodeStatus.DOWN, message, self.now))
                node = msgspec.structs.replace(node, status=NodeStatus.DOWN, status_message=message)
            elif node.id in held:
                node = msgspec.structs.replace(node, status=NodeStatus.UNKNOWN, status_message=check.message())
            self.nodes[node.id] = node

    def down_check(
        self, heartbeats: Mapping[str, float], failover: liveness.Failover = liveness.NO_FAILOVER
    ) -> DownCheck:
        config = self.config
        return liveness.down_check(
            self.state, self.now, heartbeats, config.node_timeout, config.heartbeat_period, failover
        )

    def orphan_tasks(self) -> None:
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

    def displaced_by(self, task: Task, constraint_texts: tuple[str, ...]) -> str:
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

    # -- placement, history, the plan ---------------------------------------------------------
    def place(self) -> None:
        if not self.to_place:
            return
        # Every task as this pass leaves it (a dict merge in C: the overlay is small, the state not).
        changed = {k: v for k, v in self.overlay.items() if k in self.state.tasks}
        current = list({**self.state.tasks, **changed}.values() if changed else self.state.tasks.values())
        current += [t for t in map(self.task, self.created) if t.node_id]
        pending = []
        for task in map(self.task, self.to_place):
            service = self.state.services.get(task.service_id)
            why = self.waiting(service) if service is not None else ""
            if why:  # held, PENDING, until its dependencies are met (ADR 49)
                self.update(task, message=why)
            else:
                pending.append(task)
        result = schedule(self.placeable_nodes(), current, pending, self.volume_homes)
        for name, node_id in result.volumes.items():
            placed = (self.task(t) for t, n in result.assignments.items() if n == node_id)
            self.bound_volumes[name] = (node_id, next(t for t in placed if name in mounts.volume_names(t.spec)))
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

    def placeable_nodes(self) -> list[Node]:
        """The nodes as placement and rebalance moves see them (`_as_placement_sees`)."""
        if self._placeable is None:
            self._placeable = [self._as_placement_sees(n) for n in self.nodes.values()]
        return self._placeable

    def _as_placement_sees(self, node: Node) -> Node:
        """A READY node that missed a heartbeat gets no new task (ADR 68): if it is dying, what
        it got would be lost with it. Nodes that die together are found down up to a heartbeat
        period apart (more if their last beats were heard late), and the first one's tasks went
        to the others. Shown to the scheduler as not ready, so that a task left pending says why."""
        if node.status != NodeStatus.READY:
            return node
        unheard_for = self.now - self.heartbeats.get(node.id, self.now)
        if unheard_for <= self.config.late_after:
            return node
        why = f"no heartbeat for {int(unheard_for)}s"
        return msgspec.structs.replace(node, status=NodeStatus.UNKNOWN, status_message=why)

    def recount(self) -> None:
        """Count what each node holds again, with this pass's placements: for decisions taken
        after `place()`."""
        self.start_accounting(list({**self.state.tasks, **self.overlay}.values()))

    def trim_history(self, groups: Iterable[list[Task]], version: int) -> None:
        """Keep the newest `task_history_limit` ended tasks per slot (per node for global). The
        newest task of a slot is always kept: it carries the restart policy's attempt count.
        An older ended task of an older version than `version` (the failed tasks of an update
        that was rolled back) is no longer desired running: its slot moved on. So is the newest,
        when an older task of the slot was adopted into the current version and serves it. Those
        of the version rolling out stay as they are: the rollout counts them as failures."""
        limit = max(self.config.task_history_limit, 0)
        for group in groups:
            if len(group) <= 1:
                continue
            group = sorted((self.task(t.id) for t in group), key=newest_first, reverse=True)
            kept = 1 if group[0].state >= TaskState.COMPLETE else 0
            serving = any(is_live(t) and t.spec_version == version for t in group)
            for i, t in enumerate(group):
                if t.state < TaskState.COMPLETE or (i == 0 and not serving):
                    continue
                if i > 0 and kept >= limit:
                    self.deleted.add(t.id)
                    continue
                kept += i > 0
                if t.desired_state <= RUNNING and t.spec_version != version and not t.draining_since:
                    self.update(t, desired_state=SHUTDOWN)

    def _volumes(self) -> tuple[Volume, ...]:
        """The volumes this pass binds: existing ones get a node, missing ones are created."""
        bind_late(self.state, self.volume_homes, self.bound_volumes)
        return volumes_bound(self.state, self.bound_volumes, self.new_id, self.now)

    def plan(self) -> ApplyPlan:
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
            volumes=self._volumes(),
        )
