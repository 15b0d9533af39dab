"""The manager process: wires store, Raft, gRPC server, orchestrator and metrics together.

Data directory layout (everything a manager needs to resume after kill -9):
    manager.json   this manager's identity and addresses, written before the cluster exists
    raft.secret    the cluster secret that encrypts and authenticates Raft traffic
    ca-key.pem     the cluster CA key, only from the first start until the cluster is committed
                   (the state holds it from then on, wrapped: ADR 24); then deleted
    certs/         this manager's CA, certificate and key
    admin/         the admin client credentials created at init (the CLI's context points here)
    agent-settings.json  the embedded agent's settings (or that there is none: --manager-only)
    manager-settings.json  this manager's own settings (the state store's map size)
    agent/         the embedded agent's data directory (a copy of certs/, node.json, its cache)
    db/            LMDB: Raft journal and cluster state
    raft-snapshot  the latest Raft snapshot (log compaction)
The directory and every secret in it are owner-only (0700/0600).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
from grpc_health.v1.health import aio as health_aio

from warren import clientconfig, commands, pki, tls
from warren.agent import settings as agent_settings
from warren.agent.join import node_hostname
from warren.api.v1 import managers_pb2 as mpb
from warren.ids import new_id
from warren.manager import cakey, embedded, metrics
from warren.manager import settings as manager_settings
from warren.manager.certificates import CertificateKeeper
from warren.manager.controlapi import ControlService
from warren.manager.controlcerts import INIT_ADMIN_NAME
from warren.manager.dispatcher import DispatcherService, Heartbeats
from warren.manager.events import EventHub
from warren.manager.logbroker import LogBroker
from warren.manager.membership import ManagersService, MembershipError, manager_addrs, request_membership
from warren.manager.nodeca import NodeCAService, NodeCertificatesService, build_join_server
from warren.manager.orchestrator import Orchestrator
from warren.manager.raft import ProposalError, RaftNode, RaftStartError
from warren.manager.server import NOT_SERVING, SERVING, build_server
from warren.manager.store import Store, open_environment
from warren.model import AdminCert, Availability, ClusterInfo, Node, NodeRole, NodeStatus, Resources
from warren.network import ipam
from warren.text import ascii_int, format_size, shown

log = logging.getLogger("warren.manager")

DEFAULT_DATA_DIR = Path("/var/lib/warren")
DEFAULT_LISTEN_ADDR = "0.0.0.0:4242"


@dataclass(frozen=True)
class ManagerOptions:
    data_dir: Path
    listen_addr: str = DEFAULT_LISTEN_ADDR
    advertise_addr: str | None = None  # defaults to listen_addr (127.0.0.1 if it listens on 0.0.0.0)
    metrics_addr: str | None = None  # e.g. 127.0.0.1:9323; None = no metrics endpoint
    raft_addr: str | None = None  # defaults to the advertise host, API port + 1
    join_addr: str | None = None  # the join listener joining nodes dial; default advertise host, API port + 2
    heartbeat_period: float = 5.0  # seconds; used when the cluster is created
    # The embedded agent. None = as saved at the last start (default: an agent with containerd).
    manager_only: bool | None = None  # no embedded agent; at init, the manager's node is drained
    runtime: str | None = None  # containerd | exec
    containerd_socket: str | None = None
    insecure_registries: tuple[str, ...] | None = None
    cgroup_parent: str | None = None
    wireguard: str | None = None  # the embedded agent joins the overlay mesh (ADR 17)
    wireguard_interface: str | None = None
    # The overlay's address plan (ADR 17), set when the cluster is created; None = the default.
    overlay_range: str | None = None
    vip_range: str | None = None
    # Set by `cluster join` with a manager token: the API addresses of the cluster's managers.
    # The node certificate is in data_dir/certs already; on first start, the leader adds this
    # manager to Raft (ADR 15) instead of a new cluster being created.
    join_managers: tuple[str, ...] | None = None
    in_agent: bool = False  # a promoted worker's manager, run by its agent (ADR 15)
    # The LMDB map (ADR 22): the most the Raft journal and the state may take. None = as saved
    # at the last start (default 8 GiB).
    state_map_size: int | None = None


@dataclass(frozen=True)
class ManagerIdentity:
    """What manager.json holds."""

    node_id: str
    cluster_id: str
    listen_addr: str
    advertise_addr: str
    raft_addr: str
    raft_bind_addr: str
    peers: list[str]
    join_addr: str = ""  # empty in manager.json written before the join listener existed
    join_bind_addr: str = ""
    joined: bool = False  # joined an existing cluster (no CA key here) rather than created it
    demoted: bool = False  # demoted to a worker: this directory no longer runs a manager


class StartupError(Exception):
    """A problem the operator must fix before the manager can start; str() says what."""


def _split(addr: str, flag: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    number = ascii_int(port)
    if not sep or not host or number is None or not 0 < number < 65536:
        raise StartupError(f"{flag} must be HOST:PORT (got {shown(addr)})")
    return host, number


def _plan_identity(
    options: ManagerOptions, node_id: str | None = None, cluster_id: str | None = None
) -> ManagerIdentity:
    listen_host, listen_port = _split(options.listen_addr, "--listen-addr")
    if options.advertise_addr:
        adv_host, adv_port = _split(options.advertise_addr, "--advertise-addr")
    else:
        adv_host = "127.0.0.1" if listen_host in ("0.0.0.0", "::", "[::]") else listen_host
        adv_port = listen_port
    if options.raft_addr:
        raft_host, raft_port = _split(options.raft_addr, "--raft-addr")
    else:
        raft_host, raft_port = adv_host, adv_port + 1
    join_host, join_port = _join_addr(options.join_addr, adv_host, adv_port)
    bind_host = _bind_host(listen_host)
    return ManagerIdentity(
        node_id=node_id or new_id(),
        cluster_id=cluster_id or new_id(),
        listen_addr=options.listen_addr,
        advertise_addr=f"{adv_host}:{adv_port}",
        raft_addr=f"{raft_host}:{raft_port}",
        raft_bind_addr=f"{bind_host}:{raft_port}",
        peers=[],
        join_addr=f"{join_host}:{join_port}",
        join_bind_addr=f"{bind_host}:{join_port}",
    )


def _bind_host(listen_host: str) -> str:
    return listen_host if listen_host not in ("::", "[::]") else "0.0.0.0"


def _join_addr(join_addr: str | None, adv_host: str, adv_port: int) -> tuple[str, int]:
    if join_addr:
        return _split(join_addr, "--join-addr")
    if adv_port + 2 > 65535:
        raise StartupError("the default join port (API port + 2) is out of range; set --join-addr")
    return adv_host, adv_port + 2


def _fill_join_addr(identity: ManagerIdentity) -> ManagerIdentity:
    """A manager.json from before the join listener existed: use the default join port. (Like
    every address in manager.json, the join address does not change on resume.)"""
    if identity.join_addr:
        return identity
    adv_host, adv_port = _split(identity.advertise_addr, "--advertise-addr")
    join_host, join_port = _join_addr(None, adv_host, adv_port)
    listen_host, _ = _split(identity.listen_addr, "--listen-addr")
    return replace(
        identity, join_addr=f"{join_host}:{join_port}", join_bind_addr=f"{_bind_host(listen_host)}:{join_port}"
    )


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _first_start(options: ManagerOptions) -> ManagerIdentity:
    """Create identity, CA and credentials on disk. manager.json is written last, so a crash
    before it leaves a directory that simply initialises again."""
    identity = _plan_identity(options)
    data = options.data_dir
    ca = pki.CertificateAuthority.create(identity.cluster_id)
    cert, key = ca.issue_keypair(identity.node_id, pki.ROLE_MANAGER, validity_days=365)
    tls.save_credentials(data / "certs", ca.cert_pem, cert, key)
    admin_cert, admin_key = ca.issue_keypair(new_id(), pki.ROLE_ADMIN, validity_days=365)
    tls.save_credentials(data / "admin", ca.cert_pem, admin_cert, admin_key)
    _write_private(data / "raft.secret", secrets.token_hex(32).encode())
    _write_private(data / "ca-key.pem", ca.key_pem)
    _write_private(data / "manager.json", json.dumps(asdict(identity), indent=2).encode())
    return identity


async def _first_join(options: ManagerOptions, credentials: tls.Credentials) -> ManagerIdentity:
    """A manager joining an existing cluster: ask the leader to add it to Raft, then store what
    resuming needs. manager.json is written last: a crash before it makes the next start ask
    again, which the leader answers the same way (AddManager is idempotent)."""
    cert = pki.identity_of(credentials.cert_pem)
    if cert.role != pki.ROLE_MANAGER:
        raise StartupError(f"{options.data_dir} holds a {cert.role} identity, not a manager's")
    identity = replace(_plan_identity(options, cert.node_id, cert.cluster_id), joined=True)
    request = mpb.AddManagerRequest(
        raft_addr=identity.raft_addr,
        api_addr=identity.advertise_addr,
        join_addr=identity.join_addr,
        hostname=node_hostname(os.uname().nodename),
        runs_tasks=not options.manager_only,
        nano_cpus=(os.cpu_count() or 1) * 1_000_000_000,
        memory_bytes=_memory_bytes(),
        os=sys.platform,
        arch=os.uname().machine,
    )
    try:
        answer = await request_membership(list(options.join_managers or ()), credentials, request)
    except MembershipError as exc:
        raise StartupError(str(exc)) from None
    if answer.cluster_id != cert.cluster_id:
        raise StartupError("the managers answered for another cluster than this node's certificate")
    identity = replace(identity, peers=sorted(answer.raft_peers))
    data = options.data_dir
    _write_private(data / "raft.secret", answer.raft_secret.encode())
    _write_private(data / "manager.json", json.dumps(asdict(identity), indent=2).encode())
    return identity


async def _catch_up(store: Store, node_id: str, timeout: float = 60.0) -> None:
    """A joined manager's state arrives from the leader; wait until it holds the cluster and
    this node as a manager (committed by the leader before it added us to Raft)."""

    def caught_up() -> bool:
        with store.read() as state:
            node = state.nodes.get(node_id)
            return state.cluster is not None and node is not None and node.role == NodeRole.MANAGER

    deadline = time.monotonic() + timeout
    while not caught_up():
        if time.monotonic() > deadline:
            raise StartupError(
                f"this manager did not receive the cluster state within {timeout:g}s: is it a Raft member? "
                "Check `warren cluster info` on another manager, then start it again"
            )
        await asyncio.sleep(0.05)


def _raft_peers(identity: ManagerIdentity, store: Store) -> list[str]:
    """The Raft members to start with: those this manager joined with, and every manager its
    (durable) state knows. PySyncObj replays membership changes from the log only up to the
    commit index it persisted, so starting from manager.json alone could leave a manager
    believing it is alone, and electing itself."""
    with store.read() as state:
        known = {n.raft_addr for n in state.nodes.values() if n.role == NodeRole.MANAGER and n.raft_addr}
    return sorted((known | set(identity.peers)) - {identity.raft_addr})


async def _watch_demotion(store: Store, identity: ManagerIdentity, data: Path, stop: asyncio.Event, hint: str) -> None:
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
            _write_private(
                data / "manager.json", json.dumps(asdict(replace(identity, demoted=True)), indent=2).encode()
            )
            print(f"This manager was demoted to a worker; stopping. {hint}", flush=True)
            stop.set()
            return
        await asyncio.sleep(0.5)


def _demoted_hint(data: Path, in_agent: bool) -> str:
    if in_agent:
        return "The node's agent keeps running its tasks."
    return f"Its node can run tasks as a worker with `warren worker start --data-dir {data}/agent`."


def _load_identity(data: Path) -> ManagerIdentity:
    try:
        return ManagerIdentity(**json.loads((data / "manager.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StartupError(f"{data / 'manager.json'} is unreadable ({exc}); is this a Warren data directory?") from None


def run(options: ManagerOptions) -> int:
    """Initialise (first start) or resume the manager in `options.data_dir` and serve until
    SIGTERM/SIGINT. Returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    try:
        return asyncio.run(_serve(options))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def serve(options: ManagerOptions, stop: asyncio.Event) -> int:
    """Run the manager inside an already running event loop (a promoted worker's agent, ADR 15)
    until `stop` is set; raises StartupError. Signals stay with the host process."""
    return await _serve(options, stop)


