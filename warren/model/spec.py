"""A service's spec and its parts: resources, restart, health, update and deploy settings, ports,
mounts, networks, secret and config references and container options, with its revisions."""

from __future__ import annotations

import enum

import msgspec

from warren.model.states import DeployStrategy, FailureAction, RestartCondition, RolloutState, ServiceMode, UpdateOrder


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


class NetworkAttachment(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A service on a network (#14): its tasks may reach, and resolve by name, the tasks of the
    services on the same network; `aliases` are extra names it answers to there."""

    network: str  # the network's name
    aliases: tuple[str, ...] = ()


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
