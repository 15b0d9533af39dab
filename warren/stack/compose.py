"""Compose to Warren: a merged, interpolated Compose tree as a `StackSpec` (#14, ADR 48). Pure.

Every value is checked where it is read (warren.stack.section), so an error names its key path
and file:line; every service spec then passes warren.validate's own checks here, not later on
the manager. A key Warren does not honour becomes a `Finding` (warren.stack.keys); nothing is
silently dropped. The files `env_file` and `file:` name are read through the caller's reader.
The top-level objects are in warren.stack.toplevel, what a service attaches in warren.stack.attach.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial

import msgspec

from warren import validate
from warren.container import (
    OptionError,
    capability,
    check_options,
    check_sysctl,
    check_ulimit,
    check_user,
    parse_device,
)
from warren.model import (
    ContainerOptions,
    FailureAction,
    HealthCheck,
    Resources,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    Ulimit,
    UpdateConfig,
    UpdateOrder,
)
from warren.stack import attach, keys, toplevel
from warren.stack.interpolate import parse_env_file
from warren.stack.section import Context, Declared, Reader, Section, checked, shown_value
from warren.stack.spec import StackService, StackSpec
from warren.stack.tree import StackFileError, YList, YMap, join
from warren.text import parse_cpus, parse_size

STACK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")  # Compose's project names, short enough for NAME_service
SERVICE_NAME_RE = re.compile(r"[a-zA-Z0-9._-]+")
_HEALTH_SHELL = ("/bin/sh", "-c")  # CMD-SHELL, as Docker runs it
_DEFAULT_GRACE = ServiceSpec(name="-", image="-").stop_grace_period
_RESTART = {"no": RestartCondition.NONE, "always": RestartCondition.ANY, "unless-stopped": RestartCondition.ANY}


def map_stack(tree: YMap, name: str, environ: Mapping[str, str], read: Reader) -> StackSpec:
    """The stack `name` that `tree` describes. Raises StackFileError."""
    if not STACK_NAME_RE.fullmatch(name):
        raise StackFileError(
            tree.at("name") if "name" in tree else tree.where,
            "name",
            f"invalid stack name {shown_value(name)}: 1-31 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
        )
    stack = Context(tree, name, environ, read)
    stack.top.check_keys(keys.TOP_SUPPORTED | keys.TOP_IGNORED, keys.TOP_KNOWN)
    services = stack.top.section("services")
    if services is None or not services.node:
        raise stack.top.error("services" if "services" in tree else None, "a stack needs at least one service")
    networks = toplevel.networks(stack)
    volumes = toplevel.volumes(stack)
    secrets = toplevel.objects(stack, "secrets")
    configs = toplevel.objects(stack, "configs")
    declared = Declared(
        networks={n: net for n, net in networks.items()},
        volumes={n: vol.name for n, vol in volumes.items()},
        secrets={n: obj.name for n, obj in secrets.items()},
        configs={n: obj.name for n, obj in configs.items()},
        services=set(services.node),
    )
    out: list[StackService] = []
    used_networks: set[str] = set()
    published: dict[tuple[int, str], str] = {}  # a published port is the cluster's: one service each
    for service_name in services.node:
        section = services.section(service_name)
        if not SERVICE_NAME_RE.fullmatch(service_name):
            raise services.error(service_name, "a service name is letters, digits, '.', '_' or '-'")
        if section is None:
            raise services.error(service_name, "expected a mapping (the service's keys)")
        service = _service(stack, section, service_name, declared)
        used_networks.update(a.network for a in service.spec.networks)
        for port in (p for p in service.spec.ports if p.published):
            key = (port.published, port.protocol)
            if key in published:
                message = f"port {port.published}/{port.protocol} is already published by service {published[key]}"
                raise section.error("ports", message)
            published[key] = service_name
        out.append(service)
    dependencies: dict[str, list[str]] = {}
    for short, service in zip(services.node, out, strict=True):
        dependencies[short] = [d.service.removeprefix(f"{name}_") for d in service.depends_on]
    _check_cycles(services, dependencies)
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


def _check_cycles(services: Section, graph: dict[str, list[str]]) -> None:
    """depends_on may not loop: such a stack could never start (Compose refuses it too)."""
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        trail: list[str] = []
        stack = [(start, iter(graph[start]))]
        on_trail = {start}
        trail.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                trail.pop()
                on_trail.discard(node)
                done.add(node)
            elif child in on_trail:
                loop = " -> ".join([*trail[trail.index(child) :], child])
                section = services.section(child)
                assert section is not None
                raise section.error("depends_on", f"the dependencies loop: {loop}")
            elif child not in done:
                stack.append((child, iter(graph[child])))
                trail.append(child)
                on_trail.add(child)


# -- one service -------------------------------------------------------------------------------
def _service(stack: Context, s: Section, short: str, declared: Declared) -> StackService:
    s.check_keys(keys.SERVICE_SUPPORTED, keys.SERVICE_KNOWN)
    name = stack.scoped(short)
    checked(s, None, lambda: validate.check_name("service", name))
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
    checked(
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
        ports=attach.ports(s),
        labels=labels,
        stop_grace_period=s.duration("stop_grace_period", _DEFAULT_GRACE),
        stop_signal=_stop_signal(s),
        update=_rollout(deploy, "update_config"),
        rollback=_rollout(deploy, "rollback_config"),
        mounts=attach.mounts(s, declared),
        secrets=attach.file_refs(s, "secrets", declared.secrets, validate.SECRETS_DIR + "/"),
        configs=attach.file_refs(s, "configs", declared.configs, "/"),
        container=_container(s),
        networks=attach.attachments(s, short, declared),
    )
    checked(s, None, lambda: validate.check_spec(spec))
    return StackService(
        spec=_with_stack_label(spec, {**spec.labels, **stack.label}),
        depends_on=attach.depends_on(stack, s, declared),
    )


def _with_stack_label(spec: ServiceSpec, labels: dict[str, str]) -> ServiceSpec:
    """The spec with the stack's label: added after warren.validate's checks, which keep the
    `warren.` prefix for Warren's own labels."""
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


