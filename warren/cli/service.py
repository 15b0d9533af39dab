"""`warren service ...`: create, list, inspect, scale, update and remove services; show logs.

Specs are built as types_pb2.ServiceSpec straight from the flags (service_spec); the manager
validates them (its errors come back as INVALID_ARGUMENT, exit 2). Write commands wait for the
service to converge unless --detach is given (progress.wait_converged). Logs: service_logs;
what `inspect` shows: service_inspect.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from warren.cli import port_nodes, service_rebalance, units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, add_watch_flag, value_type
from warren.cli.progress import add_wait_flags, task_note, wait_converged
from warren.cli.service_inspect import cmd_inspect, port_text, rollout_brief
from warren.cli.service_logs import add_logs_flags, cmd_logs
from warren.cli.service_spec import (
    add_create_flags,
    add_update_flags,
    apply_update,
    build_spec,
    only_replicas_changed,
)
from warren.cli.task_exec import add_exec_parser
from warren.text import shown

_COUNT = value_type(units.parse_count)
_COMMAND_HELP = "Anything after `--` replaces the image's command: -- COMMAND [ARG...]."


# -- parser ------------------------------------------------------------------------------------
def register(groups: Any) -> None:
    group = groups.add_parser("service", help="manage services")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser("create", help="create a service", epilog=_COMMAND_HELP)
    add_create_flags(p)
    add_wait_flags(p)
    p.set_defaults(func=cmd_create, accepts_command=True)

    p = cmds.add_parser("ls", help="list services")
    p.add_argument("-q", "--quiet", action="store_true", help="print IDs only")
    add_format_flag(p)
    add_watch_flag(p)
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
    add_watch_flag(p)
    p.set_defaults(func=cmd_ps)

    p = cmds.add_parser(
        "scale",
        help="change the number of tasks",
        description="warren service scale NAME --replicas N, or warren service scale NAME=N [NAME=N...]",
    )
    p.add_argument("targets", nargs="+", metavar="NAME[=N]")
    p.add_argument("--replicas", type=_COUNT, metavar="N")
    add_wait_flags(p)
    p.set_defaults(func=cmd_scale)

    p = cmds.add_parser("update", help="change a service's spec", epilog=_COMMAND_HELP)
    add_update_flags(p)
    add_wait_flags(p)
    p.set_defaults(func=cmd_update, accepts_command=True)

    p = cmds.add_parser(
        "rollback",
        help="return to an earlier version of a service's spec",
        description="A rollback is a new version whose spec is an earlier one's; the replica count stays "
        "as it is unless --restore-replicas. It rolls out under the service's --rollback-* settings.",
    )
    p.add_argument("name", help="name, ID or unique ID prefix")
    p.add_argument("--to-version", type=_COUNT, metavar="V", help="the version to return to (default: the one before)")
    p.add_argument("--restore-replicas", action="store_true", help="also return to that version's replica count")
    add_wait_flags(p)
    p.set_defaults(func=cmd_rollback)

    p = cmds.add_parser(
        "promote",
        help="end a canary's wait: roll the rest of the tasks to its version",
        description="The canaries of a --deploy-strategy canary update wait, taking their share of "
        "the traffic, until promoted; the rest of the tasks then roll under the --update-* settings. "
        "`warren service rollback` removes the canaries instead.",
    )
    p.add_argument("name", help="name, ID or unique ID prefix")
    add_wait_flags(p)
    p.set_defaults(func=cmd_promote)
    service_rebalance.add_parser(cmds)

    p = cmds.add_parser("history", help="list the kept versions of a service's spec, with what changed")
    p.add_argument("name", help="name, ID or unique ID prefix")
    add_format_flag(p)
    p.set_defaults(func=cmd_history)

    p = cmds.add_parser(
        "logs",
        help="show the output of a service's tasks",
        description="Each line is prefixed with its task: SERVICE.SLOT.TASKID@NODE. Lines of different "
        "tasks are merged in the order they arrive.",
    )
    add_logs_flags(p)
    p.set_defaults(func=cmd_logs)
    add_exec_parser(cmds, "service")

    p = cmds.add_parser("rm", help="remove services and their tasks")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_rm)


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
        request = pb.CreateServiceRequest(spec=spec, no_resolve_image=args.no_resolve_image)
        if args.with_registry_auth:
            request.registry_auth.CopyFrom(_caller_auth(spec.image))
        service = client.call("CreateService", request)
        _warn(service)
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
        # The same unpinned tag given again: the manager looks it up again (ADR 34).
        retry_pin = args.image is not None and "@" not in spec.image and not args.no_resolve_image
        if spec == current.spec and not retry_pin and not args.with_registry_auth:
            sys.stderr.write(f"{name}: nothing to change\n")
            return 0
        if only_replicas_changed(current.spec, spec) and not retry_pin and not args.with_registry_auth:
            # Sent as a scale: an update bumps the version, and the manager would then replace
            # every task one by one for a change that concerns none of them.
            service = client.call("ScaleService", pb.ScaleServiceRequest(service=current.id, replicas=spec.replicas))
            redeploy = False
        else:
            request = pb.UpdateServiceRequest(
                service=current.id,
                spec=spec,
                version=current.version,
                no_resolve_image=args.no_resolve_image,
                resolve_image=args.image is not None,
            )
            if args.with_registry_auth:
                request.registry_auth.CopyFrom(_caller_auth(spec.image))
            service = client.call("UpdateService", request)
            _warn(service)
            redeploy = service.version != current.version  # not when only a tag was retried, or a scale
            if not redeploy and spec == current.spec:  # the tag could still not be pinned (warned)
                sys.stderr.write(f"{name}: nothing to change\n")
                return 0
        print(name, flush=True)
        if args.detach:
            return 0
        return wait_converged(client, service, args.wait_timeout, check_version=redeploy)


def _caller_auth(image: str) -> Any:
    """`--with-registry-auth`: the caller's own login for the image's registry (ADR 43)."""
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.registry import caller_login

    host, username, password = caller_login(image)
    return pb.RegistryAuth(host=host, username=username, password=password)


def _warn(service: Any) -> None:
    """What the manager says the operator should know about a create or update (ADR 34)."""
    for warning in service.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    sys.stderr.flush()


def cmd_rollback(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    if args.to_version == 0:
        raise CliError("--to-version must be a version number (1 or more); see `warren service history`", Exit.USAGE)
    with connect(args) as client:
        current = client.call("GetService", pb.GetServiceRequest(service=args.name))
        request = pb.RollbackServiceRequest(
            service=current.id,
            to_version=args.to_version or 0,
            restore_replicas=args.restore_replicas,
            version=current.version,
        )
        earlier = [r.version for r in current.history if r.version < current.version]
        target = args.to_version or (earlier[-1] if earlier else "?")
        service = client.call("RollbackService", request)
        print(
            f"{service.spec.name}: rolling back to the spec of version {target} (as version {service.version})",
            flush=True,
        )
        if args.detach:
            return 0
        return wait_converged(client, service, args.wait_timeout, check_version=True, rolling_back=True)


def cmd_promote(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        current = client.call("GetService", pb.GetServiceRequest(service=args.name))
        request = pb.PromoteServiceRequest(service=current.id, version=current.version)
        service = client.call("PromoteService", request)
        print(f"{service.spec.name}: promoted the canaries of version {service.version}", flush=True)
        if args.detach:
            return 0
        return wait_converged(client, service, args.wait_timeout, check_version=True)


def cmd_history(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        service = client.call("GetService", pb.GetServiceRequest(service=args.name))
    if args.format == "json":
        output.print_json(list(service.history))
        return 0
    output.print_table(
        ["VERSION", "CREATED", "IMAGE", "CHANGE"],
        [
            (
                f"{r.version}{' (current)' if r.version == service.version else ''}",
                output.ago(r.at),
                r.spec.image,
                r.summary,
            )
            for r in reversed(service.history)
        ],
    )
    return 0


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
    from warren.cli.client import connect
    from warren.cli.watch import check_watch_args, watch

    check_watch_args(args)
    with connect(args) as client:
        if args.watch:  # a task's state changes the REPLICAS column
            return watch(args, lambda: _print_ls(client, args), [("type", "service"), ("type", "task")])
        return _print_ls(client, args)


def _print_ls(client: Any, args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output

    services = sorted(client.list_all("ListServices", pb.ListServicesRequest(), "services"), key=lambda s: s.spec.name)
    if args.format == "json":
        output.print_json(list(services))
    elif args.quiet:
        for s in services:
            print(s.id)
    else:
        output.print_table(
            ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS", "ROLLOUT"],
            [
                (
                    output.short_id(s.id),
                    s.spec.name,
                    s.spec.mode or "replicated",
                    f"{s.running_tasks}/{s.spec.replicas if s.spec.mode != 'global' else s.desired_tasks}",
                    s.spec.image,
                    ", ".join(port_text(p) for p in s.spec.ports),
                    rollout_brief(s),
                )
                for s in services
            ],
        )
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect
    from warren.cli.watch import check_watch_args, watch

    check_watch_args(args)
    with connect(args) as client:
        if not args.watch:
            return _print_ps(client, args)
        service = client.call("GetService", pb.GetServiceRequest(service=args.name))
        return watch(args, lambda: _print_ps(client, args), [("service", service.id)])


def _print_ps(client: Any, args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.task_table import current_state, history_names, slot_order

    service = client.call("GetService", pb.GetServiceRequest(service=args.name))
    tasks = client.list_all("ListTasks", pb.ListTasksRequest(service=service.id, include_history=args.all), "tasks")
    nodes = (
        {}
        if args.quiet or args.format == "json"
        else {n.id: n.hostname for n in client.list_all("ListNodes", pb.ListNodesRequest(), "nodes")}
    )
    host_ports = port_nodes.host_ports(service.spec.ports)  # a PORTS column: where tasks publish them
    ordered = sorted(tasks, key=slot_order)
    if args.format == "json":
        output.print_json(ordered)
        return 0
    if args.quiet:
        for t in ordered:
            print(t.id)
        return 0
    rows = [
        (
            output.short_id(t.id),
            name,
            nodes.get(t.node_id, output.short_id(t.node_id)),
            t.spec_version,
            t.desired_state,
            current_state(t),
            t.health,
            *([port_nodes.task_ports(t, host_ports)] if host_ports else []),
            task_note(t),
        )
        for t, name in zip(ordered, history_names(ordered), strict=True)
    ]
    ports_column = ["PORTS"] if host_ports else []
    output.print_table(
        ["ID", "NAME", "NODE", "VERSION", "DESIRED", "CURRENT", "HEALTH", *ports_column, "ERROR/MESSAGE"], rows
    )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        return output.per_name(
            args.names, lambda name: client.call("RemoveService", pb.RemoveServiceRequest(service=name))
        )
