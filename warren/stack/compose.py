"""Compose to Warren: a merged, interpolated Compose tree as a `StackSpec` (#14, ADR 48). Pure.

Every value is checked where it is read, so an error names its key path and file:line; every
service spec then passes warren.validate's own checks here, not later on the manager. A key
Warren does not honour becomes a `Finding` (warren.stack.keys); nothing is silently dropped.
The files `env_file` and `file:` name are read through `read`, given by the caller.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from functools import partial

from warren import validate
from warren.container import OptionError, capability, check_sysctl, check_ulimit, check_user, parse_device
from warren.model import (
    ContainerOptions,
    FailureAction,
    FileRef,
    HealthCheck,
    Mount,
    MountType,
    NetworkAttachment,
    PortConfig,
    Resources,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    Ulimit,
    UpdateConfig,
    UpdateOrder,
)
from warren.mounts import MountError, check_mount
from warren.stack import keys
from warren.stack.interpolate import parse_env_file
from warren.stack.merge import as_mapping, is_host_path
from warren.stack.spec import (
    STACK_LABEL,
    Dependency,
    DependencyCondition,
    Finding,
    StackNetwork,
    StackObject,
    StackService,
    StackSpec,
    StackVolume,
)
from warren.stack.tree import StackFileError, Where, YList, YMap, join
from warren.text import parse_cpus, parse_duration, parse_size

Reader = Callable[[str], bytes]  # a file's bytes by its absolute path; raises OSError
STACK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")  # Compose's project names, short enough for NAME_service
SERVICE_NAME_RE = re.compile(r"[a-zA-Z0-9._-]+")
DEFAULT_NETWORK = "default"
_HEALTH_SHELL = ("/bin/sh", "-c")  # CMD-SHELL, as Docker runs it
_DEFAULT_GRACE = ServiceSpec(name="-", image="-").stop_grace_period
_RESTART = {"no": RestartCondition.NONE, "always": RestartCondition.ANY, "unless-stopped": RestartCondition.ANY}


class Section:
    """A mapping of the tree at `path`: typed reads that raise StackFileError with the line."""

    def __init__(self, node: YMap, path: str, findings: list[Finding]) -> None:
        self.node, self.path, self.findings = node, path, findings

    def where(self, key: str | None = None) -> Where:
        return self.node.at(key) if key is not None else self.node.where

    def error(self, key: str | None, message: str) -> StackFileError:
        return StackFileError(self.where(key), join(self.path, key) if key else self.path, message)

    def check_keys(self, supported: frozenset[str], known: frozenset[str]) -> None:
        for key in self.node:
            if key.startswith("x-") or key in supported:
                continue
            if key in known:
                self.unsupported(key)
            else:
                raise self.error(key, "not a key of the Compose Specification here")

    def unsupported(self, key: str, what: str = "") -> None:
        reason = keys.REASONS.get(key, "")
        message = f"{what or key} is not supported" + (f": {reason}" if reason else "")
        where = self.where(key)
        self.findings.append(Finding(join(self.path, key), where.file, where.line, message))

    def has(self, key: str) -> bool:
        return self.node.get(key) is not None

    def string(self, key: str, default: str = "") -> str:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, f"expected a string (got {_kind(value)})")
        return str(value)

    def integer(self, key: str, default: int, low: int = 0, high: int = validate.MAX_REPLICAS) -> int:
        value = self.node.get(key)
        if value is None:
            return default
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
            number = int(value)
        if number is None:
            raise self.error(key, f"expected a whole number (got {_shown(value)})")
        if not low <= number <= high:
            raise self.error(key, f"must be between {low} and {high} (got {number})")
        return number

    def number(self, key: str, default: float) -> float:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value)) if re.fullmatch(r"[0-9.]+", str(value)) else _fail(str(value))
        except ValueError:
            raise self.error(key, f"expected a number (got {_shown(value)})") from None

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.error(key, f"expected true or false (got {_shown(value)})")

    def duration(self, key: str, default: float) -> float:
        return self.parsed(key, default, parse_duration)

    def parsed(self, key: str, default: float, parse: Callable[[str], float]) -> float:
        value = self.node.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, f"expected a string (got {_kind(value)})")
        try:
            return parse(str(value))
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)} (got {_shown(value)})")
        return value

    def section(self, key: str) -> Section | None:
        value = self.node.get(key)
        if value is None:
            return None
        if not isinstance(value, YMap):
            raise self.error(key, f"expected a mapping (got {_kind(value)})")
        return Section(value, join(self.path, key), self.findings)

    def items(self, key: str) -> list[tuple[object, Where, str]]:
        """A list's items, with where each was written and its path."""
        value = self.node.get(key)
        if value is None:
            return []
        if not isinstance(value, YList):
            raise self.error(key, f"expected a list (got {_kind(value)})")
        return [(item, value.at(i), join(join(self.path, key), i)) for i, item in enumerate(value)]

    def strings(self, key: str, split_string: bool = False) -> tuple[str, ...]:
        """A list of strings (a string alone, where the specification allows it)."""
        value = self.node.get(key)
        if isinstance(value, str):
            return tuple(shlex.split(value)) if split_string else (value,)
        out = []
        for item, where, path in self.items(key):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise StackFileError(where, path, f"expected a string (got {_kind(item)})")
            out.append(str(item))
        return tuple(out)

    def command(self, key: str) -> tuple[str, ...]:
        """A command: a list as it is, a string split as a shell would (Compose's rule)."""
        value = self.node.get(key)
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                raise self.error(key, f"cannot split the command: {exc}") from None
        return self.strings(key)

    def mapping(self, key: str) -> dict[str, str | None]:
        """A normalised list-or-dict (merge.as_mapping); scalar values as text."""
        value = as_mapping(self.node.get(key), self.where(key), join(self.path, key))
        if value is None:
            return {}
        if not isinstance(value, YMap):
            raise self.error(key, f"expected a mapping or a list of KEY=VALUE (got {_kind(value)})")
        out: dict[str, str | None] = {}
        for name, item in value.items():
            if isinstance(item, (YMap, YList)):
                raise StackFileError(value.at(name), join(join(self.path, key), name), "expected a scalar value")
            out[name] = None if item is None else _scalar_text(item)
        return out

    def labels(self, key: str) -> dict[str, str]:
        return {name: value or "" for name, value in self.mapping(key).items()}


