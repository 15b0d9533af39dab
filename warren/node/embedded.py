"""The worker agent a manager's node runs beside the manager (`cluster init` without
--manager-only), as `docker swarm init` does, so that a one-machine cluster runs services.

It is an ordinary agent in the same process and event loop, with its own data directory
(<manager data>/agent) and the manager's own identity: the manager's certificate (role manager,
which the Dispatcher accepts) is copied there, never linked, because the agent renews its copy
and must not replace the certificate the manager serves with. Being a manager-role credential,
its key is sealed by the KEK under autolock like the manager's own (ADR 44): the agent reads and
writes it through the manager (`NodeCredentials`), and so runs only while the manager holds the
KEK, that is once a locked manager is unlocked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from warren import pki, tls
from warren.agent import settings as agent_settings
from warren.agent.join import CERTS_DIR, stored_identity, write_node_file
from warren.manager.daemon import Alongside, NodeCredentials, StartupError
from warren.manager.secretkeys import SecretKeyError
from warren.manager.startup import ManagerIdentity
from warren.network.keys import ensure_node_keys

log = logging.getLogger("warren.node.embedded")

AGENT_DIR = "agent"
PLAIN = NodeCredentials(tls.PLAIN_FILES, tls.PLAIN_FILES)  # no KEK: a manager that was never locked


def prepare(data_dir: Path, node_id: str, managers: list[str], files: NodeCredentials = PLAIN) -> Path:
    """Create <data_dir>/agent with the manager's identity; returns it. Certificates are
    (re)copied when missing, for another node, or older than the manager's own. `files` opens
    the keys the KEK seals under autolock, and writes the copy sealed while the manager's is."""
    agent_dir = data_dir / AGENT_DIR
    agent_dir.mkdir(mode=0o700, exist_ok=True)
    try:
        current = stored_identity(agent_dir, files.agent)
    except pki.PkiError as exc:
        log.warning("replacing unusable embedded agent credentials: %s", exc)
        current = None
    certs = data_dir / "certs"
    manager_expiry = pki.identity_of((certs / tls.CERT_FILE).read_bytes()).not_after
    if current is None or current.node_id != node_id or current.not_after < manager_expiry:
        ours = files.manager.load(certs)
        files.agent.save(agent_dir / CERTS_DIR, ours.ca_pem, ours.cert_pem, ours.key_pem)
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


@dataclass(frozen=True)
class EmbeddedAgentFlags:
    """The flags of `cluster init` / `cluster join` that configure the embedded agent; None =
    as saved at the last start (default: an agent with containerd)."""

    manager_only: bool | None = None  # no embedded agent; at init, the manager's node is drained
    runtime: str | None = None  # containerd | exec
    containerd_socket: str | None = None
    insecure_registries: tuple[str, ...] | None = None
    registry_cas: tuple[str, ...] | None = None  # HOST=FILE (ADR 43)
    cgroup_parent: str | None = None
    metrics_addr: str | None = None  # the agent's /metrics (per-task metrics, ADR 60)
    wireguard: str | None = None  # the embedded agent joins the overlay mesh (ADR 17)
    wireguard_interface: str | None = None
    log_max_size: int | None = None  # task log rotation (ADR 62)
    log_max_files: int | None = None


