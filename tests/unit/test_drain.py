"""Routing leads every stop (ADR 33): a task the load balancers route to drains first.

The reconciler's side runs through the real FSM (tests/unit/core_sim.py), on nodes on the
overlay so that tasks get addresses; `routes` is what the dispatcher heard from the agents (node
-> the addresses its load balancer may route to). The dispatcher's side: `RoutingReports` (what
each node may route to, from what was sent and what it confirmed) and `_endpoints` (who is a
backend).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import msgspec

from tests.unit.core_sim import Sim, node, spec
from warren import commands
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.endpoints import all_endpoints
from warren.manager.routingreports import RoutingReports
from warren.model import (
    Availability,
    HealthCheck,
    NodeStatus,
    Service,
    Task,
    TaskState,
    UpdateConfig,
    UpdateOrder,
    is_routed,
)
from warren.reconciler import reconcile
from warren.state import ClusterState, Put

Routes = Mapping[str, Collection[str]]


def overlay_cluster(*names: str) -> Sim:
    sim = Sim()
    for i, name in enumerate(names):
        sim.add_node(node(name))
        sim.set_node(name, overlay=True, overlay_subnet=f"10.200.{i}.0/24")
    return sim


def step(sim: Sim, routes: Routes) -> commands.ApplyPlan:
    """One pass given what the nodes reported, committed."""
    plan = reconcile(sim.state, sim.now, sim.heartbeats, sim.config, sim.new_id, routes)
    sim.run(plan)
    return plan


def routing(sim: Sim, svc: str) -> frozenset[str]:
    """What an up-to-date load balancer holds: the service's routed tasks."""
    return frozenset(t.overlay_address for t in sim.tasks(svc) if is_routed(t))


def web(sim: Sim, replicas: int, **fields: object) -> str:
    svc = sim.create_service(msgspec.structs.replace(spec("web", replicas=replicas), **fields))
    sim.converge()
    assert len(sim.running(svc)) == replicas and all(t.overlay_address for t in sim.running(svc))
    return svc


def test_a_scaled_down_task_drains_until_every_node_stopped_routing_to_it() -> None:
    sim = overlay_cluster("n1", "n2")
    svc = web(sim, 2)
    before = routing(sim, svc)
    sim.scale(svc, 1)
    step(sim, {"n1": before, "n2": before})
    [victim] = [t for t in sim.tasks(svc) if t.draining_since]
    # Out of the load balancing, still desired running: it serves what it already has.
    assert (victim.desired_state, victim.draining_since, victim.message) == (
        TaskState.RUNNING,
        sim.now,
        "draining: scaled down",
    )
    assert not is_routed(victim) and victim.overlay_address not in routing(sim, svc)
    assert len(sim.live(svc)) == 1  # it holds no slot any more

    after = routing(sim, svc)
    sim.tick()
    assert not step(sim, {"n1": after, "n2": before}).updated  # n2 may still route to it
    sim.tick()
    plan = step(sim, {"n1": after, "n2": after})
    assert [(u.id, u.desired_state, u.message) for u in plan.updated] == [
        (victim.id, TaskState.SHUTDOWN, "shutdown: scaled down")
    ]


def test_a_node_that_does_not_confirm_blocks_for_three_heartbeat_periods_and_is_named() -> None:
    sim = overlay_cluster("n1", "n2")
    svc = web(sim, 2)
    sim.scale(svc, 1)
    step(sim, {})
    [victim] = [t for t in sim.tasks(svc) if t.draining_since]
    after = routing(sim, svc)
    bound = sim.config.node_timeout
    sim.tick(bound - 1)
    assert not step(sim, {"n1": after}).updated  # n2 unknown (a new leader, or a silent agent)
    sim.tick(1)
    [stop] = step(sim, {"n1": after}).updated
    assert stop.id == victim.id and stop.desired_state == TaskState.SHUTDOWN
    assert (
        stop.message
        == f"shutdown: scaled down (not confirmed out of the load balancing of node(s) n2 within {bound:g}s)"
    )


