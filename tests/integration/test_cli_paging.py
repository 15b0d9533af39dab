"""Issue #15 (S4 at test size), on a real manager: a service with more tasks than one page holds is
created, waited for, and listed completely through the CLI, which follows the page tokens of
ListTasks, ListNodes and ListServices (ADR 51), asking for the largest pages (#15); over gRPC a
page is bounded and a bad page token is INVALID_ARGUMENT."""

from __future__ import annotations

import json

import grpc
import pytest

from tests.integration.harness import Manager
from warren.api.v1 import control_pb2 as cpb
from warren.manager import paging

pytestmark = pytest.mark.integration

REPLICAS = paging.DEFAULT_PAGE_SIZE + 300  # two pages of tasks by default


def test_a_service_of_more_tasks_than_a_page_is_waited_for_and_listed_whole(shared_manager: Manager) -> None:
    manager = shared_manager
    # No --detach: the CLI's wait loop reads every page of the tasks until all are placed. The
    # manager's node runs no agent, so they stay "assigned" and the loop ends once nothing moves.
    created = manager.cli("service", "create", "many", "--image", "busybox", "--replicas", str(REPLICAS), timeout=120)
    assert created.returncode == 0, created.stderr

    ids = manager.cli("service", "ps", "many", "-q").stdout.split()
    assert len(ids) == REPLICAS == len(set(ids))
    listed = json.loads(manager.cli("service", "ps", "many", "--format", "json").stdout)
    assert sorted(int(t["slot"]) for t in listed) == list(range(1, REPLICAS + 1))
    assert all(t["state"] == "assigned" for t in listed)
    table = manager.cli("service", "ps", "many")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == REPLICAS + 1  # a header, a row each

    # `node ps` reads the node's own tasks (its index), every one of them once.
    on_node = manager.cli("node", "ps", manager.node_id, "-q")
    assert on_node.returncode == 0 and sorted(on_node.stdout.split()) == sorted(ids)

    services = manager.cli_json("service", "ls")
    assert [s["spec"]["name"] for s in services] == ["many"]  # type: ignore[index]
    assert len(manager.cli_json("node", "ls")) == 1  # type: ignore[arg-type]

    # Over gRPC: the default page, its token, and the rest of the list behind it.
    control = manager.control()
    first = control.ListTasks(cpb.ListTasksRequest(service="many"), timeout=30)
    assert len(first.tasks) == paging.DEFAULT_PAGE_SIZE and first.next_page_token
    assert first.ByteSize() <= paging.PAGE_BYTES
    seen = [t.id for t in first.tasks]
    token = first.next_page_token
    while token:
        page = control.ListTasks(cpb.ListTasksRequest(service="many", page_token=token, page_size=200), timeout=30)
        assert len(page.tasks) <= 200
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
    assert sorted(seen) == sorted(ids)
    # The CLI asks for the largest pages (#15): the whole service in one, within the bytes bound.
    whole = control.ListTasks(cpb.ListTasksRequest(service="many", page_size=paging.MAX_PAGE_SIZE), timeout=30)
    assert len(whole.tasks) == REPLICAS and not whole.next_page_token and whole.ByteSize() <= paging.PAGE_BYTES


@pytest.mark.parametrize("method", ["ListTasks", "ListNodes", "ListServices"])
def test_a_bad_page_token_is_invalid_argument_over_grpc(shared_manager: Manager, method: str) -> None:
    request = getattr(cpb, f"{method}Request")(page_token="garbage")
    with pytest.raises(grpc.RpcError) as err:
        getattr(shared_manager.control(), method)(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid page token" in (err.value.details() or "")
