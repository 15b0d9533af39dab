"""`warren service rebalance NAME` (ADR 36): move the fewest tasks to even out a replicated
service's spread, under its update settings, and follow it until it ends."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from warren.cli import progress, units
from warren.cli.errors import CliError, Exit
from warren.cli.progress import POLL_INTERVAL, add_wait_flags


def add_parser(cmds: Any) -> None:
    p = cmds.add_parser(
        "rebalance",
        help="move the fewest tasks to spread a replicated service evenly over its nodes",
        description="Each moved task is replaced on a less loaded node before it stops (start-first), under "
        "the service's --update-* settings, and leaves the load balancing before its stop. Nothing moves when "
        "the spread is already even within one task (exit 0).",
    )
    p.add_argument("name", help="name, ID or unique ID prefix")
    add_wait_flags(p)
    p.set_defaults(func=cmd_rebalance)


def cmd_rebalance(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        current = client.call("GetService", pb.GetServiceRequest(service=args.name))
        request = pb.RebalanceServiceRequest(service=current.id, version=current.version)
        answer = client.call("RebalanceService", request)
        name = answer.service.spec.name
        if answer.moves == 0:
            print(f"{name}: {answer.message}", flush=True)
            return 0
        print(f"{name}: moving {answer.moves} of {answer.service.spec.replicas} tasks", flush=True)
        if args.detach:
            return 0
        return _follow(client, answer.service, args.wait_timeout)


def _follow(client: Any, service: Any, timeout: float) -> int:
    """Poll the rebalance until it completes (0), pauses (7), is replaced by an update (1), or
    `timeout` passes (1: it goes on without us)."""
    from warren.api.v1 import control_pb2 as pb

    started_at = service.update_status.started_at
    name = service.spec.name
    shown = ""
    deadline = time.monotonic() + timeout
    while True:
        service = client.call("GetService", pb.GetServiceRequest(service=service.id))
        status = service.update_status
        if status.message != shown:
            sys.stderr.write(f"{name}: {status.message}\n")
            sys.stderr.flush()
            shown = status.message
        if status.started_at != started_at or status.state not in ("rebalancing", "rebalance_paused", "completed"):
            raise CliError(f"{name}: the rebalance was replaced: {status.state.replace('_', ' ')}", Exit.FAILURE)
        if status.state == "completed":
            return 0
        if status.state == "rebalance_paused":
            raise CliError(
                f"{name}: the rebalance paused: {progress.without_state(status.message)}; "
                f"fix the cause, then `warren service rebalance {name}`",
                Exit.PAUSED,
            )
        if time.monotonic() >= deadline:
            raise CliError(
                f"timed out after {units.format_duration(timeout)} following the rebalance of {name}; it goes on "
                f"(see `warren service inspect {name}`)",
                Exit.FAILURE,
            )
        time.sleep(POLL_INTERVAL)