def test_a_silent_agent_whose_node_goes_down_before_the_bound_is_named_in_the_stop() -> None:
    # n2 routes to both tasks (they run on n1) until its agent falls silent, a little before the
    # scale-down: its node goes down (3 periods after its last heartbeat) before the bound (3
    # periods after the drain began), which ends the wait; the stop still says who never confirmed.
    sim = overlay_cluster("n1", "n2")
    sim.set_node("n2", availability=Availability.DRAIN)
    svc = web(sim, 2)
    before = routing(sim, svc)
    silent_since = sim.now
    sim.tick(2)
    sim.heartbeats["n2"] = silent_since
    sim.scale(svc, 1)
    step(sim, {"n1": before, "n2": before})
    [victim] = [t for t in sim.tasks(svc) if t.draining_since]
    after = routing(sim, svc)
    bound = sim.config.node_timeout
    sim.tick(bound - 1)  # n2 is down: silent for bound + 1; the drain began bound - 1 ago
    sim.heartbeats["n2"] = silent_since
    plan = step(sim, {"n1": after, "n2": before})
    assert sim.state.nodes["n2"].status == NodeStatus.DOWN
    assert [(u.id, u.desired_state, u.message) for u in plan.updated] == [
        (
            victim.id,
            TaskState.SHUTDOWN,
            "shutdown: scaled down (node(s) n2 went down before confirming it out of their load balancing)",
        )
    ]


def test_a_node_down_before_the_drain_began_is_not_named() -> None:
    sim = overlay_cluster("n1", "n2")
    sim.set_node("n2", availability=Availability.DRAIN)
    svc = web(sim, 2)
    before = routing(sim, svc)
    silent_since = sim.now
    sim.tick(sim.config.node_timeout + 1)
    sim.heartbeats["n2"] = silent_since
    step(sim, {"n1": before, "n2": before})
    assert sim.state.nodes["n2"].status == NodeStatus.DOWN
    sim.tick()
    sim.scale(svc, 1)
    step(sim, {"n1": before, "n2": before})
    sim.tick()
    plan = step(sim, {"n1": routing(sim, svc), "n2": before})
    assert [(u.desired_state, u.message) for u in plan.updated] == [(TaskState.SHUTDOWN, "shutdown: scaled down")]


def test_stop_drain_keeps_a_confirmed_task_running_for_its_period() -> None:
    sim = overlay_cluster("n1")
    svc = web(sim, 2, stop_drain=30.0)
    sim.scale(svc, 1)
    step(sim, {})
    after = routing(sim, svc)
    sim.tick(29)
    assert not step(sim, {"n1": after}).updated
    sim.tick(1)
    [stop] = step(sim, {"n1": after}).updated
    assert stop.desired_state == TaskState.SHUTDOWN and stop.message == "shutdown: scaled down"


def test_a_task_no_load_balancer_routes_to_stops_at_once() -> None:
    sim = overlay_cluster("n1")
    health = HealthCheck(command=("true",), interval=1.0)
    svc = sim.create_service(msgspec.structs.replace(spec("web"), health=health))
    sim.reconcile()
    sim.agents_step()  # running, its health check not passed yet: not a backend
    [task] = sim.live(svc)
    assert task.state == TaskState.RUNNING and task.overlay_address and not is_routed(task)
    sim.scale(svc, 0)
    [stop] = step(sim, {}).updated
    assert (stop.desired_state, stop.message) == (TaskState.SHUTDOWN, "shutdown: scaled down")


def test_a_task_out_of_the_endpoints_that_a_node_may_still_route_to_drains_before_its_stop() -> None:
    """The state says it is no backend (its health check failed a moment ago), but a node has
    not yet confirmed endpoints without it: stopping it at once would send that node's new
    connections to an address that is gone, where they hang (found by the rebalance load test)."""
    sim = overlay_cluster("n1", "n2")
    health = HealthCheck(command=("true",), interval=1.0)
    svc = sim.create_service(msgspec.structs.replace(spec("web"), health=health))
    sim.reconcile()
    sim.agents_step()
    [task] = sim.live(svc)
    sim.report(task, TaskState.RUNNING, health="healthy")
    held = routing(sim, svc)
    assert held == {task.overlay_address}
    sim.report(sim.state.tasks[task.id], TaskState.RUNNING, health="unhealthy")
    assert not is_routed(sim.state.tasks[task.id])
    sim.scale(svc, 0)
    step(sim, {"n1": frozenset(), "n2": held})  # n2 still holds the version with it
    drained = sim.state.tasks[task.id]
    assert (drained.desired_state, drained.draining_since) == (TaskState.RUNNING, sim.now)
    sim.tick()
    [stop] = step(sim, {"n1": frozenset(), "n2": frozenset()}).updated
    assert (stop.id, stop.desired_state, stop.message) == (task.id, TaskState.SHUTDOWN, "shutdown: scaled down")


