"""`warren node ...`: list, inspect, drain/label and remove cluster nodes."""

from __future__ import annotations

import argparse
from typing import Any

from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, add_watch_flag, value_type


def register(groups: Any) -> None:
    group = groups.add_parser("node", help="manage nodes")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser("ls", help="list nodes")
    p.add_argument("-q", "--quiet", action="store_true", help="print IDs only")
    add_format_flag(p)
    add_watch_flag(p)
    p.set_defaults(func=cmd_ls)

    p = cmds.add_parser(
        "ps",
        help="list the tasks on nodes",
        description="The tasks placed on each NODE (a hostname, an ID or a unique ID prefix; there is no "
        "default node: the CLI does not run on one), as `docker node ps`. Without -a, only each slot's "
        "current task.",
    )
    p.add_argument("nodes", nargs="+", metavar="NAME|ID")
    p.add_argument("-a", "--all", action="store_true", help="include dead tasks kept as history")
    p.add_argument(
        "-f",
        "--filter",
        dest="filters",
        action="append",
        type=value_type(parse_task_filter),
        metavar="KEY=VALUE",
        help="desired-state=STATE (e.g. running, shutdown); repeat for any of several states",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print task IDs only")
    p.add_argument("--no-trunc", action="store_true", help="full IDs, image digests and errors")
    add_format_flag(p)
    add_watch_flag(p)
    p.set_defaults(func=cmd_ps)

    p = cmds.add_parser("inspect", help="show a node in detail")
    p.add_argument("node", metavar="NAME|ID", help="hostname, ID or unique ID prefix")
    add_format_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = cmds.add_parser("update", help="change a node's availability or labels")
    p.add_argument("node", metavar="NAME|ID", help="hostname, ID or unique ID prefix")
    p.add_argument(
        "--availability",
        choices=("active", "pause", "drain"),
        help="active: takes tasks; pause: keeps its tasks, takes no new ones; drain: moves its tasks away",
    )
    p.add_argument(
        "--label-add",
        type=value_type(lambda s: units.parse_key_value(s, "label", require_value=False)),
        action="append",
        metavar="K=V",
        help="add or change a label",
    )
    p.add_argument("--label-rm", action="append", metavar="K", help="remove a label")
    p.set_defaults(func=cmd_update)

    for verb, role, text in (
        ("promote", "manager", "make workers managers: each node's agent starts a manager, which joins Raft"),
        ("demote", "worker", "make managers workers: each leaves Raft and its manager process stops"),
    ):
        p = cmds.add_parser(verb, help=text)
        p.add_argument("nodes", nargs="+", metavar="NAME|ID")
        p.set_defaults(func=cmd_set_role, role=role)

    p = cmds.add_parser(
        "rotate-key",
        help="give nodes a new WireGuard key pair (every node switches to it at once)",
        description="Each node's agent makes a new key pair, the managers publish its public key, and "
        "every node of the mesh switches to it on the same update. Waits until each new key is published.",
    )
    p.add_argument("nodes", nargs="+", metavar="NAME|ID")
    p.add_argument("-d", "--detach", action="store_true", help="do not wait for the new keys to be published")
    p.set_defaults(func=cmd_rotate_key)

    p = cmds.add_parser("rm", help="remove nodes from the cluster")
    p.add_argument("nodes", nargs="+", metavar="NAME|ID")
    p.add_argument("-f", "--force", action="store_true", help="remove even if the node is still ready")
    p.set_defaults(func=cmd_rm)


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.cli.client import connect
    from warren.cli.watch import check_watch_args, watch

    check_watch_args(args)
    with connect(args) as client:
        if args.watch:
            return watch(args, lambda: _print_ls(client, args), [("type", "node")])
        return _print_ls(client, args)


def _print_ls(client: Any, args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output

    nodes = sorted(client.list_all("ListNodes", pb.ListNodesRequest(), "nodes"), key=lambda n: (n.hostname, n.id))
    if args.format == "json":
        output.print_json(list(nodes))
    elif args.quiet:
        for n in nodes:
            print(n.id)
    else:
        output.print_table(
            ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDRESS", "CPUS", "MEMORY", "MESSAGE"],
            [
                (
                    output.short_id(n.id),
                    n.hostname,
                    n.status,
                    n.availability,
                    _role(n),
                    n.addr,
                    units.format_cpus(n.resources.nano_cpus) if n.resources.nano_cpus else "",
                    units.format_size(n.resources.memory_bytes) if n.resources.memory_bytes else "",
                    n.status_message,  # why it is not ready, e.g. its session is failing
                )
                for n in nodes
            ],
        )
    return 0


def parse_task_filter(text: str) -> tuple[str, str]:
    """`desired-state=running` as (key, value); anything else is a ValueError naming what is."""
    key, eq, value = (part.strip() for part in text.partition("="))
    if not eq or key != "desired-state":
        raise ValueError(f"invalid --filter {text[:80]!r}: use desired-state=STATE")
    from warren.model import TaskState

    states = [state.label for state in TaskState]
    if value not in states:
        raise ValueError(f"invalid desired-state {value[:40]!r}: use one of {', '.join(states)}")
    return key, value


def cmd_ps(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect
    from warren.cli.watch import check_watch_args, watch

    check_watch_args(args)
    with connect(args) as client:
        # Resolved once: a name that matches no node fails before anything is listed.
        nodes = {}
        for name in args.nodes:
            node = client.call("GetNode", pb.GetNodeRequest(node=name))
            nodes[node.id] = node.hostname
        if args.watch:  # a node's filter matches its tasks' events and its own
            return watch(args, lambda: _print_ps(client, args, nodes), [("node", node_id) for node_id in nodes])
        return _print_ps(client, args, nodes)


def _print_ps(client: Any, args: argparse.Namespace, nodes: dict[str, str]) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.task_table import print_node_tasks, service_order

    desired = {value for _, value in args.filters or ()}
    tasks = []
    for node_id in nodes:
        request = pb.ListTasksRequest(node=node_id, include_history=args.all)
        node_tasks = client.list_all("ListTasks", request, "tasks")
        tasks += sorted((t for t in node_tasks if not desired or t.desired_state in desired), key=service_order)
    if args.format == "json":
        output.print_json(tasks)
    elif args.quiet:
        for t in tasks:
            print(t.id)
    else:
        print_node_tasks(tasks, nodes, args.no_trunc)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        n = client.call("GetNode", pb.GetNodeRequest(node=args.node))
    if args.format == "json":
        output.print_json(n)
        return 0
    r = n.resources
    output.print_fields(
        [
            ("ID", n.id),
            ("Hostname", n.hostname),
            ("Role", _role(n) + (f" (becoming {n.desired_role})" if n.desired_role else "")),
            ("Status", f"{n.status} ({n.status_message})" if n.status_message else n.status),
            ("Availability", n.availability),
            ("Address", n.addr),
            ("Platform", f"{n.os}/{n.arch}" if n.os or n.arch else ""),
            (
                "Resources",
                ", ".join(
                    part
                    for part in (
                        f"{units.format_cpus(r.nano_cpus)} CPU" if r.nano_cpus else "",
                        units.format_size(r.memory_bytes) if r.memory_bytes else "",
                    )
                    if part
                ),
            ),
            ("Labels", [f"{k}={v}" for k, v in sorted(n.labels.items())]),
            ("Overlay subnet", n.overlay_subnet or "-"),
            ("Overlay", "on" if n.overlay else "off (its agent runs without --wireguard)"),
            ("WireGuard", f"{n.wg_public_key} at {n.wg_endpoint or 'no endpoint'}" if n.wg_public_key else "-"),
            ("WireGuard key", _key_state(n) if n.wg_public_key else "-"),
            ("Created", output.timestamp(n.created_at)),
            ("Updated", output.timestamp(n.updated_at)),
        ]
    )
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    if not (args.availability or args.label_add or args.label_rm):
        raise CliError("nothing to change: give --availability, --label-add or --label-rm", Exit.USAGE)
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    request = pb.UpdateNodeRequest(
        node=args.node,
        availability=args.availability or "",
        labels_add=dict(args.label_add or []),
        labels_rm=args.label_rm or [],
    )
    with connect(args) as client:
        node = client.call("UpdateNode", request)
    print(node.id)
    return 0


def cmd_set_role(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        for name in args.nodes:  # one at a time: Raft changes its membership one node at a time
            node = client.call("UpdateNode", pb.UpdateNodeRequest(node=name, role=args.role), timeout=30.0)
            if args.role == "manager" and node.role != "manager":
                _wait_promoted(client, node.id, name)
            print(name)
    return 0


PROMOTION_TIMEOUT = 60.0


def _wait_promoted(client: Any, node_id: str, name: str) -> None:
    """The node's agent gets a manager certificate at its next heartbeat, then its manager joins
    Raft, catches up and serves: wait for all of that."""
    import time

    from warren.api.v1 import control_pb2 as pb

    deadline = time.monotonic() + PROMOTION_TIMEOUT
    while time.monotonic() < deadline:
        info = client.call("GetClusterInfo", pb.GetClusterInfoRequest())
        if any(m.node_id == node_id and m.voter and not m.error for m in info.managers):
            return  # a Raft member that answers: its manager serves
        time.sleep(0.5)
    raise CliError(
        f"node {name} is still becoming a manager after {PROMOTION_TIMEOUT:g}s (its agent starts the manager; "
        "see its log); `warren node ls` shows when it is done",
        Exit.UNAVAILABLE,
    )


def _key_state(n: Any) -> str:
    from warren.cli import output

    text = f"epoch {n.wg_key_epoch}, published {output.timestamp(n.wg_key_published_at)}"
    if n.wg_key_desired_epoch > n.wg_key_epoch:
        text += f"; rotating to epoch {n.wg_key_desired_epoch}"
    return text


KEY_ROTATION_TIMEOUT = 60.0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    import time

    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        asked = [client.call("RotateNodeKey", pb.RotateNodeKeyRequest(node=name)) for name in args.nodes]
        for name, node in zip(args.nodes, asked, strict=True):
            deadline = time.monotonic() + KEY_ROTATION_TIMEOUT
            while not args.detach and node.wg_key_epoch < node.wg_key_desired_epoch:
                if time.monotonic() > deadline:
                    raise CliError(
                        f"node {name} has not published its new key after {KEY_ROTATION_TIMEOUT:g}s (its agent "
                        "makes it at its next heartbeat: is it connected?); `warren node inspect` shows when it is",
                        Exit.UNAVAILABLE,
                    )
                time.sleep(0.2)
                node = client.call("GetNode", pb.GetNodeRequest(node=node.id))
            print(name)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        return output.per_name(
            args.nodes, lambda name: client.call("RemoveNode", pb.RemoveNodeRequest(node=name, force=args.force))
        )


def _role(n: Any) -> str:
    return f"{n.role} (leader)" if n.leader else n.role
