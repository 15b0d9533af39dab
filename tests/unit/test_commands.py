"""The FSM re-checks what an API or a stale plan could get wrong."""

from __future__ import annotations

import math

import msgspec
import pytest

from warren import commands
from warren.model import (
    ClusterInfo,
    Node,
    NodeRole,
    NodeStatus,
    PortConfig,
    Resources,
    RestartPolicy,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)
from warren.state import ClusterState
from warren.validate import ValidationError, check_spec

GB = 1 << 30


def _run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _state_with_node(memory_gb: int = 4) -> ClusterState:
    state = ClusterState()
    node = Node(id="n1", hostname="n1", status=NodeStatus.READY, resources=Resources(4_000_000_000, memory_gb * GB))
    _run(state, commands.RegisterNode(node))
    return state


def _task(task_id: str, service: Service, slot: int, node_id: str = "", state: TaskState = TaskState.ASSIGNED) -> Task:
    return Task(
        id=task_id,
        service_id=service.id,
        service_name=service.spec.name,
        slot=slot,
        spec=service.spec,
        spec_version=service.version,
        node_id=node_id,
        state=state,
    )


def test_a_stale_plan_cannot_overcommit_a_node() -> None:
    state = _state_with_node(memory_gb=4)
    service = Service(
        id="s", spec=ServiceSpec(name="web", image="x", replicas=3, reservations=Resources(memory_bytes=3 * GB))
    )
    _run(state, commands.CreateService(service))
    first = commands.ApplyPlan(created=(_task("t1", service, 1, "n1"),))
    late = commands.ApplyPlan(created=(_task("t2", service, 2, "n1"),))  # planned from the same snapshot
    assert _run(state, first).ok and _run(state, late).ok
    assert state.tasks["t1"].node_id == "n1"
    assert (state.tasks["t2"].node_id, state.tasks["t2"].state) == ("", TaskState.PENDING)


def test_a_stale_plan_cannot_fill_a_slot_twice_but_a_replacement_can() -> None:
    state = _state_with_node()
    service = Service(id="s", spec=ServiceSpec(name="web", image="x", replicas=1))
    _run(state, commands.CreateService(service))
    _run(state, commands.ApplyPlan(created=(_task("t1", service, 1, "n1"),)))
    _run(state, commands.ApplyPlan(created=(_task("t2", service, 1, "n1"),)))
    assert "t2" not in state.tasks
    replace = commands.ApplyPlan(
        created=(_task("t3", service, 1, "n1"),),
        updated=(commands.TaskUpdate(id="t1", at=1.0, desired_state=TaskState.SHUTDOWN),),
    )
    _run(state, replace)
    assert "t3" in state.tasks and state.tasks["t1"].desired_state == TaskState.SHUTDOWN


def test_concurrent_creates_cannot_publish_the_same_port() -> None:
    state = ClusterState()
    spec = ServiceSpec(name="a", image="x", ports=(PortConfig(target=80, published=9090),))
    a = commands.CreateService(Service(id="a", spec=spec))
    b = commands.CreateService(Service(id="b", spec=msgspec.structs.replace(spec, name="b")))
    # Both passed the API's check against the same snapshot; the FSM decides.
    assert _run(state, a).ok
    result = _run(state, b)
    assert (result.ok, result.code) == (False, "already_exists") and "9090" in result.message
    assert "b" not in state.services


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_non_finite_or_negative_durations_are_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        check_spec(ServiceSpec(name="a", image="x", restart=RestartPolicy(delay=value)))
    with pytest.raises(ValidationError):
        check_spec(ServiceSpec(name="a", image="x", stop_grace_period=value))
    with pytest.raises(ValidationError):
        check_spec(ServiceSpec(name="a", image="x", stop_drain=value))


def test_newer_codec_versions_are_refused() -> None:
    blob = msgspec.msgpack.encode([commands.CODEC_VERSION + 1, {"type": "noop"}])
    with pytest.raises(commands.CodecError, match="newer"):
        commands.decode(blob)


def test_a_batch_round_trips_through_the_codec() -> None:
    batch = commands.Batch((commands.Noop(), commands.RotateJoinToken("worker", "s" * 26)))
    assert commands.decode(commands.encode(batch)) == batch
    results = [commands.Result(id="a", index=7), commands.error("not_found", "gone")]
    assert commands.decode_results(commands.encode_result(results)) == results


