"""Placement of replicated tasks on nodes: filter, then spread. Pure and deterministic.

Filters (SwarmKit style, each one able to say how many nodes it removed, so a pending task can
explain itself): the node is READY, its availability is ACTIVE, every constraint matches, the
task's reservations fit, a node on the overlay has an address left in its subnet (ADR 17), and
no live task on the node publishes one of the task's host-mode ports (ADR 46).
Among the nodes left, a task goes to the node with the fewest tasks of its service, then the
fewest tasks overall, then the smallest node id.

Resources: a task reserves `spec.reservations` while it is on a node and not terminal. A
reservation of 0 in a dimension always fits; a reservation > 0 needs
`node capacity >= reserved + reservation` in that dimension, so a node reporting 0 (unknown)
capacity only takes tasks that reserve none of it. Nothing is ever over-committed.

Only replicated tasks come here: global tasks are bound to a node by the reconciler, which uses
`fits` and `reserved_by_node` from this module for the same resource rule.

Speed: pending tasks with the same service, spec version, constraints and reservations form one
group. Feasibility is computed once per group, and the group's candidate nodes sit in a heap
keyed by (tasks of the service, tasks in total, node id); each placement pops the best node and
pushes it back with its new counts while the reservation still fits.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from functools import partial

import msgspec

from warren import mounts
from warren.constraints import Constraint, ConstraintError, parse_constraints
from warren.model import Availability, Node, NodeStatus, Resources, Task, TaskState, host_ports
from warren.text import port_texts


class Schedule(msgspec.Struct, frozen=True):
    """Result of one scheduling pass: task id -> node id, task id -> why it stays pending, and
    volume name -> node id of the local volumes this pass bound to their first task's node."""

    assignments: dict[str, str] = {}
    unplaced: dict[str, str] = {}
    volumes: dict[str, str] = {}


def reserved_by_node(tasks: Iterable[Task]) -> dict[str, Resources]:
    cpu: defaultdict[str, int] = defaultdict(int)
    mem: defaultdict[str, int] = defaultdict(int)
    for task in tasks:
        if task.node_id and task.state < TaskState.COMPLETE:
            res = task.spec.reservations
            cpu[task.node_id] += res.nano_cpus
            mem[task.node_id] += res.memory_bytes
    return {n: Resources(cpu[n], mem[n]) for n in cpu}


def fits(node: Node, reserved: Resources, reservation: Resources) -> bool:
    """The module's resource rule: a positive reservation must fit in what is left."""
    total = node.resources
    if reservation.nano_cpus > 0 and reserved.nano_cpus + reservation.nano_cpus > total.nano_cpus:
        return False
    return not (reservation.memory_bytes > 0 and reserved.memory_bytes + reservation.memory_bytes > total.memory_bytes)


def address_capacity(node: Node) -> int | None:
    """How many tasks a node on the overlay can hold: one address each in its subnet, less the
    network, broadcast and node (.1) addresses. None for a node off the overlay: no limit."""
    if not node.overlay or not node.overlay_subnet:
        return None
    return max(0, ipaddress.ip_network(node.overlay_subnet).num_addresses - 3)


def live_by_node(tasks: Iterable[Task]) -> dict[str, int]:
    """Tasks on each node that hold (or will hold) an overlay address: those not ended."""
    count: defaultdict[str, int] = defaultdict(int)
    for task in tasks:
        if task.node_id and task.state < TaskState.COMPLETE:
            count[task.node_id] += 1
    return dict(count)


def host_ports_by_node(tasks: Iterable[Task]) -> dict[str, set[tuple[int, str]]]:
    """The host-mode ports (published, protocol) each node's live tasks hold (ADR 46): a task
    holds its ports from placement until it ends, stopping or not."""
    held: defaultdict[str, set[tuple[int, str]]] = defaultdict(set)
    for task in tasks:
        if task.node_id and task.state < TaskState.COMPLETE and task.spec.ports:
            held[task.node_id] |= host_ports(task.spec.ports)
    return dict(held)


def node_is_schedulable(node: Node) -> bool:
    return node.status == NodeStatus.READY and node.availability == Availability.ACTIVE