async def _serve(options: ManagerOptions, stop: asyncio.Event | None = None) -> int:
    data = options.data_dir
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.chmod(0o700)  # it holds the CA key and the Raft secret
    except OSError as exc:
        raise StartupError(f"cannot use data directory {data}: {exc.strerror}") from None
    if not 0.1 <= options.heartbeat_period <= 3600:
        raise StartupError("--heartbeat-period must be between 100ms and 1h")
    first_start = not (data / "manager.json").exists()
    agent = _agent_settings(data, options)
    own = _manager_settings(data, options)
    await asyncio.to_thread(_check_overlay_free, data / embedded.AGENT_DIR, agent)
    if first_start:
        # Find a taken port now, before anything is written, not half-way through init.
        planned = _plan_identity(options)
        for flag, addr in (
            ("--listen-addr", planned.listen_addr),
            ("--raft-addr", planned.raft_bind_addr),
            ("--join-addr", planned.join_bind_addr),
            ("--metrics-addr", options.metrics_addr),
        ):
            if addr:
                _check_bindable(flag, addr)
        _overlay_plan(options)  # a bad address plan is refused before anything is written
        if options.join_managers:
            identity = await _first_join(options, tls.load_credentials(data / "certs"))
        else:
            identity = _first_start(options)
    else:
        identity = _fill_join_addr(_load_identity(data))
        if identity.demoted:
            raise StartupError(f"this node was demoted to a worker. {_demoted_hint(data, options.in_agent)}")
    agent_settings.save(data, agent)
    manager_settings.save(data, own)
    credentials = tls.load_credentials(data / "certs")

    loop = asyncio.get_running_loop()
    hub = EventHub(loop)
    store = Store(open_environment(data / "db", own.state_map_size))
    store.watch(hub.publish)
    secret = (data / "raft.secret").read_text().strip()
    try:
        raft = RaftNode(
            identity.raft_addr, _raft_peers(identity, store), data, secret, store, bind_addr=identity.raft_bind_addr
        )
    except RaftStartError as exc:
        store.env.close()
        raise StartupError(str(exc)) from None

    try:
        if identity.joined and store.state.cluster is None:
            await _catch_up(store, identity.node_id)
        elif store.state.cluster is None:
            if not identity.peers and not await asyncio.to_thread(raft.wait_leader, 15.0):
                raise StartupError("this manager did not become Raft leader within 15 s")
            await _init_cluster(raft, identity, data, options, drained=not agent.enabled, secret=secret)
    except StartupError:
        raft.destroy_synchronous()
        store.env.close()
        raise
    _forget_ca_key_file(data, store)
    await _record_join_addr(raft, store, identity)

    def revoked(node_id: str) -> bool:
        with store.read() as state:
            return state.is_revoked(node_id)

    heartbeats = Heartbeats()
    logs = LogBroker(store, hub, is_leader=lambda: raft.is_leader)
    control = ControlService(store, raft, logs=logs, certs_dir=data / "certs", raft_secret=secret)
    dispatcher = DispatcherService(store, raft, hub, heartbeats, logs=logs)
    try:
        server, health = build_server(
            identity.listen_addr,
            credentials,
            lambda: identity.cluster_id,
            revoked,
            control,
            dispatcher,
            NodeCertificatesService(store, raft_secret=secret),
            ManagersService(store, raft, secret, identity.node_id),
            read_barrier=raft.read_barrier,
            manager_addrs=lambda: manager_addrs(store),
            certs_dir=data / "certs",
            trusted_roots=lambda: _trusted_roots(store),
            trust_bundle=lambda: _trust_bundle(store),
        )
        join_server = build_join_server(identity.join_bind_addr, NodeCAService(store, raft_secret=secret))
        if options.metrics_addr:
            metrics.serve(options.metrics_addr, metrics.StateCollector(store.read, raft.status, raft.capacity))
    except OSError as exc:
        raft.destroy_synchronous()
        store.env.close()
        raise StartupError(f"cannot listen: {exc}") from None
    except ValueError as exc:  # no root to trust in the state (the cluster exists by now: never)
        raft.destroy_synchronous()
        store.env.close()
        raise StartupError(f"cannot serve the API: {exc}") from None
    await server.start()
    await join_server.start()
    health_watch = asyncio.create_task(_track_health(raft, health))
    orchestrator = Orchestrator(store, raft, hub, heartbeats, identity.node_id, beat_for_local_node=not agent.enabled)
    orchestration = asyncio.create_task(orchestrator.run())

    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    agent_job = _start_agent(data, identity, agent, stop)
    demotion = asyncio.create_task(_watch_demotion(store, identity, data, stop, _demoted_hint(data, options.in_agent)))
    renewal = asyncio.create_task(CertificateKeeper(data, store, raft, identity.node_id, secret).run())

    if identity.joined:
        if first_start:
            print(f"Joined the cluster {identity.cluster_id} as manager {identity.node_id}.", flush=True)
    elif first_start or not clientconfig.config_path().exists():
        _announce(identity, data, store)
    print(
        f"Manager {identity.node_id} serving the API on {identity.listen_addr} "
        f"(advertised {identity.advertise_addr}), joins on {identity.join_addr}, Raft on {identity.raft_addr}"
        + (f", metrics on http://{options.metrics_addr}/metrics" if options.metrics_addr else ""),
        flush=True,
    )
    usage = raft.capacity.usage()
    print(
        f"State store {data / 'db'}: {format_size(usage.used_bytes)} used of a {format_size(usage.map_size)} map "
        f"(--state-map-size), {format_size(usage.disk_free_bytes)} free on its disk.",
        flush=True,
    )
    if agent.enabled:
        print(f"Embedded agent running this node's tasks with the {agent.runtime} runtime.", flush=True)
    else:
        print("No embedded agent (--manager-only): this node runs no tasks.", flush=True)

    await stop.wait()
    log.info("shutting down")
    if agent_job is not None:  # first, so that its session ends while the API still serves
        try:
            await asyncio.wait_for(agent_job, AGENT_STOP_TIMEOUT)
        except TimeoutError:
            log.warning("the embedded agent did not stop within %gs", AGENT_STOP_TIMEOUT)
    health_watch.cancel()
    demotion.cancel()
    renewal.cancel()
    await health.set("", NOT_SERVING)
    orchestration.cancel()
    await _hand_over_leadership(raft)
    await join_server.stop(grace=1.0)
    await server.stop(grace=2.0)
    await asyncio.to_thread(raft.destroy_synchronous)
    store.env.close()
    return 0