def _fail(text: str) -> float:
    raise ValueError(text)


def _scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kind(value: object) -> str:
    if isinstance(value, YMap):
        return "a mapping"
    if isinstance(value, YList):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, str) else f"the string {_shown(value)}"


def _shown(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return repr(text[:80])


def _checked(section: Section, key: str | None, check: Callable[[], object]) -> None:
    """Run one of warren's own checks; its error is reported at `key`."""
    try:
        check()
    except (validate.ValidationError, OptionError, MountError) as exc:
        raise section.error(key, str(exc)) from None


# -- the stack --------------------------------------------------------------------------------
class _Stack:
    def __init__(self, tree: YMap, name: str, environ: Mapping[str, str], read: Reader) -> None:
        self.findings: list[Finding] = []
        self.top = Section(tree, "", self.findings)
        self.name, self.environ, self.read = name, environ, read
        self.label = {STACK_LABEL: name}

    def scoped(self, name: str) -> str:
        return f"{self.name}_{name}"

    def read_file(self, section: Section, key: str, path: str, what: str) -> bytes:
        try:
            return self.read(path)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise section.error(key, f"cannot read the {what} {path}: {reason}") from None


def map_stack(tree: YMap, name: str, environ: Mapping[str, str], read: Reader) -> StackSpec:
    """The stack `name` that `tree` describes. Raises StackFileError."""
    if not STACK_NAME_RE.fullmatch(name):
        raise StackFileError(
            tree.at("name") if "name" in tree else tree.where,
            "name",
            f"invalid stack name {_shown(name)}: 1-31 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
        )
    stack = _Stack(tree, name, environ, read)
    stack.top.check_keys(keys.TOP_SUPPORTED | keys.TOP_IGNORED, keys.TOP_KNOWN)
    services = stack.top.section("services")
    if services is None or not services.node:
        raise stack.top.error("services" if "services" in tree else None, "a stack needs at least one service")
    networks = _networks(stack)
    volumes = _volumes(stack)
    secrets = _objects(stack, "secrets")
    configs = _objects(stack, "configs")
    declared = _Declared(
        networks={n: net for n, net in networks.items()},
        volumes={n: vol.name for n, vol in volumes.items()},
        secrets={n: obj.name for n, obj in secrets.items()},
        configs={n: obj.name for n, obj in configs.items()},
        services=set(services.node),
    )
    out: list[StackService] = []
    used_networks: set[str] = set()
    for service_name in services.node:
        section = services.section(service_name)
        if not SERVICE_NAME_RE.fullmatch(service_name):
            raise services.error(service_name, "a service name is letters, digits, '.', '_' or '-'")
        if section is None:
            raise services.error(service_name, "expected a mapping (the service's keys)")
        service = _service(stack, section, service_name, declared)
        used_networks.update(a.network for a in service.spec.networks)
        out.append(service)
    kept_networks = tuple(net for net in networks.values() if net.name in used_networks or net.external)
    return StackSpec(
        name=name,
        services=tuple(out),
        networks=kept_networks,
        secrets=tuple(secrets.values()),
        configs=tuple(configs.values()),
        volumes=tuple(volumes.values()),
        unsupported=tuple(stack.findings),
    )


class _Declared:
    def __init__(
        self,
        networks: dict[str, StackNetwork],
        volumes: dict[str, str],
        secrets: dict[str, str],
        configs: dict[str, str],
        services: set[str],
    ) -> None:
        self.networks, self.volumes, self.secrets, self.configs = networks, volumes, secrets, configs
        self.services = services


def _external(section: Section, kind: str, name: str) -> tuple[bool, str]:
    """`external: true` (or the old `external: {name: N}`) and the object's cluster name."""
    value = section.node.get("external")
    declared = section.string("name")
    if isinstance(value, YMap):
        old = Section(value, join(section.path, "external"), section.findings)
        old.check_keys(frozenset({"name"}), frozenset({"name"}))
        return True, old.string("name") or declared or name
    external = section.boolean("external")
    return external, declared or name


def _networks(stack: _Stack) -> dict[str, StackNetwork]:
    top = stack.top.section("networks")
    names = list(top.node) if top is not None else []
    if DEFAULT_NETWORK not in names:
        names.append(DEFAULT_NETWORK)
    out: dict[str, StackNetwork] = {}
    for key in names:
        section = top.section(key) if top is not None and key in top.node else None
        if section is None:
            out[key] = StackNetwork(name=stack.scoped(key), labels=dict(stack.label))
            continue
        section.check_keys(keys.NETWORK_SUPPORTED, keys.NETWORK_KNOWN)
        external, name = _external(section, "network", key)
        driver = section.string("driver", "overlay")
        if driver not in ("overlay", "bridge"):
            section.unsupported("driver", f"the network driver {driver!r}")
        subnet = ""
        ipam = section.section("ipam")
        if ipam is not None:
            ipam.check_keys(keys.IPAM_SUPPORTED, keys.IPAM_KNOWN)
            for item, where, path in ipam.items("config"):
                if not isinstance(item, YMap):
                    raise StackFileError(where, path, "expected a mapping (subnet: CIDR)")
                config = Section(item, path, stack.findings)
                config.check_keys(keys.IPAM_CONFIG_SUPPORTED, keys.IPAM_CONFIG_KNOWN)
                if subnet and config.has("subnet"):
                    config.unsupported("subnet", "a second subnet")
                subnet = subnet or config.string("subnet")
        if external:
            out[key] = StackNetwork(name=name, external=True)
            continue
        _checked(section, "name" if section.has("name") else None, partial(validate.check_name, "network", name))
        labels = section.labels("labels")
        _checked(section, "labels", partial(validate.check_labels, "network label", labels))
        out[key] = StackNetwork(
            name=name if section.has("name") else stack.scoped(key),
            subnet=subnet,
            internal=section.boolean("internal"),
            attachable=section.boolean("attachable"),
            labels={**labels, **stack.label},
        )
    return out


def _volumes(stack: _Stack) -> dict[str, StackVolume]:
    top = stack.top.section("volumes")
    out: dict[str, StackVolume] = {}
    for key in top.node if top is not None else ():
        assert top is not None
        section = top.section(key)
        if section is None:
            out[key] = StackVolume(name=stack.scoped(key), labels=dict(stack.label))
            continue
        section.check_keys(keys.VOLUME_SUPPORTED, keys.VOLUME_KNOWN)
        external, name = _external(section, "volume", key)
        if external:
            out[key] = StackVolume(name=name, external=True)
            continue
        name = name if section.has("name") else stack.scoped(key)
        driver = section.string("driver", "local")
        options = {k: v or "" for k, v in section.mapping("driver_opts").items()}
        labels = section.labels("labels")
        _checked(section, "name" if section.has("name") else None, partial(_check_volume_name, name))
        _checked(section, "driver", partial(_check_volume_options, driver, options))
        out[key] = StackVolume(name=name, driver=driver, options=options, labels={**labels, **stack.label})
    return out


def _check_volume_name(name: str) -> None:
    from warren.mounts import check_volume_name

    check_volume_name(name)


def _check_volume_options(driver: str, options: dict[str, str]) -> None:
    from warren.mounts import check_volume_options

    check_volume_options(driver, options)


def _objects(stack: _Stack, kind: str) -> dict[str, StackObject]:
    """Top-level secrets or configs: read from `file:`, `environment:` or `content:`, or external."""
    singular = kind[:-1]
    top = stack.top.section(kind)
    out: dict[str, StackObject] = {}
    for key in top.node if top is not None else ():
        assert top is not None
        section = top.section(key)
        if section is None:
            raise top.error(key, f"a {singular} needs file:, environment:, content: or external: true")
        if kind == "secrets":
            section.check_keys(keys.SECRET_SUPPORTED, keys.SECRET_KNOWN)
        else:
            section.check_keys(keys.CONFIG_SUPPORTED, keys.CONFIG_KNOWN)
        external, name = _external(section, singular, key)
        if external:
            out[key] = StackObject(name=name)
            continue
        name = name if section.has("name") else stack.scoped(key)
        sources = [k for k in ("file", "environment", "content") if section.has(k)]
        if len(sources) != 1:
            raise section.error(None, f"a {singular} needs exactly one of file:, environment:, content: or external:")
        source = sources[0]
        if source == "file":
            data = stack.read_file(section, "file", section.string("file"), f"{singular} file")
        elif source == "environment":
            variable = section.string("environment")
            if variable not in stack.environ:
                raise section.error("environment", f"the environment variable {variable} is not set")
            data = stack.environ[variable].encode()
        else:
            data = section.string("content").encode()
        labels = section.labels("labels")
        _checked(section, "name" if section.has("name") else None, partial(validate.check_object_name, singular, name))
        _checked(section, source, partial(validate.check_value_size, singular, len(data)))
        _checked(section, "labels", partial(validate.check_labels, f"{singular} label", labels))
        out[key] = StackObject(name=name, data=data, labels={**labels, **stack.label})
    return out


# -- one service -------------------------------------------------------------------------------
def _service(stack: _Stack, s: Section, short: str, declared: _Declared) -> StackService:
    s.check_keys(keys.SERVICE_SUPPORTED, keys.SERVICE_KNOWN)
    name = stack.scoped(short)
    _checked(s, None, lambda: validate.check_name("service", name))
    image = s.string("image")
    if not image:
        raise s.error(None, "an image is required (Warren runs images; it does not build them)")
    deploy = s.section("deploy")
    if deploy is not None:
        deploy.check_keys(keys.DEPLOY_SUPPORTED, keys.DEPLOY_KNOWN)
        if deploy.choice("endpoint_mode", "vip", ("vip", "dnsrr")) == "dnsrr":
            deploy.unsupported("endpoint_mode", "endpoint_mode dnsrr")
    mode = ServiceMode(deploy.choice("mode", "replicated", ("replicated", "global")) if deploy else "replicated")
    replicas = s.integer("scale", 1)
    if deploy is not None and deploy.has("replicas"):
        replicas = deploy.integer("replicas", 1)
    if mode is ServiceMode.GLOBAL and (deploy is not None and deploy.has("replicas")):
        raise deploy.error("replicas", "a global service runs one task per node: it takes no replicas")
    limits, reservations, constraints = _resources(s, deploy)
    env = _environment(stack, s)
    labels = deploy.labels("labels") if deploy is not None else {}
    _checked(
        deploy or s, "labels" if deploy is not None else None, lambda: validate.check_labels("service label", labels)
    )
    spec = ServiceSpec(
        name=name,
        image=image,
        command=s.command("entrypoint"),
        args=s.command("command"),
        env=env,
        mode=mode,
        replicas=replicas if mode is ServiceMode.REPLICATED else 0,
        constraints=constraints,
        reservations=reservations,
        limits=limits,
        restart=_restart(s, deploy),
        health=_health(s),
        ports=_ports(s),
        labels=labels,
        stop_grace_period=s.duration("stop_grace_period", _DEFAULT_GRACE),
        stop_signal=_stop_signal(s),
        update=_rollout(deploy, "update_config"),
        rollback=_rollout(deploy, "rollback_config"),
        mounts=_mounts(s, declared),
        secrets=_file_refs(s, "secrets", declared.secrets, validate.SECRETS_DIR + "/"),
        configs=_file_refs(s, "configs", declared.configs, "/"),
        container=_container(s),
        networks=_attachments(s, short, declared),
    )
    _checked(s, None, lambda: validate.check_spec(spec))
    return StackService(
        spec=msgspec_replace_labels(spec, {**spec.labels, **stack.label}),
        depends_on=_depends_on(stack, s, declared),
    )


def msgspec_replace_labels(spec: ServiceSpec, labels: dict[str, str]) -> ServiceSpec:
    """The spec with the stack's label: added after warren.validate's checks, which keep the
    `warren.` prefix for Warren's own labels."""
    import msgspec

    return msgspec.structs.replace(spec, labels=labels)


def _resources(s: Section, deploy: Section | None) -> tuple[Resources, Resources, tuple[str, ...]]:
    limits = Resources(int(s.parsed("cpus", 0, parse_cpus)), int(s.parsed("mem_limit", 0, parse_size)))
    reservations = Resources(0, int(s.parsed("mem_reservation", 0, parse_size)))
    constraints: tuple[str, ...] = ()
    if deploy is None:
        return limits, reservations, constraints
    resources = deploy.section("resources")
    if resources is not None:
        resources.check_keys(keys.RESOURCES_SUPPORTED, keys.RESOURCES_SUPPORTED)
        for key, known in (("limits", keys.LIMITS_KNOWN), ("reservations", keys.RESERVATIONS_KNOWN)):
            section = resources.section(key)
            if section is None:
                continue
            section.check_keys(keys.LIMITS_SUPPORTED, known)
            value = Resources(int(section.parsed("cpus", 0, parse_cpus)), int(section.parsed("memory", 0, parse_size)))
            if key == "limits":
                limits = value
            else:
                reservations = value
    placement = deploy.section("placement")
    if placement is not None:
        placement.check_keys(keys.PLACEMENT_SUPPORTED, keys.PLACEMENT_KNOWN)
        for text, where, path in [(str(i), w, p) for i, w, p in placement.items("constraints")]:
            try:
                validate.check_constraint(text)
            except validate.ValidationError as exc:
                raise StackFileError(where, path, str(exc)) from None
        constraints = placement.strings("constraints")
        for item, where, path in placement.items("preferences"):
            if isinstance(item, YMap) and "spread" in item:
                spread = Section(item, path, s.findings)
                spread.unsupported("spread", f"the placement preference spread={spread.string('spread')}")
            else:
                raise StackFileError(where, path, "expected a preference such as spread: node.labels.zone")
    return limits, reservations, constraints


def _environment(stack: _Stack, s: Section) -> dict[str, str]:
    env: dict[str, str] = {}
    for item, where, path in s.items("env_file"):
        file, required = item, True
        if isinstance(item, YMap):
            entry = Section(item, path, s.findings)
            entry.check_keys(frozenset({"path", "required"}), frozenset({"path", "required", "format"}))
            file, required = entry.string("path"), entry.boolean("required", True)
        if not isinstance(file, str) or not file:
            raise StackFileError(where, path, "expected the path of an env file")
        try:
            data = stack.read(file)
        except OSError as exc:
            if not required:
                continue
            raise StackFileError(where, path, f"cannot read the env file {file}: {exc.strerror or exc}") from None
        try:
            env.update(parse_env_file(data.decode("utf-8"), stack.environ))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StackFileError(where, path, f"the env file {file}, {exc}") from None
    for key, value in s.mapping("environment").items():
        if value is None:  # a bare NAME: the caller's value, or not set at all (Compose's rule)
            if key in stack.environ:
                env[key] = stack.environ[key]
            continue
        env[key] = value
    _checked(s, "environment" if s.has("environment") else "env_file", lambda: validate.check_env(env))
    return env


def _restart(s: Section, deploy: Section | None) -> RestartPolicy:
    policy = deploy.section("restart_policy") if deploy is not None else None
    if policy is not None:
        policy.check_keys(keys.RESTART_POLICY_KNOWN, keys.RESTART_POLICY_KNOWN)
        default = RestartPolicy()
        condition = policy.choice("condition", default.condition.value, ("none", "on-failure", "any"))
        return RestartPolicy(
            condition=RestartCondition(condition),
            delay=policy.duration("delay", default.delay),
            max_attempts=policy.integer("max_attempts", 0),
            window=policy.duration("window", default.window),
        )
    if not s.has("restart"):
        return RestartPolicy()
    text = s.string("restart")
    word, _, count = text.partition(":")
    if word == "on-failure":
        attempts = int(count) if count.isascii() and count.isdigit() else 0 if not count else -1
        if attempts < 0:
            raise s.error("restart", f"invalid restart {_shown(text)}: on-failure[:MAX_ATTEMPTS]")
        return RestartPolicy(condition=RestartCondition.ON_FAILURE, max_attempts=attempts)
    if word not in _RESTART or count:
        raise s.error("restart", f"invalid restart {_shown(text)}: no, always, on-failure[:N] or unless-stopped")
    return RestartPolicy(condition=_RESTART[word])


def _health(s: Section) -> HealthCheck | None:
    h = s.section("healthcheck")
    if h is None:
        return None
    h.check_keys(keys.HEALTHCHECK_SUPPORTED, keys.HEALTHCHECK_KNOWN)
    if h.boolean("disable"):
        return None
    test = h.node.get("test")
    if isinstance(test, str):
        command: tuple[str, ...] = (*_HEALTH_SHELL, test)
    else:
        words = h.strings("test")
        if not words:
            return None  # no test: the image's own check, if any
        if words[0] == "NONE":
            return None
        if words[0] == "CMD":
            command = words[1:]
        elif words[0] == "CMD-SHELL":
            command = (*_HEALTH_SHELL, " ".join(words[1:]))
        else:
            raise h.error("test", f"the test starts with CMD, CMD-SHELL or NONE (got {_shown(words[0])})")
    default = HealthCheck()
    return HealthCheck(
        kind="cmd",
        command=command,
        interval=h.duration("interval", default.interval),
        timeout=h.duration("timeout", default.timeout),
        retries=h.integer("retries", default.retries, 1, validate.MAX_HEALTH_RETRIES),
        start_period=h.duration("start_period", default.start_period),
    )


def _stop_signal(s: Section) -> str:
    text = s.string("stop_signal")
    if text:
        _checked(s, "stop_signal", lambda: validate.signal_number(text))
    return text


def _rollout(deploy: Section | None, key: str) -> UpdateConfig:
    section = deploy.section(key) if deploy is not None else None
    default = UpdateConfig()
    if section is None:
        return default
    section.check_keys(keys.UPDATE_CONFIG_KNOWN, keys.UPDATE_CONFIG_KNOWN)
    actions = ("pause", "continue", "rollback") if key == "update_config" else ("pause", "continue")
    ratio = section.number("max_failure_ratio", default.max_failure_ratio)
    if not 0 <= ratio <= 1:
        raise section.error("max_failure_ratio", f"must be between 0 and 1 (got {ratio})")
    return UpdateConfig(
        parallelism=section.integer("parallelism", default.parallelism),
        delay=section.duration("delay", default.delay),
        order=UpdateOrder(section.choice("order", default.order.value, ("start-first", "stop-first"))),
        failure_action=FailureAction(section.choice("failure_action", default.failure_action.value, actions)),
        monitor=section.duration("monitor", default.monitor),
        max_failure_ratio=ratio,
    )


# -- ports -------------------------------------------------------------------------------------
_PORT_RE = re.compile(r"(?:(?:(?P<ip>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<published>[0-9]+(?:-[0-9]+)?)?:)?"
                      r"(?P<target>[0-9]+(?:-[0-9]+)?)(?:/(?P<protocol>[a-zA-Z]+))?")  # fmt: skip


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def _ports(s: Section) -> tuple[PortConfig, ...]:
    ports: list[PortConfig] = []
    for item, where, path in s.items("ports"):
        if isinstance(item, YMap):
            p = Section(item, path, s.findings)
            p.check_keys(keys.PORT_SUPPORTED, keys.PORT_KNOWN)
            target = p.integer("target", 0, 1, 65535)
            if not p.has("target"):
                raise p.error(None, "a port needs a target (the container's port)")
            published_text = p.string("published")
            if published_text and not re.fullmatch(r"[0-9]+(?:-[0-9]+)?", published_text):
                raise p.error("published", f"invalid published port {_shown(published_text)}")
            low, high = _range(published_text) if published_text else (0, 0)
            if low != high:
                raise p.error("published", "a published range is for the short syntax only; list each port")
            protocol = p.choice("protocol", "tcp", ("tcp", "udp"))
            mode = p.choice("mode", "ingress", ("ingress", "host"))
            ports.append(PortConfig(target=target, published=low, protocol=protocol, mode=mode))
            continue
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise StackFileError(where, path, f'expected a port such as "8080:80/udp" (got {_kind(item)})')
        match = _PORT_RE.fullmatch(str(item))
        if not match:
            raise StackFileError(where, path, f"invalid port {_shown(item)}: use [[IP:]PUBLISHED:]TARGET[/udp]")
        if match.group("ip"):
            here = YMap(where)
            here.put("host_ip", match.group("ip"), where)
            Section(here, path, s.findings).unsupported("host_ip", f"the host IP {match.group('ip')}")
        protocol = (match.group("protocol") or "tcp").lower()
        if protocol not in ("tcp", "udp"):
            raise StackFileError(where, path, f"invalid protocol {_shown(protocol)}: tcp or udp")
        t_low, t_high = _range(match.group("target"))
        p_low, p_high = _range(match.group("published")) if match.group("published") else (0, 0)
        if p_low and p_high - p_low != t_high - t_low:
            raise StackFileError(where, path, f"the ranges of {_shown(item)} are not the same length")
        for offset in range(t_high - t_low + 1):
            published = p_low + offset if p_low else 0
            if not 1 <= t_low + offset <= 65535 or published > 65535:
                raise StackFileError(where, path, f"port {_shown(item)} is out of range (1-65535)")
            ports.append(PortConfig(target=t_low + offset, published=published, protocol=protocol))
    return tuple(ports)


# -- mounts, secrets, configs ------------------------------------------------------------------
def _mounts(s: Section, declared: _Declared) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    for item, where, path in s.items("volumes"):
        mount = _mount(s, item, where, path, declared)
        if mount is None:
            continue
        try:
            check_mount(mount)
        except MountError as exc:
            raise StackFileError(where, path, str(exc)) from None
        mounts.append(mount)
    for text in s.strings("tmpfs"):
        target, _, options = text.partition(":")
        size = 0
        for option in filter(None, options.split(",")):
            k, _, v = option.partition("=")
            if k != "size":
                raise s.error("tmpfs", f"tmpfs option {_shown(option)}: only size= is supported here")
            try:
                size = parse_size(v)
            except ValueError as exc:
                raise s.error("tmpfs", str(exc)) from None
        mount = Mount(type=MountType.TMPFS, target=target, tmpfs_size=size)
        _checked(s, "tmpfs", partial(check_mount, mount))
        mounts.append(mount)
    return tuple(mounts)


def _volume_source(declared: _Declared, source: str, where: Where, path: str) -> str:
    if source not in declared.volumes:
        raise StackFileError(where, path, f"volume {source} is not declared in the top-level volumes")
    return declared.volumes[source]


def _mount(s: Section, item: object, where: Where, path: str, declared: _Declared) -> Mount | None:
    if isinstance(item, str):
        parts = item.split(":")
        if len(parts) == 1:
            here = YMap(where)
            here.put("volumes", item, where)
            Section(here, path.rsplit("[", 1)[0].rsplit(".", 1)[0], s.findings).unsupported(
                "volumes", f"the anonymous volume {item} (name it in the top-level volumes)"
            )
            return None
        if len(parts) > 3:
            raise StackFileError(where, path, f"invalid volume {_shown(item)}: use SOURCE:TARGET[:ro]")
        source, target = parts[0], parts[1]
        modes = set(parts[2].split(",")) if len(parts) == 3 else set()
        unknown = modes - {"ro", "rw", "z", "Z", "cached", "delegated", "consistent", "nocopy"}
        if unknown:
            raise StackFileError(where, path, f"invalid volume mode {_shown(','.join(sorted(unknown)))}: ro or rw")
        readonly = "ro" in modes
        if is_host_path(source):
            return Mount(type=MountType.BIND, target=target, source=source, readonly=readonly)
        return Mount(
            type=MountType.VOLUME,
            target=target,
            source=_volume_source(declared, source, where, path),
            readonly=readonly,
        )
    if not isinstance(item, YMap):
        raise StackFileError(where, path, f"expected SOURCE:TARGET or a mapping (got {_kind(item)})")
    m = Section(item, path, s.findings)
    m.check_keys(keys.VOLUME_MOUNT_SUPPORTED, keys.VOLUME_MOUNT_KNOWN)
    kind = m.choice("type", "volume", ("volume", "bind", "tmpfs", "cluster", "npipe", "image"))
    if kind not in ("volume", "bind", "tmpfs"):
        m.unsupported("type", f"the mount type {kind}")
        return None
    target, source, readonly = m.string("target"), m.string("source"), m.boolean("read_only")
    if not target:
        raise m.error(None, "a mount needs a target (a path in the container)")
    if kind == "tmpfs":
        tmpfs = m.section("tmpfs")
        size, mode = 0, 0
        if tmpfs is not None:
            tmpfs.check_keys(keys.TMPFS_KNOWN, keys.TMPFS_KNOWN)
            size = int(tmpfs.parsed("size", 0, parse_size))
            mode = _octal(tmpfs, "mode", 0)
        return Mount(type=MountType.TMPFS, target=target, readonly=readonly, tmpfs_size=size, tmpfs_mode=mode)
    if kind == "volume":
        if not source:
            m.unsupported("type", f"the anonymous volume at {target} (name it in the top-level volumes)")
            return None
        source = _volume_source(declared, source, m.where("source"), join(path, "source"))
        return Mount(type=MountType.VOLUME, target=target, source=source, readonly=readonly)
    return Mount(type=MountType.BIND, target=target, source=source, readonly=readonly)


def _octal(section: Section, key: str, default: int) -> int:
    """A file mode: a YAML number (0440 is octal there, as in Compose) or an octal string."""
    value = section.node.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,4}", value):
        return int(value, 8)
    raise section.error(key, f"expected an octal mode such as 0440 (got {_shown(value)})")