MAX_NODE_REASONS = 3  # not-ready nodes whose reason an explanation quotes
MAX_REASON_CHARS = 200


def _not_ready_reasons(nodes: list[Node]) -> str:
    """Why the first few not-ready nodes are not ready, from their status messages:
    " (node n1: its session is failing: ...)", or "" when none says."""
    said = [n for n in nodes if n.status_message]
    if not said:
        return ""
    parts = []
    for n in said[:MAX_NODE_REASONS]:
        text = n.status_message
        if len(text) > MAX_REASON_CHARS:
            text = text[: MAX_REASON_CHARS - 3] + "..."
        parts.append(f"node {n.hostname or n.id}: {text}")
    if len(said) > MAX_NODE_REASONS:
        parts.append(f"{_plural(len(said) - MAX_NODE_REASONS, 'other')}")
    return f" ({'; '.join(parts)})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _NodeTable:
    """Per-node counters shared by all groups of one pass (mutated as tasks are placed), and the
    schedulable nodes kept sorted by (task count, id) so a small group need not look at them all."""

    def __init__(self, nodes: Iterable[Node], tasks: Iterable[Task]) -> None:
        self.all_nodes = sorted(nodes, key=lambda n: n.id)
        self.ready = [n for n in self.all_nodes if node_is_schedulable(n)]
        self.by_id = {n.id: n for n in self.ready}
        self.not_ready = [n for n in self.all_nodes if n.status != NodeStatus.READY]
        self.drained = sum(
            1 for n in self.all_nodes if n.status == NodeStatus.READY and n.availability == Availability.DRAIN
        )
        self.paused = sum(
            1 for n in self.all_nodes if n.status == NodeStatus.READY and n.availability == Availability.PAUSE
        )
        self.cpu: dict[str, int] = {n.id: 0 for n in self.all_nodes}
        self.mem: dict[str, int] = dict.fromkeys(self.cpu, 0)
        self.total: dict[str, int] = dict.fromkeys(self.cpu, 0)
        self.by_service: defaultdict[str, dict[str, int]] = defaultdict(dict)
        self.live: dict[str, int] = dict.fromkeys(self.cpu, 0)
        self.ports: defaultdict[str, set[tuple[int, str]]] = defaultdict(set)  # host ports held (ADR 46)
        self.addresses = {n.id: address_capacity(n) for n in self.all_nodes}
        self.limited = any(cap is not None for cap in self.addresses.values())
        cpu, mem, total, by_service, live = self.cpu, self.mem, self.total, self.by_service, self.live
        running, complete = TaskState.RUNNING, TaskState.COMPLETE
        for task in tasks:
            node_id = task.node_id
            if not node_id or task.state >= complete or node_id not in cpu:
                continue
            res = task.spec.reservations
            cpu[node_id] += res.nano_cpus
            mem[node_id] += res.memory_bytes
            live[node_id] += 1
            if task.spec.ports:
                self.ports[node_id] |= host_ports(task.spec.ports)
            if task.desired_state <= running and not task.draining_since:  # not stopping (ADR 33)
                total[node_id] += 1
                per_node = by_service[task.service_id]
                per_node[node_id] = per_node.get(node_id, 0) + 1
        self.order = sorted((total[n.id], n.id) for n in self.ready)
        self._matching: dict[tuple[str, ...], tuple[list[Node], set[str]] | str] = {}

    def matching(self, constraint_texts: tuple[str, ...]) -> tuple[list[Node], set[str]] | str:
        """Ready nodes passing the constraints (list and id set), or the rejection text; cached
        per constraint set since constraints do not depend on what was placed."""
        cached = self._matching.get(constraint_texts)
        if cached is not None:
            return cached
        try:
            constraints = parse_constraints(constraint_texts)
        except ConstraintError as exc:
            result: tuple[list[Node], set[str]] | str = str(exc)
        else:
            nodes = [n for n in self.ready if all(c.matches(n) for c in constraints)] if constraints else self.ready
            result = (nodes, {n.id for n in nodes})
        self._matching[constraint_texts] = result
        return result

    def reorder(self, old_totals: dict[str, int]) -> None:
        """Keep `order` sorted after the nodes in `old_totals` received tasks."""
        order, total = self.order, self.total
        if len(old_totals) * 8 > len(order):
            self.order = sorted((total[n], n) for n in self.by_id)
            return
        for node_id, old in old_totals.items():
            del order[bisect.bisect_left(order, (old, node_id))]
            bisect.insort(order, (total[node_id], node_id))

    def fits(self, node: Node, cpu_need: int, mem_need: int, ports: frozenset[tuple[int, str]] = frozenset()) -> bool:
        cap = self.addresses[node.id]
        if cap is not None and self.live[node.id] >= cap:
            return False
        if ports and not ports.isdisjoint(self.ports.get(node.id, ())):
            return False
        res = node.resources
        if cpu_need > 0 and self.cpu[node.id] + cpu_need > res.nano_cpus:
            return False
        return not (mem_need > 0 and self.mem[node.id] + mem_need > res.memory_bytes)

    def explain(
        self,
        constraint_texts: tuple[str, ...],
        cpu_need: int,
        mem_need: int,
        ports: frozenset[tuple[int, str]] = frozenset(),
    ) -> str:
        """Why no node takes a task: how many nodes each filter removed, in filter order."""
        if not self.all_nodes:
            return "no suitable node: the cluster has no nodes"
        parts = []
        if self.not_ready:
            parts.append(f"{_plural(len(self.not_ready), 'node')} not ready{_not_ready_reasons(self.not_ready)}")
        if self.drained:
            parts.append(f"{_plural(self.drained, 'node')} drained")
        if self.paused:
            parts.append(f"{_plural(self.paused, 'node')} paused")
        try:
            constraints: tuple[Constraint, ...] = parse_constraints(constraint_texts)
        except ConstraintError as exc:
            return f"cannot be placed: {exc}"
        left = self.ready
        for c in constraints:
            kept = [n for n in left if c.matches(n)]
            if len(kept) < len(left):
                parts.append(f"constraint {c} not satisfied on {_plural(len(left) - len(kept), 'node')}")
            left = kept
        no_cpu = no_mem = no_addr = 0
        taken: defaultdict[tuple[int, str], int] = defaultdict(int)  # host port -> nodes holding it
        for n in left:
            cap = self.addresses[n.id]
            if cap is not None and self.live[n.id] >= cap:
                no_addr += 1
            elif cpu_need > 0 and self.cpu[n.id] + cpu_need > n.resources.nano_cpus:
                no_cpu += 1
            elif mem_need > 0 and self.mem[n.id] + mem_need > n.resources.memory_bytes:
                no_mem += 1
            else:
                for port in ports & self.ports.get(n.id, set()):
                    taken[port] += 1
        if no_cpu:
            parts.append(f"insufficient cpu on {_plural(no_cpu, 'node')}")
        if no_mem:
            parts.append(f"insufficient memory on {_plural(no_mem, 'node')}")
        if no_addr:
            parts.append(f"no free overlay address on {_plural(no_addr, 'node')}")
        for port, count in sorted(taken.items()):
            where = "every eligible node" if count == len(left) else _plural(count, "node")
            parts.append(f"host port {port_texts([port])} is taken on {where}")
        return "no suitable node: " + ", ".join(parts) if parts else "no suitable node"

    def volume_home(self, names: tuple[str, ...], homes: dict[str, str]) -> str | None:
        """The one node the volumes `names` allow (ADR 40): "" when none is bound yet, None when
        two are bound to different nodes."""
        bound = {homes[n] for n in names if n in homes}
        if len(bound) > 1:
            return None
        return next(iter(bound), "")

    def explain_volume(
        self,
        names: tuple[str, ...],
        homes: dict[str, str],
        constraint_texts: tuple[str, ...],
        cpu: int,
        mem: int,
        ports: frozenset[tuple[int, str]] = frozenset(),
    ) -> str:
        """Why a task cannot go to the node its volume lives on."""
        bound = sorted((n, homes[n]) for n in names if n in homes)
        name, node_id = bound[0]
        if len({node for _, node in bound}) > 1:
            where = ", ".join(f"{n} on node {self._hostname(node)}" for n, node in bound)
            return f"no suitable node: its volumes live on different nodes ({where})"
        node = next((n for n in self.all_nodes if n.id == node_id), None)
        prefix = f"volume {name} is on node {self._hostname(node_id)}"
        if node is None:
            return f"{prefix}, which is no longer in the cluster"
        if node.status != NodeStatus.READY:
            why = f": {node.status_message}" if node.status_message else ""
            state = "down" if node.status == NodeStatus.DOWN else "not ready"
            return f"{prefix}, which is {state}{why}"[: MAX_REASON_CHARS * 2]
        if node.availability != Availability.ACTIVE:
            return f"{prefix}, which is {'drained' if node.availability == Availability.DRAIN else 'paused'}"
        try:
            constraints = parse_constraints(constraint_texts)
        except ConstraintError as exc:
            return f"cannot be placed: {exc}"
        for c in constraints:
            if not c.matches(node):
                return f"{prefix}, which does not satisfy constraint {c}"
        cap = self.addresses[node.id]
        if cap is not None and self.live[node.id] >= cap:
            return f"{prefix}, which has no free overlay address"
        if cpu > 0 and self.cpu[node.id] + cpu > node.resources.nano_cpus:
            return f"{prefix}, which has insufficient cpu"
        if mem > 0 and self.mem[node.id] + mem > node.resources.memory_bytes:
            return f"{prefix}, which has insufficient memory"
        held = ports & self.ports.get(node.id, set())
        if held:
            return f"{prefix}, where host port {port_texts(held)} is taken"
        return f"{prefix}, which cannot take it"

    def _hostname(self, node_id: str) -> str:
        node = next((n for n in self.all_nodes if n.id == node_id), None)
        return node.hostname if node is not None and node.hostname else node_id[:12]


