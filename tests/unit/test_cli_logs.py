"""`warren service logs`: flags and the docker-style line prefix."""

from __future__ import annotations

import pytest

from warren.api.v1 import types_pb2 as pb
from warren.cli.main import parse_args
from warren.cli.service_logs import format_log_line, parse_since, parse_tail


def test_flags() -> None:
    args = parse_args(["service", "logs", "web"])
    assert (args.name, args.follow, args.tail, args.timestamps, args.since) == ("web", False, -1, False, None)
    args = parse_args(["service", "logs", "-f", "--tail", "2", "-t", "web"])
    assert (args.follow, args.tail, args.timestamps) == (True, 2, True)
    assert parse_args(["service", "logs", "-n", "all", "web"]).tail == -1


def test_tail_and_since_values() -> None:
    assert parse_tail("0") == 0 and parse_tail("ALL") == -1
    with pytest.raises(ValueError, match="--tail"):
        parse_tail("-3")
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2025-01-02T10:00:00Z") == 1735812000.0
    assert parse_since("2025-01-02T10:00:00+01:00") == 1735808400.0
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_lines_are_prefixed_with_their_task() -> None:
    msg = pb.LogMessage(
        task_id="abc123def456ghi", service_name="web", slot=1, node_id="n1xxxxxxxxxxxxx", data=b"hi \xff", timestamp=1.5
    )
    assert format_log_line(msg, {"n1xxxxxxxxxxxxx": "node-a"}) == b"web.1.abc123def456@node-a    | hi \xff\n"
    assert format_log_line(msg, {}, timestamps=True) == (
        b"1970-01-01T00:00:01.500000Z web.1.abc123def456@n1xxxxxxxxxx    | hi \xff\n"
    )
    global_task = pb.LogMessage(task_id="t" * 25, service_name="agent", node_id="nodeid123456789", data=b"")
    assert format_log_line(global_task, {"nodeid123456789": "h"}) == b"agent.nodeid123456.tttttttttttt@h    | \n"
