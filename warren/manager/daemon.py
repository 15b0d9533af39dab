"""The manager process: wires store, Raft, gRPC server, orchestrator and metrics together.

It knows nothing about agents: the node (warren.node) decides whether an agent runs beside it
and hands it, at most, a job to run while it serves (`alongside`).

Data directory layout (everything a manager needs to resume after kill -9):
    manager.json   this manager's identity and addresses, written before the cluster exists
    raft.secret    the cluster secret that encrypts and authenticates Raft traffic (sealed by
                   the KEK while autolock is on, as is certs/key.pem: ADR 44)
    control.sock   only while this manager waits for its unlock key (ADR 44, `lockedstart`)
    ca-key.pem     the cluster CA key, only from the first start until the cluster is committed
                   (the state holds it from then on, wrapped: ADR 24); then deleted
    certs/         this manager's CA, certificate and key
    admin/         the admin client credentials created at init (the CLI's context points here)
    manager-settings.json  this manager's own settings (the state store's map size)
    db/            LMDB: Raft journal and cluster state
    raft-snapshot  the latest Raft snapshot (log compaction)
The node keeps its embedded agent's files here too (warren.node.embedded): agent-settings.json
and agent/. The directory and every secret in it are owner-only (0700/0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from warren import clientconfig, gcpolicy, gilpolicy, logsetup, proctitle, tls, validate
from warren.aio import wait_within
from warren.host import reachable_addr
from warren.manager import autolock, cakey, discovery, lockedfiles, lockedstart, metrics
from warren.manager import settings as manager_settings
from warren.manager.bootstrap import announce, catch_up, forget_ca_key_file, init_cluster, raft_peers, record_join_addr
from warren.manager.certificates import CertificateKeeper, embedded_agent_files, key_opener, load_own, own_files
from warren.manager.controlapi import ControlService
from warren.manager.dispatcher import DispatcherService
from warren.manager.events import EventHub
from warren.manager.eventstream import EventFeed
from warren.manager.execbroker import ExecBroker
from warren.manager.hearing import Heartbeats
from warren.manager.imagepin import RegistryDigests
from warren.manager.lockkeeper import LockKeeper
from warren.manager.logbroker import LogBroker
from warren.manager.loops import hand_over_leadership, track_health, watch_demotion
from warren.manager.membership import ManagersService
from warren.manager.nodeca import NodeCAService, NodeCertificatesService, build_join_server
from warren.manager.orchestrator import Orchestrator
from warren.manager.raft import RaftNode, RaftStartError
from warren.manager.registrylogins import LoginVault, StateCredentials
from warren.manager.secretkeys import KeyRing
from warren.manager.server import NOT_SERVING, build_server
from warren.manager.startup import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN_ADDR,
    ManagerIdentity,
    ManagerOptions,
    StartupError,
    check_bindable,
    create_identity,
    fill_join_addr,
    join_identity,
    load_identity,
    overlay_plan,
    plan_identity,
)
from warren.manager.store import Store, open_environment
from warren.manager.taskfiles import TaskFileSource
from warren.model import ClusterInfo
from warren.runtime.containerd.reference import InvalidReference, parse_registry_ca
from warren.state import ClusterState
from warren.text import format_size

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_LISTEN_ADDR",
    "Alongside",
    "ManagerOptions",
    "NodeCredentials",
    "StartupError",
    "run",
    "serve",
]

log = logging.getLogger("warren.manager")


@dataclass(frozen=True)
class NodeCredentials:
    """How a job beside the manager reads the manager's certs/ and reads and writes its
    embedded agent's: their keys are sealed by the KEK while the cluster is locked (ADR 44)."""

    manager: tls.CredentialFiles
    agent: tls.CredentialFiles


# A job the node runs while this manager serves (its embedded agent), given the manager's
# identity, the event that stops both and the node's credential files; it is stopped first,
# while the API still serves.
Alongside = Callable[[ManagerIdentity, asyncio.Event, NodeCredentials], Coroutine[Any, Any, None]]
ALONGSIDE_STOP_TIMEOUT = 15.0


def run(options: ManagerOptions, alongside: Alongside | None = None) -> int:
    """Initialise (first start) or resume the manager in `options.data_dir` and serve until
    SIGTERM/SIGINT. Returns the process exit code."""
    if refused := logsetup.configure_or_refuse():
        return refused
    gilpolicy.settle()  # ADR 84
    try:
        return asyncio.run(_serve(options, None, alongside))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def serve(options: ManagerOptions, stop: asyncio.Event, alongside: Alongside | None = None) -> int:
    """Run the manager inside an already running event loop (a promoted worker's agent, ADR 15)
    until `stop` is set; raises StartupError. Signals stay with the host process."""
    return await _serve(options, stop, alongside)


