"""What a manager does before it serves: its options, its identity (manager.json), and the
first start that creates a cluster or joins one. Nothing here runs the servers (warren.manager.daemon)."""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from warren import datadir, pki, tls
from warren.api.v1 import managers_pb2 as mpb
from warren.host import host_facts
from warren.ids import new_id
from warren.manager.membership import MembershipError, request_membership
from warren.network import ipam
from warren.text import ascii_int, shown

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
    # Whether this node runs tasks (an agent runs beside the manager, warren.node): a node that
    # does not is drained when it creates the cluster, and the orchestrator beats for it.
    runs_tasks: bool = True
    # The overlay's address plan (ADR 17), set when the cluster is created; None = the default.
    overlay_range: str | None = None
    vip_range: str | None = None
    # Set by `cluster join` with a manager token: the API addresses of the cluster's managers.
    # The node certificate is in data_dir/certs already; on first start, the leader adds this
    # manager to Raft (ADR 15) instead of a new cluster being created.
    join_managers: tuple[str, ...] | None = None
    demoted_hint: str = ""  # what a demoted manager's node does next, printed as it stops (ADR 15)
    # The LMDB map (ADR 22): the most the Raft journal and the state may take. None = as saved
    # at the last start (default 8 GiB).
    state_map_size: int | None = None
    # Registries served over plain HTTP besides loopback, for pinning images to digests (ADR 34):
    # the node's agent settings (`--insecure-registry`), which its pulls use too.
    insecure_registries: tuple[str, ...] = ()
    registry_cas: tuple[str, ...] = ()  # HOST=FILE, from the agent settings too (`--registry-ca`, ADR 43)
    resolve_images: bool = True  # False (--no-resolve-images): images are stored as given, never looked up
    unlock_key: str = ""  # --unlock-key-file's key: a manager that starts while locked opens the KEK (ADR 44)


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


def split_addr(addr: str, flag: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    number = ascii_int(port)
    if not sep or not host or number is None or not 0 < number < 65536:
        raise StartupError(f"{flag} must be HOST:PORT (got {shown(addr)})")
    return host, number


def plan_identity(
    options: ManagerOptions, node_id: str | None = None, cluster_id: str | None = None
) -> ManagerIdentity:
    listen_host, listen_port = split_addr(options.listen_addr, "--listen-addr")
    if options.advertise_addr:
        adv_host, adv_port = split_addr(options.advertise_addr, "--advertise-addr")
    else:
        adv_host = "127.0.0.1" if listen_host in ("0.0.0.0", "::", "[::]") else listen_host
        adv_port = listen_port
    if options.raft_addr:
        raft_host, raft_port = split_addr(options.raft_addr, "--raft-addr")
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
        return split_addr(join_addr, "--join-addr")
    if adv_port + 2 > 65535:
        raise StartupError("the default join port (API port + 2) is out of range; set --join-addr")
    return adv_host, adv_port + 2


def fill_join_addr(identity: ManagerIdentity) -> ManagerIdentity:
    """A manager.json from before the join listener existed: use the default join port. (Like
    every address in manager.json, the join address does not change on resume.)"""
    if identity.join_addr:
        return identity
    adv_host, adv_port = split_addr(identity.advertise_addr, "--advertise-addr")
    join_host, join_port = _join_addr(None, adv_host, adv_port)
    listen_host, _ = split_addr(identity.listen_addr, "--listen-addr")
    return replace(
        identity, join_addr=f"{join_host}:{join_port}", join_bind_addr=f"{_bind_host(listen_host)}:{join_port}"
    )


def load_identity(data: Path) -> ManagerIdentity:
    try:
        return ManagerIdentity(**json.loads((data / "manager.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StartupError(f"{data / 'manager.json'} is unreadable ({exc}); is this a Warren data directory?") from None


def check_bindable(flag: str, addr: str) -> None:
    host, port = split_addr(addr, flag)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        raise StartupError(f"cannot listen on {addr} ({flag}): {exc.strerror}") from None


# The roots the API server trusts come from the state alone, by key id for the guard and as PEM
# for the TLS handshake; certs/ca.pem is for this manager's outgoing calls (warren.manager.certificates).


def overlay_plan(options: ManagerOptions) -> dict[str, Any]:
    """The ClusterInfo fields of the overlay's address plan; StartupError if it is not valid."""
    overlay = options.overlay_range or ipam.DEFAULT_OVERLAY
    vips = options.vip_range or ipam.DEFAULT_VIP_RANGE
    try:
        ipam.make_layout(overlay, ipam.DEFAULT_NODE_PREFIXLEN, vips)
    except ipam.IpamError as exc:
        raise StartupError(f"{exc} (--overlay-range, --vip-range)") from None
    return {"overlay_range": overlay, "node_subnet_prefixlen": ipam.DEFAULT_NODE_PREFIXLEN, "vip_range": vips}


def create_identity(options: ManagerOptions) -> ManagerIdentity:
    """Create identity, CA and credentials on disk. manager.json is written last, so a crash
    before it leaves a directory that simply initialises again."""
    identity = plan_identity(options)
    data = options.data_dir
    ca = pki.CertificateAuthority.create(identity.cluster_id)
    cert, key = ca.issue_keypair(identity.node_id, pki.ROLE_MANAGER, validity_days=365)
    tls.save_credentials(data / "certs", ca.cert_pem, cert, key)
    admin_cert, admin_key = ca.issue_keypair(new_id(), pki.ROLE_ADMIN, validity_days=365)
    tls.save_credentials(data / "admin", ca.cert_pem, admin_cert, admin_key)
    layout = datadir.ManagerDir(data)
    datadir.write_atomic(layout.raft_secret, secrets.token_hex(32).encode())
    datadir.write_atomic(layout.ca_key, ca.key_pem)
    datadir.write_json(layout.manager_file, asdict(identity))
    return identity


async def join_identity(options: ManagerOptions, credentials: tls.Credentials) -> ManagerIdentity:
    """A manager joining an existing cluster: ask the leader to add it to Raft, then store what
    resuming needs. manager.json is written last: a crash before it makes the next start ask
    again, which the leader answers the same way (AddManager is idempotent)."""
    cert = pki.identity_of(credentials.cert_pem)
    if cert.role != pki.ROLE_MANAGER:
        raise StartupError(f"{options.data_dir} holds a {cert.role} identity, not a manager's")
    identity = replace(plan_identity(options, cert.node_id, cert.cluster_id), joined=True)
    host = host_facts()
    request = mpb.AddManagerRequest(
        raft_addr=identity.raft_addr,
        api_addr=identity.advertise_addr,
        join_addr=identity.join_addr,
        hostname=host.hostname,
        runs_tasks=options.runs_tasks,
        nano_cpus=host.nano_cpus,
        memory_bytes=host.memory_bytes,
        os=host.os,
        arch=host.arch,
    )
    try:
        answer = await request_membership(list(options.join_managers or ()), credentials, request)
    except MembershipError as exc:
        raise StartupError(str(exc)) from None
    if answer.cluster_id != cert.cluster_id:
        raise StartupError("the managers answered for another cluster than this node's certificate")
    identity = replace(identity, peers=sorted(answer.raft_peers))
    data = options.data_dir
    datadir.write_atomic(datadir.ManagerDir(data).raft_secret, answer.raft_secret.encode())
    datadir.write_json(datadir.ManagerDir(data).manager_file, asdict(identity))
    return identity
