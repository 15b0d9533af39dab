"""Commands stay cheap to apply (issue #10, item 3): every apply step is linear in its input, no
command bigger than MAX_COMMAND_BYTES is proposed, and a big scheduling pass is split to fit."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from warren import commands
from warren.manager.ports import ProposalError
from warren.manager.raft import RaftNode
from warren.model import Node, NodeStatus, RolloutState, Service, ServiceSpec, Task, TaskState, UpdateStatus
from warren.network import ipam
from warren.state import ClusterState, Put


def _node_with_labels(count: int) -> ClusterState:
    state = ClusterState()
    node = Node(id="n1", hostname="n1", status=NodeStatus.READY, labels={f"k{i}": "v" for i in range(count)})
    result, changes = commands.apply(state, commands.RegisterNode(node))
    assert result.ok
    state.apply(changes)
    return state


def test_removing_many_labels_is_linear() -> None:
    """`k not in tuple` for every label made this 10^10 steps on the thread applying the log
    (minutes, every manager's writes stalled); as a set lookup it takes milliseconds."""
    n = 100_000
    state = _node_with_labels(n)
    command = commands.UpdateNode("n1", 1.0, labels_rm=tuple(f"k{i}" for i in range(0, n, 2)))
    started = time.perf_counter()
    result, changes = commands.apply(state, command)
    elapsed = time.perf_counter() - started
    assert result.ok
    state.apply(changes)
    assert len(state.nodes["n1"].labels) == n // 2 and "k1" in state.nodes["n1"].labels
    assert elapsed < 5.0, f"{elapsed:.1f}s to remove {n // 2} of {n} labels"  # quadratic: many minutes


def test_oversize_message_names_the_size_and_the_limit() -> None:
    small = commands.UpdateNode("n1", 1.0, labels_add={"a": "b"})
    assert commands.oversize_message(small) is None
    big = commands.UpdateNode("n1", 1.0, labels_add={f"k{i}": "v" * 100 for i in range(20_000)})
    message = commands.oversize_message(big)
    assert message is not None and "UpdateNode" in message and str(commands.MAX_COMMAND_BYTES) in message
    assert len(commands.encode(big)) > commands.MAX_COMMAND_BYTES


def test_the_raft_adapter_refuses_an_oversize_command_before_proposing_it() -> None:
    """The check comes first in both propose paths: with no Raft node at all (`self` is a bare
    object), nothing can have been proposed when the error is raised."""
    big = commands.UpdateNode("n1", 1.0, labels_add={"k": "v" * (commands.MAX_COMMAND_BYTES + 1)})
    with pytest.raises(ProposalError) as err:
        RaftNode.propose(object(), big)  # type: ignore[arg-type]
    assert err.value.code == "resource_exhausted" and "too large" in err.value.message
    with pytest.raises(ProposalError) as err:
        asyncio.run(RaftNode.propose_async(object(), big))  # type: ignore[arg-type]
    assert err.value.code == "resource_exhausted"


def _task(i: int, env_bytes: int) -> Task:
    spec = ServiceSpec(name="web", image="busybox", env={"PAD": "x" * env_bytes})
    return Task(
        id=f"t{i}", service_id="s", service_name="web", slot=i + 1, spec=spec, spec_version=1, state=TaskState.PENDING
    )


def test_a_small_plan_is_proposed_as_it_is() -> None:
    plan = commands.ApplyPlan(created=tuple(_task(i, 10) for i in range(5)), deleted=("old",))
    assert commands.split_plan(plan) == [plan]


def test_a_plan_of_many_small_changes_is_split_by_their_count() -> None:
    """Each part is applied in one step of the thread that keeps the leader's heartbeats."""
    plan = commands.ApplyPlan(created=tuple(_task(i, 0) for i in range(commands.MAX_PLAN_ITEMS * 2 + 1)))
    assert len(commands.encode(plan)) < commands.MAX_COMMAND_BYTES
    parts = commands.split_plan(plan)
    assert [len(p.created) for p in parts] == [commands.MAX_PLAN_ITEMS, commands.MAX_PLAN_ITEMS, 1]


@settings(max_examples=30, deadline=None)
@given(
    creates=st.integers(0, 60),
    updates=st.integers(0, 60),
    deletes=st.integers(0, 60),
    env_bytes=st.integers(0, 3000),
    max_bytes=st.integers(4_000, 40_000),
    max_items=st.integers(1, 80),
)
def test_a_big_plan_is_split_into_parts_that_fit_and_keep_every_item(
    creates: int, updates: int, deletes: int, env_bytes: int, max_bytes: int, max_items: int
) -> None:
    plan = commands.ApplyPlan(
        created=tuple(_task(i, env_bytes) for i in range(creates)),
        updated=tuple(
            commands.TaskUpdate(id=f"u{i}", at=1.0, desired_state=TaskState.SHUTDOWN) for i in range(updates)
        ),
        deleted=tuple(f"d{i}" for i in range(deletes)),
        rollouts=(
            commands.RolloutChange(
                service_id="s", version=2, status=UpdateStatus(RolloutState.COMPLETED, 1.0, 1, 2, completed_at=2.0)
            ),
        ),
    )
    parts = commands.split_plan(plan, max_bytes, max_items)
    for part in parts:
        items = len(part.created) + len(part.updated) + len(part.deleted)
        assert len(commands.encode(part)) <= max_bytes or items == 1  # one item alone may not fit
        assert items + len(part.rollouts) <= max_items
    assert tuple(t for p in parts for t in p.created) == plan.created
    assert tuple(u for p in parts for u in p.updated) == plan.updated
    assert tuple(d for p in parts for d in p.deleted) == plan.deleted
    # A rollout's status change is not lost, and is applied after the task changes.
    assert tuple(r for p in parts for r in p.rollouts) == plan.rollouts
    assert parts[-1].rollouts == plan.rollouts
    # Stops come before starts: a start finds the slot its predecessor freed.
    kinds = [k for p in parts for k in ("stop" if p.updated or p.deleted else "", "start" if p.created else "") if k]
    assert kinds == sorted(kinds, key=lambda k: k == "start")


def test_a_thousand_task_pass_of_a_service_with_a_big_spec_is_split_and_applies() -> None:
    state = ClusterState()
    service = Service(id="s", spec=ServiceSpec(name="web", image="busybox", env={"PAD": "x" * 4000}, replicas=1000))
    state.apply(commands.apply(state, commands.CreateService(service))[1])
    plan = commands.ApplyPlan(created=tuple(_task(i, 4000) for i in range(1000)))
    assert len(commands.encode(plan)) > commands.MAX_COMMAND_BYTES
    parts = commands.split_plan(plan)
    assert len(parts) > 1 and all(commands.oversize_message(p) is None for p in parts)
    for part in parts:
        result, changes = commands.apply(state, part)
        assert result.ok
        state.apply(changes)
    assert len(state.service_tasks("s")) == 1000


def test_placing_many_tasks_on_a_busy_overlay_node_is_linear() -> None:
    """Each placement re-read every address of the node: 1000 starts on a node running 10,000
    tasks (a /16 node subnet) held the apply thread for 17 s."""
    net = ipaddress.IPv4Network("10.0.0.0/16")
    spec = ServiceSpec(name="web", image="busybox", replicas=11_000)
    node = Node(id="n1", hostname="n1", status=NodeStatus.READY, overlay=True, overlay_subnet=str(net))
    state = ClusterState()
    running = [
        Task(
            id=f"t{i}", service_id="s", service_name="web", slot=i + 1, spec=spec, spec_version=1, node_id="n1",
            state=TaskState.RUNNING, overlay_address=str(net.network_address + 2 + i),
        )
        for i in range(10_000)
    ]  # fmt: skip
    state.apply([Put("node", node), Put("service", Service(id="s", spec=spec)), *(Put("task", t) for t in running)])
    created = tuple(
        Task(
            id=f"n{i}", service_id="s", service_name="web", slot=10_001 + i, spec=spec, spec_version=1, node_id="n1",
            state=TaskState.ASSIGNED,
        )
        for i in range(1000)
    )  # fmt: skip
    started = time.perf_counter()
    result, changes = commands.apply(state, commands.ApplyPlan(created=created))
    elapsed = time.perf_counter() - started
    assert result.ok and len(changes) == 1000
    addresses = {c.obj.overlay_address for c in changes}  # type: ignore[union-attr]
    assert addresses == {str(net.network_address + 2 + i) for i in range(10_000, 11_000)}
    assert elapsed < 5.0, f"{elapsed:.1f}s to place 1000 tasks"


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
        st.lists(st.text("0123456789", min_size=0, max_size=4), min_size=1, max_size=5).map(".".join),
        st.text("0123456789.+- x\u00b2\u0663", max_size=16),
    )
)
@example(text="10.224.0.\u0663")  # a digit, but not an ASCII one
@example(text="10.224.01.3")  # a leading zero
@example(text="10.224.256.3")
def test_address_int_reads_what_ipaddress_reads_and_refuses_what_it_refuses(text: str) -> None:
    """The plan's fast parse of task addresses (a third of IPv4Address's time) must agree with
    ipaddress on every string: the same integer, or a ValueError for the same strings."""
    try:
        expected: int | None = int(ipaddress.IPv4Address(text))
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            ipam.address_int(text)
    else:
        assert ipam.address_int(text) == expected
