"""A stack as the Compose loader hands it to the stack engine (#14). Pure data.

The loader (`warren.stack.compose`) reads, interpolates, merges, validates and maps the files;
it resolves every relative path and reads every `file:` it names, so a `StackSpec` is complete
and needs no file system. The engine (`warren.stack.plan`, the `DeployStack` command) compares
it with the cluster and deploys it in one commit. Names here are the cluster's names: Docker's
`STACK_NAME` for what the stack creates, the declared name for what is `external`.
"""

from __future__ import annotations

import enum

import msgspec

from warren.model import ServiceSpec

# The label that marks what a stack created (as Docker's com.docker.stack.namespace), so that
# `stack ls`, `stack rm` and re-deploys find it from the replicated state alone.
STACK_LABEL = "warren.stack"


class DependencyCondition(enum.Enum):
    STARTED = "service_started"
    HEALTHY = "service_healthy"
    COMPLETED = "service_completed_successfully"


class Dependency(msgspec.Struct, frozen=True):
    """`depends_on`: the service named (the cluster's name) must meet `condition` first."""

    service: str
    condition: DependencyCondition = DependencyCondition.STARTED
    required: bool = True


class StackService(msgspec.Struct, frozen=True):
    spec: ServiceSpec  # its labels carry STACK_LABEL
    depends_on: tuple[Dependency, ...] = ()


class StackObject(msgspec.Struct, frozen=True):
    """A secret or config: `data` read from its `file:` (or `content:`), or None when external
    (it must exist in the cluster)."""

    name: str
    data: bytes | None = None
    labels: dict[str, str] = {}

    @property
    def external(self) -> bool:
        return self.data is None


class StackNetwork(msgspec.Struct, frozen=True):
    name: str
    subnet: str = ""
    internal: bool = False
    attachable: bool = False
    labels: dict[str, str] = {}
    external: bool = False


class StackVolume(msgspec.Struct, frozen=True):
    name: str
    driver: str = "local"
    options: dict[str, str] = {}
    labels: dict[str, str] = {}
    external: bool = False


class Finding(msgspec.Struct, frozen=True):
    """A key the loader does not support, or a warning, with where it was written."""

    path: str  # services.web.deploy.endpoint_mode
    file: str
    line: int
    message: str


class StackSpec(msgspec.Struct, frozen=True):
    name: str
    services: tuple[StackService, ...] = ()
    networks: tuple[StackNetwork, ...] = ()
    secrets: tuple[StackObject, ...] = ()
    configs: tuple[StackObject, ...] = ()
    volumes: tuple[StackVolume, ...] = ()
    unsupported: tuple[Finding, ...] = ()  # refused unless --allow-unsupported
