"""`service create` and `service update` flags -> a types_pb2.ServiceSpec (pure: no I/O).

The manager validates the spec (its errors come back as INVALID_ARGUMENT, exit 2); here only
what argparse can check is checked.
"""

from __future__ import annotations

import argparse
from typing import Any

from warren.cli import mounts, network, secret, units
from warren.cli.container_flags import add_container_flags, apply_container_flags, env_from_files
from warren.cli.errors import CliError, Exit
from warren.cli.flags import value_type
from warren.text import shown

_COUNT = value_type(units.parse_count)
_CPUS = value_type(units.parse_cpus)
_SIZE = value_type(units.parse_size)
_DURATION = value_type(units.parse_duration)
_SECONDS = value_type(units.parse_seconds)
_PUBLISH = value_type(units.parse_publish_option)
_ENV = value_type(lambda s: units.parse_key_value(s, "environment variable"))
_LABEL = value_type(lambda s: units.parse_key_value(s, "label", require_value=False))
_HOSTPORT = value_type(units.parse_hostport)

HEALTH_SHELL = ("/bin/sh", "-c")  # --health-cmd runs through the task's shell, as Docker's does


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise ValueError(f"invalid health check URL {shown(text)}: expected http://... or https://...")
    return text


def _stop_signal(text: str) -> str:
    """A valid stop signal, spelled as Docker does: `quit` -> SIGQUIT, `9` stays 9."""
    from warren.validate import signal_number

    signal_number(text)  # ValidationError is a ValueError: argparse shows its message
    name = text.strip(" ").upper()
    return name if name.isdigit() or name.startswith("SIG") else f"SIG{name}"


def add_create_flags(p: argparse.ArgumentParser) -> None:
    """The spec that `service create` describes: its name, image, mode and the shared flags."""
    p.add_argument("name", metavar="NAME", help="service name; end with `-- ARG...` to replace the image's CMD")
    p.add_argument("--image", required=True, help="container image (pinned to its registry digest: ADR 34)")
    p.add_argument(
        "--mode",
        choices=("replicated", "global"),
        default="replicated",
        help="replicated: --replicas tasks; global: one task per eligible node",
    )
    p.add_argument("--replicas", type=_COUNT, metavar="N", help="number of tasks (default: 1)")
    p.add_argument("--env", "-e", type=_ENV, action="append", metavar="K=V", help="environment variable")
    p.add_argument("--constraint", action="append", metavar="EXPR", help="placement constraint, e.g. node.role==worker")
    p.add_argument(
        "--publish",
        "-p",
        type=_PUBLISH,
        action="append",
        metavar="PUBLISHED:TARGET[/PROTO]",
        help="publish a port: 8080:80, 5353:53/udp, or mode=host,published=8080,target=80 (its tasks' nodes only)",
    )
    p.add_argument("--label", "-l", type=_LABEL, action="append", metavar="K=V", help="service label")
    mounts.add_create_flags(p)
    secret.add_service_flags(p, update=False)
    network.add_service_flags(p, update=False)
    add_spec_flags(p)
    add_container_flags(p, update=False)