def test_a_start_first_update_drains_the_old_task_once_the_new_one_is_ready() -> None:
    sim = overlay_cluster("n1")
    svc = web(sim, 1, update=UpdateConfig(order=UpdateOrder.START_FIRST))
    [old] = sim.running(svc)
    sim.update_service(svc, spec("web", image="busybox:2"))
    step(sim, {"n1": routing(sim, svc)})
    sim.agents_step()  # the new task runs beside the old one
    routes = {"n1": routing(sim, svc)}
    assert len(routes["n1"]) == 2  # both serve for a moment
    plan = step(sim, routes)
    assert [(u.id, u.draining_since, u.desired_state) for u in plan.updated] == [(old.id, sim.now, None)]
    sim.tick()
    [stop] = step(sim, {"n1": routing(sim, svc)}).updated
    assert (stop.id, stop.desired_state, stop.message) == (
        old.id,
        TaskState.SHUTDOWN,
        "shutdown: replaced by service update",
    )


def test_removing_a_service_drains_its_routed_tasks_first() -> None:
    sim = overlay_cluster("n1")
    svc = web(sim, 2)
    sim.run(commands.RemoveService(svc, sim.now))
    draining = [t for t in sim.state.tasks.values() if t.draining_since]
    assert len(draining) == 2
    assert {(t.desired_state, t.message) for t in draining} == {(TaskState.RUNNING, "draining: service removed")}
    sim.tick()
    plan = step(sim, {"n1": frozenset()})
    assert {(u.desired_state, u.message) for u in plan.updated} == {(TaskState.SHUTDOWN, "shutdown: service removed")}


def test_a_task_that_ends_while_draining_is_not_restarted() -> None:
    sim = overlay_cluster("n1")
    svc = web(sim, 2)
    sim.scale(svc, 1)
    step(sim, {})
    [victim] = [t for t in sim.tasks(svc) if t.draining_since]
    sim.report(victim, TaskState.FAILED)
    plan = step(sim, {})
    assert not plan.created
    assert [(u.id, u.desired_state) for u in plan.updated] == [(victim.id, TaskState.SHUTDOWN)]


# -- the dispatcher's side ---------------------------------------------------------------------


def test_routing_reports_hold_every_backend_sent_since_the_last_confirmed_endpoints() -> None:
    reports = RoutingReports()
    assert reports.snapshot() == {}
    reports.sent("n1", 10, frozenset({"a", "b"}))
    assert reports.snapshot() == {}  # nothing confirmed: unknown
    reports.applied("n1", 10)
    assert reports.snapshot() == {"n1": {"a", "b"}}
    reports.sent("n1", 12, frozenset({"a", "c"}))
    assert reports.snapshot() == {"n1": {"a", "b", "c"}}  # it may hold either
    reports.applied("n1", 7)  # not sent by this leader: says nothing
    reports.applied("n1", 12)
    assert reports.snapshot() == {"n1": {"a", "c"}}
    reports.applied("n1", 10)  # an older report, late: ignored
    assert reports.snapshot() == {"n1": {"a", "c"}}
    for index in range(13, 13 + RoutingReports.MAX_UNCONFIRMED + 1):  # an agent that never confirms
        reports.sent("n1", index, frozenset({"a"}))
    assert reports.snapshot() == {}


def test_endpoints_list_ready_tasks_that_are_not_draining() -> None:
    state = ClusterState()
    service = Service(id="s1", spec=spec("web"), vip="10.201.0.2")
    checked = msgspec.structs.replace(spec("web"), health=HealthCheck(command=("true",)))
    state.apply([Put("service", service)])

    def task(task_id: str, address: str, **fields: object) -> Task:
        fields.setdefault("spec", service.spec)
        return Task(
            id=task_id,
            service_id="s1",
            service_name="web",
            slot=1,
            spec_version=1,
            state=TaskState.RUNNING,
            node_id="n1",
            overlay_address=address,
            **fields,  # type: ignore[arg-type]
        )

    state.apply(
        [
            Put("task", task("ok", "10.200.0.2")),
            Put("task", task("healthy", "10.200.0.3", spec=checked, health="healthy")),
            Put("task", task("starting", "10.200.0.4", spec=checked)),  # no verdict yet
            Put("task", task("draining", "10.200.0.5", draining_since=5.0)),
            Put("task", task("stopping", "10.200.0.6", desired_state=TaskState.SHUTDOWN)),
        ]
    )
    [endpoint] = all_endpoints(state)
    assert sorted(endpoint.backends) == ["10.200.0.2", "10.200.0.3"]


