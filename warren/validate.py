"""Checks of operator input against the model, with messages a person can act on. Pure.

What a node's agent reports (its description, its tasks' status) is checked in warren.nodereports."""

from __future__ import annotations

import math
import re
import signal
from typing import TYPE_CHECKING

from warren import mounts
from warren.constraints import ConstraintError, parse_constraint
from warren.container import OPTIONS_OVERHEAD, OptionError, check_options, option_texts
from warren.model import (
    ContainerOptions,
    DeployConfig,
    DeployStrategy,
    FailureAction,
    FileRef,
    ServiceMode,
    ServiceSpec,
    UpdateConfig,
    UpdateOrder,
    host_ports,
)
from warren.text import ascii_int, has_control, port_texts, shown

_NO_OPTIONS = ContainerOptions()

if TYPE_CHECKING:  # the managers' side: an agent validates its reports, not the cluster state
    from warren.state import ClusterState

# Every pattern here is used with fullmatch: `$` also matches before a trailing newline.
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
MAX_REPLICAS = 100_000
HEALTH_KINDS = ("cmd", "http", "tcp")
MAX_SECONDS = 366 * 24 * 3600  # a year: longer durations are typos
MAX_KEY = 128
MAX_VALUE = 4096
MAX_ITEMS = 256  # env entries, labels, constraints, ports, command words
MAX_ARGV_BYTES = 64 * 1024
MAX_IMAGE = 512
MAX_CONSTRAINT = 1024
MAX_HEALTH_TARGET = 2048
MAX_HEALTH_RETRIES = 10_000
MAX_SIGNAL = 64  # Linux: 1-31 standard, 32-64 real-time
RESERVED_PREFIX = "warren."
# Log streaming (ADR 14): one PublishLogs batch, and one line (longer lines travel in pieces).
MAX_LOG_BATCH = 1000
MAX_LOG_BATCH_BYTES = 1 << 20
MAX_LOG_LINE = 16 * 1024
# The whole service spec, health check included (ADR 21): it sits in Raft entries, in the state,
# in every agent's cache and in assignments messages. 256 KiB is well below the 16 MiB request
# and 64 MiB reply limits of the API (warren.tls), and below what Linux lets a process start
# with (argv and environment together: 2 MiB with the default 8 MiB stack).
MAX_SPEC_BYTES = 256 * 1024
# Counted for each string, map entry and list item on top of its bytes: more than protobuf (tag,
# length) or msgpack (type, length) put around it, so `spec_size` bounds both encodings.
_SPEC_ITEM_OVERHEAD = 16
_SPEC_FIXED_OVERHEAD = 800  # numbers, enums and nested messages' headers (the update settings ~2x130)
PRINTABLE_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f\s]+")  # no control characters (C0, DEL, C1), no spaces
# Environment variable names: POSIX's portable rule (letters, digits, '_', not starting with a
# digit), plus '.' and '-', which Java-style settings use and Docker accepts.
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class ValidationError(ValueError):
    """Invalid operator input; str() is the message to show."""


def check_name(kind: str, name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid {kind} name {shown(name)}: use 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )


def check_seconds(what: str, value: float, allow_zero: bool = True) -> None:
    """Durations must be finite (NaN never equals itself: a NaN spec would differ from itself
    and be "updated" forever), non-negative and below a year."""
    if not math.isfinite(value) or value < 0 or value > MAX_SECONDS or (not allow_zero and value == 0):
        low = "0" if allow_zero else "more than 0"
        raise ValidationError(f"{what} must be a number of seconds between {low} and a year (got {value})")


def check_label_key(what: str, key: str, reserved_ok: bool = False) -> None:
    if not key or "=" in key or len(key) > MAX_KEY or not PRINTABLE_RE.fullmatch(key):
        raise ValidationError(
            f"invalid {what} key {shown(key)}: use 1-{MAX_KEY} printable characters without spaces or '='"
        )
    if not reserved_ok and key.startswith(RESERVED_PREFIX):
        raise ValidationError(f"{what} keys starting with {RESERVED_PREFIX!r} are reserved ({shown(key)})")


def check_labels(what: str, labels: dict[str, str], reserved_ok: bool = False) -> None:
    if len(labels) > MAX_ITEMS:
        raise ValidationError(f"too many {what}s ({len(labels)}, at most {MAX_ITEMS})")
    for key, value in labels.items():
        check_label_key(what, key, reserved_ok)
        if len(value) > MAX_VALUE or has_control(value):
            raise ValidationError(
                f"{what} {shown(key)} has a value that is longer than {MAX_VALUE} characters "
                "or contains control characters"
            )