def add_update_flags(p: argparse.ArgumentParser) -> None:
    """What `service update` changes: add and remove flags, and the shared ones."""
    p.add_argument("name", metavar="NAME", help="name, ID or unique ID prefix; `-- ARG...` replaces the image's CMD")
    p.add_argument("--image", help="container image; the same tag again resolves it anew (a re-pushed tag)")
    p.add_argument("--replicas", type=_COUNT, metavar="N", help="number of tasks")
    p.add_argument("--env-add", type=_ENV, action="append", metavar="K=V", help="add or change a variable")
    p.add_argument("--env-rm", action="append", metavar="K", help="remove a variable")
    p.add_argument("--constraint-add", action="append", metavar="EXPR", help="add a placement constraint")
    p.add_argument("--constraint-rm", action="append", metavar="EXPR", help="remove a placement constraint")
    p.add_argument("--label-add", type=_LABEL, action="append", metavar="K=V", help="add or change a label")
    p.add_argument("--label-rm", action="append", metavar="K", help="remove a label")
    p.add_argument(
        "--publish-add", type=_PUBLISH, action="append", metavar="PUBLISHED:TARGET[/PROTO]", help="publish a port"
    )
    p.add_argument(
        "--publish-rm",
        type=value_type(units.parse_unpublish),
        action="append",
        metavar="PUBLISHED[/PROTO]",
        help="stop publishing a port",
    )
    p.add_argument("--no-healthcheck", action="store_true", help="remove the health check (the image's too)")
    p.add_argument(
        "--force", action="store_true", help="replace every task even if nothing changed (a rolling restart)"
    )
    mounts.add_update_flags(p)
    secret.add_service_flags(p, update=True)
    network.add_service_flags(p, update=True)
    add_spec_flags(p)
    add_container_flags(p, update=True)


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """Flags that create and update share."""
    p.add_argument(
        "--no-resolve-image",
        action="store_true",
        help="keep the image's tag as given instead of pinning it to the digest the registry names",
    )
    p.add_argument(
        "--with-registry-auth",
        action="store_true",
        help="send your Docker login for the image's registry (~/.docker/config.json): for this service only",
    )
    res = p.add_argument_group("resources")
    res.add_argument("--reserve-cpu", type=_CPUS, metavar="CORES", help="CPU reserved per task, e.g. 0.5")
    res.add_argument("--reserve-memory", type=_SIZE, metavar="SIZE", help="memory reserved per task, e.g. 512M")
    res.add_argument("--limit-cpu", type=_CPUS, metavar="CORES", help="CPU limit per task")
    res.add_argument("--limit-memory", type=_SIZE, metavar="SIZE", help="memory limit per task, e.g. 1G")

    restart = p.add_argument_group("restart policy")
    restart.add_argument(
        "--restart-condition",
        choices=("none", "on-failure", "any"),
        help="when to replace a task that exited (default: any)",
    )
    restart.add_argument("--restart-delay", type=_DURATION, metavar="DURATION", help="wait before restarting (5s)")
    restart.add_argument("--restart-max-attempts", type=_COUNT, metavar="N", help="give up after N (0 = never)")
    restart.add_argument(
        "--restart-window",
        type=_DURATION,
        metavar="DURATION",
        help="a task that ran this long resets the attempt count",
    )

    health = p.add_argument_group("health check")
    kind = health.add_mutually_exclusive_group()
    kind.add_argument("--health-cmd", metavar="CMD", help="shell command run in the task; exit 0 = healthy")
    kind.add_argument("--health-http", type=value_type(_url), metavar="URL", help="GET URL; 2xx/3xx = healthy")
    kind.add_argument("--health-tcp", type=_HOSTPORT, metavar="HOST:PORT", help="TCP connect succeeds = healthy")
    # More than 0: on the wire 0 means "unset", which the manager reads as the default (30s).
    health.add_argument("--health-interval", type=_SECONDS, metavar="DURATION", help="between checks (30s)")
    health.add_argument("--health-timeout", type=_SECONDS, metavar="DURATION", help="per check (30s)")
    health.add_argument("--health-retries", type=_COUNT, metavar="N", help="failures before unhealthy (3)")
    health.add_argument(
        "--health-start-period",
        type=_DURATION,
        metavar="DURATION",
        help="failures in this first period do not count (0s)",
    )

    for rollout in ("update", "rollback"):
        _add_rollout_flags(p, rollout)
    _add_deploy_flags(p)

    p.add_argument(
        "--stop-grace-period",
        type=_DURATION,
        metavar="DURATION",
        help="time between the stop signal and SIGKILL (default: 10s)",
    )
    p.add_argument(
        "--stop-signal",
        type=value_type(_stop_signal),
        metavar="SIGNAL",
        help="signal that asks a task to stop: a name (SIGTERM, TERM, SIGQUIT...) or 1-64 (default: SIGTERM)",
    )
    p.add_argument(
        "--stop-drain",
        type=_DURATION,
        metavar="DURATION",
        help="time a task about to stop stays out of the load balancing before its stop signal, "
        "at least until every node stopped routing to it (default: 0s, only that)",
    )


def _add_rollout_flags(p: argparse.ArgumentParser, kind: str) -> None:
    """--update-* or --rollback-*: how a change rolls out (ADR 33); unset flags keep the spec's."""
    during = "an update" if kind == "update" else "a rollback"
    group = p.add_argument_group(f"{kind} settings", f"how {during} replaces the tasks")
    group.add_argument(
        f"--{kind}-parallelism", type=_COUNT, metavar="N", help="tasks replaced at a time (1; 0 = all at once)"
    )
    group.add_argument(
        f"--{kind}-delay", type=_DURATION, metavar="DURATION", help="after a task succeeds, before the next (0s)"
    )
    group.add_argument(
        f"--{kind}-order",
        choices=("start-first", "stop-first"),
        help="start the new task before stopping the old one, or after (start-first)",
    )
    actions = ("pause", "continue", "rollback") if kind == "update" else ("pause", "continue")
    group.add_argument(f"--{kind}-failure-action", choices=actions, help="when tasks fail (pause)")
    group.add_argument(
        f"--{kind}-monitor",
        type=_DURATION,
        metavar="DURATION",
        help="a new task must stay ready this long to count as a success (5s)",
    )
    group.add_argument(
        f"--{kind}-max-failure-ratio",
        type=value_type(units.parse_ratio),
        metavar="RATIO",
        help="failed tasks tolerated, as a fraction of the replicas (0)",
    )


