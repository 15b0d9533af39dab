"""A manager renews its own certificate from the cluster CA, and its TLS server serves the new
one at the next handshake, without a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.integration.harness import free_port
from warren import certinfo, pki, tls
from warren.manager.certificates import renew_certificate
from warren.model import ClusterInfo
from warren.state import ClusterState, Put

pytestmark = pytest.mark.integration


class FakeStore:
    def __init__(self, state: ClusterState) -> None:
        self.state = state

    @contextmanager
    def read(self) -> Iterator[ClusterState]:
        yield self.state


def _served_certificate(port: int, client: tls.Credentials, tmp_path: Path) -> bytes:
    """The DER certificate the server presents, from a real TLS handshake with a client cert."""
    (tmp_path / "client-cert.pem").write_bytes(client.cert_pem)
    (tmp_path / "client-key.pem").write_bytes(client.key_pem)
    context = ssl.create_default_context(cadata=client.ca_pem.decode())
    context.check_hostname = False
    context.load_cert_chain(tmp_path / "client-cert.pem", tmp_path / "client-key.pem")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as conn:
        return conn.getpeercert(binary_form=True)


def test_a_renewed_manager_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("cluster1")
    state = ClusterState()
    cluster = ClusterInfo(
        id="cluster1",
        created_at=1.0,
        ca_cert_pem=ca.cert_pem.decode(),
        ca_key_pem=ca.key_pem.decode(),
        worker_token_secret="w" * 26,
        manager_token_secret="m" * 26,
    )
    state.apply([Put("cluster", cluster)])
    data = tmp_path / "manager"
    cert, key = ca.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=3)
    tls.save_credentials(data / "certs", ca.cert_pem, cert, key)
    admin_cert, admin_key = ca.issue_keypair("admin1", pki.ROLE_ADMIN, validity_days=3)
    admin = tls.Credentials(ca.cert_pem, admin_cert, admin_key)
    port = free_port()
    served: list[bytes] = []

    async def scenario() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_secure_port(f"127.0.0.1:{port}", tls.reloading_server_credentials(data / "certs"))
        await server.start()
        try:
            served.append(await asyncio.to_thread(_served_certificate, port, admin, tmp_path))
            assert not renew_certificate(data, FakeStore(state), "mgr1")  # not due yet: nothing changes
            later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2, hours=12)
            assert renew_certificate(data, FakeStore(state), "mgr1", now=later)
            served.append(await asyncio.to_thread(_served_certificate, port, admin, tmp_path))
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert served[0] == certinfo.cert_der(cert)
    renewed = tls.load_credentials(data / "certs").cert_pem
    assert served[1] == certinfo.cert_der(renewed) != served[0]
    identity = pki.identity_of(renewed)
    assert (identity.node_id, identity.role) == ("mgr1", pki.ROLE_MANAGER)
    assert certinfo.validity(renewed)[1] > certinfo.validity(cert)[1] + dt.timedelta(days=80)


def test_a_new_root_is_trusted_from_the_state_at_the_next_handshake(tmp_path: Path) -> None:
    """During a CA rotation, a manager accepts clients of the new root as soon as the state
    says so, before its certs/ca.pem is rewritten (ADR 24)."""
    old = pki.CertificateAuthority.create("cluster1")
    new = pki.CertificateAuthority.create("cluster1")
    data = tmp_path / "manager"
    cert, key = old.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=3)
    tls.save_credentials(data / "certs", old.cert_pem, cert, key)
    roots = [old.cert_pem]
    new_cert, new_key = new.issue_keypair("admin2", pki.ROLE_ADMIN, validity_days=3)
    client = tls.Credentials(pki.bundle(old.cert_pem, new.cert_pem), new_cert, new_key)
    port = free_port()
    outcomes: list[bool] = []

    def handshake() -> bool:
        """A health check over a fresh connection (TLS 1.3 refuses a client certificate only
        after the client's side of the handshake is done: a call shows it)."""
        channel = grpc.secure_channel(f"127.0.0.1:{port}", tls.channel_credentials(*client), tls.channel_options())
        with channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
        return True

    async def scenario() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        creds = tls.reloading_server_credentials(data / "certs", lambda: roots[0])
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        try:
            outcomes.append(await asyncio.to_thread(handshake))
            roots[0] = pki.bundle(new.cert_pem, old.cert_pem)  # StartCARotation applied
            outcomes.append(await asyncio.to_thread(handshake))
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert outcomes == [False, True]
    assert tls.load_credentials(data / "certs").ca_pem == old.cert_pem  # no file was touched


def test_the_server_trusts_the_state_only_never_its_ca_file(tmp_path: Path) -> None:
    """certs/ca.pem is for the manager's outgoing calls: when the state's roots are given, the
    server never trusts the file instead, even for a moment the state has none to give."""
    ours = pki.CertificateAuthority.create("cluster1")
    stale = pki.CertificateAuthority.create("cluster1")
    data = tmp_path / "manager"
    cert, key = ours.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=3)
    tls.save_credentials(data / "certs", stale.cert_pem, cert, key)  # a file the state disagrees with
    roots = [ours.cert_pem]
    port = free_port()

    def accepted(ca: pki.CertificateAuthority) -> bool:
        client_cert, client_key = ca.issue_keypair("admin1", pki.ROLE_ADMIN, validity_days=3)
        creds = tls.channel_credentials(ours.cert_pem, client_cert, client_key)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds, tls.channel_options()) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
        return True

    outcomes: list[tuple[bool, bool]] = []

    async def scenario() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_secure_port(f"127.0.0.1:{port}", tls.reloading_server_credentials(data / "certs", lambda: roots[0]))
        await server.start()
        try:
            outcomes.append(await asyncio.to_thread(lambda: (accepted(ours), accepted(stale))))
            roots[0] = b""  # nothing to read from the state: keep what it said last
            outcomes.append(await asyncio.to_thread(lambda: (accepted(ours), accepted(stale))))
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert outcomes == [(True, False), (True, False)]
