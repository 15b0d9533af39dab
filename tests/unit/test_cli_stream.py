"""The CLI's streaming calls over real gRPC with mutual TLS: a follower sends us to the leader
it names, an unreachable manager fails over, errors become exit codes, and a stream cut after
its first messages says so."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.fixtures.ports import free_port
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.api.v1 import types_pb2 as pb
from warren.cli.client import Client
from warren.cli.errors import CliError, Exit
from warren.clientconfig import Context


class Logs(control_pb2_grpc.ControlServicer):
    """ServiceLogs as scripted: abort with (code, details) or stream `lines`, then maybe fail."""

    def __init__(self, lines: list[bytes], abort: tuple[grpc.StatusCode, str] | None = None, cut: bool = False):
        self.lines = lines
        self.abort = abort
        self.cut = cut
        self.calls = 0

    def ServiceLogs(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.abort is not None:
            context.abort(*self.abort)
        for line in self.lines:
            yield cpb.ServiceLogsMessage(messages=[pb.LogMessage(task_id="t", data=line)])
        if self.cut:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this manager is no longer the leader; retry")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Context, tls.Credentials, list[grpc.Server]]]:
    ca = pki.CertificateAuthority.create("testcluster")
    cert, key = ca.issue_keypair("admin1", pki.ROLE_ADMIN)
    tls.save_credentials(tmp_path / "admin", ca.cert_pem, cert, key)
    mcert, mkey = ca.issue_keypair("manager1", pki.ROLE_MANAGER)
    admin = tmp_path / "admin"
    ctx = Context("t", [], admin / tls.CA_FILE, admin / tls.CERT_FILE, admin / tls.KEY_FILE)
    servers: list[grpc.Server] = []
    yield ctx, tls.Credentials(ca.cert_pem, mcert, mkey), servers
    for server in servers:
        server.stop(None)


def _serve(servicer: Logs, creds: tls.Credentials, servers: list[grpc.Server]) -> str:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    control_pb2_grpc.add_ControlServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(*creds))
    server.start()
    servers.append(server)
    return f"127.0.0.1:{port}"


def _stream(ctx: Context, managers: list[str]) -> list[bytes]:
    with Client(ctx, managers=managers) as client:
        return [
            m.data
            for batch in client.stream("ServiceLogs", cpb.ServiceLogsRequest(service="x"))
            for m in batch.messages
        ]


def test_a_follower_sends_us_to_the_leader(cluster) -> None:  # type: ignore[no-untyped-def]
    ctx, creds, servers = cluster
    leader = Logs([b"a", b"b"])
    leader_addr = _serve(leader, creds, servers)
    follower = Logs([], abort=(grpc.StatusCode.UNAVAILABLE, f"not the leader; the leader is at {leader_addr}"))
    follower_addr = _serve(follower, creds, servers)
    dead = f"127.0.0.1:{free_port()}"
    assert _stream(ctx, [dead, follower_addr]) == [b"a", b"b"]
    assert (follower.calls, leader.calls) == (1, 1)


def test_stream_errors_become_exit_codes(cluster) -> None:  # type: ignore[no-untyped-def]
    ctx, creds, servers = cluster
    missing = _serve(Logs([], abort=(grpc.StatusCode.NOT_FOUND, "service 'x' not found")), creds, servers)
    with pytest.raises(CliError) as err:
        _stream(ctx, [missing])
    assert (err.value.code, err.value.message) == (Exit.NOT_FOUND, "service 'x' not found")
    with pytest.raises(CliError) as err:
        _stream(ctx, [f"127.0.0.1:{free_port()}"])
    assert err.value.code == Exit.UNAVAILABLE
    cut = _serve(Logs([b"a"], cut=True), creds, servers)
    with Client(ctx, managers=[cut]) as client:
        got = []
        with pytest.raises(CliError) as err:
            for batch in client.stream("ServiceLogs", cpb.ServiceLogsRequest(service="x")):
                got += [m.data for m in batch.messages]
    assert got == [b"a"]
    assert err.value.code == Exit.UNAVAILABLE
    assert err.value.message == (
        f"the stream from the manager at {cut} ended: this manager is no longer the leader; retry"
    )
