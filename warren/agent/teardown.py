"""`warren worker teardown`: remove what a node's agent leaves behind on purpose (its tasks
outlive it, and so does its network, ADRs 12 and 19), for a node leaving for good, even after
the agent was killed with kill -9 (ADR 23).

First the node's tasks: their containers or processes, removed through the runtime the agent
used, which takes the cgroups and mounts it made for them along. The node's tasks are those its
data directory names (the agent's cache and its task-network ledger); with the exec runtime,
every record in the node's own state directory. Then its overlay networking
(`overlay.teardown`: the task namespaces and veths of the ledger, the WireGuard interface, the
bridge and the nftables table, each only where it is this node's). Call with the data
directory's lock held (no agent runs meanwhile).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from warren import datadir
from warren.agent import settings as agent_settings
from warren.agent.cache import AgentCache
from warren.agent.overlay import teardown as remove_overlay
from warren.agent.runtime import TASK_LABEL, ContainerState
from warren.network import tasknet

DEFAULT_GRACE = 10.0  # seconds, for a task whose spec the cache no longer holds


class TeardownError(Exception):
    """Something stays; str() says what and why. Nothing after it was touched: run it again."""


def teardown_node(data_dir: Path) -> list[str]:
    """Remove the node's tasks, then its overlay networking. Returns what was done."""
    settings = agent_settings.load(data_dir) or agent_settings.AgentSettings()
    return remove_tasks(data_dir, settings) + remove_overlay(data_dir)


def remove_tasks(data_dir: Path, settings: agent_settings.AgentSettings) -> list[str]:
    """Stop (gracefully, as the agent would) and remove every container of this node's tasks."""
    from warren.agent.daemon import make_runtime
    from warren.agent.options import AgentOptions

    known, grace = _known_tasks(data_dir)
    if settings.runtime == "exec" and not datadir.AgentDir(data_dir).runtime_state("exec").is_dir():
        return []  # never ran a task: nothing to make a state directory for
    if settings.runtime != "exec" and not known:
        return []  # no task of this node: its runtime need not even be there any more
    options = AgentOptions(
        data_dir=data_dir,
        managers=[],
        runtime=settings.runtime,
        containerd_socket=settings.containerd_socket,
        cgroup_parent=settings.cgroup_parent,
    )
    try:
        runtime = make_runtime(options)
        containers = runtime.list()
    except Exception as exc:
        raise TeardownError(
            f"cannot reach the {settings.runtime} runtime to remove this node's tasks ({exc}); "
            "nothing was removed: start it and run the teardown again"
        ) from None
    removed = []
    try:
        for container in containers:
            task_id = container.labels.get(TASK_LABEL, "")
            # The exec runtime's records are this node's alone; a containerd may serve others.
            if settings.runtime != "exec" and task_id not in known:
                continue
            try:
                if container.state == ContainerState.RUNNING:
                    seconds, signal = grace.get(task_id, (DEFAULT_GRACE, "SIGTERM"))
                    runtime.stop(container.runtime_id, seconds, signal)
                runtime.remove(container.runtime_id)
            except Exception as exc:
                what = f"removing the container {container.runtime_id} of task {task_id} failed: {exc}"
                raise TeardownError(f"{what}; what follows it stays: run the teardown again") from None
            removed.append(f"removed the container {container.runtime_id} of task {task_id or '?'}")
    finally:
        with contextlib.suppress(Exception):
            runtime.close()  # type: ignore[attr-defined]
    return removed


def _known_tasks(data_dir: Path) -> tuple[set[str], dict[str, tuple[float, str]]]:
    """The task ids the data directory names, and each cached task's stop grace and signal."""
    known = set(tasknet.recorded(tasknet.ledger_dir(data_dir)))
    grace: dict[str, tuple[float, str]] = {}
    cache_file = datadir.AgentDir(data_dir).cache
    if cache_file.exists():
        cache = AgentCache(cache_file)
        try:
            tasks = cache.tasks()
            known |= set(tasks) | set(cache.local_states())
        finally:
            cache.close()
        for task_id, task in tasks.items():
            grace[task_id] = (task.spec.stop_grace_period, task.spec.stop_signal or "SIGTERM")
    return known, grace
