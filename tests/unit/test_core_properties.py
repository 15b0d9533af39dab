"""Property tests of the pure core: constraints, scheduler and reconciler invariants."""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.core_sim import Sim, naive_schedule, node, pending_task, running_task, spec
from warren import commands, strategy
from warren.constraints import ConstraintError, matches_all, parse_constraint, parse_constraints
from warren.model import (
    Availability,
    ClusterInfo,
    Node,
    NodeRole,
    NodeStatus,
    RestartCondition,
    RestartPolicy,
    RolloutState,
    ServiceMode,
    Task,
    TaskState,
    can_transition,
    is_ready,
)
from warren.reconciler import ReconcileConfig, is_empty, is_live
from warren.scheduler import node_is_schedulable, schedule
from warren.state import Put

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ZONES = ("a", "b", "c")

# -- constraints -------------------------------------------------------------------------------------

label_keys = st.text("abz019_.-/", min_size=1, max_size=8).filter(lambda k: k[0] not in "./-")
values = st.text("abcXYZ019_.:-", min_size=1, max_size=8)


@st.composite
def constraint_texts(draw: st.DrawFn) -> str:
    field = draw(st.sampled_from(["node.id", "node.hostname", "node.role", "label"]))
    op = draw(st.sampled_from(["==", "!="]))
    if field == "label":
        field = "node.labels." + draw(label_keys)
    value = draw(st.sampled_from(["manager", "worker"])) if field == "node.role" else draw(values)
    pad = draw(st.sampled_from(["", " "]))
    return f"{pad}{field}{pad}{op}{pad}{value}{pad}"


@FAST
@given(constraint_texts())
def test_constraint_text_round_trips(text: str) -> None:
    c = parse_constraint(text)
    assert str(c) == text.replace(" ", "")
    assert parse_constraint(str(c)) == c


@FAST
@given(st.text(max_size=30))
def test_constraint_parser_only_raises_constraint_error(text: str) -> None:
    try:
        c = parse_constraint(text)
    except ConstraintError as exc:
        assert str(exc).startswith("invalid constraint")
    else:
        assert parse_constraint(str(c)) == c


@FAST
@given(
    constraint_texts(),
    st.dictionaries(label_keys, values, max_size=3),
    values,
    st.sampled_from(list(NodeRole)),
)
def test_constraint_matching_agrees_with_its_definition(
    text: str, labels: dict[str, str], hostname: str, role: NodeRole
) -> None:
    n = Node(id="node-1", hostname=hostname, role=role, labels=labels)
    c = parse_constraint(text)
    actual = {"node.id": n.id, "node.hostname": n.hostname, "node.role": role.value}.get(c.field)
    if c.field.startswith("node.labels."):
        actual = labels.get(c.field.removeprefix("node.labels."))
    equal = actual is not None and actual.lower() == c.value.lower()
    assert c.matches(n) == (equal if c.op == "==" else not equal)


# -- scheduler ---------------------------------------------------------------------------------------


STATUSES = [NodeStatus.READY] * 4 + [NodeStatus.DOWN, NodeStatus.UNKNOWN]
AVAILABILITIES = [Availability.ACTIVE] * 4 + [Availability.PAUSE, Availability.DRAIN]


@st.composite
def nodes_strategy(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(0, 30))
    out = []
    for i in range(count):
        zone = draw(st.sampled_from([*ZONES, None]))
        out.append(
            node(
                f"n{i:02d}",
                labels={"zone": zone} if zone else {},
                cpus=draw(st.sampled_from([0, 1, 2, 4])),
                mem_gb=draw(st.sampled_from([0, 1, 4])),
                status=draw(st.sampled_from([NodeStatus.READY] * 4 + [NodeStatus.DOWN, NodeStatus.UNKNOWN])),
                availability=draw(
                    st.sampled_from([Availability.ACTIVE] * 4 + [Availability.PAUSE, Availability.DRAIN])
                ),
            )
        )
    return out


