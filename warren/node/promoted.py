"""The manager a promoted worker runs in its agent's process (ADR 15): the agent fetches the
manager certificate, and calls this to run the manager. The manager (PySyncObj, LMDB,
cryptography) is imported only then, so that an ordinary agent stays small."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from warren.agent import settings as agent_settings

log = logging.getLogger("warren.agent.promotion")

DEMOTED_HINT = "The node's agent keeps running its tasks."


async def run_promoted_manager(manager_dir: Path, join_managers: list[str] | None, stop: asyncio.Event) -> None:
    """Run the manager in `manager_dir` (<agent data>/manager) until `stop`: without an embedded
    agent, since this node's agent already runs its tasks."""
    from warren.manager import daemon

    settings = agent_settings.load(manager_dir.parent) or agent_settings.AgentSettings()
    options = daemon.ManagerOptions(
        data_dir=manager_dir,
        listen_addr=settings.manager_listen_addr,
        advertise_addr=settings.manager_advertise_addr or None,
        runs_tasks=False,  # no agent beside this manager: the agent hosting it runs the node's tasks
        demoted_hint=DEMOTED_HINT,
        join_managers=tuple(join_managers) if join_managers else None,
        insecure_registries=tuple(settings.insecure_registries),
        registry_cas=tuple(settings.registry_cas),
    )
    try:
        await daemon.serve(options, stop)
    except daemon.StartupError as exc:
        log.error("the promoted manager cannot run: %s", exc)
