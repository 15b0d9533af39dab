"""Where a service's host-mode ports are published (ADR 46): on the nodes of its live tasks.

`service inspect` lists each host port with those nodes, `service ps` each live task's host ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def holds_ports(task: Any) -> bool:
    """The task holds its host ports on its node: placed and not ended (the scheduler's rule)."""
    # Imported here: warren.model loads msgspec, which every command would pay for at start-up.
    from warren.model import TaskState

    try:
        state = TaskState[task.state.upper()]
    except KeyError:
        return False
    return bool(task.node_id) and state < TaskState.COMPLETE


def host_ports(ports: Iterable[Any]) -> list[Any]:
    return [p for p in ports if p.mode == "host" and p.published]


def mapping(port: Any) -> str:
    return f"{port.published}->{port.target}/{port.protocol or 'tcp'}"


def describe(port: Any, tasks: Iterable[Any], node_names: Mapping[str, str]) -> str:
    """ "host 8080->80/tcp on node-1, node-2", or "... on no node yet"."""
    nodes = sorted({node_names.get(t.node_id, t.node_id[:12]) for t in tasks if holds_ports(t)})
    return f"host {mapping(port)} on {', '.join(nodes) if nodes else 'no node yet'}"


def task_ports(task: Any, ports: list[Any]) -> str:
    """A task's host ports as published on its node, or "" when it holds none."""
    return ", ".join(mapping(p) for p in ports) if holds_ports(task) else ""