@st.composite
def workload(draw: st.DrawFn) -> tuple[list[Node], list[Task], list[Task]]:
    nodes = draw(nodes_strategy())
    specs = []
    for i in range(draw(st.integers(1, 5))):
        constraints = draw(
            st.lists(st.sampled_from(["node.labels.zone==a", "node.labels.zone!=b", "node.role==worker"]), max_size=2)
        )
        specs.append(
            spec(
                f"s{i}",
                constraints=tuple(constraints),
                cpus=draw(st.sampled_from([0, 0.25, 1])),
                mem_gb=draw(st.sampled_from([0, 0.5, 2])),
            )
        )
    # Existing tasks, added only where they fit, so the cluster starts within its capacity.
    existing: list[Task] = []
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i in range(draw(st.integers(0, 20))):
        if not nodes:
            break
        n = draw(st.sampled_from(nodes))
        s_index = draw(st.integers(0, len(specs) - 1))
        s = specs[s_index]
        cpu, mem = s.reservations.nano_cpus, s.reservations.memory_bytes
        if used[n.id][0] + cpu > n.resources.nano_cpus or used[n.id][1] + mem > n.resources.memory_bytes:
            continue
        used[n.id][0] += cpu
        used[n.id][1] += mem
        state = draw(st.sampled_from([TaskState.RUNNING, TaskState.ASSIGNED, TaskState.FAILED]))
        existing.append(running_task(f"e{i:03d}", f"svc{s_index}", s, n.id, slot=i + 1, state=state))
    pending = []
    for s_index, s in enumerate(specs):
        version = draw(st.sampled_from([1, 2]))
        for slot in range(1, draw(st.integers(0, 25)) + 1):
            pending.append(pending_task(f"p{s_index}-{slot:03d}", f"svc{s_index}", s, slot=slot, version=version))
    return nodes, existing, pending


@FAST
@given(workload(), st.randoms(use_true_random=False))
def test_scheduler_respects_every_filter(data: tuple[list[Node], list[Task], list[Task]], rnd: random.Random) -> None:
    nodes, existing, pending = data
    result = schedule(nodes, existing, pending)

    # Every pending task is either placed or explained, never both.
    assert result.assignments.keys() | result.unplaced.keys() == {t.id for t in pending}
    assert not result.assignments.keys() & result.unplaced.keys()
    assert all(reason.startswith("no suitable node") for reason in result.unplaced.values())

    by_id = {n.id: n for n in nodes}
    tasks = {t.id: t for t in pending}
    for task_id, node_id in result.assignments.items():
        n = by_id[node_id]
        assert node_is_schedulable(n)
        assert matches_all(parse_constraints(tasks[task_id].spec.constraints), n)

    # No node is over-committed in a dimension any of its tasks reserves.
    on_node: dict[str, list[Task]] = defaultdict(list)
    for t in existing:
        if not t.state.terminal:
            on_node[t.node_id].append(t)
    for task_id, node_id in result.assignments.items():
        on_node[node_id].append(tasks[task_id])
    for node_id, placed in on_node.items():
        cap = by_id[node_id].resources
        assert sum(t.spec.reservations.nano_cpus for t in placed) <= cap.nano_cpus or not any(
            t.spec.reservations.nano_cpus for t in placed
        )
        assert sum(t.spec.reservations.memory_bytes for t in placed) <= cap.memory_bytes or not any(
            t.spec.reservations.memory_bytes for t in placed
        )

    # Same choices as the slow reference, whatever the input order.
    assert result.assignments == naive_schedule(nodes, existing, pending)
    rnd.shuffle(nodes)
    rnd.shuffle(pending)
    assert schedule(nodes, existing, pending) == result


@FAST
@given(workload())
def test_scheduler_spreads_within_one(data: tuple[list[Node], list[Task], list[Task]]) -> None:
    """Without reservations or constraints, a service's count differs by at most one across nodes."""
    nodes, _, pending = data
    plain = spec("plain")
    tasks = [pending_task(f"q{i:03d}", "plain", plain, slot=i) for i in range(1, len(pending) + 1)]
    result = schedule(nodes, [], tasks)
    ready = [n.id for n in nodes if node_is_schedulable(n)]
    if not ready:
        assert len(result.unplaced) == len(tasks)
        return
    counts = Counter(result.assignments.values())
    per_node = [counts.get(n, 0) for n in ready]
    assert max(per_node) - min(per_node) <= 1
    assert sum(per_node) == len(tasks)