def resolve_settings(data_dir: Path, flags: EmbeddedAgentFlags) -> agent_settings.AgentSettings:
    """The embedded agent's settings: flags given now, else those saved at the last start."""
    configures_agent = [
        flag
        for flag, value in (
            ("--runtime", flags.runtime),
            ("--containerd-socket", flags.containerd_socket),
            ("--insecure-registry", flags.insecure_registries),
            ("--registry-ca", flags.registry_cas),
            ("--cgroup-parent", flags.cgroup_parent),
            ("--agent-metrics-addr", flags.metrics_addr),
            ("--wireguard", flags.wireguard),
            ("--wireguard-interface", flags.wireguard_interface),
            ("--log-max-size", flags.log_max_size),
            ("--log-max-files", flags.log_max_files),
        )
        if value is not None
    ]
    if flags.manager_only and configures_agent:
        names = ", ".join(configures_agent)
        verb = "configures" if len(configures_agent) == 1 else "configure"
        raise StartupError(f"{names} {verb} the embedded agent, which --manager-only turns off")
    try:
        settings = agent_settings.resolve(
            data_dir,
            enabled=None if flags.manager_only is None else not flags.manager_only,
            runtime=flags.runtime,
            containerd_socket=flags.containerd_socket,
            insecure_registries=flags.insecure_registries,
            registry_cas=flags.registry_cas,
            cgroup_parent=flags.cgroup_parent,
            metrics_addr=flags.metrics_addr,
            wireguard=flags.wireguard,
            wireguard_interface=flags.wireguard_interface,
            log_max_size=flags.log_max_size,
            log_max_files=flags.log_max_files,
        )
    except agent_settings.SettingsError as exc:
        raise StartupError(str(exc)) from None
    if settings.enabled:
        reason = check_available()
        if reason is not None:
            raise StartupError(f"the embedded agent cannot run ({reason}); start with --manager-only")
    return settings


def check_overlay_free(data_dir: Path, settings: agent_settings.AgentSettings) -> None:
    """Another node's overlay in this network namespace refuses the manager before anything
    is written (ADR 23); the embedded agent checks again, under a lock, as it starts. Blocking
    (pyroute2 cannot open its socket inside a running event loop): run it in a thread."""
    if not settings.enabled or settings.wireguard == "off":
        return
    from warren.network.owner import OverlayInUse, check

    try:
        check(data_dir / AGENT_DIR, settings.wireguard_interface)
    except OverlayInUse as exc:
        raise StartupError(str(exc)) from None
    except Exception as exc:  # netlink or nft unusable here: the embedded agent reports it
        log.debug("cannot check this namespace's overlay: %s", exc)


def beside_manager(data_dir: Path, settings: agent_settings.AgentSettings) -> Alongside:
    """The job the manager in `data_dir` runs while it serves: save the agent's settings (the
    manager's identity exists by then), then run the embedded agent unless --manager-only."""

    async def job(identity: ManagerIdentity, stop: asyncio.Event, files: NodeCredentials) -> None:
        agent_settings.save(data_dir, settings)
        if not settings.enabled:
            print("No embedded agent (--manager-only): this node runs no tasks.", flush=True)
            return
        print(f"Embedded agent running this node's tasks with the {settings.runtime} runtime.", flush=True)
        managers = [identity.advertise_addr]
        try:
            agent_dir = prepare(data_dir, identity.node_id, managers, files)
        except (OSError, pki.PkiError, SecretKeyError) as exc:  # SecretKeyError: a sealed key
            log.error("cannot prepare the embedded agent: %s", exc)
            print(f"error: cannot prepare the embedded agent ({exc}); this node will show as down", flush=True)
            return
        own = settings
        if not own.advertise_addr:  # the node's WireGuard endpoint: where the manager is reached
            own = replace(own, advertise_addr=identity.advertise_addr.rpartition(":")[0])
        await run(agent_dir, managers, own, stop, files.agent)

    return job


async def run(
    agent_dir: Path,
    managers: list[str],
    settings: agent_settings.AgentSettings,
    stop: asyncio.Event,
    credentials: tls.CredentialFiles = tls.PLAIN_FILES,
) -> None:
    """Serve the embedded agent until `stop`. A failure is logged, not raised: the manager goes
    on managing, and its node shows as down until the agent runs again."""
    # Imported here: a manager without an embedded agent never loads the agent (check_available).
    from warren.agent.daemon import serve
    from warren.node.worker import agent_options

    agent_settings.save(agent_dir, settings)  # what the agent reads itself (the overlay's settings)
    try:
        await serve(replace(agent_options(agent_dir, managers, settings), credentials=credentials), stop)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("the embedded agent stopped")
        print(
            f"error: the embedded agent stopped ({exc}); this node will show as down. "
            "Fix the cause and restart, or restart with --manager-only.",
            flush=True,
        )