def _locked(cluster: ClusterInfo | None, keyring: KeyRing) -> str:
    """Why this manager serves only `cluster info` and `cluster unlock`: the cluster is locked
    and it does not hold the KEK (it started after the lock: ADR 44). "" when it serves."""
    if cluster is None or not autolock.is_locked(cluster) or keyring.holds_kek(cluster):
        return ""
    return autolock.MANAGER_LOCKED


async def _identity(options: ManagerOptions) -> tuple[ManagerIdentity, bool]:
    """This manager's identity, created (first start or join) or loaded; and whether it was created."""
    data = options.data_dir
    if (data / "manager.json").exists():
        identity = fill_join_addr(load_identity(data))
        if identity.demoted:
            raise StartupError(f"this node was demoted to a worker. {options.demoted_hint}".rstrip())
        return identity, False
    # Find a taken port now, before anything is written, not half-way through init.
    planned = plan_identity(options)
    for flag, addr in (
        ("--listen-addr", planned.listen_addr),
        ("--raft-addr", planned.raft_bind_addr),
        ("--join-addr", planned.join_bind_addr),
        ("--metrics-addr", options.metrics_addr),
    ):
        if addr:
            check_bindable(flag, addr)
    overlay_plan(options)  # a bad address plan is refused before anything is written
    if options.join_managers:
        return await join_identity(options, tls.load_credentials(data / "certs")), True
    return create_identity(options), True


async def _serve(options: ManagerOptions, stop: asyncio.Event | None, alongside: Alongside | None) -> int:
    data = options.data_dir
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.chmod(0o700)  # it holds the CA key and the Raft secret
    except OSError as exc:
        raise StartupError(f"cannot use data directory {data}: {exc.strerror}") from None
    try:
        validate.check_heartbeat_period(options.heartbeat_period)
    except validate.ValidationError:
        raise StartupError("--heartbeat-period must be between 100ms and 1h") from None
    own = _manager_settings(data, options)
    identity, first_start = await _identity(options)
    manager_settings.save(data, own)
    # Everything opened from here on is released in reverse order, whether start-up fails at
    # any step or the manager stops.
    async with contextlib.AsyncExitStack() as opened:
        # The journal syncs its appends and votes itself; the state's commits, replayable from
        # it, need not sync their meta page (ADR 58).
        env = open_environment(data / "db", own.state_map_size, metasync=False)
        opened.callback(env.close)
        store = Store(env)
        keys = await _open_keys(options, store, stop)
        if keys is None:
            print("Stopped while locked.", flush=True)
            return 0
        await _open_and_serve(opened, options, identity, first_start, store, keys, stop, alongside)
    return 0


async def _open_keys(options: ManagerOptions, store: Store, stop: asyncio.Event | None) -> KeyRing | None:
    """This manager's key ring, holding the KEK when it can (ADR 44). Sealed files need the
    unlock key first: from --unlock-key-file, or over the unlock socket (None: stopped first)."""
    data = options.data_dir
    with store.read() as state:
        cluster = state.cluster
    if not lockedfiles.is_sealed(data):
        keyring = KeyRing((data / "raft.secret").read_text().strip())
        if cluster is not None and cluster.kek_wrapped:
            keyring.holds_kek(cluster)  # eagerly: once autolock is on, the Raft secret opens nothing
        if options.unlock_key and cluster is not None and autolock.is_locked(cluster):
            try:  # locked, but the files are not sealed yet: the key gives the KEK all the same
                keyring.hold_kek(autolock.unlocked_kek(cluster, options.unlock_key))
            except autolock.UnlockKeyError as exc:
                raise StartupError(f"--unlock-key-file: {exc} ({autolock.ROTATION_HINT})") from None
        return keyring
    if options.unlock_key:
        try:
            keys = lockedstart.open_files(data, cluster, options.unlock_key)
        except autolock.UnlockKeyError as exc:
            raise StartupError(f"--unlock-key-file: {exc}") from None
    else:
        with _stopped_by_signals(stop) as stopping:
            try:
                found = await lockedstart.wait_for_unlock(data, cluster, stopping)
            except OSError as exc:
                raise StartupError(f"this manager is locked and cannot serve its unlock socket: {exc}") from None
        if found is None:
            return None
        keys = found
    keyring = KeyRing(keys.raft_secret)
    keyring.hold_kek(keys.kek)
    return keyring