def test_promotion_is_requested_then_completed_by_the_joining_manager() -> None:
    state = _state_with_node()
    [node_id] = state.nodes
    premature = _run(state, commands.PromoteNode(node_id, "10.0.0.2:4242", "10.0.0.2:4243", "10.0.0.2:4244", 2.0))
    assert premature.code == "failed_precondition"  # not promoted by an operator: refused
    assert _run(state, commands.UpdateNode(node_id, 1.0, desired_role=NodeRole.MANAGER)).ok
    assert (state.nodes[node_id].role, state.nodes[node_id].desired_role) == (NodeRole.WORKER, NodeRole.MANAGER)
    assert _run(state, commands.PromoteNode(node_id, "10.0.0.2:4242", "10.0.0.2:4243", "10.0.0.2:4244", 2.0)).ok
    node = state.nodes[node_id]
    assert (node.role, node.desired_role, node.raft_addr) == (NodeRole.MANAGER, None, "10.0.0.2:4243")
    assert state.manager_addrs() == ["10.0.0.2:4242"]
    assert _run(state, commands.UpdateNode(node_id, 3.0, role=NodeRole.WORKER)).ok  # demoted again
    assert (state.nodes[node_id].role, state.nodes[node_id].desired_role) == (NodeRole.WORKER, None)


def _cluster(**overlay: object) -> ClusterInfo:
    return ClusterInfo(
        id="c1",
        created_at=1.0,
        ca_cert_pem="",
        ca_key_pem="",
        worker_token_secret="w",
        manager_token_secret="m",
        **overlay,  # type: ignore[arg-type]
    )


def test_nodes_get_distinct_overlay_subnets_and_a_full_range_refuses_more() -> None:
    state = ClusterState()
    cluster = _cluster(overlay_range="10.50.0.0/23", node_subnet_prefixlen=24, vip_range="10.51.0.0/24")
    assert _run(state, commands.InitCluster(cluster, Node(id="m1", hostname="m1", role=NodeRole.MANAGER))).ok
    assert _run(state, commands.RegisterNode(Node(id="w1", hostname="w1", wg_public_key="k1"))).ok
    subnets = {n.id: n.overlay_subnet for n in state.nodes.values()}
    assert subnets == {"m1": "10.50.0.0/24", "w1": "10.50.1.0/24"}
    # A node cannot choose its subnet, and re-registering keeps the one it has.
    again = Node(id="w1", hostname="w1", overlay_subnet="10.50.0.0/24", wg_public_key="k2", wg_endpoint="h:51820")
    assert _run(state, commands.RegisterNode(again)).ok
    w1 = state.nodes["w1"]
    assert (w1.overlay_subnet, w1.wg_public_key, w1.wg_endpoint) == ("10.50.1.0/24", "k2", "h:51820")
    before = dict(state.nodes)
    full = _run(state, commands.RegisterNode(Node(id="w2", hostname="w2")))
    assert (full.ok, full.code) == (False, "resource_exhausted") and "holds 2 nodes (a /24 each)" in full.message
    assert state.nodes == before  # refused: nothing changed
    assert _run(state, commands.RemoveNode("w1", 5.0)).ok  # its subnet is free again
    assert _run(state, commands.RegisterNode(Node(id="w2", hostname="w2"))).ok
    assert state.nodes["w2"].overlay_subnet == "10.50.1.0/24"


def test_a_cluster_that_recorded_no_overlay_range_keeps_the_old_default() -> None:
    """The default range became a /12 (ADR 55); a cluster whose ClusterInfo has no range (before
    ADR 17 recorded one) has its nodes in the /16 it always used, and new nodes join it there."""
    state = ClusterState()
    assert _run(state, commands.InitCluster(_cluster(), Node(id="m1", hostname="m1", role=NodeRole.MANAGER))).ok
    assert _run(state, commands.RegisterNode(Node(id="w1", hostname="w1"))).ok
    assert [n.overlay_subnet for n in state.nodes.values()] == ["10.200.0.0/24", "10.200.1.0/24"]


def test_an_overlapping_address_plan_is_refused_at_init() -> None:
    state = ClusterState()
    cluster = _cluster(overlay_range="10.50.0.0/16", vip_range="10.50.128.0/17")
    result = _run(state, commands.InitCluster(cluster, Node(id="m1", hostname="m1", role=NodeRole.MANAGER)))
    assert (result.ok, result.code) == (False, "invalid_argument") and "overlaps" in result.message
    assert state.cluster is None and not state.nodes


def _overlay_state(node_prefixlen: int = 24, vip_range: str = "10.51.0.0/29") -> ClusterState:
    state = ClusterState()
    cluster = _cluster(overlay_range="10.50.0.0/16", node_subnet_prefixlen=node_prefixlen, vip_range=vip_range)
    node = Node(id="n1", hostname="n1", status=NodeStatus.READY, resources=Resources(4_000_000_000, 4 * GB))
    assert _run(state, commands.InitCluster(cluster, node)).ok
    assert _run(state, commands.RegisterNode(msgspec.structs.replace(node, overlay=True))).ok  # its agent runs the mesh
    return state


