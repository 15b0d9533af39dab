"""`warren cluster ...`: start a manager, read the cluster's state, hand out join tokens."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from warren.cli import autolock, backup, certs, manager_flags, units, worker
from warren.cli.errors import CliError, Exit
from warren.cli.flags import add_format_flag, value_type
from warren.reconciler import liveness

_ADDR = value_type(units.parse_hostport)


def register(groups: Any) -> None:
    group = groups.add_parser("cluster", help="create and inspect the cluster")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")

    p = cmds.add_parser(
        "init",
        help="start the first manager of a new cluster (runs in the foreground)",
        description="Create a new cluster, or resume the one in --data-dir, and serve as its manager "
        "until interrupted. Writes the admin credentials and a client context on first start.",
    )
    manager_flags.add_manager_flags(p)
    p.add_argument(
        "--force-new-cluster",
        action="store_true",
        help="on a surviving manager's --data-dir: make it the only manager, with all its state (ADR 56)",
    )
    p.set_defaults(func=cmd_init)

    p = cmds.add_parser("info", help="show the cluster, its managers and Raft state")
    p.add_argument("--consistent", action="store_true", help="confirm leadership through Raft before answering")
    p.add_argument("--data-dir", type=Path, help="ask the locked manager in DIR, on its unlock socket (ADR 44)")
    add_format_flag(p)
    p.set_defaults(func=cmd_info)

    p = cmds.add_parser("update", help="change cluster-wide settings")
    p.add_argument(
        "--wireguard-key-rotation",
        type=value_type(units.parse_duration),
        metavar="DURATION",
        help="give every node on the overlay a new WireGuard key this often, e.g. 720h (0: off, the default)",
    )
    p.add_argument(
        "--auto-rebalance",
        type=_on_off,
        metavar="true|false",
        help="rebalance replicated services by themselves when a node joins or returns (default: false)",
    )
    p.add_argument(
        "--heartbeat-period",
        type=value_type(units.parse_duration),
        metavar="DURATION",
        help="how often workers heartbeat, from 100ms to 1h; a node is down after 3 missed (ADR 52)",
    )
    p.add_argument(
        "--autolock",
        type=_on_off,
        metavar="true|false",
        help="managers need the unlock key (printed once, when turned on) to start (ADR 44; default: false)",
    )
    for cap, what, default in (("starts", "start", "20 per node, at least 1000"), ("stops", "stop", "1000")):
        p.add_argument(  # ADRs 53 and 74
            f"--max-{cap}-per-pass",
            type=_pass_cap,
            metavar="N",
            help=f"tasks one scheduling pass may {what}; more wait for the next pass (0: the default, {default})",
        )
    p.set_defaults(func=cmd_update)

    p = cmds.add_parser("join-token", help="print the token a new worker or manager joins with")
    p.add_argument("role", choices=("worker", "manager"))
    p.add_argument("--rotate", action="store_true", help="replace the token; the old one stops working")
    p.add_argument("-q", "--quiet", action="store_true", help="print the token only")
    p.set_defaults(func=cmd_join_token)

    backup.register(cmds)  # #16 (ADR 56)
    certs.register(cmds)
    autolock.register(cmds)
    worker.add_join_parser(cmds)


def cmd_init(args: argparse.Namespace) -> int:
    from warren.manager import daemon, recovery
    from warren.node import manager as manager_node

    options = manager_flags.manager_options(args)
    if args.force_new_cluster:
        try:
            identity = recovery.force_new_cluster(options)
        except daemon.StartupError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        print(f"Manager {identity.node_id} is now the only manager of cluster {identity.cluster_id}.", flush=True)
    return manager_node.run(options, manager_flags.agent_flags(args))


def cmd_info(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    if args.data_dir is not None:
        info = autolock.locked_info(args.data_dir)
        if args.format == "json":
            output.print_json(info)
        else:
            output.print_fields([("ID", info.id), ("Autolock", "on; THIS MANAGER IS LOCKED (warren cluster unlock)")])
        return 0
    with connect(args) as client:
        info = client.call("GetClusterInfo", pb.GetClusterInfoRequest(consistent=args.consistent))
    if args.format == "json":
        output.print_json(info)
        return 0
    output.print_fields(
        [
            ("ID", info.id),
            ("Created", output.timestamp(info.created_at)),
            ("CA fingerprint", info.ca_fingerprint),
            (
                "CA rotation",
                f"under way: {info.ca_nodes_done}/{info.nodes} nodes on the new CA (see `warren cluster ca`)"
                if info.ca_rotating
                else "none",
            ),
            ("Raft state", info.raft_state),
            ("Leader", info.leader_api_addr or info.leader or "none"),
            ("Raft term", info.raft_term),
            ("Commit index", f"{info.commit_index} (applied {info.applied_index})"),
            ("Heartbeat", _heartbeat_text(info.heartbeat_period, info.nodes)),
            (
                "WireGuard key rotation",
                f"every {units.format_duration(info.wg_key_rotation_period)}" if info.wg_key_rotation_period else "off",
            ),
            ("Auto-rebalance", "on" if info.auto_rebalance else "off"),
            ("Per pass", f"at most {info.max_starts_per_pass} starts, {info.max_stops_per_pass} stops"),
            ("Autolock", ("on" if info.autolock else "off") + ("; THIS MANAGER IS LOCKED" if info.locked else "")),
            ("Nodes", info.nodes),
            ("Services", info.services),
            ("Tasks", info.tasks),
        ]
    )
    print()
    output.print_table(
        ["MANAGER", "API ADDRESS", "RAFT ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "STATUS"],
        [
            (
                output.short_id(m.node_id),
                m.api_addr,
                m.raft_addr,
                m.raft_state or "-",
                m.raft_term if m.raft_state else "-",
                m.commit_index if m.raft_state else "-",
                m.applied_index if m.raft_state else "-",
                m.lag if m.raft_state else "-",
                _manager_status(m, [o.raft_addr for o in info.managers if o.voter and o is not m]),
            )
            for m in info.managers
        ],
    )
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect
    from warren.cli.errors import CliError, Exit

    caps = {f: getattr(args, f) for f in ("max_starts_per_pass", "max_stops_per_pass") if getattr(args, f) is not None}
    settings = (
        args.wireguard_key_rotation is not None
        or args.auto_rebalance is not None
        or args.heartbeat_period is not None
        or bool(caps)
    )
    if not settings and args.autolock is None:
        raise CliError(
            "nothing to change: give --wireguard-key-rotation, --auto-rebalance, --heartbeat-period, --autolock,"
            " --max-starts-per-pass or --max-stops-per-pass",
            Exit.USAGE,
        )
    request = pb.UpdateClusterRequest(**caps)
    if args.heartbeat_period is not None:
        request.heartbeat_period = args.heartbeat_period
    if args.wireguard_key_rotation is not None:
        request.wg_key_rotation_period = args.wireguard_key_rotation
    if args.auto_rebalance is not None:
        request.auto_rebalance = args.auto_rebalance
    with connect(args) as client:
        if args.autolock is not None:
            autolock.apply_autolock(client, args.autolock)
        if not settings:
            return 0
        info = client.call("UpdateCluster", request)
    if args.wireguard_key_rotation is not None:
        period = info.wg_key_rotation_period
        print(f"WireGuard key rotation: {'every ' + units.format_duration(period) if period else 'off'}")
    if args.auto_rebalance is not None:
        print(f"Auto-rebalance: {'on' if info.auto_rebalance else 'off'}")
    if caps:
        print(f"Per pass: at most {info.max_starts_per_pass} starts, {info.max_stops_per_pass} stops")
    if args.heartbeat_period is not None:
        period = liveness.heartbeat_period(info.heartbeat_period, info.nodes)
        down = units.format_duration(3 * period)
        every = _heartbeat_text(info.heartbeat_period, info.nodes)
        print(f"Heartbeat: every {every} (a node is down after {down} without one)")
    return 0


def _heartbeat_text(configured: float, nodes: int) -> str:
    """The period nodes beat at, and the setting when the cluster's size lengthens it (ADR 73)."""
    period = liveness.heartbeat_period(configured, nodes)
    if period == configured:
        return units.format_duration(configured)
    rate = f"{liveness.MAX_HEARTBEATS_PER_SECOND:g}"
    setting = units.format_duration(configured)
    return (
        f"{units.format_duration(period)} (set to {setting}; longer for {nodes:,} nodes: at most {rate} heartbeats/s)"
    )