@contextlib.contextmanager
def _stopped_by_signals(stop: asyncio.Event | None) -> Iterator[asyncio.Event]:
    """`stop`, or in the manager's own process an event SIGTERM/SIGINT set while this lasts."""
    if stop is not None:
        yield stop
        return
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    try:
        yield event
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _open_and_serve(
    opened: contextlib.AsyncExitStack,
    options: ManagerOptions,
    identity: ManagerIdentity,
    first_start: bool,
    store: Store,
    keyring: KeyRing,
    stop: asyncio.Event | None,
    alongside: Alongside | None,
) -> None:
    data = options.data_dir
    secret = keyring.raft_secret
    keeper = LockKeeper(data, store, keyring)
    store.watch(keeper.observe)  # before Raft applies anything: the first key pair opens the KEK
    with store.read() as state:
        credentials = load_own(data / "certs", keyring, state.cluster)
    hub = EventHub(asyncio.get_running_loop())
    store.watch(hub.publish)
    try:
        peers = raft_peers(identity, store)
        creates_alone = not identity.joined and not peers and store.state.cluster is None
        raft = RaftNode(
            identity.raft_addr,
            peers,
            data,
            secret,
            store,
            bind_addr=identity.raft_bind_addr,
            elect_now=creates_alone,
        )
    except RaftStartError as exc:
        raise StartupError(str(exc)) from None
    opened.push_async_callback(asyncio.to_thread, raft.destroy_synchronous)
    logsetup.set_default(node=identity.node_id)
    if stop is None:  # the manager's own process (a promoted agent's keeps the agent's name)
        _name_process(raft, identity.node_id)

    if identity.joined and store.state.cluster is None:
        await catch_up(store, identity.node_id)
    elif store.state.cluster is None:
        if not identity.peers and not await asyncio.to_thread(raft.wait_leader, 15.0):
            raise StartupError("this manager did not become Raft leader within 15 s")
        await init_cluster(raft, identity, data, options, drained=not options.runs_tasks, secret=secret)
    forget_ca_key_file(data, store)
    await record_join_addr(raft, store, identity)

    # What every call and handshake checks, worked out once per applied entry (ADR 88).
    revoked_ids = store.derived(lambda state: frozenset(state.revoked))
    checked = store.derived(_call_checks)

    def revoked(node_id: str) -> bool:
        return node_id in revoked_ids()

    heartbeats = Heartbeats()
    vault = LoginVault(keyring)  # registry logins: sealed in the state, opened to use (ADR 43)
    logs = LogBroker(store, hub, is_leader=lambda: raft.is_leader)
    execs = ExecBroker(is_leader=lambda: raft.is_leader)
    control = ControlService(
        store,
        raft,
        logs=logs,
        certs_dir=data / "certs",
        raft_secret=secret,
        keyring=keyring,
        images=digest_lookup(options, store, vault) if options.resolve_images else None,
        events=EventFeed(store, hub),
        execs=execs,
    )
    opened.push_async_callback(control.close)  # last: after the API server stopped
    files = TaskFileSource(keyring)  # secrets are decrypted only to be sent (ADR 38)
    dispatcher = DispatcherService(store, raft, hub, heartbeats, logs=logs, files=files.files, vault=vault, execs=execs)
    try:
        server, health = build_server(
            identity.listen_addr,
            credentials,
            lambda: identity.cluster_id,
            revoked,
            control,
            dispatcher,
            NodeCertificatesService(store, raft_secret=secret, keyring=keyring),
            ManagersService(store, raft, secret, identity.node_id),
            read_barrier=raft.read_barrier,
            manager_addrs=lambda: checked().manager_addrs,
            certs_dir=data / "certs",
            trusted_roots=lambda: checked().trusted_roots,
            trust_bundle=lambda: checked().trust_bundle,
            locked=lambda: _locked(checked().cluster, keyring),
            open_key=key_opener(keyring, lambda: _cluster(store)),
        )
        join_server = build_join_server(
            identity.join_bind_addr, NodeCAService(store, raft_secret=secret, keyring=keyring)
        )
        if options.metrics_addr:
            endpoint = metrics.serve(
                options.metrics_addr,
                metrics.StateCollector(store.read, raft.status, raft.capacity, data / "certs" / "cert.pem"),
                sd_groups=lambda: discovery.groups_in(store),
            )
            opened.callback(endpoint.close)
    except OSError as exc:
        raise StartupError(f"cannot listen: {exc}") from None
    except ValueError as exc:  # no root to trust in the state (the cluster exists by now: never)
        raise StartupError(f"cannot serve the API: {exc}") from None
    await server.start()
    opened.push_async_callback(server.stop, 2.0)
    await join_server.start()
    opened.push_async_callback(join_server.stop, 1.0)
    # A leader that stops on purpose hands over, once no orchestration runs here any more.
    opened.push_async_callback(hand_over_leadership, raft)
    orchestrator = Orchestrator(
        store, raft, hub, heartbeats, identity.node_id, beat_for_local_node=not options.runs_tasks
    )
    _run_task(opened, orchestrator.run(), "orchestrator")
    opened.push_async_callback(health.set, "", NOT_SERVING)
    _run_task(opened, track_health(raft, health), "health")
    log.debug("garbage collector thresholds: %s", gcpolicy.settle())  # ADR 67
    if stop is None:  # the manager's own process: signals stop it once it serves
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    # Runs last as `opened` closes, once the embedded agent stopped: a demoted manager's agent
    # runs on alone (`warren worker start`), without the KEK, so its key is written plain.
    opened.callback(_release_agent_key_if_demoted, data, keeper)
    _run_task(opened, watch_demotion(store, identity, data, stop, options.demoted_hint), "demotion")
    _run_task(opened, keeper.run(), "autolock")
    if options.metrics_addr:  # service discovery lists it (ADR 60)
        advertised = reachable_addr(options.metrics_addr, identity.advertise_addr.rpartition(":")[0])
        _run_task(opened, discovery.record_manager_metrics_addr(store, raft, identity.node_id, advertised), "sd")
    _run_task(opened, CertificateKeeper(data, store, raft, identity.node_id, secret, keyring).run(), "renewal")
    if alongside is not None:  # stopped first, so that its session ends while the API still serves
        cluster = functools.partial(_cluster, store)
        node_files = NodeCredentials(own_files(keyring, cluster), embedded_agent_files(data, keyring, cluster))
        job = asyncio.create_task(alongside(identity, stop, node_files), name="alongside-manager")
        opened.push_async_callback(_stop_alongside, job, stop)

    if identity.joined:
        if first_start:
            print(f"Joined the cluster {identity.cluster_id} as manager {identity.node_id}.", flush=True)
    elif first_start or not clientconfig.config_path().exists():
        announce(identity, data, store)
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
    await stop.wait()
    log.info("shutting down")


