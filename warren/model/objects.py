"""The other stored objects: services, nodes, revoked nodes, admin certificates, registry logins,
volumes, networks, secrets, configs and the cluster's own record."""

from __future__ import annotations

import msgspec

from warren.model.spec import Resources, ServiceDependency, ServiceSpec, SpecRevision, UpdateStatus
from warren.model.states import Availability, NodeRole, NodeStatus


class Volume(msgspec.Struct, frozen=True):
    """A named volume (ADR 40). A local volume lives on one node, `node_id`: "" until the first
    task mounting it is placed, which binds it to that task's node."""

    id: str
    name: str
    driver: str = "local"
    options: dict[str, str] = {}
    labels: dict[str, str] = {}
    node_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


class Network(msgspec.Struct, frozen=True):
    """A network (#14): a set of services allowed to reach each other and a DNS scope, on the
    one overlay (ADR 17), not a mesh of its own. `internal` has no route out of the cluster;
    `attachable` is recorded for Compose and Swarm users (Warren has no standalone containers)."""

    id: str
    name: str
    subnet: str = ""  # "" = allocated from the overlay's range
    internal: bool = False
    attachable: bool = False
    labels: dict[str, str] = {}
    created_at: float = 0.0
    updated_at: float = 0.0


class Service(msgspec.Struct, frozen=True, gc=False):
    id: str
    spec: ServiceSpec
    version: int = 1
    previous_spec: ServiceSpec | None = None  # written before histories (ADR 33); now read from `history`
    created_at: float = 0.0
    updated_at: float = 0.0
    vip: str = ""  # its virtual IP in the cluster's VIP range (ADR 17), allocated at create
    update_status: UpdateStatus | None = None  # the last rollout (ADR 33); None before the first update
    history: tuple[SpecRevision, ...] = ()  # the last versions, oldest first, the current one last
    # Held by the reconciler until these are met (ADR 49). Not in the spec: changing the order
    # of a deploy changes nothing a task runs, so it makes no version.
    depends_on: tuple[ServiceDependency, ...] = ()


class Node(msgspec.Struct, frozen=True):
    id: str
    hostname: str
    role: NodeRole = NodeRole.WORKER
    availability: Availability = Availability.ACTIVE
    status: NodeStatus = NodeStatus.UNKNOWN
    status_message: str = ""
    labels: dict[str, str] = {}
    resources: Resources = Resources()
    addr: str = ""  # gRPC address (managers) or the agent's advertised address (workers)
    raft_addr: str = ""  # managers only
    join_addr: str = ""  # managers only: the plaintext join listener (ADR 13)
    # `node promote` sets MANAGER on a worker; its agent then starts a manager, which the
    # leader adds to Raft, and the role becomes MANAGER (ADR 15).
    desired_role: NodeRole | None = None
    # Overlay (ADR 17): the subnet allocated to this node, and its WireGuard public key (base64)
    # and endpoint (HOST:PORT) as its agent reports them; the private key never leaves the node.
    overlay_subnet: str = ""
    wg_public_key: str = ""
    wg_endpoint: str = ""
    overlay: bool = False  # its agent runs the mesh (--wireguard on): only then do its tasks get addresses
    # Key rotation (ADR 18): the epoch of the published key, the epoch wanted (above it while a
    # rotation is under way: the agent makes a new pair and publishes it), and when the
    # published key was published (automatic rotation counts from then).
    wg_key_epoch: int = 0
    wg_key_desired_epoch: int = 0
    wg_key_published_at: float = 0.0
    os: str = ""
    arch: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    # CA rotation (ADR 24): the key id of the CA that issued the certificate this node's agent
    # last called with (seen by the dispatcher; "" = never seen, e.g. --manager-only), and for a
    # manager, of the certificate its API server presents.
    agent_cert_ca: str = ""
    manager_cert_ca: str = ""
    # Where Prometheus scrapes it (ADR 60): its agent's /metrics as the agent reports it, and a
    # manager's own /metrics as the manager records it at start; "" = none known.
    metrics_addr: str = ""
    manager_metrics_addr: str = ""


