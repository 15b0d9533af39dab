"""`warren service ...`: create, list, inspect, scale, update and remove services; show logs.

Specs are built as types_pb2.ServiceSpec straight from the flags; the manager validates them
(its errors come back as INVALID_ARGUMENT, exit 2). Write commands wait for the service to
converge unless --detach is given (see wait_converged).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, value_type
from warren.text import shown

_COUNT = value_type(units.parse_count)
_CPUS = value_type(units.parse_cpus)
_SIZE = value_type(units.parse_size)
_DURATION = value_type(units.parse_duration)
_SECONDS = value_type(units.parse_seconds)
_PUBLISH = value_type(units.parse_publish)
_ENV = value_type(lambda s: units.parse_key_value(s, "environment variable"))
_LABEL = value_type(lambda s: units.parse_key_value(s, "label", require_value=False))
_HOSTPORT = value_type(units.parse_hostport)

HEALTH_SHELL = ("/bin/sh", "-c")  # --health-cmd runs through the task's shell, as Docker's does
POLL_INTERVAL = 0.2
_COMMAND_HELP = "Anything after `--` replaces the image's command: -- COMMAND [ARG...]."


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


# -- parser ------------------------------------------------------------------------------------
def register(groups: Any) -> None:
    group = groups.add_parser("service", help="manage services")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser("create", help="create a service", epilog=_COMMAND_HELP)
    p.add_argument("name", metavar="NAME", help="service name; end with `-- COMMAND ARG...` to set the command")
    p.add_argument("--image", required=True, help="container image")
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
        help="publish a port, e.g. 8080:80 or 5353:53/udp",
    )
    p.add_argument("--label", "-l", type=_LABEL, action="append", metavar="K=V", help="service label")
    _add_spec_flags(p)
    _add_wait_flags(p)
    p.set_defaults(func=cmd_create, accepts_command=True)

    p = cmds.add_parser("ls", help="list services")
    p.add_argument("-q", "--quiet", action="store_true", help="print IDs only")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls)

    p = cmds.add_parser("inspect", help="show a service in detail")
    p.add_argument("name", help="name, ID or unique ID prefix")
    add_format_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = cmds.add_parser("ps", help="list the tasks of a service")
    p.add_argument("name", help="name, ID or unique ID prefix")
    p.add_argument("-a", "--all", action="store_true", help="include dead tasks kept as history")
    p.add_argument("-q", "--quiet", action="store_true", help="print task IDs only")
    add_format_flag(p)
    p.set_defaults(func=cmd_ps)

    p = cmds.add_parser(
        "scale",
        help="change the number of tasks",
        description="warren service scale NAME --replicas N, or warren service scale NAME=N [NAME=N...]",
    )
    p.add_argument("targets", nargs="+", metavar="NAME[=N]")
    p.add_argument("--replicas", type=_COUNT, metavar="N")
    _add_wait_flags(p)
    p.set_defaults(func=cmd_scale)

    p = cmds.add_parser("update", help="change a service's spec", epilog=_COMMAND_HELP)
    p.add_argument("name", metavar="NAME", help="name, ID or unique ID prefix; `-- COMMAND ARG...` sets the command")
    p.add_argument("--image", help="container image")
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
    p.add_argument("--no-healthcheck", action="store_true", help="remove the health check")
    _add_spec_flags(p)
    _add_wait_flags(p)
    p.set_defaults(func=cmd_update, accepts_command=True)

    p = cmds.add_parser(
        "logs",
        help="show the output of a service's tasks",
        description="Each line is prefixed with its task: SERVICE.SLOT.TASKID@NODE. Lines of different "
        "tasks are merged in the order they arrive.",
    )
    p.add_argument("name", help="name, ID or unique ID prefix")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output until Ctrl-C")
    p.add_argument(
        "-n",
        "--tail",
        type=value_type(parse_tail),
        default=-1,
        metavar="N",
        help="only the last N lines of each task (default: all)",
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="show when each line arrived (RFC 3339, UTC)")
    p.add_argument(
        "--since",
        type=value_type(parse_since),
        metavar="DURATION|TIME",
        help="only lines since then: a duration ago (10m) or a time (2025-01-02T10:00:00Z)",
    )
    p.set_defaults(func=cmd_logs)

    p = cmds.add_parser("rm", help="remove services and their tasks")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_rm)


def _add_spec_flags(p: argparse.ArgumentParser) -> None:
    """Flags that create and update share."""
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


def _add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true", help="return at once instead of waiting for the tasks")
    p.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=_SECONDS,
        default=60.0,
        metavar="DURATION",
        help="give up waiting after this long, exit 1 (default: 60s)",
    )


# -- spec building (pure: no I/O) --------------------------------------------------------------
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
    spec.env.update(dict(args.env or []))
    spec.constraints.extend(args.constraint or [])
    for published, target, protocol in args.publish or []:
        spec.ports.add(published=published, target=target, protocol=protocol, mode="ingress")
    spec.labels.update(dict(args.label or []))
    _apply_common(spec, args)
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
    drop |= {(published, protocol) for published, _, protocol in args.publish_add or []}  # replaced below
    ports = [p for p in spec.ports if (p.published, p.protocol or "tcp") not in drop]
    del spec.ports[:]
    for p in ports:
        spec.ports.add().CopyFrom(p)
    for published, target, protocol in args.publish_add or []:
        spec.ports.add(published=published, target=target, protocol=protocol, mode="ingress")
    if args.no_healthcheck:
        if _health_kind_given(args) or _health_options_given(args):
            raise CliError("--no-healthcheck cannot be combined with other --health-* flags", Exit.USAGE)
        spec.ClearField("health")
    _apply_common(spec, args)


def _set_command(spec: Any, command: list[str] | None) -> None:
    if command:
        del spec.command[:], spec.args[:]
        spec.command.append(command[0])
        spec.args.extend(command[1:])


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

    if args.stop_grace_period is not None:
        spec.stop_grace_period = args.stop_grace_period
    if args.stop_signal is not None:
        spec.stop_signal = args.stop_signal


def _health_kind_given(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.health_cmd, args.health_http, args.health_tcp))


def _health_options_given(args: argparse.Namespace) -> bool:
    return any(
        v is not None
        for v in (args.health_interval, args.health_timeout, args.health_retries, args.health_start_period)
    )


def scale_targets(args: argparse.Namespace) -> list[tuple[str, int]]:
    """[(service, replicas)] from `NAME --replicas N` or `NAME=N...`."""
    if args.replicas is not None:
        if len(args.targets) != 1 or "=" in args.targets[0]:
            raise CliError("with --replicas, give exactly one service NAME", Exit.USAGE)
        return [(args.targets[0], args.replicas)]
    out = []
    for target in args.targets:
        name, sep, count = target.partition("=")
        if not sep or not name:
            raise CliError(f"invalid scale target {shown(target)}: expected NAME=N, or NAME --replicas N", Exit.USAGE)
        try:
            out.append((name, units.parse_count(count)))
        except ValueError as exc:
            raise CliError(f"invalid scale target {shown(target)}: {exc}", Exit.USAGE) from None
    return out


# -- commands ----------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        service = client.call("CreateService", pb.CreateServiceRequest(spec=spec))
        print(service.id, flush=True)
        if args.detach:
            return 0
        return wait_converged(client, service, args.wait_timeout, check_version=False)


def cmd_update(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        current = client.call("GetService", pb.GetServiceRequest(service=args.name))
        spec = type(current.spec)()
        spec.CopyFrom(current.spec)
        apply_update(spec, args)
        name = current.spec.name
        if spec == current.spec:
            sys.stderr.write(f"{name}: nothing to change\n")
            return 0
        if only_replicas_changed(current.spec, spec):
            # Sent as a scale: an update bumps the version, and the manager would then replace
            # every task one by one for a change that concerns none of them.
            service = client.call("ScaleService", pb.ScaleServiceRequest(service=current.id, replicas=spec.replicas))
            redeploy = False
        else:
            request = pb.UpdateServiceRequest(service=current.id, spec=spec, version=current.version)
            service = client.call("UpdateService", request)
            redeploy = True
        print(name, flush=True)
        if args.detach:
            return 0
        return wait_converged(client, service, args.wait_timeout, check_version=redeploy)


def only_replicas_changed(old: Any, new: Any) -> bool:
    a, b = type(old)(), type(new)()
    a.CopyFrom(old)
    b.CopyFrom(new)
    a.ClearField("replicas")
    b.ClearField("replicas")
    return a == b


def cmd_scale(args: argparse.Namespace) -> int:
    targets = scale_targets(args)
    import time

    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    scaled = []
    code = 0
    with connect(args) as client:
        for name, replicas in targets:
            try:
                scaled.append(client.call("ScaleService", pb.ScaleServiceRequest(service=name, replicas=replicas)))
            except CliError as exc:
                sys.stderr.write(f"warren: {exc.message}\n")
                code = exc.code
                continue
            print(f"{name} scaled to {replicas}", flush=True)
        if args.detach:
            return code
        deadline = time.monotonic() + args.wait_timeout
        for service in scaled:
            result = wait_converged(client, service, max(deadline - time.monotonic(), 0.0), check_version=False)
            code = code or result
    return code


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        services = sorted(client.call("ListServices", pb.ListServicesRequest()).services, key=lambda s: s.spec.name)
    if args.format == "json":
        output.print_json(list(services))
    elif args.quiet:
        for s in services:
            print(s.id)
    else:
        output.print_table(
            ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
            [
                (
                    output.short_id(s.id),
                    s.spec.name,
                    s.spec.mode or "replicated",
                    f"{s.running_tasks}/{s.spec.replicas if s.spec.mode != 'global' else s.desired_tasks}",
                    s.spec.image,
                    ", ".join(_port(p) for p in s.spec.ports),
                )
                for s in services
            ],
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        s = client.call("GetService", pb.GetServiceRequest(service=args.name))
    if args.format == "json":
        output.print_json(s)
        return 0
    spec = s.spec
    mode = f"global ({s.desired_tasks} tasks)" if spec.mode == "global" else f"replicated ({spec.replicas} replicas)"
    fields: list[tuple[str, Any]] = [
        ("ID", s.id),
        ("Name", spec.name),
        ("Version", s.version),
        ("Created", output.timestamp(s.created_at)),
        ("Updated", output.timestamp(s.updated_at)),
        ("Mode", mode),
        ("Tasks", f"{s.running_tasks} running of {s.desired_tasks} desired"),
        ("Virtual IP", s.vip or "-"),
        ("Image", spec.image),
        ("Command", shlex.join([*spec.command, *spec.args])),
        ("Env", [f"{k}={v}" for k, v in sorted(spec.env.items())]),
        ("Labels", [f"{k}={v}" for k, v in sorted(spec.labels.items())]),
        ("Constraints", list(spec.constraints)),
        ("Reservations", _resources(spec.reservations)),
        ("Limits", _resources(spec.limits)),
        ("Ports", [_port(p) for p in spec.ports]),
    ]
    if spec.HasField("restart"):
        r = spec.restart
        fields.append(
            (
                "Restart",
                f"{r.condition or 'any'}, delay {units.format_duration(r.delay)}, "
                f"max attempts {r.max_attempts or 'unlimited'}, window {units.format_duration(r.window)}",
            )
        )
    if spec.HasField("health"):
        h = spec.health
        shell = tuple(h.command[:2]) == HEALTH_SHELL and len(h.command) == 3
        probe = (h.command[2] if shell else shlex.join(h.command)) or h.target
        fields.append(
            (
                "Health check",
                f"{h.kind} {probe}, every {units.format_duration(h.interval)}, "
                f"timeout {units.format_duration(h.timeout)}, {h.retries} retries, "
                f"start period {units.format_duration(h.start_period)}",
            )
        )
    if spec.HasField("stop_grace_period"):
        fields.append(("Stop grace", units.format_duration(spec.stop_grace_period)))
    if spec.stop_signal:
        fields.append(("Stop signal", spec.stop_signal))
    output.print_fields(fields)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        service = client.call("GetService", pb.GetServiceRequest(service=args.name))
        tasks = client.call("ListTasks", pb.ListTasksRequest(service=service.id, include_history=args.all)).tasks
        nodes = (
            {}
            if args.quiet or args.format == "json"
            else {n.id: n.hostname for n in client.call("ListNodes", pb.ListNodesRequest()).nodes}
        )
    ordered = sorted(tasks, key=lambda t: (t.slot or 0, t.node_id if not t.slot else "", -t.created_at))
    if args.format == "json":
        output.print_json(ordered)
        return 0
    if args.quiet:
        for t in ordered:
            print(t.id)
        return 0
    rows = []
    previous = None
    for t in ordered:
        name = task_name(service.spec.name, t)
        rows.append(
            (
                output.short_id(t.id),
                name if name != previous else " \\_ " + name,
                nodes.get(t.node_id, output.short_id(t.node_id)),
                t.desired_state,
                f"{t.state} {output.ago(t.updated_at or t.created_at)}".strip(),
                t.health,
                _task_note(t),
            )
        )
        previous = name
    output.print_table(["ID", "NAME", "NODE", "DESIRED", "CURRENT", "HEALTH", "ERROR/MESSAGE"], rows)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    code = 0
    with connect(args) as client:
        for name in args.names:
            try:
                client.call("RemoveService", pb.RemoveServiceRequest(service=name))
            except CliError as exc:
                if exc.code in (Exit.UNAVAILABLE, Exit.CREDENTIALS):
                    raise
                sys.stderr.write(f"warren: {exc.message}\n")
                code = exc.code
                continue
            print(name)
    return code


def parse_tail(text: str) -> int:
    """--tail: "all" (-1) or a number of lines."""
    if text.strip().lower() == "all":
        return -1
    try:
        return units.parse_count(text)
    except ValueError:
        raise ValueError(f"invalid --tail {shown(text)}: use a number of lines or 'all'") from None


def parse_since(text: str, now: float | None = None) -> float:
    """--since: a Unix time from a duration ago ("10m") or an RFC 3339 time."""
    import datetime as dt
    import time

    try:
        return (time.time() if now is None else now) - units.parse_duration(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid --since {shown(text)}: use a duration (10m) or a time (2025-01-02T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a time without a zone is local time, as `date` shows it
    return moment.timestamp()


def cmd_logs(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    out = sys.stdout.buffer
    with connect(args) as client:
        hostnames = {n.id: n.hostname for n in client.call("ListNodes", pb.ListNodesRequest()).nodes}
        looked_up: set[str] = set()
        request = pb.ServiceLogsRequest(service=args.name, follow=args.follow, tail=args.tail, since=args.since or 0.0)
        stream = client.stream("ServiceLogs", request)
        try:
            for batch in stream:
                for msg in batch.messages:
                    if msg.note:
                        sys.stderr.write(f"warren: warning: {msg.note}\n")
                        sys.stderr.flush()
                        continue
                    if msg.node_id not in hostnames and msg.node_id not in looked_up:
                        looked_up.add(msg.node_id)  # a node that joined meanwhile: look once
                        nodes = client.call("ListNodes", pb.ListNodesRequest()).nodes
                        hostnames.update({n.id: n.hostname for n in nodes})
                    out.write(format_log_line(msg, hostnames, args.timestamps))
                out.flush()
        except KeyboardInterrupt:
            if not args.follow:
                raise
            return 0  # Ctrl-C is how a follow ends
        finally:
            stream.close()
    return 0


# -- formatting --------------------------------------------------------------------------------
def format_log_line(msg: Any, hostnames: dict[str, str], timestamps: bool = False) -> bytes:
    """Docker's shape: [TIME ]web.1.TASKID@NODE    | LINE, with the line's bytes as they came."""
    import datetime as dt

    name = f"{msg.service_name}.{msg.slot}" if msg.slot else f"{msg.service_name}.{msg.node_id[:12]}"
    prefix = f"{name}.{msg.task_id[:12]}@{hostnames.get(msg.node_id) or msg.node_id[:12]}    | "
    if timestamps:
        moment = dt.datetime.fromtimestamp(msg.timestamp, dt.UTC)
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ ") + prefix
    return prefix.encode() + msg.data + b"\n"


def task_name(service_name: str, task: Any) -> str:
    """web.3 for replica 3; web.<node id> for a global task."""
    return f"{service_name}.{task.slot}" if task.slot else f"{service_name}.{task.node_id[:12]}"


def _task_note(task: Any) -> str:
    if task.error:
        return task.error
    if task.state in ("running", "complete", "shutdown"):
        return ""
    return task.message


def _port(p: Any) -> str:
    return f"*:{p.published}->{p.target}/{p.protocol or 'tcp'}"


def _resources(r: Any) -> str:
    parts = []
    if r.nano_cpus:
        parts.append(f"{units.format_cpus(r.nano_cpus)} CPU")
    if r.memory_bytes:
        parts.append(units.format_size(r.memory_bytes))
    return ", ".join(parts)


# -- waiting for convergence -------------------------------------------------------------------
_SETTLED = ("assigned", "running")
_GLOBAL_STABLE_POLLS = 5  # a global service's task count is only known once it stops changing
_IDLE_ASSIGNED_POLLS = 15  # ~3 s of assigned tasks that no agent moves: stop waiting


class Convergence:
    """Where a service's tasks stand, from one ListTasks answer.

    A service has converged once every desired task runs the current spec version. Tasks
    assigned to a node whose agent never picks them up (no agent runs there) stay "assigned";
    `settled` counts those too, so the wait can end saying so instead of hanging.
    """

    def __init__(self, service: Any, tasks: Any, check_version: bool) -> None:
        spec = service.spec
        live = [t for t in tasks if t.desired_state == "running"]
        self.name = spec.name
        self.current = [t for t in live if not check_version or t.spec_version >= service.version]
        self.stale = len(live) - len(self.current)
        self.target = len(live) if spec.mode == "global" else spec.replicas
        self.settled = [t for t in self.current if t.state in _SETTLED]
        self.running = sum(1 for t in self.current if t.state == "running")
        self.waiting = [t for t in self.current if t.state not in _SETTLED]
        self.extra = len(live) - self.target
        self.done = len(self.settled) == self.target and not self.extra and not self.stale
        self.all_running = self.done and self.running == self.target
        self.fingerprint = tuple(sorted((t.id, t.state) for t in self.current))

    def lines(self) -> list[str]:
        head = f"{self.name}: overall progress: {min(len(self.settled), self.target)} of {self.target} tasks assigned"
        if self.running:
            head += f", {min(self.running, self.target)} running"
        if self.extra > 0:
            head += f", {self.extra} more to stop"
        out = [head]
        for t in sorted(self.waiting, key=lambda t: t.slot)[:5]:
            note = _task_note(t)
            out.append(f"  {task_name(self.name, t)}: {t.state}" + (f": {note}" if note else ""))
        if len(self.waiting) > 5:
            out.append(f"  ... and {len(self.waiting) - 5} more")
        if self.stale:
            out.append(
                f"  {self.stale} task(s) still run an older version; a rolling update replaces the next one "
                "once the new task is running"
                + ("" if self.running else " (no task runs yet: does their node run an agent?)")
            )
        return out

    def summary(self) -> str:
        n, r = self.target, self.running
        if n == 0:
            return f"{self.name}: converged; no task is desired"
        if r == n:
            return f"{self.name}: {n} of {n} tasks running"
        if r == 0:
            return f"{self.name}: {n} of {n} tasks assigned; no agent has started them (does their node run one?)"
        return (
            f"{self.name}: {n} of {n} tasks assigned, {r} running; no agent has started the others "
            "(does their node run one?)"
        )


class _Progress:
    """Progress lines on stderr: redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown: list[str] = []
        self.printed: set[str] = set()

    def show(self, lines: list[str]) -> None:
        if lines == self.shown:
            return
        if self.tty:
            if self.shown:
                self.stream.write(f"\x1b[{len(self.shown)}F\x1b[J")
            fresh = lines
        else:  # a log: each line once, not the whole block again on every change
            fresh = [line for line in lines if line not in self.printed]
            self.printed.update(fresh)
        self.stream.write("".join(line + "\n" for line in fresh))
        self.stream.flush()
        self.shown = lines