def _file_refs(s: Section, key: str, declared: dict[str, str], default_dir: str) -> tuple[FileRef, ...]:
    kind = key[:-1]
    refs: list[FileRef] = []
    for item, where, path in s.items(key):
        if isinstance(item, str):
            source, target, uid, gid, mode = item, "", 0, 0, 0o444
        elif isinstance(item, YMap):
            f = Section(item, path, s.findings)
            f.check_keys(keys.FILE_REF_KNOWN, keys.FILE_REF_KNOWN)
            source, target = f.string("source"), f.string("target")
            uid, gid = f.integer("uid", 0, 0, 2**32 - 2), f.integer("gid", 0, 0, 2**32 - 2)
            mode = _octal(f, "mode", 0o444)
        else:
            raise StackFileError(where, path, f"expected a {kind} name or a mapping (got {_kind(item)})")
        if source not in declared:
            raise StackFileError(where, path, f"{kind} {_shown(source)} is not declared in the top-level {key}")
        if not target.startswith("/"):
            target = default_dir + (target or source)
        ref = FileRef(source=declared[source], target=target, uid=uid, gid=gid, mode=mode)
        try:
            validate.check_file_ref(kind, ref)
        except validate.ValidationError as exc:
            raise StackFileError(where, path, str(exc)) from None
        refs.append(ref)
    return tuple(refs)