# -- reconciler ----------------------------------------------------------------------------------------

ASSIGNED = TaskState.ASSIGNED
RESTART = RestartPolicy(condition=RestartCondition.ANY, delay=0.0)
NODE_NAMES = [f"n{i}" for i in range(1, 7)]

ops = st.one_of(
    st.tuples(st.just("scale"), st.integers(0, 1), st.integers(0, 6)),
    st.tuples(st.just("update"), st.integers(0, 2)),
    st.tuples(st.just("settings"), st.integers(0, 2)),  # an update of rollout settings only
    st.tuples(st.just("rollback"), st.integers(0, 2)),
    st.tuples(st.just("avail"), st.sampled_from(NODE_NAMES), st.sampled_from(list(Availability))),
    st.tuples(st.just("label"), st.sampled_from(NODE_NAMES), st.sampled_from([*ZONES, None])),
    st.tuples(st.just("down"), st.sampled_from(NODE_NAMES)),
    st.tuples(st.just("die"), st.sampled_from(NODE_NAMES)),  # beats no more: late, then down (ADR 68)
    st.tuples(st.just("up"), st.sampled_from(NODE_NAMES)),
    st.tuples(st.just("remove"), st.sampled_from(NODE_NAMES)),
    st.tuples(st.just("add"), st.sampled_from(NODE_NAMES), st.sampled_from(ZONES)),
    st.tuples(st.just("end"), st.integers(0, 50), st.sampled_from([TaskState.FAILED, TaskState.COMPLETE])),
    st.tuples(st.just("agents")),
    st.tuples(st.just("rebalance"), st.integers(0, 1)),
    st.tuples(st.just("auto_rebalance"), st.booleans()),
)


def apply_op(sim: Sim, op: tuple, services: list[str]) -> None:  # type: ignore[type-arg]
    kind = op[0]
    nodes = sim.state.nodes
    if kind == "scale":
        sim.scale(services[op[1]], op[2])
    elif kind == "update":
        svc = sim.state.services[services[op[1]]]
        sim.update_service(svc.id, msgspec.structs.replace(svc.spec, image=f"img:{svc.version + 1}"))
    elif kind == "settings":
        svc = sim.state.services[services[op[1]]]
        update = msgspec.structs.replace(svc.spec.update, parallelism=svc.version % 3)
        sim.update_service(svc.id, msgspec.structs.replace(svc.spec, update=update, stop_drain=svc.version % 2))
    elif kind == "rollback":
        result, changes = commands.apply(sim.state, commands.RollbackService(services[op[1]], sim.now))
        if result.ok:  # refused when there is no version to return to
            sim.state.apply(changes)
    elif kind in ("avail", "label") and op[1] in nodes:
        if kind == "avail":
            sim.run(commands.UpdateNode(op[1], sim.now, availability=op[2]))
        elif op[2] is None:
            sim.run(commands.UpdateNode(op[1], sim.now, labels_rm=("zone",)))
        else:
            sim.run(commands.UpdateNode(op[1], sim.now, labels_add={"zone": op[2]}))
    elif kind == "down" and op[1] in nodes:
        sim.heartbeats[op[1]] = sim.now - 100
    elif kind == "die" and op[1] in nodes:
        sim.mute.add(op[1])
    elif kind == "up" and op[1] in nodes:
        sim.mute.discard(op[1])
        sim.run(commands.SetNodeStatus(op[1], NodeStatus.READY, "", sim.now))
        sim.heartbeats[op[1]] = sim.now
    elif kind == "remove" and op[1] in nodes:
        sim.run(commands.RemoveNode(op[1], sim.now))
    elif kind == "add" and op[1] not in nodes and not sim.state.is_revoked(op[1]):  # removed ids never return
        sim.add_node(node(op[1], labels={"zone": op[2]}, cpus=1, mem_gb=4))
    elif kind == "end":
        reachable = up_nodes(sim)
        candidates = sorted(
            (
                t
                for t in sim.state.tasks.values()
                if is_live(t) and t.node_id in reachable and t.state >= TaskState.ASSIGNED
            ),
            key=lambda t: t.id,
        )
        if candidates:
            task = candidates[op[1] % len(candidates)]
            sim.report(task, op[2], exit_code=0 if op[2] == TaskState.COMPLETE else 1)
    elif kind == "agents":
        sim.agents_step(up_nodes(sim))
    elif kind == "rebalance":  # refused (a rollout under way) or nothing to move: fine too
        _result, changes = commands.apply(sim.state, commands.RebalanceService(services[op[1]], sim.now))
        sim.state.apply(changes)
    elif kind == "auto_rebalance":
        cluster = sim.state.cluster or ClusterInfo("c", 0.0, "", "", "", "")
        sim.state.apply([Put("cluster", msgspec.structs.replace(cluster, auto_rebalance=op[1]))])


