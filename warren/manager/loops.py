"""The loops a serving manager runs beside its servers, and its hand-over as it stops."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, replace
from pathlib import Path

from warren import datadir
from warren.manager.ports import ProposalError
from warren.manager.raft import RaftNode
from warren.manager.server import NOT_SERVING, SERVING
from warren.manager.startup import ManagerIdentity
from warren.manager.store import Store
from warren.model import NodeRole

log = logging.getLogger("warren.manager")


async def watch_demotion(store: Store, identity: ManagerIdentity, data: Path, stop: asyncio.Event, hint: str) -> None:
    """Stop this manager once the state says it was demoted (ADR 15): it leaves Raft next.
    Only a change from manager to worker counts: a manager still catching up may not have
    applied its own promotion yet."""
    was_manager = False
    while not stop.is_set():
        with store.read() as state:
            node = state.nodes.get(identity.node_id)
        if node is not None and node.role == NodeRole.MANAGER:
            was_manager = True
        elif node is not None and was_manager:
            datadir.write_json(datadir.ManagerDir(data).manager_file, asdict(replace(identity, demoted=True)))
            print(f"This manager was demoted to a worker; stopping. {hint}", flush=True)
            stop.set()
            return
        await asyncio.sleep(0.5)


async def track_health(raft: RaftNode, health: object) -> None:
    """The gRPC health service says SERVING only while a Raft leader is known and this manager
    applies entries: without a leader, or while an entry waits for room (ADR 22), this manager
    can answer reads but no write would commit."""
    serving = None
    while True:
        serves = bool(raft.status().leader) and raft.capacity.stalled is None
        if serves != serving:
            await health.set("", SERVING if serves else NOT_SERVING)  # type: ignore[attr-defined]
            serving = serves
        await asyncio.sleep(0.5)


async def hand_over_leadership(raft: RaftNode) -> None:
    """A leader that stops on purpose hands leadership to a caught-up follower first, so that
    writes pause for one Raft round rather than for the followers' election timeout."""
    if not raft.is_leader or not raft.status().peers:
        return
    try:
        new_leader = await raft.transfer_leadership(timeout=2.0)
    except (ProposalError, TimeoutError) as exc:
        log.info("stopping without handing over leadership: %s", getattr(exc, "message", exc))
        return
    log.info("handed leadership over to %s", new_leader)
