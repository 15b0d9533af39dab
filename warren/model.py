"""Cluster objects: nodes, services, tasks. Pure values (frozen msgspec structs), no I/O.

Every object stored in the replicated state is defined here, so the codec, the store, the
scheduler and the API conversion all agree on one shape.
"""

from __future__ import annotations

import enum

import msgspec


class TaskState(enum.IntEnum):
    """Ordered task lifecycle; a task only ever moves forward (SwarmKit's rule)."""

    NEW = 0
    PENDING = 1
    ASSIGNED = 2
    ACCEPTED = 3
    PREPARING = 4
    STARTING = 5
    RUNNING = 6
    COMPLETE = 7
    FAILED = 8
    SHUTDOWN = 9
    REJECTED = 10
    ORPHANED = 11

    @property
    def terminal(self) -> bool:
        return self >= _COMPLETE

    @property
    def label(self) -> str:
        return self.name.lower()


# Members read once: on CPython 3.11 each `TaskState.X` is a lookup on the enum class that costs
# about 110 ns, four times the comparison, and these helpers run for every task in a pass, an
# endpoint recompute or a scrape (#15: `terminal` 237 -> 90 ns).
_RUNNING = TaskState.RUNNING
_COMPLETE = TaskState.COMPLETE


def can_transition(current: TaskState, new: TaskState) -> bool:
    """A task may only move forward, and never out of a terminal state."""
    return not current.terminal and new > current


class NodeRole(enum.Enum):
    MANAGER = "manager"
    WORKER = "worker"