def _percent(text: str) -> int:
    value = units.parse_count(text)
    if value > 100:
        raise ValueError(f"must be a percentage, 0 to 100 (got {text})")
    return value


def _add_deploy_flags(p: argparse.ArgumentParser) -> None:
    """The deployment strategy (ADR 35); the manager refuses contradictory combinations."""
    group = p.add_argument_group("deployment strategy", "how the next version reaches the traffic")
    group.add_argument(
        "--deploy-strategy",
        choices=("rolling", "canary", "blue-green"),
        help="rolling (default); canary: a few new tasks first, then `service promote`; "
        "blue-green: a full new set, then one switch",
    )
    group.add_argument(
        "--canary-replicas", type=_COUNT, metavar="N", help="canary: new tasks started beside the old ones"
    )
    group.add_argument(
        "--canary-weight",
        type=value_type(_percent),
        metavar="PERCENT",
        help="canary: their share of new connections, whatever their number (default: their share of the tasks)",
    )
    group.add_argument(
        "--canary-auto-promote",
        type=_DURATION,
        metavar="DURATION",
        help="canary: promote once the canaries have been healthy this long (default: wait for `service promote`)",
    )
    group.add_argument(
        "--blue-green-keep",
        type=_DURATION,
        metavar="DURATION",
        help="blue-green: keep the old set this long after the switch, for an instant rollback (default: 5m)",
    )


def build_spec(args: argparse.Namespace) -> Any:
    """The ServiceSpec that `service create` flags describe."""
    from warren.api.v1 import types_pb2 as pb

    spec = pb.ServiceSpec(name=args.name, image=args.image, mode=args.mode)
    if args.mode == "global":
        if args.replicas is not None:
            raise CliError("--replicas does not apply to a global service (one task per node)", Exit.USAGE)
    else:
        spec.replicas = 1 if args.replicas is None else args.replicas
    _set_command(spec, args.command)
    spec.env.update(env_from_files(args))  # --env wins over a file's, as in Docker
    spec.env.update(dict(args.env or []))
    spec.constraints.extend(args.constraint or [])
    for published, target, protocol, mode in args.publish or []:
        spec.ports.add(published=published, target=target, protocol=protocol, mode=mode)
    spec.labels.update(dict(args.label or []))
    mounts.apply_create(spec, args)
    secret.apply_service_flags(spec, args)
    network.apply_service_flags(spec, args)
    if args.no_healthcheck and (_health_kind_given(args) or _health_options_given(args)):
        raise CliError("--no-healthcheck cannot be combined with other --health-* flags", Exit.USAGE)
    _apply_common(spec, args)
    apply_container_flags(spec, args, update=False)
    return spec


def apply_update(spec: Any, args: argparse.Namespace) -> None:
    """Change `spec` (a copy of the current one) as the `service update` flags say."""
    if args.image is not None:
        spec.image = args.image  # an empty image is refused by the manager, with its reason
    if args.replicas is not None:
        if spec.mode == "global":
            raise CliError("--replicas does not apply to a global service (one task per node)", Exit.USAGE)
        spec.replicas = args.replicas
    if args.command:
        _set_command(spec, args.command)
    for key in args.env_rm or []:
        spec.env.pop(key, None)
    spec.env.update(dict(args.env_add or []))
    removed = set(args.constraint_rm or [])
    kept = [c for c in spec.constraints if c not in removed]
    kept += [c for c in args.constraint_add or [] if c not in kept]
    del spec.constraints[:]
    spec.constraints.extend(kept)
    for key in args.label_rm or []:
        spec.labels.pop(key, None)
    spec.labels.update(dict(args.label_add or []))
    drop = set(args.publish_rm or [])
    drop |= {(published, protocol) for published, _, protocol, _ in args.publish_add or []}  # replaced below
    ports = [p for p in spec.ports if (p.published, p.protocol or "tcp") not in drop]
    del spec.ports[:]
    for p in ports:
        spec.ports.add().CopyFrom(p)
    for published, target, protocol, mode in args.publish_add or []:
        spec.ports.add(published=published, target=target, protocol=protocol, mode=mode)
    mounts.apply_update(spec, args)
    secret.apply_service_flags(spec, args)
    network.apply_service_flags(spec, args)
    if args.force:
        spec.force_update += 1
    if args.no_healthcheck:
        if _health_kind_given(args) or _health_options_given(args):
            raise CliError("--no-healthcheck cannot be combined with other --health-* flags", Exit.USAGE)
        spec.ClearField("health")
        spec.container.no_healthcheck = True
    elif _health_kind_given(args) and spec.HasField("container"):
        spec.container.no_healthcheck = False
    _apply_common(spec, args)
    apply_container_flags(spec, args, update=True)


