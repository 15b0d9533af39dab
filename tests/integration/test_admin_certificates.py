"""Admin certificates (ADR 24) against three real managers: each operator's own certificate,
made from a key that never leaves the CLI's machine, revoked on every manager before the
command returns; and where private keys lie in a manager's data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager, manager_trio
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Manager]]:
    with manager_trio(tmp_path) as managers:
        yield managers


def _info(stub: control_pb2_grpc.ControlStub) -> grpc.StatusCode:
    try:
        stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_an_operator_gets_a_certificate_of_their_own_and_loses_it_safely(trio: list[Manager], tmp_path: Path) -> None:
    first = trio[0]
    alice_dir = tmp_path / "alice"
    created = first.cli("cluster", "admin-cert", "create", "alice", "--out", str(alice_dir), "--validity", "720h")
    assert created.returncode == 0, created.stderr
    alice = tls.load_credentials(alice_dir)  # the key was made here, and matches the certificate
    assert (alice_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    identity = pki.identity_of(alice.cert_pem)
    assert identity.role == "admin"
    lifetime = identity.not_after - pki.validity(alice.cert_pem)[0]
    assert abs(lifetime.total_seconds() - (720 * 3600 + 300)) < 5  # notBefore is backdated 5 minutes
    # Channels opened before the revocation, to every manager: revocation must reach them too.
    stubs = [m.control(alice_dir) for m in trio]
    assert [_info(s) for s in stubs] == [grpc.StatusCode.OK] * 3

    bob = first.cli("cluster", "admin-cert", "create", "bob", "--context", "bob")
    assert bob.returncode == 0, bob.stderr
    listed = {c["name"]: c for c in first.cli_json("cluster", "admin-cert", "ls")}  # type: ignore[union-attr]
    assert set(listed) == {"init", "alice", "bob"} and listed["alice"]["id"] == identity.node_id
    # `node rm` of an admin certificate's CN points to the right command.
    wrong = first.cli("node", "rm", "--force", identity.node_id)
    assert wrong.returncode == 3 and "admin-cert revoke alice" in wrong.stderr
    assert first.cli("cluster", "admin-cert", "create", "alice", "--out", str(tmp_path / "a2")).returncode == 4

    # Bob revokes alice through the third manager (called directly, so that nothing but the
    # answer separates the revocation from the next calls): once it answers, no manager serves her.
    bob_stub = trio[2].control(first.config.parent / "credentials" / "bob")
    bob_stub.RevokeAdminCertificate(cpb.RevokeAdminCertificateRequest(name="alice"), timeout=10)
    assert [_info(s) for s in reversed(stubs)] == [grpc.StatusCode.PERMISSION_DENIED] * 3
    fresh = [m.control(alice_dir) for m in trio]
    assert [_info(s) for s in fresh] == [grpc.StatusCode.PERMISSION_DENIED] * 3
    with pytest.raises(grpc.RpcError) as err:
        fresh[1].GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
    assert "admin certificate was revoked" in (err.value.details() or "")
    listed = {c["name"]: c for c in first.cli_json("cluster", "admin-cert", "ls")}  # type: ignore[union-attr]
    assert listed["alice"]["revoked"] and not listed["bob"]["revoked"]
    # Nobody revokes the certificate they are calling with.
    own = first.cli("--context", "bob", "cluster", "admin-cert", "revoke", "bob")
    assert own.returncode == 4 and "calling with" in own.stderr
    assert _info(first.control()) == grpc.StatusCode.OK


def test_admin_certificate_calls_validate_their_input(trio: list[Manager], tmp_path: Path) -> None:
    first = trio[0]
    bad_name = first.cli("cluster", "admin-cert", "create", "no/slash", "--out", str(tmp_path / "x"))
    assert bad_name.returncode == 2 and "invalid admin certificate name" in bad_name.stderr
    assert not (tmp_path / "x" / "key.pem").exists()
    short = first.cli("cluster", "admin-cert", "create", "carol", "--out", str(tmp_path / "c"), "--validity", "10m")
    assert short.returncode == 2 and "between 1h and 365 days" in short.stderr
    assert first.cli("cluster", "admin-cert", "create", "carol").returncode == 2  # --out or --context
    assert first.cli("cluster", "admin-cert", "revoke", "nobody").returncode == 3
    stub = first.control()
    csr = pki.make_csr(pki.generate_key()).decode()
    for request, code in (
        (cpb.IssueAdminCertificateRequest(name="dave\n", csr_pem=csr), grpc.StatusCode.INVALID_ARGUMENT),
        (cpb.IssueAdminCertificateRequest(name="a b", csr_pem=csr), grpc.StatusCode.INVALID_ARGUMENT),
        (cpb.IssueAdminCertificateRequest(name="dave", csr_pem=""), grpc.StatusCode.INVALID_ARGUMENT),
        (cpb.IssueAdminCertificateRequest(name="dave", csr_pem="not a csr"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            cpb.IssueAdminCertificateRequest(name="dave", csr_pem=csr, validity=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.IssueAdminCertificate(request, timeout=10)
        assert err.value.code() == code, err.value.details()
    # Only admin certificates reach these methods: a manager's own certificate is refused.
    as_manager = first.control(first.data_dir / "certs")
    with pytest.raises(grpc.RpcError) as err:
        as_manager.ListAdminCertificates(cpb.ListAdminCertificatesRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_private_keys_in_a_managers_data_directory(trio: list[Manager]) -> None:
    """The CA key file is gone once the cluster is committed, and the replicated copies (state,
    journal, stale LMDB pages, Raft snapshot) hold it wrapped: no plain private key but the
    node's and the admin's own. Rotating a token rewrites the cluster record once more."""
    first = trio[0]
    assert first.cli("cluster", "join-token", "worker", "--rotate").returncode == 0
    for manager in trio:
        keys = {}
        for path in manager.data_dir.rglob("*"):
            if path.is_file() and b"PRIVATE KEY-----" in path.read_bytes():
                keys[str(path.relative_to(manager.data_dir))] = path.stat().st_mode & 0o777
        expected = {"certs/key.pem": 0o600}
        if manager is first:
            expected["admin/key.pem"] = 0o600
        assert keys == expected, manager.data_dir
        assert not (manager.data_dir / "ca-key.pem").exists()
        assert (manager.data_dir / "db" / "data.mdb").stat().st_mode & 0o777 == 0o600