class Availability(enum.Enum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeStatus(enum.Enum):
    UNKNOWN = "unknown"
    READY = "ready"
    DOWN = "down"


class ServiceMode(enum.Enum):
    REPLICATED = "replicated"
    GLOBAL = "global"


class RestartCondition(enum.Enum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


class UpdateOrder(enum.Enum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


class FailureAction(enum.Enum):
    PAUSE = "pause"
    CONTINUE = "continue"
    ROLLBACK = "rollback"  # an update's only: a rollback that fails pauses or continues


class DeployStrategy(enum.Enum):
    """How a new version reaches the traffic (ADR 35)."""

    ROLLING = "rolling"  # task by task, under the update settings (ADR 33)
    CANARY = "canary"  # a few new tasks beside the old, a weighted share of traffic, then promote
    BLUE_GREEN = "blue-green"  # a full new set beside the old, then one switch of every endpoint


class RolloutState(enum.Enum):
    """Where a service's rollout stands (ADR 33); Swarm's UpdateStatus states, and the canary's
    wait for promotion (ADR 35)."""

    UPDATING = "updating"
    CANARY = "canary"  # the canaries are healthy and take their share: awaiting `service promote`
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"
    # A rebalance (ADR 36): tasks moved to even out the spread, no version change; it ends as
    # completed, or pauses when a moved task fails.
    REBALANCING = "rebalancing"
    REBALANCE_PAUSED = "rebalance_paused"

    @property
    def rolling_back(self) -> bool:
        return self in (RolloutState.ROLLBACK_STARTED, RolloutState.ROLLBACK_PAUSED, RolloutState.ROLLBACK_COMPLETED)

    @property
    def active(self) -> bool:
        """Replacing tasks now, or holding canaries (not paused, not done)."""
        return self in (RolloutState.UPDATING, RolloutState.CANARY, RolloutState.ROLLBACK_STARTED)


# A service's spec, its parts and the service are untracked by the cycle collector, as tasks
# are (gc=False, ADR 55): immutable values, never in a cycle. At S2's size a full collection
# walked some 57,000 specs' parts (decoded copies that commits carry before the state shares
# them, six objects each), and one of 1.01 s stopped the Raft thread long enough for another
# manager to be elected (#15).
class Resources(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """CPU in nano-CPUs (1e9 = one core) and memory in bytes, as Docker counts them."""

    nano_cpus: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.nano_cpus + other.nano_cpus, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.nano_cpus - other.nano_cpus, self.memory_bytes - other.memory_bytes)

    def fits_in(self, available: Resources) -> bool:
        return self.nano_cpus <= available.nano_cpus and self.memory_bytes <= available.memory_bytes


class RestartPolicy(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """When a dead task is replaced. max_attempts=0 means unlimited; a task that ran at least
    `window` seconds resets the attempt count (window=0: attempts are never reset)."""

    condition: RestartCondition = RestartCondition.ANY
    delay: float = 5.0
    max_attempts: int = 0
    window: float = 0.0


class HealthCheck(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A health probe run by the agent. kind: "cmd" (command in the task), "http" (GET target
    URL, 2xx/3xx healthy) or "tcp" (connect to target host:port)."""

    kind: str = "cmd"
    command: tuple[str, ...] = ()
    target: str = ""
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


class UpdateConfig(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """How a change rolls out (ADR 33): `parallelism` tasks at a time (0 = all), `delay` between
    one task's success and the next start in its lane, a new task succeeding once ready for
    `monitor` seconds; the failure action applies once more than `max_failure_ratio` of the
    replicas failed (0: the first failure). Swarm's defaults, except start-first (for rollbacks
    too): stop-first takes a one-replica service down for the whole restart (moby#29148)."""

    parallelism: int = 1
    delay: float = 0.0
    order: UpdateOrder = UpdateOrder.START_FIRST
    failure_action: FailureAction = FailureAction.PAUSE
    monitor: float = 5.0
    max_failure_ratio: float = 0.0


class UpdateStatus(msgspec.Struct, frozen=True, gc=False):
    """The rollout of version `to_version` (from `from_version`), as the leader last decided it;
    `message` says why it is where it is."""

    state: RolloutState
    started_at: float
    from_version: int
    to_version: int
    completed_at: float = 0.0
    message: str = ""
    promoted_at: float = 0.0  # a canary rollout (ADR 35): when it was promoted; 0 while its canaries wait


class DeployConfig(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The deployment strategy (ADR 35). Canary: `canary_replicas` new tasks beside the old ones
    take `canary_weight` percent of new connections (None: their share of the tasks), promoted
    by `service promote` or once healthy for `canary_auto_promote` seconds (0: never).
    Blue/green: the old set is kept, out of routing, `blue_green_keep` seconds after the switch."""

    strategy: DeployStrategy = DeployStrategy.ROLLING
    canary_replicas: int = 0
    canary_weight: int | None = None
    canary_auto_promote: float = 0.0
    blue_green_keep: float = 0.0


BLUE_GREEN_KEEP = 300.0  # the default --blue-green-keep (ADR 35)


class PortConfig(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    target: int
    published: int = 0
    protocol: str = "tcp"
    mode: str = "ingress"


def host_ports(ports: tuple[PortConfig, ...]) -> frozenset[tuple[int, str]]:
    """The (published, protocol) pairs published in host mode (ADR 46): a node resource, held by
    a task on its node from placement until it ends."""
    return frozenset((p.published, p.protocol) for p in ports if p.mode == "host" and p.published)


class MountType(enum.Enum):
    VOLUME = "volume"
    BIND = "bind"
    TMPFS = "tmpfs"


class Mount(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A filesystem in a task's tasks (ADR 40): a named volume, a host path (bind) or a tmpfs,
    at the absolute path `target`. `source` is the volume's name or the host path ("" for tmpfs)."""

    type: MountType
    target: str
    source: str = ""
    readonly: bool = False
    volume_options: dict[str, str] = {}  # a volume's driver options, used when its first task creates it
    tmpfs_size: int = 0  # bytes; 0 = the kernel's default
    tmpfs_mode: int = 0  # permission bits; 0 = 1777, as Docker


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


class NetworkAttachment(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A service on a network (#14): its tasks may reach, and resolve by name, the tasks of the
    services on the same network; `aliases` are extra names it answers to there."""

    network: str  # the network's name
    aliases: tuple[str, ...] = ()


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


class FileRef(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A secret or config a service's tasks see as a file (ADR 38): the object named `source`,
    at the absolute path `target`, owned by uid:gid with `mode`. Refers by name: an object in
    use cannot be removed, so the name means one value for as long as a task uses it."""

    source: str
    target: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o444


class DeviceMapping(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A host device made visible in the container (`--device HOST[:CONTAINER[:PERMS]]`)."""

    path_on_host: str
    path_in_container: str = ""  # "" = the host's path
    permissions: str = "rwm"  # cgroup device access: read, write, mknod


class Ulimit(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A resource limit (`--ulimit nofile=1024:2048`): `name` as Docker spells it (nofile, nproc...)."""

    name: str
    soft: int
    hard: int


class ContainerOptions(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """How a task's process runs beyond its command (#13), as Docker's `service create` flags
    say it; the checks are in warren.container, their effect in each runtime (ADR 42)."""

    user: str = ""  # uid[:gid] or a name; "" = the image's
    workdir: str = ""  # "" = the image's
    hostname: str = ""  # a template: {{.Service.Name}}-{{.Task.Slot}}; "" = the task id
    read_only: bool = False
    init: bool = False  # run an init (tini) as PID 1 that reaps zombies and forwards signals
    privileged: bool = False
    cap_add: tuple[str, ...] = ()  # CAP_NET_ADMIN spelled as given: NET_ADMIN, cap_net_admin, ALL
    cap_drop: tuple[str, ...] = ()
    devices: tuple[DeviceMapping, ...] = ()
    sysctls: dict[str, str] = {}
    ulimits: tuple[Ulimit, ...] = ()
    labels: dict[str, str] = {}  # the container's labels (not the service's)
    dns: tuple[str, ...] = ()  # nameserver addresses; () = the node's
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()  # supplementary groups: gids or names
    no_healthcheck: bool = False  # do not run the image's own Healthcheck


class ServiceSpec(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Desired state of a service, as given by the operator."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    mode: ServiceMode = ServiceMode.REPLICATED
    replicas: int = 1
    constraints: tuple[str, ...] = ()
    reservations: Resources = Resources()
    limits: Resources = Resources()
    restart: RestartPolicy = RestartPolicy()
    health: HealthCheck | None = None
    ports: tuple[PortConfig, ...] = ()
    labels: dict[str, str] = {}
    stop_grace_period: float = 10.0
    stop_signal: str = ""  # what stops a task before the grace period ends: a name or number; "" = SIGTERM
    # Seconds a task about to stop stays out of the load balancing, still running, before its
    # stop signal; at least until every node confirmed it no longer routes to it (ADR 33).
    stop_drain: float = 0.0
    update: UpdateConfig = UpdateConfig()
    rollback: UpdateConfig = UpdateConfig()
    # Bumped by `service update --force`: a new version that changes nothing a task runs, so
    # every task is replaced under the update settings (a rolling restart). Swarm's ForceUpdate.
    force_update: int = 0
    deploy: DeployConfig = DeployConfig()  # the strategy of the rollout *to* this spec (ADR 35)
    mounts: tuple[Mount, ...] = ()  # volumes, binds and tmpfs (ADR 40)
    secrets: tuple[FileRef, ...] = ()  # on a tmpfs, never on a node's disk (ADR 38)
    configs: tuple[FileRef, ...] = ()
    container: ContainerOptions = ContainerOptions()  # user, capabilities, devices... (#13)
    networks: tuple[NetworkAttachment, ...] = ()  # () = the cluster's default network (#14)


class SpecRevision(msgspec.Struct, frozen=True, gc=False):
    """One version of a service's spec, kept for `service history` and `rollback --to-version`.
    The current version's `spec` is None: it is the service's own (a spec is never stored twice)."""

    version: int
    spec: ServiceSpec | None
    at: float
    summary: str  # what changed from the version before, in one line


class ServiceDependency(msgspec.Struct, frozen=True, gc=False):
    """A stack's `depends_on` (#14, ADR 49): this service's tasks start only once `service` (a
    service name) meets `condition` ("service_started", "service_healthy" or
    "service_completed_successfully"). Not required: a dependency that does not exist is met."""

    service: str
    condition: str = "service_started"
    required: bool = True


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


class Task(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One instance of a service. `slot` numbers replicas (1..N); global tasks use slot 0 and
    are identified by their node. `spec_version` is the service version the task runs.
    Untracked by the cycle collector (gc=False, ADR 55): a task holds only immutable values, so
    it is never in a cycle, and a collection need not visit 100,000 of them."""

    id: str
    service_id: str
    service_name: str
    slot: int
    spec: ServiceSpec
    spec_version: int
    desired_state: TaskState = TaskState.RUNNING
    state: TaskState = TaskState.NEW
    node_id: str = ""
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    runtime_id: str = ""
    health: str = ""
    attempt: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    # Since when it has been running and not unhealthy (healthy, if it has a health check); 0
    # while it is not. A rollout counts a new task a success once ready for the monitor period.
    ready_at: float = 0.0
    overlay_address: str = ""  # its address in its node's subnet (ADR 17), allocated when placed
    # When the reconciler took it out of the load balancing to stop it (ADR 33): it keeps
    # running, desired RUNNING, until the nodes stop routing to it; 0 while it is not.
    draining_since: float = 0.0
    # The id of the task of the same slot this one replaces on another node (a rebalance, ADR
    # 36): both run the same version, and the old one serves until this one is ready.
    relocates: str = ""


# What an agent reports of its task: every other field is the managers' to set.
_STATUS_BLANK: dict[str, object] = {
    "state": TaskState.NEW,
    "message": "",
    "error": "",
    "exit_code": None,
    "runtime_id": "",
    "health": "",
    "updated_at": 0.0,
    "started_at": 0.0,
    "ready_at": 0.0,
}


def same_but_status(a: Task, b: Task) -> bool:
    """Whether two versions of a task differ only in what its agent reports (SwarmKit's
    `TasksEqualStable`): the fields are blanked rather than the others listed, so that a field
    added to Task later counts as the managers'."""
    return msgspec.structs.replace(a, **_STATUS_BLANK) == msgspec.structs.replace(b, **_STATUS_BLANK)


def is_stopping(task: Task) -> bool:
    """Told to stop, or draining before its stop (ADR 33): it no longer holds its slot."""
    return task.desired_state > _RUNNING or task.draining_since > 0


def is_routed(task: Task) -> bool:
    """May take new connections from the load balancers (a VIP's backends): running, fit to
    serve (healthy, with a health check), not stopping, and on the overlay."""
    if not task.overlay_address or task.desired_state != _RUNNING or task.draining_since:
        return False
    return is_ready(task)


def without_history(tasks: list[Task]) -> list[Task]:
    """What a task listing shows unless asked for history (ADR 55): every task that has not
    ended, and an ended one only if it is still desired running and the newest of its slot (of
    its node, for a global task), which tells why the slot has no live task yet. A task that
    failed on its own keeps desired state running (its slot's restart count); once a newer one
    takes its slot it is history, as Swarm's restart marks it shutdown."""

    def slot(t: Task) -> tuple[str, int, str]:
        return (t.service_id, t.slot, "" if t.slot else t.node_id)

    # Only an ended task still desired running (one that failed) can be its slot's newest; ended
    # tasks told to stop are history. So only the slots of those need their newest: 10,000 tasks
    # running beside 50,000 stopped by updates cost two passes, not a key per task (#15).
    failed_slots = {slot(t) for t in tasks if t.state >= TaskState.COMPLETE and t.desired_state == TaskState.RUNNING}
    if not failed_slots:
        return [t for t in tasks if t.state < TaskState.COMPLETE]
    failed_numbers = {key[1] for key in failed_slots}
    newest: dict[tuple[str, int, str], Task] = {}
    for t in tasks:
        if t.desired_state == TaskState.RUNNING and t.slot in failed_numbers and (key := slot(t)) in failed_slots:
            held = newest.get(key)
            if held is None or (t.created_at, t.id) > (held.created_at, held.id):
                newest[key] = t
    return [
        t
        for t in tasks
        if t.state < TaskState.COMPLETE or (t.desired_state == TaskState.RUNNING and newest.get(slot(t)) is t)
    ]


def is_ready(task: Task) -> bool:
    """Running and fit to serve: healthy if its spec has a health check, else not unhealthy."""
    if task.state != _RUNNING:
        return False
    return task.health == "healthy" if task.spec.health is not None else task.health != "unhealthy"


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