AGENT_STOP_TIMEOUT = 15.0


async def _hand_over_leadership(raft: RaftNode) -> None:
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


def _agent_settings(data: Path, options: ManagerOptions) -> agent_settings.AgentSettings:
    """The embedded agent's settings: flags given now, else those saved at the last start."""
    configures_agent = [
        flag
        for flag, value in (
            ("--runtime", options.runtime),
            ("--containerd-socket", options.containerd_socket),
            ("--insecure-registry", options.insecure_registries),
            ("--cgroup-parent", options.cgroup_parent),
            ("--wireguard", options.wireguard),
            ("--wireguard-interface", options.wireguard_interface),
        )
        if value is not None
    ]
    if options.manager_only and configures_agent:
        flags = ", ".join(configures_agent)
        verb = "configures" if len(configures_agent) == 1 else "configure"
        raise StartupError(f"{flags} {verb} the embedded agent, which --manager-only turns off")
    try:
        settings = agent_settings.resolve(
            data,
            enabled=None if options.manager_only is None else not options.manager_only,
            runtime=options.runtime,
            containerd_socket=options.containerd_socket,
            insecure_registries=options.insecure_registries,
            cgroup_parent=options.cgroup_parent,
            wireguard=options.wireguard,
            wireguard_interface=options.wireguard_interface,
        )
    except agent_settings.SettingsError as exc:
        raise StartupError(str(exc)) from None
    if settings.enabled:
        reason = embedded.check_available()
        if reason is not None:
            raise StartupError(f"the embedded agent cannot run ({reason}); start with --manager-only")
    return settings