def _set_command(spec: Any, command: list[str] | None) -> None:
    """Words after `--` replace the image's CMD and keep its ENTRYPOINT, as the words after the
    image do in Docker; --entrypoint replaces the ENTRYPOINT."""
    if command:
        del spec.args[:]
        spec.args.extend(command)


def _apply_common(spec: Any, args: argparse.Namespace) -> None:
    """Resources, restart policy, health check and grace period: create and update alike."""
    from warren import model

    for attr, field, value in (
        ("reservations", "nano_cpus", args.reserve_cpu),
        ("reservations", "memory_bytes", args.reserve_memory),
        ("limits", "nano_cpus", args.limit_cpu),
        ("limits", "memory_bytes", args.limit_memory),
    ):
        if value is not None:
            setattr(getattr(spec, attr), field, value)

    restart = {
        "condition": args.restart_condition,
        "delay": args.restart_delay,
        "max_attempts": args.restart_max_attempts,
        "window": args.restart_window,
    }
    if any(v is not None for v in restart.values()):
        if not spec.HasField("restart"):  # the manager reads a present policy as complete
            d = model.RestartPolicy()
            spec.restart.condition = d.condition.value
            spec.restart.delay, spec.restart.max_attempts, spec.restart.window = d.delay, d.max_attempts, d.window
        for field, value in restart.items():
            if value is not None:
                setattr(spec.restart, field, value)

    if _health_kind_given(args):
        if not spec.HasField("health"):
            health = model.HealthCheck()
            spec.health.interval, spec.health.timeout = health.interval, health.timeout
            spec.health.retries, spec.health.start_period = health.retries, health.start_period
        del spec.health.command[:]
        spec.health.target = ""
        if args.health_cmd is not None:
            spec.health.kind = "cmd"
            spec.health.command.extend([*HEALTH_SHELL, args.health_cmd])
        elif args.health_http is not None:
            spec.health.kind, spec.health.target = "http", args.health_http
        else:
            spec.health.kind, spec.health.target = "tcp", args.health_tcp
    if _health_options_given(args):
        if not spec.HasField("health"):
            raise CliError(
                "--health-interval/-timeout/-retries/-start-period need a check: "
                "--health-cmd, --health-http or --health-tcp",
                Exit.USAGE,
            )
        for field in ("interval", "timeout", "retries", "start_period"):
            value = getattr(args, f"health_{field}")
            if value is not None:
                setattr(spec.health, field, value)

    for kind in ("update", "rollback"):
        config = getattr(spec, kind)
        for field in ("parallelism", "delay", "order", "failure_action", "monitor", "max_failure_ratio"):
            value = getattr(args, f"{kind}_{field}")
            if value is not None:
                setattr(config, field, value)

    if args.deploy_strategy is not None:  # a new strategy starts from its own defaults
        spec.ClearField("deploy")
        spec.deploy.strategy = args.deploy_strategy
    for field in ("canary_replicas", "canary_weight", "canary_auto_promote", "blue_green_keep"):
        value = getattr(args, field)
        if value is not None:
            setattr(spec.deploy, field, value)

    if args.stop_grace_period is not None:
        spec.stop_grace_period = args.stop_grace_period
    if args.stop_signal is not None:
        spec.stop_signal = args.stop_signal
    if args.stop_drain is not None:
        spec.stop_drain = args.stop_drain


def _health_kind_given(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.health_cmd, args.health_http, args.health_tcp))


def _health_options_given(args: argparse.Namespace) -> bool:
    return any(
        v is not None
        for v in (args.health_interval, args.health_timeout, args.health_retries, args.health_start_period)
    )


def only_replicas_changed(old: Any, new: Any) -> bool:
    a, b = type(old)(), type(new)()
    a.CopyFrom(old)
    b.CopyFrom(new)
    a.ClearField("replicas")
    b.ClearField("replicas")
    return a == b