GroupKey = tuple[str, int, tuple[str, ...], int, int]


def schedule(
    nodes: Iterable[Node], tasks: Iterable[Task], pending: Iterable[Task], volumes: dict[str, str] | None = None
) -> Schedule:
    """Place `pending` (replicated tasks without a node) given every current task in `tasks`;
    `volumes` maps each local volume bound to a node to that node (ADR 40): a task mounting one
    goes there or nowhere, and one mounting a volume not bound yet binds it where it goes.

    Deterministic: groups are handled in (service id, spec version, ...) order and tasks within a
    group by (slot, id), whatever the input order.
    """
    table = _NodeTable(nodes, tasks)
    homes = dict(volumes or {})
    bound: dict[str, str] = {}
    groups: dict[GroupKey, list[Task]] = defaultdict(list)
    for task in pending:
        res = task.spec.reservations
        key = (task.service_id, task.spec_version, task.spec.constraints, res.nano_cpus, res.memory_bytes)
        groups[key].append(task)

    assignments: dict[str, str] = {}
    left_over: list[tuple[GroupKey, list[Task]]] = []
    for key in sorted(groups):
        service_id, _version, constraint_texts, _cpu, _mem = key
        group = groups[key]
        group.sort(key=lambda t: (t.slot, t.id))
        matching = table.matching(constraint_texts)
        names = mounts.volume_names(group[0].spec)
        if isinstance(matching, str):
            placed = 0
        elif not names:
            placed = _place_group(table, service_id, group, matching, assignments)
        else:
            placed = _place_with_volumes(table, service_id, group, matching, assignments, names, homes, bound)
        if placed < len(group):
            left_over.append((key, group[placed:]))

    # Reasons are computed once every group is placed, against the final counters, so that the
    # next pass (which sees those placements as current tasks) produces the very same text.
    unplaced: dict[str, str] = {}
    for key, rest in left_over:
        names = mounts.volume_names(rest[0].spec)
        ports = host_ports(rest[0].spec.ports)
        if any(n in homes for n in names):
            reason = table.explain_volume(names, homes, key[2], key[3], key[4], ports)
        else:
            reason = table.explain(key[2], key[3], key[4], ports)
        for task in rest:
            unplaced[task.id] = reason
    return Schedule(assignments=assignments, unplaced=unplaced, volumes=bound)