def _on_off(text: str) -> bool:
    """true or false, for a cluster setting that is on or off."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false (got {text!r})")
    return text == "true"


def _pass_cap(text: str) -> int:
    """A pass's cap (ADR 53): 0 (the default) to 100,000 tasks."""
    if not text.isdigit() or int(text) > 100_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 100000 (got {text!r})")
    return int(text)


def _manager_status(manager: Any, other_members: list[str]) -> str:
    """Whether it answered, and which members it has no Raft connection to (ADR 26)."""
    if manager.error:
        return f"unreachable ({manager.error})"
    if not manager.voter:
        return "reachable, not a Raft member"
    missing = [addr for addr in other_members if addr not in manager.connected]
    return f"reachable, no Raft link to {', '.join(missing)}" if missing else "reachable"


def cmd_join_token(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        token = client.call("GetJoinToken", pb.GetJoinTokenRequest(role=args.role, rotate=args.rotate)).token
        if args.quiet:
            print(token)
            return 0
        addr = _leader_join_addr(client.call("GetClusterInfo", pb.GetClusterInfoRequest()), client.address)
    if args.rotate:
        print(f"The {args.role} join token was rotated; the previous one is no longer accepted.\n")
    article = "a" if args.role == "worker" else "another"
    print(f"To add {article} {args.role} to this cluster, run on the new node:\n")
    print(f"    warren cluster join --token {token} {addr}\n")
    return 0


def _leader_join_addr(info: Any, answered: str) -> str:
    """The leader's join listener; failing that, the default port (API + 2) of a manager we know."""
    managers = list(info.managers)
    chosen = next((m for m in managers if m.leader), None) or next(
        (m for m in managers if m.api_addr == answered), None
    )
    if chosen is not None and chosen.join_addr:
        return chosen.join_addr
    host, _, port = (chosen.api_addr if chosen is not None and chosen.api_addr else answered).rpartition(":")
    return f"{host}:{int(port) + 2}"