class RevokedNode(msgspec.Struct, frozen=True):
    """A removed node: certificates naming `id` are refused from `at` on (ADR 13). Node ids
    are never reused (a node that joins again gets a new one), so the entry can be dropped
    once every certificate that could name it has expired."""

    id: str
    at: float


class AdminCert(msgspec.Struct, frozen=True):
    """An operator's admin certificate (ADR 24). `id` is its CN, which the guard reads on every
    call; revoking it puts `id` among the revoked ids (as `node rm` does for a node)."""

    id: str
    name: str
    created_at: float
    not_after: float
    ca: str  # key id of the CA that issued its current certificate
    revoked_at: float = 0.0


class RegistryLogin(msgspec.Struct, frozen=True):
    """Credentials for one registry (ADR 43): the cluster's (`registry login`, id = the host) or
    one service's own (`--with-registry-auth`, id = "<service id>/<host>", service_id set), which
    its tasks use before the cluster's. Agents get them with the tasks that pull, in memory only."""

    id: str
    host: str
    username: str
    # THE SECRET VALUE, sealed by the manager before it is proposed (warren.manager.registrylogins:
    # LoginVault, by the secrets' data key: ADR 38, 43), so that no Raft entry, snapshot or LMDB
    # page holds the password in plaintext.
    sealed_password: str = msgspec.field(default="")
    created_at: float = 0.0
    updated_at: float = 0.0
    service_id: str = ""

    def __repr__(self) -> str:  # never the sealed value either, in a log line or a traceback
        return f"RegistryLogin(id={self.id!r}, host={self.host!r}, username={self.username!r})"


def registry_login_id(host: str, service_id: str = "") -> str:
    return f"{service_id}/{host}" if service_id else host


class Secret(msgspec.Struct, frozen=True):
    """A secret (ADR 38): `sealed` is its value encrypted with the cluster's data key; the
    plain value exists only on the leader that sends it, and in the memory of the agents
    whose tasks use it."""

    id: str
    name: str
    sealed: bytes
    size: int  # of the plain value
    labels: dict[str, str] = {}
    created_at: float = 0.0
    updated_at: float = 0.0


class Config(msgspec.Struct, frozen=True):
    """A config: like a secret, but stored and shown as it is."""

    id: str
    name: str
    data: bytes
    labels: dict[str, str] = {}
    created_at: float = 0.0
    updated_at: float = 0.0


class ClusterInfo(msgspec.Struct, frozen=True):
    """Cluster-wide settings written once at init; tokens are rotated by commands. The CA key is
    replicated so that any manager can sign node certificates (as in SwarmKit); it never leaves
    the managers."""

    id: str
    created_at: float
    ca_cert_pem: str
    ca_key_pem: str
    worker_token_secret: str
    manager_token_secret: str
    heartbeat_period: float = 5.0
    task_history_limit: int = 5
    # The overlay's address plan (ADR 17), fixed at init; empty in clusters created before it,
    # which use the defaults (warren.network.ipam).
    overlay_range: str = ""
    node_subnet_prefixlen: int = 0
    vip_range: str = ""
    # Seconds between automatic rotations of each node's WireGuard key (ADR 18); 0 = only
    # `warren node rotate-key`.
    wg_key_rotation_period: float = 0.0
    # CA rotation (ADR 24): while the previous root is set, certificates from both are trusted;
    # ca_cert_pem/ca_key_pem are then the new root, which signs everything.
    ca_previous_cert_pem: str = ""
    ca_rotation_started_at: float = 0.0
    # Rebalance replicated services by themselves when their spread is off by more than one task
    # (a node joined or returned, ADR 36); off by default, as moving tasks is a disruption.
    auto_rebalance: bool = False
    # The throughput governors of a reconcile pass (ADR 53): how many tasks one pass may start
    # and stop; a bigger change is spread over several passes. 0 = the default (1,000).
    max_starts_per_pass: int = 0
    max_stops_per_pass: int = 0
    # The key hierarchy of secrets (ADR 38): the key-encryption key, wrapped by the root (a key
    # derived from the Raft secret; autolock's unlock key later), and the data key that seals
    # secret values, wrapped by the KEK. Empty until the first secret is created.
    kek_wrapped: str = ""
    dek_wrapped: str = ""