def _environment(stack: Context, s: Section) -> dict[str, str]:
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
    checked(s, "environment" if s.has("environment") else "env_file", lambda: validate.check_env(env))
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
            raise s.error("restart", f"invalid restart {shown_value(text)}: on-failure[:MAX_ATTEMPTS]")
        return RestartPolicy(condition=RestartCondition.ON_FAILURE, max_attempts=attempts)
    if word not in _RESTART or count:
        raise s.error("restart", f"invalid restart {shown_value(text)}: no, always, on-failure[:N] or unless-stopped")
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
            raise h.error("test", f"the test starts with CMD, CMD-SHELL or NONE (got {shown_value(words[0])})")
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
        checked(s, "stop_signal", lambda: validate.signal_number(text))
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


# -- container options ---------------------------------------------------------------------------
def _container(s: Section) -> ContainerOptions:
    user = s.string("user")
    checked(s, "user", lambda: check_user("user", user))
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
        checked(s, "sysctls", partial(check_sysctl, key, value))
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
        checked(limits, key, partial(check_ulimit, ulimit))
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
            checked(s, key, partial(_check_options_subset, options, key))
    return options


def _health_disabled(s: Section) -> bool:
    h = s.section("healthcheck")
    if h is None:
        return False
    test = h.node.get("test")
    return h.boolean("disable") or (isinstance(test, YList) and bool(test) and test[0] == "NONE")


def _check_options_subset(options: ContainerOptions, key: str) -> None:
    """warren.container's check of the whole options, reported at the key that set them."""
    if key == "labels":
        validate.check_labels("container label", options.labels)
    check_options(options)