def _service(name: str) -> Service:
    return Service(id=f"id-{name}", spec=ServiceSpec(name=name, image="x", replicas=1))


def test_services_get_distinct_vips_until_the_range_is_full() -> None:
    state = _overlay_state(vip_range="10.51.0.0/29")  # 6 usable addresses
    for i in range(6):
        assert _run(state, commands.CreateService(_service(f"s{i}"))).ok
    vips = [state.services[f"id-s{i}"].vip for i in range(6)]
    assert vips == [f"10.51.0.{i}" for i in range(1, 7)]
    full = _run(state, commands.CreateService(_service("s6")))
    assert (full.ok, full.code) == (False, "resource_exhausted") and "VIP range" in full.message
    assert "id-s6" not in state.services
    assert _run(state, commands.RemoveService("id-s2", 2.0)).ok  # its VIP is free again
    assert _run(state, commands.CreateService(_service("s6"))).ok
    assert state.services["id-s6"].vip == "10.51.0.3"


def test_placed_tasks_get_addresses_of_their_node_while_it_has_some() -> None:
    state = _overlay_state(node_prefixlen=29)  # a node holds .1 itself and 5 task addresses
    service = _service("web")
    assert _run(state, commands.CreateService(service)).ok
    tasks = [_task(f"t{i}", service, slot=i + 1, node_id="n1") for i in range(6)]
    assert _run(state, commands.ApplyPlan(created=tuple(tasks))).ok
    placed = {t.id: t.overlay_address for t in state.tasks.values() if t.overlay_address}
    assert sorted(placed.values()) == [f"10.50.0.{i}" for i in range(2, 7)]
    # The sixth (from a plan made before the subnet filled up) stays pending, saying why.
    [bare] = [t for t in state.tasks.values() if not t.overlay_address]
    assert (bare.node_id, bare.state) == ("", TaskState.PENDING) and "no free overlay address" in bare.message
    # A task that ended gives its address back to the next placement on the node.
    assert _run(state, commands.ApplyPlan(updated=(commands.TaskUpdate(id="t0", at=3.0, state=TaskState.FAILED),))).ok
    again = _task("t9", service, slot=1, node_id="n1")
    assert _run(state, commands.ApplyPlan(created=(again,))).ok
    assert state.tasks["t9"].overlay_address == placed["t0"]


def test_tasks_on_a_node_off_the_overlay_get_no_address() -> None:
    state = _overlay_state()
    node = state.nodes["n1"]
    assert _run(state, commands.RegisterNode(msgspec.structs.replace(node, overlay=False))).ok
    service = _service("web")
    assert _run(state, commands.CreateService(service)).ok
    assert _run(state, commands.ApplyPlan(created=(_task("t0", service, slot=1, node_id="n1"),))).ok
    assert state.tasks["t0"].node_id == "n1" and state.tasks["t0"].overlay_address == ""


# -- WireGuard key rotation (ADR 18) -------------------------------------------------------------


def _mesh_state() -> ClusterState:
    state = ClusterState()
    assert _run(state, commands.InitCluster(_cluster(), Node(id="m1", hostname="m1", role=NodeRole.MANAGER))).ok
    on = Node(id="w1", hostname="w1", wg_public_key="k1", overlay=True, updated_at=10.0)
    off = Node(id="w2", hostname="w2", wg_public_key="k2", overlay=False, updated_at=10.0)
    assert _run(state, commands.RegisterNode(on)).ok and _run(state, commands.RegisterNode(off)).ok
    return state


def test_a_rotation_is_asked_once_then_published_by_the_node() -> None:
    state = _mesh_state()
    assert state.nodes["w1"].wg_key_published_at == 10.0
    assert _run(state, commands.RotateNodeKeys(("w1",))).ok
    assert (state.nodes["w1"].wg_key_epoch, state.nodes["w1"].wg_key_desired_epoch) == (0, 1)
    assert _run(state, commands.RotateNodeKeys(("w1",))).ok  # under way: still one new key
    assert state.nodes["w1"].wg_key_desired_epoch == 1
    # The node cannot publish an epoch nobody asked for, nor another node's key.
    bad = _run(state, commands.PublishNodeKey("w1", "k9", 2, 20.0))
    assert (bad.ok, bad.code) == (False, "invalid_argument")
    taken = _run(state, commands.PublishNodeKey("w1", "k2", 1, 20.0))
    assert (taken.ok, taken.code) == (False, "already_exists")
    assert state.nodes["w1"].wg_public_key == "k1"
    assert _run(state, commands.PublishNodeKey("w1", "k1b", 1, 20.0)).ok
    w1 = state.nodes["w1"]
    assert (w1.wg_public_key, w1.wg_key_epoch, w1.wg_key_desired_epoch, w1.wg_key_published_at) == ("k1b", 1, 1, 20.0)
    assert _run(state, commands.PublishNodeKey("w1", "k1c", 1, 30.0)).ok  # a repeated heartbeat: no change
    assert state.nodes["w1"].wg_public_key == "k1b"