def _run_task(opened: contextlib.AsyncExitStack, job: Awaitable[None], name: str) -> None:
    """Run `job` as a task, cancelled as `opened` closes."""
    task = asyncio.ensure_future(job)
    task.set_name(f"manager-{name}")
    opened.callback(task.cancel)


def _name_process(raft: RaftNode, node_id: str) -> None:
    """`warren: manager <node> (leader|follower)`, renamed as the Raft role changes."""
    raft.on_leadership(lambda leader: proctitle.set_title(proctitle.manager_title(node_id, leader)))
    proctitle.set_title(proctitle.manager_title(node_id, raft.is_leader))


def _release_agent_key_if_demoted(data: Path, keeper: LockKeeper) -> None:
    try:
        demoted = load_identity(data).demoted
    except StartupError as exc:
        log.warning("cannot tell whether this manager was demoted: %s", exc)
        return
    if demoted:
        keeper.release_agent_key()


async def _stop_alongside(job: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()  # already set, unless the manager fails
    try:
        await wait_within(job, ALONGSIDE_STOP_TIMEOUT)
    except TimeoutError:
        log.warning("the job beside the manager did not stop within %gs", ALONGSIDE_STOP_TIMEOUT)


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


# The roots the API server trusts come from the state alone, by key id for the guard and as PEM
# for the TLS handshake; certs/ca.pem is for this manager's outgoing calls (warren.manager.certificates).
def digest_lookup(options: ManagerOptions, store: Store, vault: LoginVault) -> RegistryDigests:
    """The digest lookup (ADR 34) with the node's registry settings and the cluster's logins."""
    try:
        cas = dict(parse_registry_ca(text) for text in options.registry_cas)
        return RegistryDigests(options.insecure_registries, credentials=StateCredentials(store, vault), ca_files=cas)
    except (InvalidReference, ValueError) as exc:
        raise StartupError(f"--registry-ca: {exc}") from None


def _cluster(store: Store) -> ClusterInfo | None:
    with store.read() as state:
        return state.cluster


class _CallChecks(NamedTuple):
    """What the API server checks at every call or handshake, from one state."""

    cluster: ClusterInfo | None
    manager_addrs: list[str]
    trusted_roots: frozenset[str]  # the key ids of the roots whose certificates are accepted
    trust_bundle: bytes  # their PEM, which the TLS handshake verifies clients against


def _call_checks(state: ClusterState) -> _CallChecks:
    cluster = state.cluster
    if cluster is None:
        return _CallChecks(None, state.manager_addrs(), frozenset(), b"")
    return _CallChecks(cluster, state.manager_addrs(), cakey.trusted_key_ids(cluster), cakey.trust_bundle(cluster))