def wait_converged(client: Any, service: Any, timeout: float, check_version: bool) -> int:
    """Poll the service's tasks until it converges (0), `timeout` passes (CliError, exit 1),
    or the operator presses Ctrl-C (0: the service stays and keeps converging)."""
    import time

    from warren.api.v1 import control_pb2 as pb

    progress = _Progress(sys.stderr)
    deadline = time.monotonic() + timeout
    stable, last_ids = 0, None
    state = None
    try:
        while True:
            tasks = client.call("ListTasks", pb.ListTasksRequest(service=service.id)).tasks
            state = Convergence(service, tasks, check_version)
            progress.show(state.lines())
            # Done when all run; or when every task is at least assigned and nothing has moved
            # for a while (their nodes run no agent). Global services need a stable count too.
            stable = stable + 1 if state.done and state.fingerprint == last_ids else int(state.done)
            last_ids = state.fingerprint
            needed = _GLOBAL_STABLE_POLLS if service.spec.mode == "global" else 1
            if state.done and stable >= (needed if state.all_running else _IDLE_ASSIGNED_POLLS):
                sys.stderr.write(state.summary() + "\n")
                return 0
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"\nstopped waiting: {service.spec.name} keeps converging (see `warren service ps {service.spec.name}`)\n"
        )
        return 0
    assert state is not None  # the loop polls at least once
    lines = state.lines()
    reason = lines[1].strip() if len(lines) > 1 else "the tasks did not settle"
    name = service.spec.name
    raise CliError(
        f"timed out after {units.format_duration(timeout)} waiting for {name} to converge "
        f"({min(len(state.settled), state.target)} of {state.target} tasks assigned): {reason}; "
        f"the service stays, see `warren service ps {name}`",
        Exit.FAILURE,
    )
