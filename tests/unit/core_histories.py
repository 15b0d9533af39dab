"""What the pure core's property tests share: their quick Hypothesis settings, the nodes' zones,
and random histories for the core simulator (operator, node and agent events, `ops`, applied by
`apply_op` to a cluster of two replicated services and a global one, `new_sim`), which the
incremental reconciliation test replays too."""

from __future__ import annotations

import os

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.unit.core_sim import Sim, node, spec
from warren import commands
from warren.model import Availability, ClusterInfo, NodeStatus, RestartCondition, RestartPolicy, ServiceMode, TaskState
from warren.reconciler import ReconcileConfig, is_live
from warren.state import Put

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ZONES = ("a", "b", "c")


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
