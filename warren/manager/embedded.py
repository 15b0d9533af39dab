"""The worker agent a manager runs for its own node (`cluster init` without --manager-only), as
`docker swarm init` does, so that a one-machine cluster runs services.

It is an ordinary agent in the same process and event loop, with its own data directory
(<manager data>/agent) and the manager's own identity: the manager's certificate (role manager,
which the Dispatcher accepts) is copied there, never linked, because the agent renews its copy
and must not replace the certificate the manager serves with.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from warren import pki, tls
from warren.agent import settings as agent_settings
from warren.agent.join import CERTS_DIR, stored_identity, write_node_file
from warren.network.keys import ensure_node_keys

log = logging.getLogger("warren.manager.agent")

AGENT_DIR = "agent"


def prepare(data_dir: Path, node_id: str, managers: list[str]) -> Path:
    """Create <data_dir>/agent with the manager's identity; returns it. Certificates are
    (re)copied when missing, for another node, or older than the manager's own."""
    agent_dir = data_dir / AGENT_DIR
    agent_dir.mkdir(mode=0o700, exist_ok=True)
    ours = tls.load_credentials(data_dir / "certs")
    try:
        current = stored_identity(agent_dir)
    except pki.PkiError as exc:
        log.warning("replacing unusable embedded agent credentials: %s", exc)
        current = None
    manager_expiry = pki.identity_of(ours.cert_pem).not_after
    if current is None or current.node_id != node_id or current.not_after < manager_expiry:
        tls.save_credentials(agent_dir / CERTS_DIR, ours.ca_pem, ours.cert_pem, ours.key_pem)
        write_node_file(agent_dir, node_id, managers)
    ensure_node_keys(agent_dir)  # the node's WireGuard keys (ADR 17)
    return agent_dir


def check_available() -> str | None:
    """Why the agent cannot be embedded (its module fails to import), or None."""
    try:
        import warren.agent.daemon  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


async def run(
    agent_dir: Path, managers: list[str], settings: agent_settings.AgentSettings, stop: asyncio.Event
) -> None:
    """Serve the embedded agent until `stop`. A failure is logged, not raised: the manager goes
    on managing, and its node shows as down until the agent runs again."""
    from warren.agent.daemon import AgentOptions, serve

    agent_settings.save(agent_dir, settings)  # what the agent reads itself (the overlay's settings)
    options = AgentOptions(
        data_dir=agent_dir,
        managers=list(managers),
        runtime=settings.runtime,
        containerd_socket=settings.containerd_socket,
        labels=dict(settings.labels),
        advertise_addr=settings.advertise_addr,
        insecure_registries=tuple(settings.insecure_registries),
        metrics_addr=settings.metrics_addr or None,
        cgroup_parent=settings.cgroup_parent,
    )
    try:
        await serve(options, stop)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("the embedded agent stopped")
        print(
            f"error: the embedded agent stopped ({exc}); this node will show as down. "
            "Fix the cause and restart, or restart with --manager-only.",
            flush=True,
        )