def _place_with_volumes(
    table: _NodeTable,
    service_id: str,
    group: list[Task],
    matching: tuple[list[Node], set[str]],
    assignments: dict[str, str],
    names: tuple[str, ...],
    homes: dict[str, str],
    bound: dict[str, str],
) -> int:
    """Place a group that mounts local volumes: on their node if they have one; otherwise the
    first task goes where the usual filters say and binds them there, and the rest follow it."""
    home = table.volume_home(names, homes)
    if home is None:
        return 0
    placed = 0
    if not home:
        placed = _place_group(table, service_id, group[:1], matching, assignments)
        if not placed:
            return 0
        home = assignments[group[0].id]
        for name in names:
            homes[name] = bound[name] = home
    nodes, node_ids = matching
    there = ([n for n in nodes if n.id == home], {home}) if home in node_ids else ([], set[str]())
    if not there[0] or placed == len(group):
        return placed
    return placed + _place_group(table, service_id, group[placed:], there, assignments)


def _fits_with_ports(table: _NodeTable, ports: frozenset[tuple[int, str]], node: Node, cpu: int, mem: int) -> bool:
    return table.fits(node, cpu, mem, ports)


def _place_group(
    table: _NodeTable,
    service_id: str,
    group: list[Task],
    matching: tuple[list[Node], set[str]],
    assignments: dict[str, str],
) -> int:
    """Place the group's tasks in order; returns how many were placed (a prefix of `group`)."""
    cpu_need, mem_need = group[0].spec.reservations.nano_cpus, group[0].spec.reservations.memory_bytes
    ports = host_ports(group[0].spec.ports)  # one spec per group: the same ports
    # Nodes on the overlay have a limited number of task addresses, and a host port is taken
    # once per node: both are checked like a reservation.
    needs_resources = cpu_need > 0 or mem_need > 0 or table.limited or bool(ports)
    nodes, node_ids = matching
    per_service = table.by_service[service_id]
    fits_node = table.fits if not ports else partial(_fits_with_ports, table, ports)
    if (len(group) + len(per_service)) * 4 < len(nodes):
        # Small group: with k tasks, only the nodes already running the service and the first k
        # feasible nodes without it (in (total, id) order) can win; the heap needs nothing else.
        candidates = [
            table.by_id[n] for n in per_service if n in node_ids and fits_node(table.by_id[n], cpu_need, mem_need)
        ]
        wanted = len(group)
        for _, node_id in table.order:
            if node_id in per_service or node_id not in node_ids:
                continue
            node = table.by_id[node_id]
            if needs_resources and not fits_node(node, cpu_need, mem_need):
                continue
            candidates.append(node)
            wanted -= 1
            if not wanted:
                break
    elif needs_resources:
        candidates = [n for n in nodes if fits_node(n, cpu_need, mem_need)]
    else:
        candidates = nodes
    if not candidates:
        return 0
    total = table.total
    heap = [(per_service.get(n.id, 0), total[n.id], n.id) for n in candidates]
    heapq.heapify(heap)
    cpu, mem, live, by_id = table.cpu, table.mem, table.live, table.by_id
    heapreplace, heappop = heapq.heapreplace, heapq.heappop
    old_totals: dict[str, int] = {}
    placed = 0
    for task in group:
        if not heap:
            break
        svc_count, node_total, node_id = heap[0]
        assignments[task.id] = node_id
        placed += 1
        if node_id not in old_totals:
            old_totals[node_id] = node_total
        per_service[node_id] = svc_count + 1
        total[node_id] = node_total + 1
        if needs_resources:
            cpu[node_id] += cpu_need
            mem[node_id] += mem_need
            live[node_id] += 1
            if ports:
                table.ports[node_id] |= ports
            if not fits_node(by_id[node_id], cpu_need, mem_need):
                heappop(heap)
                continue
        heapreplace(heap, (svc_count + 1, node_total + 1, node_id))
    table.reorder(old_totals)
    return placed
