"""A tiny in-memory cluster for testing the pure core: commands go through `commands.apply` and
`ClusterState.apply` exactly as the store does, and fake agents move tasks forward; and the
reconciler scenarios' helpers (`cluster`, `idle`, `inject`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec

from warren import commands, strategy
from warren.commands import ApplyPlan, ReportTaskStatus, TaskUpdate
from warren.model import (
    Availability,
    Node,
    NodeRole,
    NodeStatus,
    Resources,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    can_transition,
    is_stopping,
)
from warren.reconciler import ReconcileConfig, is_empty, is_live, reconcile
from warren.state import ClusterState, Put

GB = 1 << 30
CPU = 1_000_000_000


def node(
    node_id: str,
    *,
    labels: dict[str, str] | None = None,
    cpus: float = 4,
    mem_gb: float = 8,
    status: NodeStatus = NodeStatus.READY,
    availability: Availability = Availability.ACTIVE,
    role: NodeRole = NodeRole.WORKER,
) -> Node:
    return Node(
        id=node_id,
        hostname=f"host-{node_id}",
        role=role,
        availability=availability,
        status=status,
        labels=labels or {},
        resources=Resources(int(cpus * CPU), int(mem_gb * GB)),
    )


def spec(
    name: str,
    *,
    replicas: int = 1,
    mode: ServiceMode = ServiceMode.REPLICATED,
    constraints: tuple[str, ...] = (),
    cpus: float = 0,
    mem_gb: float = 0,
    restart: RestartPolicy | None = None,
    image: str = "busybox",
    update: UpdateConfig | None = None,
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        image=image,
        mode=mode,
        replicas=replicas,
        constraints=constraints,
        reservations=Resources(int(cpus * CPU), int(mem_gb * GB)),
        restart=restart or RestartPolicy(delay=0.0),
        update=update or UpdateConfig(),
    )


class Sim:
    """State plus a clock; every change goes through the FSM."""

    def __init__(self, config: ReconcileConfig | None = None) -> None:
        self.state = ClusterState()
        self.now = 1000.0
        self.config = config or ReconcileConfig()
        self.heartbeats: dict[str, float] = {}
        self.mute: set[str] = set()  # nodes that stopped heartbeating: `tick` leaves them silent
        self._ids = itertools.count(1)
        self._svc_ids = itertools.count(1)

    def new_id(self) -> str:
        return f"t{next(self._ids):06d}"

    def run(self, command: commands.Command) -> commands.Result:
        result, changes = commands.apply(self.state, command)
        assert result.ok, result
        self.state.apply(changes)
        return result

    # -- cluster edits -------------------------------------------------------------------------
    def add_node(self, n: Node) -> None:
        self.run(commands.RegisterNode(n))
        self.heartbeats[n.id] = self.now

    def set_node(self, node_id: str, **fields: object) -> None:
        """Edit a node as an operator or the dispatcher would (labels, availability, status)."""
        old = self.state.nodes[node_id]
        self.state.apply([Put("node", msgspec.structs.replace(old, **fields))])

    def create_service(self, s: ServiceSpec) -> str:
        service_id = f"s{next(self._svc_ids):03d}"
        self.run(commands.CreateService(Service(id=service_id, spec=s, created_at=self.now)))
        return service_id

    def update_service(self, service_id: str, s: ServiceSpec) -> None:
        self.run(commands.UpdateService(service_id, s, self.now))

    def scale(self, service_id: str, replicas: int) -> None:
        self.run(commands.ScaleService(service_id, replicas, self.now))

    # -- reconciler ----------------------------------------------------------------------------
    def plan(self) -> ApplyPlan:
        return reconcile(self.state, self.now, self.heartbeats, self.config, self.new_id)

    def reconcile(self) -> ApplyPlan:
        """One pass, checked for useless or stale entries, then committed."""
        plan = self.plan()
        check_plan(self.state, plan)
        self.run(plan)
        return plan

    # -- fake agents ---------------------------------------------------------------------------
    def report(self, task: Task, state: TaskState, **fields: object) -> None:
        update = TaskUpdate(id=task.id, at=self.now, state=state, **fields)  # type: ignore[arg-type]
        self.run(ReportTaskStatus(task.node_id, (update,)))

    def agents_step(self, node_ids: Iterable[str] | None = None) -> None:
        """Every reachable agent starts what it was assigned and stops what it was told to stop."""
        allowed = set(self.state.nodes) if node_ids is None else set(node_ids)
        for task in sorted(self.state.tasks.values(), key=lambda t: t.id):
            if task.node_id not in allowed or task.state.terminal or task.state < TaskState.ASSIGNED:
                continue
            if task.desired_state >= TaskState.SHUTDOWN:
                self.report(task, TaskState.SHUTDOWN)
            elif task.state < TaskState.RUNNING:
                self.report(task, TaskState.RUNNING)

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds
        for node_id, n in self.state.nodes.items():
            if n.status == NodeStatus.READY and node_id not in self.mute:
                self.heartbeats[node_id] = self.now

    def converge(self, rounds: int = 200) -> None:
        """Reconcile and let agents act until a pass changes nothing and no rollout is under
        way (a rollout waits out its monitor periods: time must pass, ADR 33)."""
        for _ in range(rounds):
            plan = self.reconcile()
            self.agents_step()
            self.tick()
            if is_empty(plan) and not self.rolling_out():
                return
        raise AssertionError("did not converge")

    def rolling_out(self) -> bool:
        return any(s.update_status is not None and s.update_status.state.active for s in self.state.services.values())

    # -- queries -------------------------------------------------------------------------------
    def tasks(self, service_id: str) -> list[Task]:
        return sorted(self.state.service_tasks(service_id), key=lambda t: (t.slot, t.created_at, t.id))

    def live(self, service_id: str) -> list[Task]:
        return [t for t in self.tasks(service_id) if is_live(t)]

    def running(self, service_id: str) -> list[Task]:
        return [t for t in self.live(service_id) if t.state == TaskState.RUNNING]


def naive_schedule(nodes: Iterable[Node], tasks: Iterable[Task], pending: Iterable[Task]) -> dict[str, str]:
    """A linear-scan reference scheduler with the documented rules, to check the fast one against."""
    from warren.constraints import parse_constraints

    nodes = sorted(nodes, key=lambda n: n.id)
    used: dict[str, list[int]] = {n.id: [0, 0] for n in nodes}
    total: dict[str, int] = dict.fromkeys(used, 0)
    per_service: dict[tuple[str, str], int] = {}
    for t in tasks:
        if t.node_id in used and not t.state.terminal:
            used[t.node_id][0] += t.spec.reservations.nano_cpus
            used[t.node_id][1] += t.spec.reservations.memory_bytes
            if t.desired_state <= TaskState.RUNNING:
                total[t.node_id] += 1
                key = (t.service_id, t.node_id)
                per_service[key] = per_service.get(key, 0) + 1
    ordered = sorted(
        pending,
        key=lambda t: (
            t.service_id,
            t.spec_version,
            t.spec.constraints,
            t.spec.reservations.nano_cpus,
            t.spec.reservations.memory_bytes,
            t.slot,
            t.id,
        ),
    )
    out: dict[str, str] = {}
    for t in ordered:
        constraints = parse_constraints(t.spec.constraints)
        need = t.spec.reservations
        best = None
        for n in nodes:
            if n.status != NodeStatus.READY or n.availability != Availability.ACTIVE:
                continue
            if not all(c.matches(n) for c in constraints):
                continue
            cpu, mem = used[n.id]
            if need.nano_cpus > 0 and cpu + need.nano_cpus > n.resources.nano_cpus:
                continue
            if need.memory_bytes > 0 and mem + need.memory_bytes > n.resources.memory_bytes:
                continue
            key = (per_service.get((t.service_id, n.id), 0), total[n.id], n.id)
            if best is None or key < best:
                best = key
        if best is None:
            continue
        node_id = best[2]
        out[t.id] = node_id
        used[node_id][0] += need.nano_cpus
        used[node_id][1] += need.memory_bytes
        total[node_id] += 1
        per_service[(t.service_id, node_id)] = best[0] + 1
    return out


def pending_task(task_id: str, service_id: str, s: ServiceSpec, slot: int = 1, version: int = 1) -> Task:
    return Task(
        id=task_id,
        service_id=service_id,
        service_name=s.name,
        slot=slot,
        spec=s,
        spec_version=version,
        state=TaskState.PENDING,
    )


def running_task(task_id: str, service_id: str, s: ServiceSpec, node_id: str, slot: int = 1, **kw: object) -> Task:
    fields: dict[str, object] = {"state": TaskState.RUNNING, "node_id": node_id, **kw}
    return msgspec.structs.replace(pending_task(task_id, service_id, s, slot), **fields)


def check_plan(state: ClusterState, plan: ApplyPlan) -> None:
    """Every entry of a plan must do something, and nothing the FSM would refuse."""
    ids = [t.id for t in plan.created]
    assert len(set(ids)) == len(ids) and not set(ids) & set(state.tasks), "created ids must be new"
    for t in plan.created:
        assert t.service_id in state.services
        assert t.desired_state == TaskState.RUNNING
        assert (t.state == TaskState.ASSIGNED) == bool(t.node_id), t
        assert t.state in (TaskState.PENDING, TaskState.ASSIGNED), t
    updated = [u.id for u in plan.updated]
    assert len(set(updated)) == len(updated), "one update per task"
    fields = ("state", "desired_state", "node_id", "message", "error", "exit_code", "runtime_id", "health")
    fields += ("draining_since", "spec_version")
    for u in plan.updated:
        task = state.tasks[u.id]
        changed = [f for f in fields if getattr(u, f) is not None and getattr(u, f) != getattr(task, f)]
        assert changed, f"update changes nothing: {u}"
        if u.spec_version is not None:  # adopted (ADR 33): only into the current spec it runs
            service = state.services[task.service_id]
            assert u.spec_version == service.version and strategy.matches(task.spec, service.spec), u
            assert not is_stopping(task) and not task.state.terminal, u
        if u.state is not None and u.state != task.state:
            assert can_transition(task.state, u.state), (task.state, u)
        if u.desired_state is not None:
            assert u.desired_state >= task.desired_state, u
        if u.node_id is not None:
            assert not task.node_id, u
        assert u.id not in plan.deleted
    assert all(d in state.tasks for d in plan.deleted)
    for status in plan.node_status:
        n = state.nodes[status.node_id]
        assert (n.status, n.status_message) != (status.status, status.message)


# -- the reconciler scenarios' helpers ---------------------------------------------------------------
ANY0 = RestartPolicy(condition=RestartCondition.ANY, delay=0.0)


def idle(sim: Sim) -> None:
    """Nothing external changed: the next pass must propose nothing."""
    plan = sim.plan()
    assert is_empty(plan), plan


def cluster(*names: str, config: ReconcileConfig | None = None, **node_kw: object) -> Sim:
    sim = Sim(config)
    for name in names:
        sim.add_node(node(name, **node_kw))  # type: ignore[arg-type]
    return sim


def inject(sim: Sim, task: Task) -> None:
    sim.state.apply([Put("task", task)])
