"""`warren stack deploy|plan|ls|services|ps|rm` and `warren apply -f` (#14, ADR 49).

The Compose files are read here (warren.stack.load) and sent whole as one StackSpec; the
manager checks it, plans it and commits it as one entry. `stack plan` exits 0 when the deploy
would change nothing and 10 when it would (terraform's -detailed-exitcode, on a number that does
not clash with Warren's other exit codes); errors keep their usual codes (2 for bad input).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, add_watch_flag
from warren.cli.progress import add_wait_flags, task_name, task_note, wait_converged

PLAN_CHANGES = 10  # `stack plan`: the deploy would change something
_SIGN = {"create": "+", "update": "~", "remove": "-"}


def register(groups: Any) -> None:
    group = groups.add_parser("stack", help="deploy and manage stacks (Compose files)")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser("deploy", help="deploy a stack from Compose files, or update it")
    _add_file_flags(p, "-c", "--compose-file")
    p.add_argument("name", metavar="NAME")
    _add_deploy_flags(p)
    add_wait_flags(p)
    p.set_defaults(func=cmd_deploy)

    p = cmds.add_parser("plan", help="show what a deploy would do; exit 0: no change, 10: changes")
    _add_file_flags(p, "-c", "--compose-file")
    p.add_argument("name", metavar="NAME")
    _add_deploy_flags(p)
    add_format_flag(p)
    p.set_defaults(func=cmd_plan)

    p = cmds.add_parser("ls", help="list stacks")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls)

    p = cmds.add_parser("services", help="list the services of a stack")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-q", "--quiet", action="store_true", help="print IDs only")
    add_format_flag(p)
    p.set_defaults(func=cmd_services)

    p = cmds.add_parser("ps", help="list the tasks of a stack")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-a", "--all", action="store_true", help="also the tasks that ended")
    p.add_argument("-q", "--quiet", action="store_true", help="print IDs only")
    add_format_flag(p)
    add_watch_flag(p)
    p.set_defaults(func=cmd_ps)

    p = cmds.add_parser("rm", help="remove stacks: everything they created (not what they declared external)")
    p.add_argument("names", metavar="NAME", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = groups.add_parser("apply", help="deploy the stack a Compose file names (`name:` at its top)")
    _add_file_flags(p, "-f", "--file")
    _add_deploy_flags(p)
    add_wait_flags(p)
    p.set_defaults(func=cmd_apply, name=None)


def _add_file_flags(p: argparse.ArgumentParser, short: str, long: str) -> None:
    p.add_argument(
        short, long, dest="files", action="append", required=True, metavar="FILE", help="a Compose file (repeatable)"
    )


def _add_deploy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prune", action="store_true", help="remove the stack's services that the files no longer have")
    p.add_argument(
        "--allow-unsupported", action="store_true", help="deploy although the files use keys Warren does not support"
    )


def _load(args: argparse.Namespace) -> Any:
    """The files as a StackSpec message; a file that cannot be loaded is one line, exit 2."""
    from warren.api import stackconvert
    from warren.stack.check import finding_line
    from warren.stack.load import StackFileError, load_stack

    try:
        stack = load_stack([Path(f) for f in args.files], args.name, os.environ)
    except StackFileError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot read the stack files: {exc.strerror or exc}: {exc.filename}", Exit.USAGE) from None
    for warning in stack.warnings:  # the loader's own (an unset variable): the manager never sees them
        sys.stderr.write(f"warren: warning: {finding_line(warning, limit=1000)}\n")
    sys.stderr.flush()
    return stackconvert.stack_to_pb(stack)


def deploy_request(stack: Any, args: argparse.Namespace, dry_run: bool) -> Any:
    from warren.api.v1 import control_pb2 as pb

    return pb.DeployStackRequest(
        stack=stack, dry_run=dry_run, prune=args.prune, allow_unsupported=args.allow_unsupported
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from warren.cli.client import connect

    stack = _load(args)
    with connect(args) as client:
        reply = client.call("DeployStack", deploy_request(stack, args, dry_run=True))
    if args.format == "json":
        from warren.cli import output

        output.print_json(reply)
    else:
        print_plan(reply)
    return PLAN_CHANGES if reply.changes else 0


def print_plan(reply: Any, out: Any = None) -> None:
    out = out or sys.stdout
    lines = []
    for change in reply.changes:
        lines.append(f"{_SIGN.get(change.action, '?')} {change.kind} {change.name}")
        lines += [f"    {d}" for d in change.diff]
        if change.replaces:
            verb = "stop" if change.action == "remove" else "replace"
            lines.append(f"    will {verb} {change.replaces} task{'s' if change.replaces != 1 else ''}")
    if reply.orphaned:
        lines.append(f"orphaned (not in the files; --prune removes them): {', '.join(reply.orphaned)}")
    lines += [f"warning: {w}" for w in reply.warnings]
    lines += list(reply.unplaceable)
    counts = {a: sum(1 for c in reply.changes if c.action == a) for a in ("create", "update", "remove")}
    if reply.changes:
        lines.append(
            f"Plan for stack {reply.stack}: {counts['create']} to create, {counts['update']} to update, "
            f"{counts['remove']} to remove."
        )
    else:
        lines.append(f"No changes: stack {reply.stack} is as the files say.")
    out.write("".join(line + "\n" for line in lines))
    out.flush()


def cmd_deploy(args: argparse.Namespace) -> int:
    return deploy(args, _load(args))


def cmd_apply(args: argparse.Namespace) -> int:
    return deploy(args, _load(args))


def deploy(args: argparse.Namespace, stack: Any) -> int:
    """Deploy, print what was done, then wait for the stack's services to converge."""
    import time

    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        reply = client.call("DeployStack", deploy_request(stack, args, dry_run=False))
        print_plan(reply)
        if args.detach or not reply.changes:
            return 0
        updated = {c.name for c in reply.changes if c.kind == "service" and c.action == "update"}
        deadline = time.monotonic() + args.wait_timeout
        code = 0
        for service_id in reply.service_ids:
            service = client.call("GetService", pb.GetServiceRequest(service=service_id))
            left = max(deadline - time.monotonic(), 0.0)
            code = code or wait_converged(client, service, left, check_version=service.spec.name in updated)
        return code