_HOSTPORT_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def check_hostport(what: str, value: str) -> None:
    """`value` is HOST:PORT ([IPv6]:PORT too) with a port from 1 to 65535."""
    match = _HOSTPORT_RE.fullmatch(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValidationError(f"{what} must be HOST:PORT (got {shown(value)})")


def signal_number(text: str) -> int:
    """A stop signal as its number: a name (`SIGQUIT`, `QUIT`, any case) or a number from 1 to
    MAX_SIGNAL. Raises ValidationError otherwise."""
    name = text.strip(" ").upper()  # spaces only: "SIGTERM\n" is refused, not stored as it is
    number = ascii_int(name)
    if number is not None:
        if 1 <= number <= MAX_SIGNAL:
            return number
    elif name and not name.isdigit() and name.isascii():
        try:
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            pass
    raise ValidationError(
        f"invalid stop signal {shown(text)}: use a signal name such as SIGTERM, TERM or SIGQUIT, "
        f"or a number from 1 to {MAX_SIGNAL}"
    )


def _check_argv(what: str, argv: tuple[str, ...]) -> None:
    if len(argv) > MAX_ITEMS or sum(len(a) for a in argv) > MAX_ARGV_BYTES or any("\x00" in a for a in argv):
        raise ValidationError(f"{what} is too long (at most {MAX_ITEMS} words, {MAX_ARGV_BYTES} bytes) or contains NUL")


def _check_health(spec: ServiceSpec) -> None:
    h = spec.health
    if h is None:
        return
    if h.kind not in HEALTH_KINDS:
        raise ValidationError(f"health check kind must be one of {', '.join(HEALTH_KINDS)} (got {shown(h.kind)})")
    check_seconds("the health interval", h.interval, allow_zero=False)
    check_seconds("the health timeout", h.timeout, allow_zero=False)
    check_seconds("the health start period", h.start_period)
    if not 1 <= h.retries <= MAX_HEALTH_RETRIES:
        raise ValidationError(f"health retries must be between 1 and {MAX_HEALTH_RETRIES}")
    _check_argv("the health check command", h.command)
    if len(h.target) > MAX_HEALTH_TARGET or (h.target and not PRINTABLE_RE.fullmatch(h.target)):
        raise ValidationError(
            f"invalid health check target {shown(h.target)}: at most {MAX_HEALTH_TARGET} characters, "
            "no spaces or control characters"
        )
    if h.kind == "cmd" and not h.command:
        raise ValidationError("a command health check needs a command")
    if h.kind in ("http", "tcp") and not h.target:
        raise ValidationError(f"an {h.kind} health check needs a target")
    if h.kind == "tcp":
        check_hostport("a tcp health check target", h.target)
    if h.kind == "http" and not h.target.startswith(("http://", "https://")):
        raise ValidationError(f"an http health check target is an http:// or https:// URL (got {shown(h.target)})")


def check_env(env: dict[str, str]) -> None:
    if len(env) > MAX_ITEMS:
        raise ValidationError(f"too many environment variables (at most {MAX_ITEMS})")
    for key, value in env.items():
        if len(key) > MAX_KEY or not ENV_NAME_RE.fullmatch(key):
            raise ValidationError(
                f"invalid environment variable name {shown(key)}: use letters, digits, '_', '.' or '-', "
                f"not starting with a digit, at most {MAX_KEY} characters"
            )
        if len(value) > MAX_VALUE * 16 or "\x00" in value:
            raise ValidationError(f"environment variable {key} is too long or contains NUL")


def check_constraint(text: str) -> None:
    if len(text) > MAX_CONSTRAINT:
        raise ValidationError(f"constraint {shown(text)} is longer than {MAX_CONSTRAINT} characters")
    try:
        parse_constraint(text)
    except ConstraintError as exc:
        raise ValidationError(str(exc)) from None


def check_spec(spec: ServiceSpec) -> None:
    check_spec_size(spec)
    check_name("service", spec.name)
    if not spec.image.strip():
        raise ValidationError("an image is required (--image)")
    if len(spec.image) > MAX_IMAGE or not PRINTABLE_RE.fullmatch(spec.image):
        raise ValidationError(f"invalid image reference {shown(spec.image)}")
    _check_argv("the command", spec.command + spec.args)
    check_labels("service label", spec.labels)
    if len(spec.constraints) > MAX_ITEMS or len(spec.ports) > MAX_ITEMS:
        raise ValidationError(f"at most {MAX_ITEMS} constraints and {MAX_ITEMS} ports")
    check_seconds("the restart delay", spec.restart.delay)
    check_seconds("the restart window", spec.restart.window)
    check_seconds("the stop grace period", spec.stop_grace_period)
    check_seconds("the stop drain period", spec.stop_drain)
    if spec.mode == ServiceMode.REPLICATED and not 0 <= spec.replicas <= MAX_REPLICAS:
        raise ValidationError(f"replicas must be between 0 and {MAX_REPLICAS}")
    for text in spec.constraints:
        check_constraint(text)
    for label, res in (("reservation", spec.reservations), ("limit", spec.limits)):
        if res.nano_cpus < 0 or res.memory_bytes < 0:
            raise ValidationError(f"a resource {label} cannot be negative")
    if spec.limits.memory_bytes and spec.reservations.memory_bytes > spec.limits.memory_bytes:
        raise ValidationError("the memory reservation exceeds the memory limit")
    if spec.limits.nano_cpus and spec.reservations.nano_cpus > spec.limits.nano_cpus:
        raise ValidationError("the CPU reservation exceeds the CPU limit")
    restart = spec.restart
    if restart.delay < 0 or restart.window < 0 or restart.max_attempts < 0:
        raise ValidationError("restart delay, window and max attempts cannot be negative")
    if spec.stop_grace_period < 0:
        raise ValidationError("the stop grace period cannot be negative")
    if spec.stop_signal:
        signal_number(spec.stop_signal)
    _check_health(spec)
    _check_rollout("update", spec.update)
    _check_rollout("rollback", spec.rollback)
    _check_deploy(spec, spec.deploy)
    check_attachments(spec)
    seen: set[tuple[int, str]] = set()
    for port in spec.ports:
        if not 1 <= port.target <= 65535 or not 0 <= port.published <= 65535:
            raise ValidationError(f"port {port.published}:{port.target} is out of range (1-65535)")
        if port.protocol not in ("tcp", "udp"):
            raise ValidationError(f"port protocol must be tcp or udp (got {shown(port.protocol)})")
        if port.mode not in ("ingress", "host"):
            raise ValidationError(f"port mode must be ingress or host (got {shown(port.mode)})")
        if port.mode == "host" and not port.published:
            # No random host port (ADR 46): it would differ per node, and nothing reports it back.
            raise ValidationError(f"host-mode port {port.target}/{port.protocol} needs a published port")
        if port.published:
            key = (port.published, port.protocol)
            if key in seen:
                raise ValidationError(f"published port {port.published}/{port.protocol} is listed twice")
            seen.add(key)
    check_env(spec.env)
    try:
        mounts.check_mounts(spec)
    except mounts.MountError as exc:
        raise ValidationError(str(exc)) from None
    check_file_refs(spec)
    if spec.container != _NO_OPTIONS:  # most specs set none, and the defaults pass (a unit test holds this)
        check_labels("container label", spec.container.labels)
        try:
            check_options(spec.container)
        except OptionError as exc:
            raise ValidationError(str(exc)) from None


def spec_size(spec: ServiceSpec) -> int:
    """An upper bound of the spec's encoded size, as protobuf or msgpack: the UTF-8 bytes of its
    text plus a fixed overhead per item."""
    texts = [spec.name, spec.image, spec.stop_signal, *spec.command, *spec.args, *spec.constraints]
    texts += [*spec.env, *spec.env.values(), *spec.labels, *spec.labels.values()]
    texts += [text for port in spec.ports for text in (port.protocol, port.mode)]
    texts += mounts.mount_texts(spec)
    texts += [text for ref in (*spec.secrets, *spec.configs) for text in (ref.source, ref.target)]
    texts += option_texts(spec.container)
    if spec.health is not None:
        texts += [spec.health.kind, spec.health.target, *spec.health.command]
    text_bytes = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
    fixed = _SPEC_FIXED_OVERHEAD + OPTIONS_OVERHEAD
    return fixed + text_bytes + _SPEC_ITEM_OVERHEAD * (len(texts) + len(spec.ports))


def _check_rollout(kind: str, config: UpdateConfig) -> None:
    """The update and rollback settings (ADR 33), named by their CLI flags."""
    if not 0 <= config.parallelism <= MAX_REPLICAS:
        raise ValidationError(f"--{kind}-parallelism must be between 0 (all at once) and {MAX_REPLICAS}")
    check_seconds(f"--{kind}-delay", config.delay)
    check_seconds(f"--{kind}-monitor", config.monitor)
    ratio = config.max_failure_ratio
    if not (math.isfinite(ratio) and 0 <= ratio <= 1):
        raise ValidationError(f"--{kind}-max-failure-ratio must be between 0 and 1 (got {ratio})")
    if kind == "rollback" and config.failure_action == FailureAction.ROLLBACK:
        raise ValidationError("--rollback-failure-action must be pause or continue: a rollback cannot roll back")


def _check_deploy(spec: ServiceSpec, deploy: DeployConfig) -> None:
    """The strategy and its flags (ADR 35): contradictions are refused, named by their flags."""
    strategy = deploy.strategy
    canary_flags = deploy.canary_replicas or deploy.canary_weight is not None or deploy.canary_auto_promote
    if strategy != DeployStrategy.CANARY and canary_flags:
        raise ValidationError(
            "--canary-replicas, --canary-weight and --canary-auto-promote need --deploy-strategy canary"
        )
    if strategy != DeployStrategy.BLUE_GREEN and deploy.blue_green_keep:
        raise ValidationError("--blue-green-keep needs --deploy-strategy blue-green")
    if strategy == DeployStrategy.ROLLING:
        return
    held = host_ports(spec.ports)
    if held:
        # Both start the new tasks beside the old ones: on a node, the old task holds the port.
        raise ValidationError(
            f"--deploy-strategy {strategy.value} cannot be used with host-mode ports ({port_texts(held)}): "
            "the new tasks would start beside the old ones, which hold the ports on their nodes"
        )
    if spec.mode == ServiceMode.GLOBAL:
        raise ValidationError(
            f"--deploy-strategy {strategy.value} is for replicated services: a global service rolls node by node"
        )
    if strategy == DeployStrategy.CANARY:
        # A canary replaces a slot start-first: one replica leaves no old slot to compare with.
        if spec.replicas < 2:
            raise ValidationError(
                f"--deploy-strategy canary needs at least 2 replicas (got {spec.replicas}); "
                "a single replica updates start-first with --deploy-strategy rolling"
            )
        # Not bounded by the replicas: a later `service scale` below it must not make every
        # following update invalid. The rollout starts at most replicas - 1 canaries, as Nomad
        # keeps its canary count apart from the group's count.
        if not 1 <= deploy.canary_replicas <= MAX_REPLICAS:
            raise ValidationError(
                f"--canary-replicas must be between 1 and {MAX_REPLICAS} (got {deploy.canary_replicas})"
            )
        if deploy.canary_weight is not None and not 0 <= deploy.canary_weight <= 100:
            raise ValidationError(f"--canary-weight must be a percentage, 0 to 100 (got {deploy.canary_weight})")
        check_seconds("--canary-auto-promote", deploy.canary_auto_promote)
    else:
        check_seconds("--blue-green-keep", deploy.blue_green_keep)
        if spec.update.order == UpdateOrder.STOP_FIRST:
            raise ValidationError(
                "--update-order stop-first contradicts --deploy-strategy blue-green (the new set starts beside the old)"
            )


MAX_NETWORKS_PER_SERVICE = 16  # #14, ADR 47
MAX_ALIASES = 16


def check_attachments(spec: ServiceSpec) -> None:
    """A service's networks as written: each once, valid names and aliases, a bounded number
    (whether they exist is judged against the state: commands.networks.missing_networks)."""
    if len(spec.networks) > MAX_NETWORKS_PER_SERVICE:
        raise ValidationError(f"a service is on at most {MAX_NETWORKS_PER_SERVICE} networks ({len(spec.networks)})")
    seen: set[str] = set()
    for attachment in spec.networks:
        check_name("network", attachment.network)
        if attachment.network in seen:
            raise ValidationError(f"network {attachment.network} is named twice")
        seen.add(attachment.network)
        if len(attachment.aliases) > MAX_ALIASES:
            raise ValidationError(f"at most {MAX_ALIASES} aliases on network {attachment.network}")
        for alias in attachment.aliases:
            check_name("network alias", alias)


def check_spec_size(spec: ServiceSpec) -> None:
    """The whole spec is at most MAX_SPEC_BYTES, so it always travels and is stored whole."""
    size = spec_size(spec)
    if size > MAX_SPEC_BYTES:
        raise ValidationError(
            f"the service spec is too large: {size} bytes, at most {MAX_SPEC_BYTES} (256 KiB) for its "
            "command, environment, labels, constraints and health check together"
        )


def check_ports_free(state: ClusterState, spec: ServiceSpec, service_id: str = "") -> None:
    """An ingress port is published on every node (routing mesh): no other service may publish
    its number, in either mode. Host-mode ports of the same number may coexist: the scheduler
    keeps their tasks on different nodes (ADR 46)."""
    wanted = {(p.published, p.protocol): p.mode for p in spec.ports if p.published}
    if not wanted:  # most services publish nothing: no need to visit every other one
        return
    for other in state.services.values():
        if other.id == service_id:
            continue
        for port in other.spec.ports:
            mode = wanted.get((port.published, port.protocol))
            if mode is None or (mode == "host" and port.mode == "host"):
                continue
            if mode == port.mode:
                raise ValidationError(
                    f"port {port.published}/{port.protocol} is already published by service {other.spec.name}"
                )
            raise ValidationError(
                f"port {port.published}/{port.protocol} is already published by service {other.spec.name} "
                f"in {port.mode} mode; an ingress port takes the number on every node, so it cannot also "
                "be a host-mode port"
            )


# How often agents heartbeat (ADR 52): a node is down after 3 missed.
MIN_HEARTBEAT_PERIOD = 0.1
MAX_HEARTBEAT_PERIOD = 3600.0


def check_heartbeat_period(seconds: float) -> None:
    if not MIN_HEARTBEAT_PERIOD <= seconds <= MAX_HEARTBEAT_PERIOD:  # NaN too
        raise ValidationError("the heartbeat period must be between 100ms and 1h")


# Secrets and configs (ADR 38): the value limit is Swarm's; a task has at most MAX_FILES files.
MAX_SECRET_BYTES = 500 * 1024
MAX_FILES = 64
MAX_TARGET = 1024
SECRETS_DIR = "/run/secrets"
_TARGET_PART = re.compile(r"[^\x00-\x1f\x7f/]+")


def check_object_name(kind: str, name: str) -> None:
    """A secret's or config's name: as a service's, so that it is also a valid file name."""
    check_name(kind, name)


def check_value_size(kind: str, size: int) -> None:
    if size == 0:
        raise ValidationError(f"a {kind} cannot be empty")
    if size > MAX_SECRET_BYTES:
        raise ValidationError(f"a {kind} holds at most {MAX_SECRET_BYTES // 1024} KB (this one {size} bytes)")


def check_target(kind: str, target: str) -> None:
    """An absolute, normalised path of a file: no `..`, no empty or `.` part, not `/` itself."""
    parts = target.split("/")
    if (
        not target.startswith("/")
        or len(target) > MAX_TARGET
        or len(parts) < 2
        or not all(_TARGET_PART.fullmatch(p) and p not in (".", "..") for p in parts[1:])
    ):
        raise ValidationError(
            f"invalid {kind} target {shown(target)}: "
            "an absolute file path without '.', '..', '//' or control characters"
        )


def check_file_ref(kind: str, ref: FileRef) -> None:
    check_object_name(kind, ref.source)
    check_target(kind, ref.target)
    for what, value in (("uid", ref.uid), ("gid", ref.gid)):
        if not 0 <= value <= 2**32 - 2:
            raise ValidationError(f"{kind} {ref.source}: {what} must be between 0 and {2**32 - 2} (got {value})")
    if not 0 <= ref.mode <= 0o777:
        raise ValidationError(f"{kind} {ref.source}: mode must be between 0000 and 0777 (got {ref.mode:o})")


def check_file_refs(spec: ServiceSpec) -> None:
    """Each target once (a file cannot hold two values), at most MAX_FILES files."""
    if len(spec.secrets) + len(spec.configs) > MAX_FILES:
        raise ValidationError(f"a service uses at most {MAX_FILES} secrets and configs together")
    targets: set[str] = set()
    mount_targets = {m.target for m in spec.mounts}
    for kind, refs in (("secret", spec.secrets), ("config", spec.configs)):
        for ref in refs:
            check_file_ref(kind, ref)
            if ref.target in targets:
                raise ValidationError(f"two secrets or configs have the target {shown(ref.target)}")
            if ref.target in mount_targets:  # a file cannot be bound over a mount's directory
                raise ValidationError(f"{shown(ref.target)} is both a mount's target and a {kind}'s")
            targets.add(ref.target)