def up_nodes(sim: Sim) -> set[str]:
    return {
        n.id
        for n in sim.state.nodes.values()
        if n.status == NodeStatus.READY and sim.heartbeats.get(n.id, 0) > sim.now - 10
    }


def check_invariants(sim: Sim, before: dict[str, Task], services: list[str]) -> None:
    state = sim.state
    # States and desired states only move forward; a node, once given, never changes.
    for task_id, old in before.items():
        new = state.tasks.get(task_id)
        if new is None:
            continue
        assert new.state == old.state or can_transition(old.state, new.state), (old, new)
        assert new.desired_state >= old.desired_state
        assert not old.node_id or new.node_id == old.node_id
    live_slots: Counter[tuple[str, int]] = Counter()
    live_global: Counter[tuple[str, str]] = Counter()
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in state.tasks.values():
        assert t.service_id in state.services  # removed-service tasks are never kept here
        if t.node_id and not t.state.terminal:
            used[t.node_id][0] += t.spec.reservations.nano_cpus
            used[t.node_id][1] += t.spec.reservations.memory_bytes
        if not is_live(t):
            continue
        service = state.services[t.service_id]
        if service.spec.mode == ServiceMode.GLOBAL:
            live_global[(t.service_id, t.node_id)] += 1
        else:
            live_slots[(t.service_id, t.slot)] += 1
        if t.node_id:
            n = state.nodes[t.node_id]
            assert n.status != NodeStatus.DOWN and n.availability != Availability.DRAIN, (t, n)
            texts = service.spec.constraints if service.spec.mode == ServiceMode.GLOBAL else t.spec.constraints
            assert matches_all(parse_constraints(texts), n), (t, n)
    # A slot holds one live task of each version, and two only while its current-version task
    # is not ready yet (start-first, ADR 33: the older one serves meanwhile); or, of one version,
    # a rebalance's move while it is not ready yet, beside the task it replaces (ADR 36).
    live_ids = {t.id for t in state.tasks.values() if is_live(t)}
    versions = Counter(
        (t.service_id, t.slot, t.spec_version)
        for t in state.tasks.values()
        if is_live(t) and t.slot and t.relocates not in live_ids
    )
    assert all(c == 1 for c in versions.values()), versions
    # A live task that runs the current spec is of the current version (adopted, ADR 33); one
    # of the current version runs its spec, rollout settings aside.
    for t in state.tasks.values():
        if is_live(t) and t.node_id:
            service = state.services[t.service_id]
            assert (t.spec_version == service.version) == strategy.matches(t.spec, service.spec), t
    # Neither placement nor a rebalance move gave a task to a node that missed a heartbeat
    # (ADR 68); a global task goes to its node whatever.
    for t in state.tasks.values():
        old = before.get(t.id)
        placed = t.node_id and not (old and old.node_id) and not t.state.terminal
        if placed and state.services[t.service_id].spec.mode == ServiceMode.REPLICATED:
            assert sim.now - sim.heartbeats.get(t.node_id, sim.now) <= sim.config.late_after, t
    for (service_id, slot), count in live_slots.items():
        assert count <= 2, live_slots
        if count == 2:
            pair = [t for t in state.service_tasks(service_id) if t.slot == slot and is_live(t)]
            movers = [t for t in pair if t.relocates and t.relocates in {other.id for other in pair}]
            current = [t for t in pair if t.spec_version == state.services[service_id].version]
            if pair[0].spec_version == pair[1].spec_version:
                assert movers and not is_ready(movers[0]), pair
            else:
                assert current and not is_ready(current[0]), (service_id, slot, current)
    for (service_id, node_id), count in live_global.items():
        assert count <= 2, live_global
        if count == 2:  # start-first, as for slots
            on_node = [t for t in state.service_tasks(service_id) if t.node_id == node_id and is_live(t)]
            assert len({t.spec_version for t in on_node}) == 2, on_node
            current = [t for t in on_node if t.spec_version == state.services[service_id].version]
            assert current and not is_ready(current[0]), on_node
    for node_id, (cpu, mem) in used.items():
        if node_id in state.nodes:
            cap = state.nodes[node_id].resources
            assert cpu <= cap.nano_cpus and mem <= cap.memory_bytes, (node_id, cpu, mem, cap)
    # Global: every eligible node runs the service right after a pass.
    mon = state.services[services[2]]
    constraints = parse_constraints(mon.spec.constraints)
    for n in state.nodes.values():
        if node_is_schedulable(n) and matches_all(constraints, n):
            assert live_global[(mon.id, n.id)] >= 1, n