# -- container options, networks, dependencies -----------------------------------------------
def _container(s: Section) -> ContainerOptions:
    user = s.string("user")
    _checked(s, "user", lambda: check_user("user", user))
    caps: dict[str, tuple[str, ...]] = {}
    for key in ("cap_add", "cap_drop"):
        for item, where, path in s.items(key):
            try:
                capability(str(item))
            except OptionError as exc:
                raise StackFileError(where, path, str(exc)) from None
        caps[key] = s.strings(key)
    sysctls = {k: v or "" for k, v in s.mapping("sysctls").items()}
    for key, value in sysctls.items():
        _checked(s, "sysctls", partial(check_sysctl, key, value))
    ulimits: list[Ulimit] = []
    limits = s.section("ulimits")
    for key in limits.node if limits is not None else ():
        assert limits is not None
        given = limits.node[key]
        if isinstance(given, YMap):
            pair = Section(given, join(limits.path, key), s.findings)
            pair.check_keys(frozenset({"soft", "hard"}), frozenset({"soft", "hard"}))
            soft = pair.integer("soft", 0, 0, 2**63 - 1)
            hard = pair.integer("hard", 0, 0, 2**63 - 1)
        else:
            soft = hard = limits.integer(key, 0, 0, 2**63 - 1)
        ulimit = Ulimit(name=key, soft=soft, hard=hard)
        _checked(limits, key, partial(check_ulimit, ulimit))
        ulimits.append(ulimit)
    devices = []
    for item, where, path in s.items("devices"):
        try:
            devices.append(parse_device(str(item)))
        except OptionError as exc:
            raise StackFileError(where, path, str(exc)) from None
    options = ContainerOptions(
        user=user,
        workdir=s.string("working_dir"),
        hostname=s.string("hostname"),
        read_only=s.boolean("read_only"),
        init=s.boolean("init"),
        privileged=s.boolean("privileged"),
        cap_add=caps["cap_add"],
        cap_drop=caps["cap_drop"],
        devices=tuple(devices),
        sysctls=sysctls,
        ulimits=tuple(ulimits),
        labels=s.labels("labels"),
        dns=s.strings("dns"),
        dns_search=s.strings("dns_search"),
        dns_options=s.strings("dns_opt"),
        group_add=s.strings("group_add"),
        no_healthcheck=bool(s.section("healthcheck") and _health_disabled(s)),
    )
    for key in ("working_dir", "hostname", "labels", "dns", "dns_search", "dns_opt", "group_add"):
        if s.has(key):
            _checked(s, key, partial(_check_options_subset, options, key))
    return options


