"""Disaster recovery (ADR 56): a manager data directory made from a backup (`cluster restore`),
or an existing one made the only member of its cluster (`cluster init --force-new-cluster`).
Both run before the manager starts, then the manager resumes from the directory as usual."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, replace

from warren import commands, datadir, pki, tls
from warren.ids import new_id
from warren.manager import autolock, backup, cakey
from warren.manager.bootstrap import manager_node
from warren.manager.controlcerts import INIT_ADMIN_NAME
from warren.manager.startup import (
    ManagerIdentity,
    ManagerOptions,
    StartupError,
    check_bindable,
    fill_join_addr,
    load_identity,
    plan_identity,
)
from warren.manager.store import Store, open_environment
from warren.model import AdminCert, ClusterInfo


def _ca_key(cluster: ClusterInfo, raft_secret: str, unlock_key: str) -> bytes:
    """The CA key from the backup: under the unlock key's KEK if the cluster was locked."""
    if autolock.is_locked(cluster):
        if not unlock_key:
            raise StartupError("the backup is of a locked cluster (autolock): give its unlock key (--unlock-key-file)")
        try:
            return autolock.ca_key(cluster, autolock.unlocked_kek(cluster, unlock_key))
        except autolock.UnlockKeyError as exc:
            raise StartupError(f"--unlock-key-file: {exc} (the key in force when the backup was taken)") from None
    try:
        return cakey.unwrap(cluster.ca_key_pem, raft_secret)
    except cakey.CAKeyError as exc:
        raise StartupError(f"the backup's CA key cannot be opened: {exc}") from None


def restore(taken: backup.Backup, options: ManagerOptions, drained: bool) -> ManagerIdentity:
    """Make `options.data_dir` (empty) the data directory of the backup's cluster's only manager:
    the same cluster id, CA, state and key root, a new manager node at the given addresses."""
    data = options.data_dir
    if (data / datadir.MANAGER_FILE).exists():
        raise StartupError(f"{data} already holds a manager; restore into a new, empty --data-dir")
    cluster = taken.state.cluster
    if cluster is None or cluster.id != taken.cluster_id:
        raise StartupError("the backup holds no cluster")
    ca = pki.CertificateAuthority.from_pem(cluster.ca_cert_pem, _ca_key(cluster, taken.raft_secret, options.unlock_key))
    identity = plan_identity(options, cluster_id=taken.cluster_id)
    for flag, addr in (
        ("--listen-addr", identity.listen_addr),
        ("--raft-addr", identity.raft_bind_addr),
        ("--join-addr", identity.join_bind_addr),
        ("--metrics-addr", options.metrics_addr),
    ):
        if addr:
            check_bindable(flag, addr)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, key = ca.issue_keypair(identity.node_id, pki.ROLE_MANAGER, validity_days=365)
    tls.save_credentials(data / "certs", ca.cert_pem, cert, key)
    admin_id = new_id()
    admin_cert, admin_key = ca.issue_keypair(admin_id, pki.ROLE_ADMIN, validity_days=365)
    tls.save_credentials(data / "admin", ca.cert_pem, admin_cert, admin_key)
    # A locked cluster's backup carries no Raft secret (the unlock key is the root): a new one.
    raft_secret = taken.raft_secret or secrets.token_hex(32)
    datadir.write_atomic(datadir.ManagerDir(data).raft_secret, raft_secret.encode())
    now = time.time()
    admin = AdminCert(admin_id, INIT_ADMIN_NAME, now, pki.identity_of(admin_cert).not_after.timestamp(), ca.key_id)
    env = open_environment(data / "db")
    try:
        store = Store(env)
        store.restore(taken.state)
        with store.read() as state:
            nodes = list(state.nodes.values())
        recovery = backup.recovery_commands(nodes, manager_node(identity, drained, now), now)
        backup.apply_recovery(store, taken.raft_index + 1, [*recovery, commands.IssueAdminCert(admin)])
        backup.seed_raft(store, data, identity.raft_addr, taken.raft_term + 1)
    finally:
        env.close()
    datadir.write_json(datadir.ManagerDir(data).manager_file, asdict(identity))  # last: the directory is whole
    return identity


def force_new_cluster(options: ManagerOptions) -> ManagerIdentity:
    """Make the manager in `options.data_dir` its cluster's only member, with all its state; the
    other managers are removed (and revoked). Entries of its log it had not applied are dropped."""
    data = options.data_dir
    if not (data / datadir.MANAGER_FILE).exists():
        raise StartupError(f"{data} holds no manager: --force-new-cluster needs a surviving manager's --data-dir")
    identity = fill_join_addr(load_identity(data))
    if identity.demoted:
        raise StartupError(f"{data} belongs to a manager that was demoted to a worker")
    env = open_environment(data / "db")
    try:
        store = Store(env)
        with store.read() as state:
            own = state.nodes.get(identity.node_id)
            nodes = list(state.nodes.values())
        if store.state.cluster is None or own is None:
            raise StartupError(f"{data} holds no cluster state yet; nothing to recover")
        term = backup.current_term(store, data) + 1
        recovery = backup.recovery_commands(nodes, own, time.time())
        backup.apply_recovery(store, store.applied_index + 1, recovery)
        backup.seed_raft(store, data, identity.raft_addr, term)
    finally:
        env.close()
    identity = replace(identity, peers=[])
    datadir.write_json(datadir.ManagerDir(data).manager_file, asdict(identity))
    return identity