def test_a_restarted_agent_cannot_bring_back_its_previous_key() -> None:
    state = _mesh_state()
    assert _run(state, commands.RotateNodeKeys(("w1",))).ok
    assert _run(state, commands.PublishNodeKey("w1", "k1b", 1, 20.0)).ok
    stale = Node(id="w1", hostname="w1", wg_public_key="k1", wg_key_epoch=0, overlay=True, updated_at=25.0)
    assert _run(state, commands.RegisterNode(stale)).ok
    assert (state.nodes["w1"].wg_public_key, state.nodes["w1"].wg_key_epoch) == ("k1b", 1)
    current = msgspec.structs.replace(stale, wg_public_key="k1b", wg_key_epoch=1, updated_at=26.0)
    assert _run(state, commands.RegisterNode(current)).ok
    assert state.nodes["w1"].wg_key_published_at == 20.0  # the same key: not published again


def test_nodes_off_the_overlay_or_unknown_cannot_rotate() -> None:
    state = _mesh_state()
    before = dict(state.nodes)
    off = _run(state, commands.RotateNodeKeys(("w1", "w2")))
    assert (off.ok, off.code) == (False, "failed_precondition") and "not on the overlay" in off.message
    missing = _run(state, commands.RotateNodeKeys(("nope",)))
    assert (missing.ok, missing.code) == (False, "not_found")
    assert state.nodes == before  # all or nothing


def test_keys_are_due_after_the_cluster_period() -> None:
    state = _mesh_state()
    assert commands.keys_due_for_rotation(state, 1e9) == ()  # rotation is off by default
    assert _run(state, commands.UpdateClusterSettings(wg_key_rotation_period=100.0)).ok
    assert commands.keys_due_for_rotation(state, 109.0) == ()
    assert commands.keys_due_for_rotation(state, 110.0) == ("w1",)  # w2 is off the overlay
    assert _run(state, commands.RotateNodeKeys(("w1",))).ok
    assert commands.keys_due_for_rotation(state, 500.0) == ()  # under way already
    bad = _run(state, commands.UpdateClusterSettings(wg_key_rotation_period=-1.0))
    assert (bad.ok, bad.code) == (False, "invalid_argument")
    assert state.cluster is not None and state.cluster.wg_key_rotation_period == 100.0


def test_a_task_being_replaced_keeps_its_address_until_it_ends() -> None:
    state = _overlay_state()
    service = _service("web")
    assert _run(state, commands.CreateService(service)).ok
    assert _run(state, commands.ApplyPlan(created=(_task("old", service, slot=1, node_id="n1"),))).ok
    old_address = state.tasks["old"].overlay_address
    # A rolling update: the old task is asked to stop and its replacement placed, in one plan.
    stop = commands.TaskUpdate(id="old", at=2.0, desired_state=TaskState.SHUTDOWN)
    assert _run(state, commands.ApplyPlan(created=(_task("new", service, slot=1, node_id="n1"),), updated=(stop,))).ok
    assert state.tasks["new"].overlay_address not in ("", old_address)  # the old one still runs


def test_a_node_cannot_take_another_nodes_key_nor_an_epoch_nobody_asked_for() -> None:
    state = _mesh_state()
    before = dict(state.nodes)
    clone = _run(state, commands.RegisterNode(Node(id="w3", hostname="w3", wg_public_key="k1", overlay=True)))
    assert (clone.ok, clone.code) == (False, "already_exists") and "copied" in clone.message
    huge = Node(id="w1", hostname="w1", wg_public_key="k1", wg_key_epoch=2**64 - 1, overlay=True)
    assert _run(state, commands.RegisterNode(huge)).code == "invalid_argument"
    assert state.nodes == before
    ahead = Node(id="w1", hostname="w1", wg_public_key="k1z", wg_key_epoch=5, overlay=True, updated_at=11.0)
    assert _run(state, commands.RegisterNode(ahead)).ok  # registered, but its key is not taken
    assert (state.nodes["w1"].wg_public_key, state.nodes["w1"].wg_key_epoch) == ("k1", 0)