def _health_disabled(s: Section) -> bool:
    h = s.section("healthcheck")
    if h is None:
        return False
    test = h.node.get("test")
    return h.boolean("disable") or (isinstance(test, YList) and bool(test) and test[0] == "NONE")


def _check_options_subset(options: ContainerOptions, key: str) -> None:
    """warren.container's check of the whole options, reported at the key that set them."""
    from warren.container import check_options

    if key == "labels":
        validate.check_labels("container label", options.labels)
    check_options(options)


def _attachments(s: Section, short: str, declared: _Declared) -> tuple[NetworkAttachment, ...]:
    networks = s.section("networks")
    names = list(networks.node) if networks is not None else [DEFAULT_NETWORK]
    out = []
    for key in names:
        aliases: tuple[str, ...] = ()
        if networks is not None:
            if key not in declared.networks:
                raise networks.error(key, f"network {key} is not declared in the top-level networks")
            entry = networks.section(key)
            if entry is not None:
                entry.check_keys(keys.SERVICE_NETWORK_SUPPORTED, keys.SERVICE_NETWORK_KNOWN)
                aliases = entry.strings("aliases")
                for alias, where, path in entry.items("aliases"):
                    try:
                        validate.check_name("network alias", str(alias))
                    except validate.ValidationError as exc:
                        raise StackFileError(where, path, str(exc)) from None
        out.append(NetworkAttachment(network=declared.networks[key].name, aliases=(short, *aliases)))
    return tuple(out)


def _depends_on(stack: _Stack, s: Section, declared: _Declared) -> tuple[Dependency, ...]:
    depends = s.section("depends_on")
    if depends is None:
        return ()
    out = []
    for key in depends.node:
        if key not in declared.services:
            raise depends.error(key, f"service {key} is not in the stack")
        entry = depends.section(key)
        condition, required = DependencyCondition.STARTED, True
        if entry is not None:
            entry.check_keys(keys.DEPENDS_ON_SUPPORTED, keys.DEPENDS_ON_KNOWN)
            values = tuple(c.value for c in DependencyCondition)
            condition = DependencyCondition(entry.choice("condition", DependencyCondition.STARTED.value, values))
            required = entry.boolean("required", True)
        out.append(Dependency(service=stack.scoped(key), condition=condition, required=required))
    return tuple(out)
