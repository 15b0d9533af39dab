"""The CLI side of exec (ADR 59) over real gRPC with mutual TLS: a follower sends the exec to
the leader it names, with the start request sent again; refusals as exit codes; SERVICE.SLOT."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.unit.test_cli_stream import _serve, cluster  # noqa: F401 (a fixture)
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.cli.client import Client
from warren.cli.errors import CliError, Exit
from warren.cli.task_exec import parse_service_slot


class Exec(control_pb2_grpc.ControlServicer):
    """Exec as scripted: abort with (code, details), or echo the stdin it gets, then exit 3."""

    def __init__(self, abort: tuple[grpc.StatusCode, str] | None = None) -> None:
        self.abort = abort
        self.starts: list[cpb.ExecStart] = []
        self.stdin = b""

    def Exec(self, requests, context):  # type: ignore[no-untyped-def]
        first = next(requests)
        self.starts.append(first.start)
        if self.abort is not None:
            context.abort(*self.abort)
        yield cpb.ExecResponse(task_id="t1")
        for request in requests:
            self.stdin += request.stdin
            if request.stdin_eof:
                break
        yield cpb.ExecResponse(stdout=self.stdin.upper())
        yield cpb.ExecResponse(exited=True, exit_code=3)


def test_a_follower_sends_the_exec_to_the_leader(cluster) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ctx, creds, servers = cluster
    leader = Exec()
    leader_addr = _serve(leader, creds, servers)  # type: ignore[arg-type]
    follower = Exec(abort=(grpc.StatusCode.UNAVAILABLE, f"not the leader; the leader is at {leader_addr}"))
    follower_addr = _serve(follower, creds, servers)  # type: ignore[arg-type]
    start = cpb.ExecStart(task="t1", command=["cat"], stdin=True)
    made = 0

    def requests() -> Iterator[cpb.ExecRequest]:
        nonlocal made
        made += 1
        yield cpb.ExecRequest(start=start)
        yield cpb.ExecRequest(stdin=b"hello ")
        yield cpb.ExecRequest(stdin=b"there", stdin_eof=True)

    with Client(ctx, managers=[follower_addr]) as client:
        replies = list(client.bidi("Exec", requests))
    assert made == 2 and [s.task for s in follower.starts + leader.starts] == ["t1", "t1"]
    assert leader.stdin == b"hello there"
    assert b"".join(r.stdout for r in replies) == b"HELLO THERE"
    assert replies[-1].exited and replies[-1].exit_code == 3


def test_a_refusal_is_its_exit_code(cluster) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ctx, creds, servers = cluster
    addr = _serve(Exec(abort=(grpc.StatusCode.FAILED_PRECONDITION, "task t1 is not running")), creds, servers)  # type: ignore[arg-type]
    with Client(ctx, managers=[addr]) as client, pytest.raises(CliError) as refused:
        list(client.bidi("Exec", lambda: iter([cpb.ExecRequest(start=cpb.ExecStart(task="t1", command=["true"]))])))
    assert refused.value.code == Exit.CONFLICT and "not running" in refused.value.message


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("web", ("web", 0)), ("web.2", ("web", 2)), ("my.app.10", ("my.app", 10)), ("web.x", ("web.x", 0))],
)
def test_service_and_slot(text: str, parsed: tuple[str, int]) -> None:
    assert parse_service_slot(text) == parsed


def test_slot_zero_is_refused() -> None:
    with pytest.raises(CliError) as refused:
        parse_service_slot("web.0")
    assert refused.value.code == Exit.USAGE
