"""`warren volume ...`: named volumes (ADR 40): create, list, inspect, remove."""

from __future__ import annotations

import argparse
from typing import Any

from warren.cli import units
from warren.cli.flags import add_format_flag, value_type

_OPTION = value_type(lambda s: units.parse_key_value(s, "volume option"))
_LABEL = value_type(lambda s: units.parse_key_value(s, "label", require_value=False))


def register(groups: Any) -> None:
    group = groups.add_parser("volume", help="manage named volumes")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser(
        "create",
        help="create a named volume",
        description="A local volume lives on one node: --node, or the node its first task is placed on. "
        "Tasks mounting it run only there.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--driver", default="local", help="volume driver (default: local, the only one)")
    p.add_argument("--opt", "-o", type=_OPTION, action="append", metavar="K=V", help="a driver option")
    p.add_argument("--label", "-l", type=_LABEL, action="append", metavar="K=V", help="a label")
    p.add_argument("--node", metavar="NAME|ID", help="the node it lives on (default: its first task's)")
    add_format_flag(p)
    p.set_defaults(func=cmd_create)

    p = cmds.add_parser("ls", help="list volumes, with the node each lives on")
    p.add_argument("--node", metavar="NAME|ID", help="only the volumes on this node")
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls)

    p = cmds.add_parser("inspect", help="show a volume in detail")
    p.add_argument("volume", metavar="NAME|ID")
    add_format_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = cmds.add_parser(
        "rm",
        help="remove volumes and their data",
        description="Refused while a service mounts the volume or a task holds it. The data is "
        "deleted by the agent of the volume's node.",
    )
    p.add_argument("volumes", nargs="+", metavar="NAME|ID")
    p.set_defaults(func=cmd_rm)


def _node(v: Any) -> str:
    if not v.node_id:
        return "(its first task's)"
    return v.node_hostname or v.node_id[:12]


def cmd_create(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    request = pb.CreateVolumeRequest(
        name=args.name,
        driver=args.driver,
        options=dict(args.opt or []),
        labels=dict(args.label or []),
        node=args.node or "",
    )
    with connect(args) as client:
        v = client.call("CreateVolume", request)
    if args.format == "json":
        output.print_json(v)
    else:
        print(v.name)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        volumes = list(client.call("ListVolumes", pb.ListVolumesRequest(node=args.node or "")).volumes)
    if args.format == "json":
        output.print_json(volumes)
    elif args.quiet:
        for v in volumes:
            print(v.name)
    else:
        output.print_table(
            ["NAME", "DRIVER", "NODE", "USED BY"],
            [(v.name, v.driver, _node(v), ", ".join(v.used_by)) for v in volumes],
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        v = client.call("GetVolume", pb.GetVolumeRequest(volume=args.volume))
    if args.format == "json":
        output.print_json(v)
        return 0
    output.print_fields(
        [
            ("ID", v.id),
            ("Name", v.name),
            ("Driver", v.driver),
            ("Node", f"{v.node_hostname} ({v.node_id})" if v.node_id else _node(v)),
            ("Options", ", ".join(f"{k}={val}" for k, val in sorted(v.options.items()))),
            ("Labels", ", ".join(f"{k}={val}" for k, val in sorted(v.labels.items()))),
            ("Used by", ", ".join(v.used_by)),
            ("Created", output.timestamp(v.created_at)),
        ]
    )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        return output.per_name(
            args.volumes, lambda name: client.call("RemoveVolume", pb.RemoveVolumeRequest(volume=name))
        )