def _stack_services(client: Any, name: str) -> list[Any]:
    from warren.api.v1 import control_pb2 as pb
    from warren.stack.spec import STACK_LABEL

    services = client.list_all("ListServices", pb.ListServicesRequest(), "services")
    found = sorted((s for s in services if s.spec.labels.get(STACK_LABEL) == name), key=lambda s: s.spec.name)
    if not found:
        stacks = {s.name for s in client.call("ListStacks", pb.ListStacksRequest()).stacks}
        if name not in stacks:
            raise CliError(f"stack {name} not found", Exit.NOT_FOUND)
    return found


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        stacks = list(client.call("ListStacks", pb.ListStacksRequest()).stacks)
    if args.format == "json":
        output.print_json(stacks)
        return 0
    output.print_table(
        ["NAME", "SERVICES", "SECRETS", "CONFIGS", "NETWORKS", "VOLUMES"],
        [(s.name, s.services, s.secrets, s.configs, s.networks, s.volumes) for s in stacks],
    )
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        services = _stack_services(client, args.name)
    if args.format == "json":
        output.print_json(services)
    elif args.quiet:
        for s in services:
            print(s.id)
    else:
        output.print_table(
            ["ID", "NAME", "MODE", "REPLICAS", "IMAGE"],
            [
                (
                    output.short_id(s.id),
                    s.spec.name,
                    s.spec.mode or "replicated",
                    f"{s.running_tasks}/{s.spec.replicas if s.spec.mode != 'global' else s.desired_tasks}",
                    s.spec.image,
                )
                for s in services
            ],
        )
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from warren.cli.client import connect
    from warren.cli.watch import check_watch_args, watch

    check_watch_args(args)
    with connect(args) as client:
        if args.watch:  # events name no stack: any service's or task's change re-lists
            return watch(args, lambda: _print_ps(client, args), [("type", "service"), ("type", "task")])
        return _print_ps(client, args)


def _print_ps(client: Any, args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output

    services = _stack_services(client, args.name)
    tasks = []
    for s in services:
        request = pb.ListTasksRequest(service=s.id, include_history=args.all)
        tasks += sorted(
            client.list_all("ListTasks", request, "tasks"), key=lambda t: (t.slot, t.node_id, -t.created_at)
        )
    nodes = (
        {} if args.quiet else {n.id: n.hostname for n in client.list_all("ListNodes", pb.ListNodesRequest(), "nodes")}
    )
    if args.format == "json":
        output.print_json(tasks)
    elif args.quiet:
        for t in tasks:
            print(t.id)
    else:
        output.print_table(
            ["ID", "NAME", "NODE", "DESIRED", "CURRENT", "ERROR/MESSAGE"],
            [
                (
                    output.short_id(t.id),
                    task_name(t.service_name, t),
                    nodes.get(t.node_id, output.short_id(t.node_id)),
                    t.desired_state,
                    t.state,
                    task_note(t),
                )
                for t in tasks
            ],
        )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:

        def remove(name: str) -> None:
            reply = client.call("RemoveStack", pb.RemoveStackRequest(name=name))
            for removed in reply.removed:
                print(f"removed {removed}")
            for volume in reply.kept:
                sys.stderr.write(
                    f"warren: kept volume {volume}: a task of the stack still holds it; "
                    f"`warren stack rm {name}` again once it stopped\n"
                )

        return output.per_name(args.names, remove)