def new_sim() -> tuple[Sim, list[str]]:
    sim = Sim(ReconcileConfig(task_history_limit=2))
    for i, name in enumerate(NODE_NAMES[:4]):
        sim.add_node(node(name, labels={"zone": ZONES[i % 3]}, cpus=1, mem_gb=4))
    services = [
        sim.create_service(spec("web", replicas=3, restart=RESTART, cpus=0.5, mem_gb=1)),
        sim.create_service(spec("api", replicas=2, restart=RESTART, constraints=("node.labels.zone!=c",))),
        sim.create_service(spec("mon", mode=ServiceMode.GLOBAL, restart=RESTART, constraints=("node.labels.zone!=b",))),
    ]
    return sim, services


EXAMPLES = int(os.environ.get("CORE_EXAMPLES", "50"))  # more for a long run


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=25))
# Found by this test (bugs since #12, fixed): a rebalance's move and the task it replaces are
# both adopted by a settings-only update; a move stopped by a scale-down no longer holds the
# rebalance open; a rollout this pass completes lets an automatic rebalance start in it; a
# rebalance is weighed after the pass placed the slots it created (a drain here), not before; a
# settings-only update adopting an unfinished rollout's tasks waits for them; and a rebalance
# never moves a slot whose old task still serves beside its new one.
@example(steps=[("down", "n1"), ("auto_rebalance", True), ("scale", 0, 5), ("up", "n1"), ("add", "n5", "a")])
@example(steps=[("die", "n1"), *[("agents",)] * 8, ("scale", 0, 6)])  # nothing new for a late node (ADR 68)
@example(
    steps=[
        ("down", "n1"),
        ("die", "n2"),
        ("update", 0),
        ("auto_rebalance", True),
        ("scale", 0, 0),
        ("agents",),
        ("update", 0),
        ("agents",),
        ("scale", 0, 3),
    ]
)
@example(steps=[("update", 0), ("down", "n2"), ("update", 1), ("settings", 0), ("settings", 0), ("rebalance", 0)])
@example(steps=[("auto_rebalance", True), ("scale", 1, 6), ("add", "n5", "a"), ("avail", "n2", Availability.DRAIN)])
@example(steps=[("scale", 0, 5), ("auto_rebalance", True), ("add", "n5", "a"), ("scale", 0, 0)])
@example(steps=[("scale", 0, 5), ("auto_rebalance", True), ("add", "n5", "a"), ("settings", 0)])
@example(steps=[("scale", 0, 6), ("auto_rebalance", True), ("add", "n5", "a"), ("add", "n6", "a"), ("settings", 0)])
def test_reconciler_invariants_and_convergence(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    sim, services = new_sim()
    for op in [("agents",), *steps]:
        apply_op(sim, op, services)
        before = dict(sim.state.tasks)
        sim.reconcile()  # checks that each plan entry does something the FSM accepts
        check_invariants(sim, before, services)
        plan = sim.plan()
        assert is_empty(plan), (op, plan)  # idempotent: nothing external changed
        sim.tick()

    # Let the cluster settle: agents on reachable nodes act, passes run, until nothing changes.
    # Quiet for longer than a rollout's monitor period (5 s of sim time): nothing is waiting.
    quiet = 0
    for _ in range(200):
        before = dict(sim.state.tasks)
        plan = sim.reconcile()
        check_invariants(sim, before, services)
        sim.agents_step(up_nodes(sim))
        sim.tick()
        quiet = quiet + 1 if is_empty(plan) and sim.state.tasks == before else 0
        if quiet > 6:
            break
    else:
        raise AssertionError("did not settle")

    for service_id in services[:2]:
        service = sim.state.services[service_id]
        live = [t for t in sim.state.service_tasks(service_id) if is_live(t)]
        assert len(live) == service.spec.replicas
        assert len({t.slot for t in live}) == len(live) and all(t.slot >= 1 for t in live)
        status = service.update_status
        paused = status is not None and status.state in (RolloutState.PAUSED, RolloutState.ROLLBACK_PAUSED)
        if all(t.state == TaskState.RUNNING for t in live) and not paused:
            assert {t.spec_version for t in live} <= {service.version}
    mon = sim.state.services[services[2]]
    constraints = parse_constraints(mon.spec.constraints)
    live_nodes = {t.node_id for t in sim.state.service_tasks(mon.id) if is_live(t)}
    eligible = {n.id for n in sim.state.nodes.values() if node_is_schedulable(n) and matches_all(constraints, n)}
    allowed = {
        n.id
        for n in sim.state.nodes.values()
        if n.status != NodeStatus.DOWN and n.availability != Availability.DRAIN and matches_all(constraints, n)
    }
    assert eligible <= live_nodes <= allowed
    # History is bounded: per slot (per node for global), at most task_history_limit dead tasks.
    per_slot = Counter(
        (t.service_id, t.slot if t.slot else t.node_id) for t in sim.state.tasks.values() if t.state.terminal
    )
    assert all(count <= 2 for count in per_slot.values()), per_slot


node_ops = st.lists(
    st.one_of(
        st.tuples(st.just("avail"), st.sampled_from(NODE_NAMES), st.sampled_from(list(Availability))),
        st.tuples(st.just("label"), st.sampled_from(NODE_NAMES), st.sampled_from([*ZONES, None])),
        st.tuples(st.just("down"), st.sampled_from(NODE_NAMES)),
        st.tuples(st.just("up"), st.sampled_from(NODE_NAMES)),
        st.tuples(st.just("remove"), st.sampled_from(NODE_NAMES)),
        st.tuples(st.just("add"), st.sampled_from(NODE_NAMES), st.sampled_from(ZONES)),
        st.tuples(st.just("agents")),
    ),
    max_size=30,
)


@FAST
@given(node_ops)
def test_global_service_tracks_node_changes(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    """After every pass, exactly the eligible nodes run the global service (paused nodes may keep
    theirs), and no node that is drained, down, gone or unmatched keeps a live task."""
    sim = Sim()
    for i, name in enumerate(NODE_NAMES[:3]):
        sim.add_node(node(name, labels={"zone": ZONES[i]}, cpus=2, mem_gb=4))
    mon = sim.create_service(
        spec("mon", mode=ServiceMode.GLOBAL, restart=RESTART, constraints=("node.labels.zone!=c",))
    )
    constraints = parse_constraints(("node.labels.zone!=c",))
    for op in [("agents",), *steps]:
        apply_op(sim, op, [mon, mon, mon])
        sim.reconcile()
        assert is_empty(sim.plan())
        live = Counter(t.node_id for t in sim.state.service_tasks(mon) if is_live(t))
        assert all(count == 1 for count in live.values()), live
        nodes = sim.state.nodes
        eligible = {n.id for n in nodes.values() if node_is_schedulable(n) and matches_all(constraints, n)}
        allowed = {
            n.id
            for n in nodes.values()
            if n.status != NodeStatus.DOWN and n.availability != Availability.DRAIN and matches_all(constraints, n)
        }
        assert eligible <= set(live) <= allowed, (op, eligible, live, allowed)
        sim.tick()