def test_the_dispatcher_tags_each_endpoints_push_and_learns_what_the_node_applied(tmp_path: Path) -> None:
    from tests.unit.test_dispatcher_specs import NODE, Cluster, next_message, request, run

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        heartbeats = cluster.dispatcher._heartbeats
        service = Service(id="s1", spec=spec("web"), vip="10.201.0.2")

        def backend(task_id: str, address: str) -> Task:
            return Task(
                id=task_id,
                service_id="s1",
                service_name="web",
                slot=1,
                spec=service.spec,
                spec_version=1,
                state=TaskState.RUNNING,
                node_id="elsewhere",
                overlay_address=address,
            )

        cluster.put(service, backend("a", "10.200.0.2"))
        stream = cluster.dispatcher.Session(request(), None)
        try:
            first = await next_message(stream)
            assert first.services_changed and first.services_index > 0
            assert [list(e.backends) for e in first.services] == [["10.200.0.2"]]
            assert NODE not in heartbeats.routes.snapshot()  # sent, not confirmed: unknown

            beat = dpb.HeartbeatRequest(session_id=first.session_id, services_applied=first.services_index)
            await cluster.dispatcher.Heartbeat(beat, None)
            assert heartbeats.routes.snapshot() == {NODE: {"10.200.0.2"}}

            cluster.put(backend("b", "10.200.0.3"))
            message = await next_message(stream)
            assert message.services_changed and message.services_index > first.services_index
            assert heartbeats.routes.snapshot() == {NODE: {"10.200.0.2", "10.200.0.3"}}
            cluster.put(msgspec.structs.replace(backend("a", "10.200.0.2"), draining_since=1.0))
            message = await next_message(stream)
            assert [list(e.backends) for e in message.services] == [["10.200.0.3"]]
            beat = dpb.HeartbeatRequest(session_id=first.session_id, services_applied=message.services_index)
            await cluster.dispatcher.Heartbeat(beat, None)
            assert heartbeats.routes.snapshot() == {NODE: {"10.200.0.3"}}  # no longer routes to "a"
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_a_task_address_keeps_its_mac_whoever_holds_it() -> None:
    """An address freed and given to a new task must reach the new task at once: the node's
    neighbour entry for it outlives the old task by up to 45 s (measured on the rig: 5 % of new
    connections timed out for 45 s after an update reused addresses, 0 with this)."""
    from warren.network.tasknet import task_mac

    assert task_mac("10.200.0.2") == "02:57:0a:c8:00:02" == task_mac("10.200.0.2")
    assert task_mac("10.200.1.2") != task_mac("10.200.0.2")
    assert int(task_mac("10.255.255.254").split(":")[0], 16) & 0b11 == 0b10  # local, unicast


def test_a_stop_the_bound_ended_is_said_in_the_rollout_under_way() -> None:
    sim = overlay_cluster("n1", "n2")
    svc = web(sim, 2, update=UpdateConfig(order=UpdateOrder.START_FIRST))
    sim.update_service(svc, spec("web", replicas=2, image="busybox:2"))
    step(sim, {})
    sim.agents_step()
    step(sim, {})  # the first new task is ready: the old one of its slot drains
    [old] = [t for t in sim.tasks(svc) if t.draining_since]
    sim.tick(sim.config.node_timeout)
    plan = step(sim, {"n1": routing(sim, svc)})  # n2 never reports
    status = sim.state.services[svc].update_status
    assert [u.id for u in plan.updated if u.desired_state == TaskState.SHUTDOWN] == [old.id]
    assert status is not None and status.state.active
    assert status.message == "web.1 stopped not confirmed out of the load balancing of node(s) n2 within 15s"
