"""What the stack tests run against (#14, ADR 49): one manager and an exec worker, ready; a
StackSpec deployed through the API; a stack's running tasks as `stack ps` lists them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures.exec_cluster import exec_cluster
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import Agent, Processes
from tests.waiting import wait_for
from warren.api import stackconvert
from warren.api.v1 import control_pb2 as cpb
from warren.stack.spec import StackSpec

Cluster = tuple[Manager, Agent, Processes]


@contextlib.contextmanager
def stack_cluster(root: Path) -> Iterator[Cluster]:
    """`exec_cluster` under `root`, once its worker is ready; each test module wraps it in its
    module-scoped `cluster` fixture."""
    with exec_cluster(root, "stacks") as parts:
        manager = parts[0]
        wait_for(
            lambda: any(n["status"] == "ready" for n in manager.cli_json("node", "ls") if n["role"] == "worker"),
            timeout=30,
            message="the worker to be ready",
        )
        yield parts


def deploy(
    manager: Manager, stack: StackSpec, dry_run: bool = False, prune: bool = False, creds: Path | None = None
) -> cpb.DeployStackResponse:
    request = cpb.DeployStackRequest(stack=stackconvert.stack_to_pb(stack), dry_run=dry_run, prune=prune)
    return manager.control(creds).DeployStack(request, timeout=30)


def stack_tasks(manager: Manager, name: str) -> dict[str, set[str]]:
    """service -> ids of its tasks running (desired running), through `stack ps`."""
    out: dict[str, set[str]] = {}
    for t in manager.cli_json("stack", "ps", name):  # type: ignore[union-attr]
        if t["state"] == "running" and t["desired_state"] == "running":
            out.setdefault(t["service_name"], set()).add(t["id"])
    return out