def _manager_settings(data: Path, options: ManagerOptions) -> manager_settings.ManagerSettings:
    """This manager's settings: flags given now, else those saved at the last start. LMDB never
    maps less than its file holds, so a map smaller than the store's file is refused."""
    try:
        settings = manager_settings.resolve(data, state_map_size=options.state_map_size)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        held = (data / "db" / "data.mdb").stat().st_size
    except FileNotFoundError:
        held = 0
    if held > settings.state_map_size:
        raise StartupError(
            f"the state store already holds {format_size(held)}: --state-map-size must be at least that "
            f"(got {format_size(settings.state_map_size)})"
        )
    return settings


def _check_overlay_free(agent_dir: Path, settings: agent_settings.AgentSettings) -> None:
    """Another node's overlay in this network namespace refuses the manager before anything
    is written (ADR 23); its embedded agent checks again, under a lock, as it starts. Blocking
    (pyroute2 cannot open its socket inside a running event loop): run it in a thread."""
    if not settings.enabled or settings.wireguard == "off":
        return
    from warren.network.owner import OverlayInUse, check

    try:
        check(agent_dir, settings.wireguard_interface)
    except OverlayInUse as exc:
        raise StartupError(str(exc)) from None
    except Exception as exc:  # netlink or nft unusable here: the embedded agent reports it
        log.debug("cannot check this namespace's overlay: %s", exc)


