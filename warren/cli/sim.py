"""`warren sim`: run many simulated worker nodes in this process (ADR 50), or, with --kill or
--status, talk to the simulator already running on --data-dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from warren import logsetup
from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import value_type

DEFAULT_DATA_DIR = Path("/var/lib/warren-sim")
MAX_NODES = 10_000
_LABEL = value_type(lambda s: units.parse_key_value(s, "label"))


def register(groups: Any) -> None:
    p = groups.add_parser(
        "sim",
        help="run simulated worker nodes that speak the real protocol (load tests)",
        description="Run N simulated nodes in this process, in the foreground. Each joins with the token "
        "(its own certificate, kept in --data-dir/nodes), holds a real session with the managers, heartbeats, "
        "and reports its tasks preparing, starting and running, or failed at --fail-rate: only the runtime is "
        "simulated. SIGUSR1 kills --signal-kills random nodes; `warren sim --kill K` kills K of the running "
        "simulator's nodes through its control socket. Killed nodes vanish without a goodbye, like a dead agent.",
    )
    p.add_argument("join_addr", nargs="?", type=value_type(units.parse_hostport), metavar="MANAGER:JOINPORT")
    p.add_argument("--nodes", type=value_type(units.parse_count), metavar="N", help="how many nodes to run")
    p.add_argument("--token", help="worker join token (`warren cluster join-token worker`)")
    p.add_argument(
        "--data-dir", type=Path, metavar="DIR", default=DEFAULT_DATA_DIR, help=f"(default: {DEFAULT_DATA_DIR})"
    )
    p.add_argument(
        "--start-delay",
        type=value_type(units.parse_duration),
        default=0.0,
        metavar="DURATION",
        help="how long a simulated container takes to start (default: 0s)",
    )
    p.add_argument(
        "--fail-rate",
        type=value_type(units.parse_ratio),
        default=0.0,
        metavar="R",
        help="share of starts that fail, from 0 to 1 (default: 0)",
    )
    p.add_argument("--label", type=_LABEL, action="append", default=[], metavar="K=V", help="a label on every node")
    p.add_argument(
        "--overlay",
        choices=("sim", "off"),
        default="sim",
        help="sim: describe a WireGuard key so the managers plan the overlay for each node; off: no overlay",
    )
    p.add_argument("--hostname-prefix", default="sim", metavar="PREFIX", help="nodes are PREFIX-0000... (default: sim)")
    p.add_argument(
        "--signal-kills", type=value_type(units.parse_count), default=1, metavar="K", help="nodes SIGUSR1 kills"
    )
    p.add_argument("--seed", type=int, help="seed the choice of failures and of nodes to kill")
    p.add_argument("--verbose", action="store_true", help="log each session and task (info level)")
    logsetup.add_flags(p, configure_early=False)  # sim.run: warnings only, unless --verbose
    p.add_argument(
        "--kill", type=value_type(units.parse_count), metavar="K", help="kill K nodes of the running simulator"
    )
    p.add_argument("--status", action="store_true", help="print the running simulator's counts and cost as JSON")
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    if args.kill is not None or args.status:
        return _control(args)
    options = _options(args)
    from warren.node import sim

    return sim.run(options, verbose=args.verbose)


def _control(args: argparse.Namespace) -> int:
    from warren.node import sim

    if args.kill is not None and args.status:
        raise CliError("use --kill or --status, not both", Exit.USAGE)
    if args.kill == 0:
        raise CliError("--kill takes a count of at least 1", Exit.USAGE)
    request: dict[str, Any] = {"kill": args.kill} if args.kill is not None else {"status": True}
    try:
        reply = sim.control(args.data_dir, request)
    except sim.SimError as exc:
        raise CliError(str(exc), Exit.UNAVAILABLE) from None
    if args.kill is not None:
        for node in reply.get("killed", []):
            print(f"{node['hostname']} {node['node_id']}")
    else:
        print(json.dumps(reply, indent=2, sort_keys=True))
    return 0


def _options(args: argparse.Namespace) -> Any:
    from warren import nodereports, pki, validate
    from warren.node.simnode import SimOptions, hostname

    if args.join_addr is None:
        raise CliError("give the managers' join address (MANAGER:JOINPORT)", Exit.USAGE)
    if not args.token:
        raise CliError("--token is required (`warren cluster join-token worker`)", Exit.USAGE)
    try:
        pki.parse_join_token(args.token)
    except pki.TokenError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    if not args.nodes or args.nodes > MAX_NODES:
        raise CliError(f"--nodes must be from 1 to {MAX_NODES}", Exit.USAGE)
    labels = dict(args.label)
    try:
        nodereports.check_node_description(hostname(args.hostname_prefix, args.nodes - 1), labels, 0, 0)
    except validate.ValidationError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    return SimOptions(
        data_dir=args.data_dir,
        join_addr=args.join_addr,
        token=args.token,
        nodes=args.nodes,
        start_delay=args.start_delay,
        fail_rate=args.fail_rate,
        labels=labels,
        overlay=args.overlay == "sim",
        hostname_prefix=args.hostname_prefix,
        signal_kills=args.signal_kills,
        seed=args.seed,
    )
