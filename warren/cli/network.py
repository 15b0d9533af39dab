"""`warren network ...` (#14, ADR 47): create, list, inspect, remove; and the `--network` flags
of `service create` and `service update`.

A network is a set of services allowed to reach each other and a DNS scope, on the one overlay.
A service that names none is on the cluster's default network, `default`.
"""

from __future__ import annotations

import argparse
from typing import Any

from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, value_type
from warren.text import shown

_LABEL = value_type(lambda s: units.parse_key_value(s, "label", require_value=False))


def parse_attachment(text: str) -> dict[str, Any]:
    """`NAME[,alias=A]...` or `name=NAME[,alias=A]...` (Docker's syntax) as the fields of a
    NetworkAttachment; the manager checks the names."""
    name = ""
    aliases: list[str] = []
    for i, part in enumerate(text.split(",")):
        key, sep, value = part.partition("=")
        if not sep and i == 0:
            name = part
        elif sep and key.strip() == "name" and not name:
            name = value
        elif sep and key.strip() == "alias" and value:
            aliases.append(value)
        else:
            raise ValueError(f"invalid network option {shown(part)}: expected NAME[,alias=ALIAS]")
    if not name:
        raise ValueError(f"invalid network {shown(text)}: a network name is required")
    return {"network": name, "aliases": aliases}


def _attachment(text: str) -> dict[str, Any]:
    return parse_attachment(text)


_attachment.__name__ = "network"
_ATTACHMENT = value_type(_attachment)


def add_service_flags(p: argparse.ArgumentParser, update: bool) -> None:
    """--network on create (and on update: the new list); --network-add/-rm on update."""
    group = p.add_argument_group("networks (default: the cluster's default network)")
    syntax = "NAME[,alias=ALIAS]"
    help_text = "put the tasks on a network (repeat for several)"
    if update:
        help_text = "the service's networks, replacing all (repeat for several)"
    group.add_argument("--network", dest="networks", type=_ATTACHMENT, action="append", metavar=syntax, help=help_text)
    if update:
        group.add_argument("--network-add", type=_ATTACHMENT, action="append", metavar=syntax, help="add a network")
        group.add_argument("--network-rm", action="append", metavar="NAME", help="take the service off a network")


def apply_service_flags(spec: Any, args: argparse.Namespace) -> None:
    """Apply the flags to a types_pb2.ServiceSpec: --network replaces, then removals, then
    additions (one named again replaces its aliases)."""
    given = getattr(args, "networks", None)
    current = [{"network": a.network, "aliases": list(a.aliases)} for a in spec.networks]
    if given is not None:
        current = list(given)
    removed = set(getattr(args, "network_rm", None) or [])
    unknown = removed - {a["network"] for a in current}
    if unknown:
        raise CliError(f"--network-rm: the service is not on network {', '.join(sorted(unknown))}", Exit.USAGE)
    added = getattr(args, "network_add", None) or []
    replaced = removed | {a["network"] for a in added}
    kept = [a for a in current if a["network"] not in replaced] + list(added)
    if given is None and not removed and not added:
        return
    del spec.networks[:]
    for attachment in kept:
        spec.networks.add(**attachment)


def register(groups: Any) -> None:
    group = groups.add_parser("network", help="manage networks (which services reach each other)")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser(
        "create",
        help="create a network",
        description="Services on one network reach each other and resolve each other's names; services "
        "that share no network do neither. The network lives on the cluster's one overlay.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--subnet", metavar="CIDR", default="", help="recorded and kept clear of others (tasks keep node addresses)"
    )
    p.add_argument("--internal", action="store_true", help="no route out of the cluster for its tasks")
    p.add_argument("--attachable", action="store_true", help="recorded, for Compose and Swarm users")
    p.add_argument("--label", "-l", type=_LABEL, action="append", metavar="K=V", help="a label")
    add_format_flag(p)
    p.set_defaults(func=cmd_create)

    p = cmds.add_parser("ls", help="list networks, with the services on each")
    p.add_argument("-q", "--quiet", action="store_true", help="print names only")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls)

    p = cmds.add_parser("inspect", help="show a network in detail")
    p.add_argument("network", metavar="NAME|ID")
    add_format_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = cmds.add_parser("rm", help="remove networks", description="Refused while a service is on the network (exit 4).")
    p.add_argument("networks", nargs="+", metavar="NAME|ID")
    p.set_defaults(func=cmd_rm)


def cmd_create(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    request = pb.CreateNetworkRequest(
        name=args.name,
        subnet=args.subnet,
        internal=args.internal,
        attachable=args.attachable,
        labels=dict(args.label or []),
    )
    with connect(args) as client:
        n = client.call("CreateNetwork", request)
    if args.format == "json":
        output.print_json(n)
    else:
        print(n.name)
    return 0


def _flags(n: Any) -> str:
    return ", ".join(
        f for f, on in (("builtin", n.builtin), ("internal", n.internal), ("attachable", n.attachable)) if on
    )


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        networks = list(client.call("ListNetworks", pb.ListNetworksRequest()).networks)
    if args.format == "json":
        output.print_json(networks)
    elif args.quiet:
        for n in networks:
            print(n.name)
    else:
        output.print_table(
            ["NAME", "ID", "SUBNET", "FLAGS", "SERVICES"],
            [(n.name, n.id[:12], n.subnet, _flags(n), ", ".join(n.used_by)) for n in networks],
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        n = client.call("GetNetwork", pb.GetNetworkRequest(network=args.network))
    if args.format == "json":
        output.print_json(n)
        return 0
    output.print_fields(
        [
            ("ID", n.id),
            ("Name", n.name),
            ("Subnet", n.subnet),
            ("Internal", "yes" if n.internal else "no"),
            ("Attachable", "yes" if n.attachable else "no"),
            ("Builtin", "yes" if n.builtin else "no"),
            ("Labels", ", ".join(f"{k}={val}" for k, val in sorted(n.labels.items()))),
            ("Services", ", ".join(n.used_by)),
            ("Created", output.timestamp(n.created_at) if n.created_at else ""),
        ]
    )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        return output.per_name(
            args.networks, lambda name: client.call("RemoveNetwork", pb.RemoveNetworkRequest(network=name))
        )