def _start_agent(
    data: Path, identity: ManagerIdentity, settings: agent_settings.AgentSettings, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """The embedded agent for this manager's own node, or None with --manager-only."""
    if not settings.enabled:
        return None
    managers = [identity.advertise_addr]
    try:
        agent_dir = embedded.prepare(data, identity.node_id, managers)
    except (OSError, pki.PkiError) as exc:
        log.error("cannot prepare the embedded agent: %s", exc)
        print(f"error: cannot prepare the embedded agent ({exc}); this node will show as down", flush=True)
        return None
    if not settings.advertise_addr:  # the node's WireGuard endpoint: where the manager is reached
        settings = replace(settings, advertise_addr=identity.advertise_addr.rpartition(":")[0])
    return asyncio.create_task(embedded.run(agent_dir, managers, settings, stop), name="embedded-agent")


async def _record_join_addr(raft: RaftNode, store: Store, identity: ManagerIdentity) -> None:
    """Put this manager's join address in its Node record if it is missing there (a cluster
    created before the join listener existed); `cluster join-token` prints it from there."""
    with store.read() as state:
        node = state.nodes.get(identity.node_id)
    if node is None or node.join_addr == identity.join_addr or not raft.is_leader:
        return
    updated = msgspec.structs.replace(node, join_addr=identity.join_addr)
    try:
        await raft.propose_async(commands.RegisterNode(updated), timeout=5.0)
    except ProposalError as exc:
        log.warning("could not record the join address: %s", exc.message)


async def _track_health(raft: RaftNode, health: health_aio.HealthServicer) -> None:
    """The gRPC health service says SERVING only while a Raft leader is known and this manager
    applies entries: without a leader, or while an entry waits for room (ADR 22), this manager
    can answer reads but no write would commit."""
    serving = None
    while True:
        serves = bool(raft.status().leader) and raft.capacity.stalled is None
        if serves != serving:
            await health.set("", SERVING if serves else NOT_SERVING)
            serving = serves
        await asyncio.sleep(0.5)


def _check_bindable(flag: str, addr: str) -> None:
    host, port = _split(addr, flag)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        raise StartupError(f"cannot listen on {addr} ({flag}): {exc.strerror}") from None


# The roots the API server trusts come from the state alone, by key id for the guard and as PEM
# for the TLS handshake; certs/ca.pem is for this manager's outgoing calls (warren.manager.certificates).
def _trusted_roots(store: Store) -> frozenset[str]:
    with store.read() as state:
        cluster = state.cluster
    return cakey.trusted_key_ids(cluster) if cluster is not None else frozenset()


def _trust_bundle(store: Store) -> bytes:
    with store.read() as state:
        cluster = state.cluster
    return cakey.trust_bundle(cluster) if cluster is not None else b""


def _forget_ca_key_file(data: Path, store: Store) -> None:
    """ca-key.pem only carries the CA key from the first start to the InitCluster commit (a
    crash in between starts the commit again); once the state holds the key, it goes."""
    with store.read() as state:
        committed = state.cluster is not None
    if committed:
        (data / "ca-key.pem").unlink(missing_ok=True)


async def _init_cluster(
    raft: RaftNode, identity: ManagerIdentity, data: Path, options: ManagerOptions, drained: bool, secret: str
) -> None:
    """Commit the cluster and this manager's node. `drained`: no agent runs tasks here."""
    ca = pki.CertificateAuthority.from_pem((data / "certs" / "ca.pem").read_bytes(), (data / "ca-key.pem").read_bytes())
    admin = pki.identity_of((data / "admin" / tls.CERT_FILE).read_bytes())
    now = time.time()
    cluster = ClusterInfo(
        id=identity.cluster_id,
        created_at=now,
        ca_cert_pem=ca.cert_pem.decode(),
        ca_key_pem=cakey.wrap(ca.key_pem, secret),
        worker_token_secret=pki.new_token_secret(),
        manager_token_secret=pki.new_token_secret(),
        heartbeat_period=options.heartbeat_period,
        **_overlay_plan(options),
    )
    cpus = os.cpu_count() or 1
    manager = Node(
        id=identity.node_id,
        hostname=os.uname().nodename,
        role=NodeRole.MANAGER,
        availability=Availability.DRAIN if drained else Availability.ACTIVE,
        status=NodeStatus.READY,
        resources=Resources(nano_cpus=cpus * 1_000_000_000, memory_bytes=_memory_bytes()),
        addr=identity.advertise_addr,
        raft_addr=identity.raft_addr,
        join_addr=identity.join_addr,
        os=sys.platform,
        arch=os.uname().machine,
        created_at=now,
        updated_at=now,
    )
    admin_record = AdminCert(
        id=admin.node_id,
        name=INIT_ADMIN_NAME,
        created_at=now,
        not_after=admin.not_after.timestamp(),
        ca=ca.key_id,
    )
    result = await raft.propose_async(commands.InitCluster(cluster, manager, admin_record), timeout=10.0)
    if not result.ok and result.code != "already_exists":
        raise StartupError(f"cannot initialise the cluster: {result.message}")


def _overlay_plan(options: ManagerOptions) -> dict[str, Any]:
    """The ClusterInfo fields of the overlay's address plan; StartupError if it is not valid."""
    overlay = options.overlay_range or ipam.DEFAULT_OVERLAY
    vips = options.vip_range or ipam.DEFAULT_VIP_RANGE
    try:
        ipam.make_layout(overlay, ipam.DEFAULT_NODE_PREFIXLEN, vips)
    except ipam.IpamError as exc:
        raise StartupError(f"{exc} (--overlay-range, --vip-range)") from None
    return {"overlay_range": overlay, "node_subnet_prefixlen": ipam.DEFAULT_NODE_PREFIXLEN, "vip_range": vips}


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _announce(identity: ManagerIdentity, data: Path, store: Store) -> None:
    admin = data / "admin"
    context = clientconfig.Context(
        name="default",
        managers=[identity.advertise_addr],
        ca=admin / tls.CA_FILE,
        cert=admin / tls.CERT_FILE,
        key=admin / tls.KEY_FILE,
    )
    try:
        config = clientconfig.save_context(context)
        where = f"CLI context 'default' written to {config}"
    except (OSError, clientconfig.ConfigError) as exc:
        where = f"could not write the CLI context ({exc}); point WARREN_CONFIG at a writable path"
    with store.read() as state:
        cluster = state.cluster
    token = pki.make_join_token(pki.ca_fingerprint(cluster.ca_cert_pem), cluster.worker_token_secret) if cluster else ""
    print(
        f"Cluster {identity.cluster_id} initialised; this manager is node {identity.node_id}.\n"
        f"Admin credentials: {admin}/ ({where}).\n"
        f"To add a worker to this cluster, run on it:\n\n"
        f"    warren cluster join --token {token} {identity.join_addr}\n",
        flush=True,
    )
