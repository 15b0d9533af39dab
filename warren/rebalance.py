"""Rebalancing (ADR 36), pure: which tasks of a replicated service to move so that its spread
over the nodes that may take it is even within one task, and how a rebalance moves on.

The scheduler spreads a service's tasks when it places them, but never moves a placed task, so
a node that joins or returns gets nothing until tasks die (Swarm's moby#24103). A rebalance
moves only the tasks needed: greedily, one task at a time from the node with the most tasks of
the service to the node with the fewest that has room, while they differ by more than one.
Each move is a new task of the same slot and version placed on its target node, started first;
the old task serves until the new one is ready, then leaves through the drain-then-stop path
(ADR 33). Like a rollout, its progress is derived from the replicated state (the moved tasks
carry `relocates`), so a new leader continues it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from warren import rollout
from warren.constraints import ConstraintError, parse_constraints
from warren.model import (
    FailureAction,
    Node,
    Resources,
    RolloutState,
    Service,
    ServiceMode,
    Task,
    TaskState,
    UpdateStatus,
    host_ports,
    is_ready,
    is_stopping,
)
from warren.scheduler import address_capacity, host_ports_by_node, live_by_node, node_is_schedulable, reserved_by_node
from warren.state import ClusterState

# Statuses after which a rebalance may start by itself (auto-rebalance): no rollout under way and
# nothing paused. A paused rebalance (a moved task failed) waits for the operator, so that a task
# that cannot run on the new node is not moved there again and again.
SETTLED = (RolloutState.COMPLETED, RolloutState.ROLLBACK_COMPLETED)


@dataclass(frozen=True)
class Move:
    """Replace `task_id` (slot `slot`) on `from_node` by a task on `to_node`."""

    task_id: str
    slot: int
    from_node: str
    to_node: str


def room(
    node: Node,
    reserved: Resources,
    live: int,
    need: Resources,
    ports: frozenset[tuple[int, str]] = frozenset(),
    held: Iterable[tuple[int, str]] = (),
) -> int | None:
    """How many more tasks reserving `need` fit on `node` (the scheduler's rule: reservations,
    overlay addresses, and host-mode `ports` of which the node's tasks hold `held`, ADR 46);
    None when nothing limits it."""
    limits = []
    if ports:
        limits.append(1 if ports.isdisjoint(held) else 0)  # one task per node holds a host port
    capacity = address_capacity(node)
    if capacity is not None:
        limits.append(capacity - live)
    total = node.resources
    if need.nano_cpus > 0:
        limits.append((total.nano_cpus - reserved.nano_cpus) // need.nano_cpus)
    if need.memory_bytes > 0:
        limits.append((total.memory_bytes - reserved.memory_bytes) // need.memory_bytes)
    return max(0, min(limits)) if limits else None


class Eligible:
    """The nodes the scheduler may place a service on (ready, active, matching its constraints),
    computed once per constraint set: a pass asks for every service."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self._ready = sorted((n for n in nodes if node_is_schedulable(n)), key=lambda n: n.id)
        self._by_constraints: dict[tuple[str, ...], tuple[list[Node], frozenset[str]]] = {}

    def nodes(self, constraint_texts: tuple[str, ...]) -> tuple[list[Node], frozenset[str]]:
        """The eligible nodes and their ids; none for constraints that do not parse."""
        found = self._by_constraints.get(constraint_texts)
        if found is None:
            try:
                constraints = parse_constraints(constraint_texts)
            except ConstraintError:
                matching: list[Node] = []
            else:
                matching = [n for n in self._ready if all(c.matches(n) for c in constraints)]
            found = self._by_constraints[constraint_texts] = (matching, frozenset(n.id for n in matching))
        return found


def spread_off(holders: Iterable[Task], eligible_ids: frozenset[str]) -> bool:
    """Whether two eligible nodes differ by more than one task of the service: cheap, so that a
    pass need not weigh every node's room for every balanced service."""
    count = Counter(t.node_id for t in holders if t.node_id in eligible_ids)
    if not count:
        return False
    fewest = 0 if len(count) < len(eligible_ids) else min(count.values())
    return max(count.values()) - fewest > 1


def plan(tasks: Iterable[Task], rooms: Mapping[str, int | None]) -> tuple[Move, ...]:
    """The fewest moves that leave `tasks` (the service's placed tasks, one per slot) spread over
    the nodes of `rooms` within one task of each other, or as close as the room allows. Tasks on
    other nodes (paused, or not matching) neither move nor count. A task that serves nothing yet
    moves first, then the newest. Deterministic: ties go to the smallest node id."""
    by_node: dict[str, list[Task]] = {node_id: [] for node_id in rooms}  # the tasks that may move
    count = dict.fromkeys(rooms, 0)
    for task in tasks:
        if task.node_id in by_node:
            count[task.node_id] += 1
            if not (task.relocates and not is_ready(task)):  # a move under way is not moved again
                by_node[task.node_id].append(task)
    for on_node in by_node.values():  # the next to move last
        on_node.sort(key=lambda t: (not is_ready(t), t.created_at, t.slot, t.id))
    left = dict(rooms)

    def has_room(node_id: str) -> bool:
        room_left = left[node_id]
        return room_left is None or room_left > 0

    moves: list[Move] = []
    while True:
        sources = [n for n in count if by_node[n]]
        targets = [n for n in count if has_room(n)]
        if not sources or not targets:
            break
        source = min(sources, key=lambda n: (-count[n], n))
        target = min(targets, key=lambda n: (count[n], n))
        if count[source] - count[target] <= 1:
            break
        task = by_node[source].pop()
        moves.append(Move(task.id, task.slot, source, target))
        count[source] -= 1
        count[target] += 1
        room_left = left[target]
        if room_left is not None:
            left[target] = room_left - 1
    return tuple(moves)


def slot_holders(tasks: Iterable[Task]) -> list[Task]:
    """The task holding each slot, as the reconciler sees it: the live task of the newest
    version, and of a move under way the new task (the old one only serves until it is ready)."""
    live = [t for t in tasks if t.slot >= 1 and t.state < TaskState.COMPLETE and not is_stopping(t)]
    relocated = {t.relocates for t in live if t.relocates}
    holders: dict[int, Task] = {}
    for task in sorted(live, key=lambda t: (t.spec_version, t.state, t.created_at, t.id)):
        if task.id not in relocated:
            holders[task.slot] = task
    return list(holders.values())


def service_plan(state: ClusterState, service: Service) -> tuple[Move, ...]:
    """The moves a rebalance of `service` would make now, from the committed state."""
    eligible, _ids = Eligible(state.nodes.values()).nodes(service.spec.constraints)
    every_task = state.tasks.values()
    reserved, live, need = reserved_by_node(every_task), live_by_node(every_task), service.spec.reservations
    ports, held = host_ports(service.spec.ports), host_ports_by_node(every_task)
    rooms = {
        n.id: room(n, reserved.get(n.id, Resources()), live.get(n.id, 0), need, ports, held.get(n.id, ()))
        for n in eligible
    }
    return plan(slot_holders(state.service_tasks(service.id)), rooms)


def started(service: Service, at: float, planned: int) -> UpdateStatus:
    """The status of a rebalance that starts now with `planned` moves."""
    version = service.version
    return UpdateStatus(RolloutState.REBALANCING, at, version, version, message=_message(0, planned))


def under_way(service: Service) -> bool:
    """A rebalance of the service's current version runs."""
    status = service.update_status
    return status is not None and status.state == RolloutState.REBALANCING and status.to_version == service.version


def may_start_by_itself(service: Service) -> bool:
    """Auto-rebalance: a replicated service with no rollout under way or paused."""
    status = service.update_status
    if service.spec.mode != ServiceMode.REPLICATED:
        return False
    return status is None or status.state in SETTLED


@dataclass(frozen=True)
class Step:
    moves: tuple[Move, ...] = ()  # to start now
    status: UpdateStatus | None = None  # the status to commit, if it changes


def step(
    service: Service,
    holders: Sequence[Task],
    tasks: Iterable[Task],
    eligible: tuple[list[Node], frozenset[str]],
    room_of: Callable[[Node], int | None],
    now: float,
    automatic: bool,
    settle: float = 0.0,
) -> Step:
    """One pass of the service's rebalance. `holders`: the task holding each slot (live, after
    this pass's changes); `tasks`: the service's tasks, ended ones included (the moved tasks are
    found there); `eligible`: `Eligible.nodes` for its constraints; `room_of`: a node's room
    (`room`, with what this pass placed); `automatic`: the cluster's auto-rebalance setting.
    Moves start under the update settings (parallelism lanes, delay, monitor, failure action);
    nothing moves while a slot is unplaced or runs another version. An automatic rebalance
    starts only towards nodes unchanged for `settle` seconds: a node that flaps between ready
    and down would otherwise draw tasks each time it returns."""
    status = service.update_status
    version = service.version
    # Settled: every slot placed on the current version, and nothing serving beside its holder
    # but a move's old task (an update's old task while its new one gets ready is not done).
    holder_ids = {t.id for t in holders}
    moved_from = {t.relocates for t in holders if t.relocates}
    settled = all(t.node_id and t.spec_version == version for t in holders) and not any(
        t.state < TaskState.COMPLETE and not is_stopping(t) and t.id not in holder_ids and t.id not in moved_from
        for t in tasks
    )
    # With auto-rebalance on, moves go only to steady nodes, under way too: a pass that starts a
    # rebalance and the next one at the same time must count the same moves.
    steady = [n for n in eligible[0] if now - n.updated_at >= settle] if automatic else eligible[0]
    if status is not None and under_way(service):
        return _go_on(service, status, holders, tasks, steady, room_of, now) if settled else Step()
    # Off among all eligible nodes first: cheap, and needed for it to be off among the steady ones.
    if not (automatic and may_start_by_itself(service) and spread_off(holders, eligible[1])) or not settled:
        return Step()
    if not spread_off(holders, frozenset(n.id for n in steady)):
        return Step()
    moves = plan(holders, {n.id: room_of(n) for n in steady})
    if not moves:
        return Step()
    lanes = service.spec.update.parallelism or len(moves)
    return Step(moves[:lanes], started(service, now, len(moves)))


def _go_on(
    service: Service,
    status: UpdateStatus,
    holders: Sequence[Task],
    tasks: Iterable[Task],
    targets: list[Node],
    room_of: Callable[[Node], int | None],
    now: float,
) -> Step:
    """A rebalance under way, every slot placed: pause on failures, complete, or move more (to
    `targets`, the eligible nodes it may move to)."""
    config = service.spec.update
    # A move told to stop before it was ready (the slot scaled away, or dropped) is no move.
    moved = [
        t
        for t in tasks
        if t.relocates
        and t.spec_version == service.version
        and t.created_at >= status.started_at
        and not (is_stopping(t) and not is_ready(t))
    ]
    done = rollout.progress(moved, config, now)
    failed = len(done.failed)
    # A failure action of rollback pauses too: the moved task's old one still serves.
    over = failed and rollout.failures_exceed(failed, service.spec.replicas, config.max_failure_ratio)
    if over and config.failure_action != FailureAction.CONTINUE:
        cause = rollout.failure(done.failed[0])
        if failed > 1:
            cause = f"{failed} moved tasks failed, the first: {cause}"
        return Step(status=_ended(status, RolloutState.REBALANCE_PAUSED, now, f"paused: {cause}"))
    moves = plan(holders, {n.id: room_of(n) for n in targets})
    # Moves an earlier (paused) rebalance left on their way hold their lanes too.
    earlier = sum(
        1
        for t in tasks
        if t.relocates
        and t.created_at < status.started_at
        and not t.state.terminal
        and not is_stopping(t)
        and not is_ready(t)
    )
    if not moves and done.pending == 0:
        return Step(status=_ended(status, RolloutState.COMPLETED, now, f"rebalanced: {_tasks(done.succeeded)} moved"))
    lanes = config.parallelism or len(moves) + done.pending
    start = max(0, min(len(moves), lanes - done.busy - earlier))
    message = _message(done.succeeded, done.succeeded + done.pending + len(moves))
    if failed:
        message += f"; {failed} failed"
    changed = msgspec.structs.replace(status, message=message) if message != status.message else None
    return Step(moves[:start], changed)


def _ended(status: UpdateStatus, state: RolloutState, now: float, message: str) -> UpdateStatus:
    return msgspec.structs.replace(status, state=state, completed_at=now, message=message)


def _tasks(n: int) -> str:
    return "1 task" if n == 1 else f"{n} tasks"


def _message(moved: int, total: int) -> str:
    return f"rebalancing: {moved} of {_tasks(total)} moved"
