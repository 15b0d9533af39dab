"""Paged lists (ADR 51): ListTasks, ListNodes and ListServices answer in pages bounded by count and
by bytes, every item exactly once across the pages, and a bad page token is INVALID_ARGUMENT.
The control API runs on the in-memory ports; tests/integration/test_cli_paging.py lists a
service whose tasks do not fit one message through the CLI of a real manager."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import grpc
import pytest

from warren.api.pages import all_pages
from warren.api.v1 import control_pb2 as cpb
from warren.manager import paging
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.server import ApiError
from warren.model import Node, NodeStatus, Resources, Service, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Put

KIB = 1024


def _control(tasks: int = 0, nodes: int = 0, services: int = 0) -> ControlService:
    """A control API over a state holding `tasks` tasks of service "web", `nodes` nodes and
    `services` more services."""
    state = ClusterState()
    spec = ServiceSpec(name="web", image="x", replicas=tasks)
    changes: list[Any] = [Put("service", Service(id="svc-web", spec=spec))]
    for i in range(services):
        changes.append(Put("service", Service(id=f"svc-{i}", spec=ServiceSpec(name=f"s{i:05d}", image="x"))))
    for i in range(nodes):
        changes.append(
            Put("node", Node(id=f"n{i}", hostname=f"host-{i % 7}", status=NodeStatus.READY, resources=Resources()))
        )
    for i in range(tasks):
        task = Task(
            id=f"t{i:06d}",
            service_id="svc-web",
            service_name="web",
            slot=i // 2 + 1,  # two tasks per slot: the order's ties are broken by id
            spec=spec,
            spec_version=1,
            node_id=f"n{i % 3}" if i % 5 else "",
            state=TaskState.RUNNING,
            created_at=float(i % 4),
        )
        changes.append(Put("task", task))
    state.apply(changes)
    store = InMemoryState(state)
    return ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")


def _call(method: Any, request: Any) -> Any:
    return asyncio.run(method(request, None))


def _pages(method: Any, request: Any, field: str) -> list[list[Any]]:
    pages = []
    while True:
        reply = _call(method, request)
        pages.append(list(getattr(reply, field)))
        if not reply.next_page_token:
            return pages
        request.page_token = reply.next_page_token


def test_tasks_come_in_pages_of_the_asked_size_each_once_in_the_unpaged_order() -> None:
    control = _control(tasks=95)
    pages = _pages(control.ListTasks, cpb.ListTasksRequest(service="web", page_size=10), "tasks")
    assert [len(p) for p in pages] == [10] * 9 + [5]
    ids = [t.id for p in pages for t in p]
    assert sorted(ids) == [f"t{i:06d}" for i in range(95)]  # each exactly once
    listed = [t for p in pages for t in p]
    keys = [(t.service_name, t.slot, t.node_id, -t.created_at, t.id) for t in listed]
    assert keys == sorted(keys)
    # all_pages, which the CLI uses, gives the same list.
    assert [
        t.id for t in all_pages(lambda r: _call(control.ListTasks, r), cpb.ListTasksRequest(page_size=7), "tasks")
    ] == ids


def test_the_default_page_is_bounded_and_no_page_passes_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    control = _control(tasks=paging.DEFAULT_PAGE_SIZE + 1)
    first = _call(control.ListTasks, cpb.ListTasksRequest())
    assert len(first.tasks) == paging.DEFAULT_PAGE_SIZE and first.next_page_token
    assert paging.PAGE_BYTES < 4 << 20  # under gRPC's default receive limit, whatever the client
    # With the byte bound lowered, pages stop at it whatever size was asked for.
    monkeypatch.setattr(paging, "PAGE_BYTES", 4 * KIB)
    pages = _pages(control.ListTasks, cpb.ListTasksRequest(page_size=paging.MAX_PAGE_SIZE + 5), "tasks")
    assert len(pages) > 10 and sum(len(p) for p in pages) == paging.DEFAULT_PAGE_SIZE + 1
    for page in pages:
        assert sum(t.ByteSize() for t in page) <= 4 * KIB


def test_a_task_added_between_pages_does_not_shift_the_others() -> None:
    control = _control(tasks=20)
    first = _call(control.ListTasks, cpb.ListTasksRequest(page_size=10))
    with control._store.read() as state:  # a task sorting before the first page's end
        spec = state.services["svc-web"].spec
    control._store.put(
        Put("task", Task(id="t000000a", service_id="svc-web", service_name="web", slot=1, spec=spec, spec_version=1))
    )
    rest = _pages(control.ListTasks, cpb.ListTasksRequest(page_size=10, page_token=first.next_page_token), "tasks")
    ids = [t.id for t in first.tasks] + [t.id for p in rest for t in p]
    assert len(ids) == len(set(ids)) and set(ids) >= {f"t{i:06d}" for i in range(20)}


def test_nodes_and_services_are_paged_too() -> None:
    control = _control(nodes=25, services=30)
    nodes = _pages(control.ListNodes, cpb.ListNodesRequest(page_size=10), "nodes")
    assert [len(p) for p in nodes] == [10, 10, 5]
    assert sorted(n.id for p in nodes for n in p) == sorted(f"n{i}" for i in range(25))
    services = _pages(control.ListServices, cpb.ListServicesRequest(page_size=8), "services")
    assert [len(p) for p in services] == [8, 8, 8, 7]
    names = [s.spec.name for p in services for s in p]
    assert names == sorted(names) and len(set(names)) == 31


def _token(kind: str, key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, key]).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"{not json").decode(),
        _token("nodes", ["host-1", "n1"]),  # another list's token
        _token("tasks", ["web", 1]),  # too short
        _token("tasks", ["web", "1", "", 0.0, "t1"]),  # a slot that is not a number
        "\u00e9t\u00e9",
    ],
)
def test_a_bad_page_token_is_invalid_argument(token: str) -> None:
    control = _control(tasks=3, nodes=2)
    with pytest.raises(ApiError) as err:
        _call(control.ListTasks, cpb.ListTasksRequest(page_token=token))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid page token" in err.value.message


def test_a_negative_page_size_is_invalid_argument() -> None:
    control = _control(nodes=2)
    with pytest.raises(ApiError) as err:
        _call(control.ListNodes, cpb.ListNodesRequest(page_size=-1))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_list_services_converts_each_spec_once_and_follows_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """ListServices reuses each service's converted spec until the service changes (ADR 51)."""
    from warren.api import specconvert

    control = _control(services=30)
    converted: list[str] = []
    real = specconvert.spec_to_pb

    def counting(spec: ServiceSpec) -> Any:
        converted.append(spec.name)
        return real(spec)

    monkeypatch.setattr(specconvert, "spec_to_pb", counting)
    first = _call(control.ListServices, cpb.ListServicesRequest())
    assert len(converted) == 31
    again = _call(control.ListServices, cpb.ListServicesRequest())
    assert len(converted) == 31 and again == first  # nothing converted twice, the same answer

    with control._store.read() as state:
        service = state.services["svc-3"]
    scaled = Service(id=service.id, spec=ServiceSpec(name=service.spec.name, image="y", replicas=4), version=2)
    control._store.put(Put("service", scaled))
    updated = _call(control.ListServices, cpb.ListServicesRequest())
    assert converted[31:] == ["s00003"]
    listed = next(s for s in updated.services if s.id == "svc-3")
    assert (listed.spec.image, listed.spec.replicas, listed.version) == ("y", 4, 2)
    assert listed.spec == real(scaled.spec)
