"""Bringing the cluster's state up to this manager: committing a new cluster (the first manager)
or waiting for it to arrive (a joined one), and the chores of each start that follow."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec

from warren import clientconfig, commands, pki, tls
from warren.host import host_facts
from warren.manager import cakey
from warren.manager.controlcerts import INIT_ADMIN_NAME
from warren.manager.ports import ProposalError
from warren.manager.raft import RaftNode
from warren.manager.startup import ManagerIdentity, ManagerOptions, StartupError, overlay_plan
from warren.manager.store import Store
from warren.model import AdminCert, Availability, ClusterInfo, Node, NodeRole, NodeStatus, Resources

log = logging.getLogger("warren.manager")


async def catch_up(store: Store, node_id: str, timeout: float = 60.0) -> None:
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


def raft_peers(identity: ManagerIdentity, store: Store) -> list[str]:
    """The Raft members to start with: those this manager joined with, and every manager its
    (durable) state knows. PySyncObj replays membership changes from the log only up to the
    commit index it persisted, so starting from manager.json alone could leave a manager
    believing it is alone, and electing itself."""
    with store.read() as state:
        known = {n.raft_addr for n in state.nodes.values() if n.role == NodeRole.MANAGER and n.raft_addr}
    return sorted((known | set(identity.peers)) - {identity.raft_addr})


def manager_node(identity: ManagerIdentity, drained: bool, now: float) -> Node:
    """This manager's Node record, as the cluster it creates (or restores: ADR 56) holds it."""
    host = host_facts()
    return Node(
        id=identity.node_id,
        hostname=host.hostname,
        role=NodeRole.MANAGER,
        availability=Availability.DRAIN if drained else Availability.ACTIVE,
        status=NodeStatus.READY,
        resources=Resources(nano_cpus=host.nano_cpus, memory_bytes=host.memory_bytes),
        addr=identity.advertise_addr,
        raft_addr=identity.raft_addr,
        join_addr=identity.join_addr,
        os=host.os,
        arch=host.arch,
        created_at=now,
        updated_at=now,
    )


async def init_cluster(
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
        **overlay_plan(options),
    )
    manager = manager_node(identity, drained, now)
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


def forget_ca_key_file(data: Path, store: Store) -> None:
    """ca-key.pem only carries the CA key from the first start to the InitCluster commit (a
    crash in between starts the commit again); once the state holds the key, it goes."""
    with store.read() as state:
        committed = state.cluster is not None
    if committed:
        (data / "ca-key.pem").unlink(missing_ok=True)


async def record_join_addr(raft: RaftNode, store: Store, identity: ManagerIdentity) -> None:
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


def announce(identity: ManagerIdentity, data: Path, store: Store) -> None:
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
