"""`warren service logs`: its arguments, and each log line as Docker prints it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from warren.cli import units
from warren.cli.flags import value_type
from warren.text import shown


def add_logs_flags(p: argparse.ArgumentParser) -> None:
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
        hostnames = {n.id: n.hostname for n in client.list_all("ListNodes", pb.ListNodesRequest(), "nodes")}
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
                        nodes = client.list_all("ListNodes", pb.ListNodesRequest(), "nodes")
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


def format_log_line(msg: Any, hostnames: dict[str, str], timestamps: bool = False) -> bytes:
    """Docker's shape: [TIME ]web.1.TASKID@NODE    | LINE, with the line's bytes as they came."""
    import datetime as dt

    name = f"{msg.service_name}.{msg.slot}" if msg.slot else f"{msg.service_name}.{msg.node_id[:12]}"
    prefix = f"{name}.{msg.task_id[:12]}@{hostnames.get(msg.node_id) or msg.node_id[:12]}    | "
    if timestamps:
        moment = dt.datetime.fromtimestamp(msg.timestamp, dt.UTC)
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ ") + prefix
    return prefix.encode() + msg.data + b"\n"
