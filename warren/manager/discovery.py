"""Prometheus HTTP service discovery (ADR 60): every node's agent /metrics and every manager's
own, as http_sd target groups, served by each manager next to its /metrics at `SD_PATH`. With
it, Prometheus needs one line: `http_sd_configs: [{url: http://MANAGER:PORT/v1/sd/prometheus}]`.

The labels are prefixed `warren_`: a plain `node` target label would clash with the per-task
series' own `node` label (Prometheus would rename the series' one to `exported_node`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import msgspec

from warren import commands
from warren.manager.ports import ProposalError, Proposer, StateReader
from warren.model import Node

log = logging.getLogger(__name__)

SD_PATH = "/v1/sd/prometheus"
RECORD_RETRY = 5.0  # seconds between attempts to record this manager's address
# A node record changed less than this long ago may be changing now (its agent's session
# registering): a whole-node RegisterNode from an older copy would undo that, so wait.
QUIET = 3.0


def target_groups(nodes: Iterable[Node]) -> list[dict[str, object]]:
    """One group per agent that serves metrics and one per manager that does, sorted by node."""
    groups: list[dict[str, object]] = []
    for node in sorted(nodes, key=lambda n: n.id):
        labels = {
            "warren_node_id": node.id,
            "warren_hostname": node.hostname,
            "warren_role": node.role.value,
            "warren_availability": node.availability.value,
        }
        if node.metrics_addr:
            groups.append({"targets": [node.metrics_addr], "labels": {**labels, "warren_component": "agent"}})
        if node.manager_metrics_addr:
            groups.append({"targets": [node.manager_metrics_addr], "labels": {**labels, "warren_component": "manager"}})
    return groups


def groups_in(store: StateReader) -> list[dict[str, object]]:
    """The target groups of the cluster as this manager's state has it (read from the HTTP thread)."""
    with store.read() as state:
        nodes = list(state.nodes.values())
    return target_groups(nodes)


async def record_manager_metrics_addr(
    store: StateReader, raft: Proposer, node_id: str, addr: str, clock: Callable[[], float] = time.time
) -> None:
    """Put this manager's /metrics address in its Node record, once; retried while the proposal
    fails (no leader yet). A follower's proposal is forwarded to the leader.

    A RegisterNode of the whole record, not a command of its own: a manager of the previous
    version decodes it (the new field ignored) during a rolling upgrade, where an unknown command
    would stop it (raft.py). It is proposed only once the record has been quiet for QUIET
    seconds, so that it does not undo a registration made meanwhile."""
    while True:
        with store.read() as state:
            node = state.nodes.get(node_id)
        if node is not None and node.manager_metrics_addr == addr:
            return
        if node is not None and clock() - node.updated_at >= QUIET:
            try:
                result = await raft.propose_async(
                    commands.RegisterNode(msgspec.structs.replace(node, manager_metrics_addr=addr)), timeout=5.0
                )
                if result.ok:
                    continue  # check that it is there
                log.warning("recording the metrics address was refused: %s", result.message)
            except ProposalError as exc:
                log.debug("recording the metrics address failed, retrying: %s", exc.message)
        await asyncio.sleep(RECORD_RETRY if node is None or clock() - node.updated_at >= QUIET else QUIET)
