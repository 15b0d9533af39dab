"""Host-mode published ports (ADR 46) in the pure core: a node resource for the scheduler, the
global fill and rebalancing; stop-first rollouts; conflicts; the load balancer's rules; the CLI."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.core_sim import Sim, node, pending_task, running_task, spec
from warren import rebalance, rollout, validate
from warren.cli import units
from warren.model import (
    DeployConfig,
    DeployStrategy,
    PortConfig,
    Resources,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    UpdateOrder,
    host_ports,
)
from warren.network import lb
from warren.scheduler import schedule
from warren.state import ClusterState, Put


def with_ports(s: ServiceSpec, *ports: PortConfig) -> ServiceSpec:
    return msgspec.structs.replace(s, ports=ports)


def host(published: int, target: int = 80, protocol: str = "tcp") -> PortConfig:
    return PortConfig(target=target, published=published, protocol=protocol, mode="host")


def ingress(published: int, target: int = 80, protocol: str = "tcp") -> PortConfig:
    return PortConfig(target=target, published=published, protocol=protocol)


def held_twice(tasks: list[Task]) -> list[tuple[str, tuple[int, str]]]:
    """(node, port) pairs that more than one live task holds."""
    count: Counter[tuple[str, tuple[int, str]]] = Counter()
    for t in tasks:
        if t.node_id and t.state < TaskState.COMPLETE:
            for port in host_ports(t.spec.ports):
                count[t.node_id, port] += 1
    return [key for key, n in count.items() if n > 1]


# -- the scheduler ---------------------------------------------------------------------------


def test_two_tasks_publishing_a_host_port_never_share_a_node_and_the_third_says_why() -> None:
    s = with_ports(spec("a"), host(8080))
    tasks = [pending_task(f"a{i}", "a", s, slot=i) for i in (1, 2, 3)]
    result = schedule([node("n1"), node("n2")], [], tasks)
    assert sorted(result.assignments.values()) == ["n1", "n2"]
    assert result.unplaced == {"a3": "no suitable node: host port 8080/tcp is taken on every eligible node"}


def test_another_service_holding_the_port_keeps_a_task_off_its_node() -> None:
    other = with_ports(spec("b"), host(8080))
    mine = with_ports(spec("a"), host(8080))
    busy = [running_task("b1", "b", other, "n1")]
    result = schedule([node("n1"), node("n2"), node("n3")], busy, [pending_task("a1", "a", mine)])
    assert result.assignments == {"a1": "n2"}  # n1 is emptier of service a too, but holds the port
    # A different protocol, or an ingress port, is not the same host port.
    udp = with_ports(spec("c"), host(8080, protocol="udp"), ingress(9090))
    result = schedule([node("n1")], busy, [pending_task("c1", "c", udp)])
    assert result.assignments == {"c1": "n1"}
    # Only some nodes: the reason counts them.
    s = with_ports(spec("d", mem_gb=1), host(8080))
    nodes = [node("n1"), node("n2"), node("n3", mem_gb=0.5)]
    result = schedule(nodes, busy, [pending_task(f"d{i}", "d", s, slot=i) for i in (1, 2)])
    assert result.assignments == {"d1": "n2"}
    assert result.unplaced == {
        "d2": "no suitable node: insufficient memory on 1 node, host port 8080/tcp is taken on 2 nodes"
    }


def test_a_stopping_task_holds_its_port_until_it_ends() -> None:
    s = with_ports(spec("a"), host(8080))
    old = running_task("old", "a", s, "n1", desired_state=TaskState.SHUTDOWN)
    assert schedule([node("n1")], [old], [pending_task("new", "a", s)]).assignments == {}
    ended = msgspec.structs.replace(old, state=TaskState.SHUTDOWN)
    assert schedule([node("n1")], [ended], [pending_task("new", "a", s)]).assignments == {"new": "n1"}


services = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([8080, 8081]), st.sampled_from(["tcp", "udp"]), st.booleans()),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services=services, node_count=st.integers(1, 4), placed=st.integers(0, 3))
def test_property_never_two_live_tasks_with_one_host_port_on_a_node(
    services: list[tuple[int, int, str, bool]], node_count: int, placed: int
) -> None:
    """Whatever the services (replicas, port, protocol, host or ingress) and what already runs,
    no node ends up with two live tasks holding the same host port, and every task left
    unplaced says which port is taken."""
    nodes = [node(f"n{i}") for i in range(node_count)]
    current: list[Task] = []
    pending: list[Task] = []
    for index, (replicas, port, protocol, in_host_mode) in enumerate(services):
        s = with_ports(spec(f"s{index}"), host(port, 80, protocol) if in_host_mode else ingress(port, 80, protocol))
        for slot in range(1, replicas + 1):
            task = pending_task(f"s{index}-{slot}", f"s{index}", s, slot=slot)
            pending.append(task)
    # A first pass places some of them; the second sees those as current tasks.
    first = schedule(nodes, [], pending[:placed])
    for t in pending[:placed]:
        if t.id in first.assignments:
            current.append(msgspec.structs.replace(t, node_id=first.assignments[t.id], state=TaskState.RUNNING))
    rest = [t for t in pending if t not in pending[:placed]]
    result = schedule(nodes, current, rest)
    placed_now = [
        msgspec.structs.replace(t, node_id=result.assignments[t.id]) for t in rest if t.id in result.assignments
    ]
    assert held_twice(current + placed_now) == []
    for task_id, reason in result.unplaced.items():
        task = next(t for t in rest if t.id == task_id)
        ports = host_ports(task.spec.ports)
        assert ports and any(f"host port {p}/{proto} is taken" in reason for p, proto in ports), reason


# -- the reconciler: rollouts, global services, rebalancing ---------------------------------


def test_a_start_first_update_of_a_host_port_service_runs_stop_first_and_converges() -> None:
    sim = Sim()
    sim.add_node(node("n1"))
    s = with_ports(spec("web", replicas=1), host(8080))
    assert s.update.order == UpdateOrder.START_FIRST  # the default
    service_id = sim.create_service(s)
    sim.converge()
    assert rollout.settings(sim.state.services[service_id]).order == UpdateOrder.STOP_FIRST
    sim.update_service(service_id, msgspec.structs.replace(s, image="busybox:2"))
    for _ in range(100):
        sim.reconcile()
        assert held_twice(list(sim.state.tasks.values())) == []
        sim.agents_step()
        sim.tick()
        running = sim.running(service_id)
        if len(running) == 1 and running[0].spec.image == "busybox:2" and not sim.rolling_out():
            break
    else:
        raise AssertionError(f"the update did not converge: {sim.tasks(service_id)}")


def test_a_global_service_skips_a_node_where_another_service_holds_its_port() -> None:
    sim = Sim()
    for n in ("n1", "n2"):
        sim.add_node(node(n))
    replicated = sim.create_service(with_ports(spec("a", replicas=1), host(8080)))
    sim.converge()
    (holder,) = sim.running(replicated)
    global_id = sim.create_service(with_ports(spec("g", mode=ServiceMode.GLOBAL), host(8080)))
    sim.converge()
    assert [t.node_id for t in sim.live(global_id)] == [n for n in ("n1", "n2") if n != holder.node_id]
    # Its own update on a node goes stop-first: never two of its tasks on the port.
    sim.update_service(global_id, with_ports(spec("g", mode=ServiceMode.GLOBAL, image="busybox:2"), host(8080)))
    for _ in range(100):
        sim.reconcile()
        assert held_twice(list(sim.state.tasks.values())) == []
        sim.agents_step()
        sim.tick()
        if [t.spec.image for t in sim.running(global_id)] == ["busybox:2"] and not sim.rolling_out():
            break
    else:
        raise AssertionError("the global update did not converge")


def test_a_rebalance_never_moves_a_task_to_a_node_holding_its_port() -> None:
    s = with_ports(spec("a"), host(8080))
    free = rebalance.room(node("n1"), Resources(), 0, Resources(), host_ports(s.ports), ())
    taken = rebalance.room(node("n1"), Resources(), 1, Resources(), host_ports(s.ports), {(8080, "tcp")})
    assert (free, taken) == (1, 0)
    assert rebalance.room(node("n1"), Resources(), 0, Resources()) is None  # no port: no limit


# -- validation and conflicts -----------------------------------------------------------------


def test_a_host_mode_port_needs_a_published_number() -> None:
    with pytest.raises(validate.ValidationError, match="host-mode port 80/tcp needs a published port"):
        validate.check_spec(with_ports(spec("a"), PortConfig(target=80, mode="host")))
    validate.check_spec(with_ports(spec("a"), host(8080)))


def test_canary_and_blue_green_are_refused_with_host_ports() -> None:
    s = with_ports(spec("a", replicas=3), host(8080))
    for strategy in (DeployStrategy.CANARY, DeployStrategy.BLUE_GREEN):
        deploy = DeployConfig(strategy=strategy, canary_replicas=1 if strategy == DeployStrategy.CANARY else 0)
        with pytest.raises(validate.ValidationError, match="cannot be used with host-mode ports"):
            validate.check_spec(msgspec.structs.replace(s, deploy=deploy))


def _state_with(*specs: ServiceSpec) -> ClusterState:
    state = ClusterState()
    state.apply([Put("service", Service(id=f"s-{s.name}", spec=s)) for s in specs])
    return state


def test_port_conflicts_ingress_takes_the_number_everywhere_host_ports_may_share_it() -> None:
    state = _state_with(with_ports(spec("hosted"), host(8080)), with_ports(spec("meshed"), ingress(9090)))
    validate.check_ports_free(state, with_ports(spec("b"), host(8080)))  # host beside host: the scheduler
    validate.check_ports_free(state, with_ports(spec("b"), host(8080, protocol="udp"), ingress(9091)))
    with pytest.raises(validate.ValidationError, match="already published by service hosted in host mode"):
        validate.check_ports_free(state, with_ports(spec("b"), ingress(8080)))
    with pytest.raises(validate.ValidationError, match="already published by service meshed in ingress mode"):
        validate.check_ports_free(state, with_ports(spec("b"), host(9090)))
    with pytest.raises(validate.ValidationError, match=r"already published by service meshed$"):
        validate.check_ports_free(state, with_ports(spec("b"), ingress(9090)))
    validate.check_ports_free(state, with_ports(spec("hosted"), ingress(8080)), "s-hosted")  # itself


# -- the load balancer's rules -------------------------------------------------------------


def test_a_host_port_is_forwarded_only_to_this_nodes_own_tasks() -> None:
    ep = lb.Endpoint("web", "10.201.0.2", ("10.200.0.2", "10.200.1.2"), host_ports=(("tcp", 8080, 80),))
    on_n1 = lb.ruleset([ep], bridge="warren-br0", local_subnet="10.200.0.0/24")
    assert "tcp dport 8080 ct mark set 0x5741 dnat ip to 10.200.0.2:80" in on_n1
    assert "10.200.1.2:80" not in on_n1  # never to another node's task
    on_n3 = lb.ruleset([ep], bridge="warren-br0", local_subnet="10.200.2.0/24")
    assert "dport 8080" not in on_n3  # no task here: the node does not publish the port
    assert "dport 8080" not in lb.ruleset([ep])  # subnet unknown: nothing published
    udp = lb.Endpoint("dns", "10.201.0.3", ("10.200.0.5",), ports=(("udp", 53, 5353),))
    assert "udp dport 53 ct mark set 0x5741 dnat ip to 10.200.0.5:5353" in lb.ruleset([udp])


# -- the CLI --------------------------------------------------------------------------------


def test_publish_reads_the_short_and_the_long_syntax() -> None:
    assert units.parse_publish_option("8080:80") == (8080, 80, "tcp", "ingress")
    assert units.parse_publish_option("5353:53/udp") == (5353, 53, "udp", "ingress")
    assert units.parse_publish_option("mode=host,published=8080,target=80,protocol=udp") == (8080, 80, "udp", "host")
    assert units.parse_publish_option("target=80,published=8080") == (8080, 80, "tcp", "ingress")
    assert units.parse_publish_option("mode=host,target=80") == (0, 80, "tcp", "host")  # the manager refuses it
    for bad in ("mode=bridge,target=80", "published=8080", "mode=host,target=80,target=81", "target=0", "port=80"):
        with pytest.raises(ValueError, match="invalid port"):
            units.parse_publish_option(bad)


def test_service_create_and_update_carry_the_port_mode() -> None:
    from warren.api.v1 import types_pb2 as pb
    from warren.cli import main, service_spec

    argv = ["service", "create", "web", "--image", "busybox", "-p", "mode=host,published=8080,target=80"]
    created = service_spec.build_spec(main.parse_args([*argv, "-p", "9090:90"]))
    assert [(p.published, p.target, p.protocol, p.mode) for p in created.ports] == [
        (8080, 80, "tcp", "host"),
        (9090, 90, "tcp", "ingress"),
    ]
    new = pb.ServiceSpec()
    new.CopyFrom(created)
    update = ["service", "update", "web", "--publish-add", "published=9090,target=91,mode=host"]
    service_spec.apply_update(new, main.parse_args(update))
    assert [(p.published, p.target, p.mode) for p in new.ports] == [(8080, 80, "host"), (9090, 91, "host")]


def test_a_stale_plan_cannot_put_two_host_port_tasks_on_one_node() -> None:
    """Re-checked when the plan is applied (a plan computed before another placed a task)."""
    from warren import commands

    sim = Sim()
    sim.add_node(node("n1"))
    a = sim.create_service(with_ports(spec("a", replicas=0), host(8080)))
    b = sim.create_service(with_ports(spec("b", replicas=0), host(8080)))
    first = msgspec.structs.replace(
        pending_task("x1", a, sim.state.services[a].spec), node_id="n1", state=TaskState.ASSIGNED
    )
    second = msgspec.structs.replace(
        pending_task("x2", b, sim.state.services[b].spec), node_id="n1", state=TaskState.ASSIGNED
    )
    sim.run(commands.ApplyPlan(created=(first,)))
    sim.run(commands.ApplyPlan(created=(second,)))
    assert (sim.state.tasks["x1"].node_id, sim.state.tasks["x2"].node_id) == ("n1", "")
    assert sim.state.tasks["x2"].state == TaskState.PENDING
